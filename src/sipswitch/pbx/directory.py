"""Extensions as the call path sees them: an in-memory copy of the extension table.

REGISTER and INVITE handling never wait for the database: every extension is held in memory and
the copy is reloaded when the table's version changes (``sipswitch ext ...`` run by another
process bumps it), checked every ``refresh_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..store import Extension, ExtensionStore

log = logging.getLogger(__name__)


class ExtensionDirectory:
    def __init__(self, store: ExtensionStore, refresh_interval: float = 2.0) -> None:
        self._store = store
        self._interval = refresh_interval
        self._extensions: dict[str, Extension] = {}
        self._version: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def load(self) -> int:
        """Read the whole table if it changed since the last load; returns the count held."""
        version = await self._store.version()
        if version != self._version:
            version, extensions = await self._store.snapshot()
            self._extensions = {e.number: e for e in extensions}
            if self._version is not None:
                log.info("extensions reloaded: %d", len(self._extensions))
            self._version = version
        return len(self._extensions)

    def start(self) -> None:
        self._task = asyncio.create_task(self._refresh_loop(), name="extension-refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.load()
            except Exception as exc:  # noqa: BLE001 - keep serving the copy we have
                log.warning("could not reload extensions: %s", exc)

    def lookup(self, number: str) -> Extension | None:
        return self._extensions.get(number)

    def __len__(self) -> int:
        return len(self._extensions)
