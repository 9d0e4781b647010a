"""Call detail records: one per call attempt, written in batches to the store and its daily CSV."""

from __future__ import annotations

import asyncio
import logging

from ..store import CdrRecord, CdrStore

log = logging.getLogger(__name__)


class CdrRecorder:
    def __init__(self, store: CdrStore | None, flush_interval: float = 1.0) -> None:
        self._store = store
        self._pending: list[CdrRecord] = []
        self._interval = flush_interval
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.written = 0

    def record(self, record: CdrRecord) -> None:
        self._pending.append(record)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="cdr-writer")

    async def flush(self) -> None:
        if not self._pending or self._store is None:
            return
        batch, self._pending = self._pending, []
        try:
            await self._store.add(batch)
            self.written += len(batch)
        except Exception as exc:  # noqa: BLE001 - keep the records for the next attempt
            log.error("could not store %d call records: %s", len(batch), exc)
            self._pending[:0] = batch

    async def close(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task
        await self.flush()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), self._interval)
            except TimeoutError:
                pass
            await self.flush()
