"""Where each extension can be reached: its registered bindings, kept in memory and persisted.

Lookups are served from memory. Every change is queued and written by one background task in a
single transaction per batch (group commit); callers await the commit before answering, so an
answered REGISTER survives ``kill -9`` while thousands per second share a few commits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ..store import Binding, BindingStore

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Batch:
    upserts: dict[tuple[str, str], Binding] = field(default_factory=dict)
    deletes: set[tuple[str, str]] = field(default_factory=set)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class LocationService:
    """In-memory bindings per address-of-record, written behind to a ``BindingStore``."""

    def __init__(
        self,
        store: BindingStore | None,
        wall: Callable[[], float],
        max_batch: int = 2000,
        max_aors: int = 1_000_000,
        replica: bool = False,
        owns: Callable[[str], bool] | None = None,
    ) -> None:
        self._store = store
        # With worker processes each address-of-record has one owner, the process its
        # REGISTERs go to: it alone writes the address's bindings (``replace``, and the deletes
        # of expired ones); the other processes take its changes with ``apply``. A replica owns
        # nothing and never writes.
        self._owns: Callable[[str], bool] | None = (lambda aor: False) if replica else owns
        self._replica = replica
        # Told (aor, bindings) of each change made here by ``replace`` (not of ``apply``).
        self.on_replace: Callable[[str, list[Binding]], None] | None = None
        self._wall = wall
        self._bindings: dict[str, list[Binding]] = {}
        self._batch = _Batch()
        self._max_batch = max_batch
        self._max_aors = max_aors
        self._wakeup: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._watchers: list[Callable[[str, list[Binding]], None]] = []

    # --- lifecycle ---
    async def load(self) -> int:
        """Read every unexpired binding from the store (server start)."""
        if self._store is None:
            return 0
        rows = await self._store.load_unexpired(self._wall())
        for row in rows:
            self._bindings.setdefault(row.aor, []).append(row)
        return len(rows)

    def start(self) -> None:
        if self._replica:
            return
        self._wakeup = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="location-writer")

    async def close(self) -> None:
        """Flush what is queued, then stop the writer."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._writer is not None:
            await self._writer
            self._writer = None

    # --- queries ---
    def lookup(self, aor: str) -> list[Binding]:
        """Unexpired bindings of ``aor``, highest q first (expired ones are dropped)."""
        bindings = self._bindings.get(aor)
        if not bindings:
            return []
        now = self._wall()
        live = [b for b in bindings if b.expires_at > now]
        if len(live) != len(bindings):
            for gone in bindings:
                if gone.expires_at <= now:
                    self._queue_delete(gone)
            self._set(aor, live)
        return sorted(live, key=lambda b: -b.q)

    @property
    def aor_count(self) -> int:
        return len(self._bindings)

    def binding_count(self) -> int:
        return sum(len(v) for v in self._bindings.values())

    def full(self, aor: str) -> bool:
        return aor not in self._bindings and len(self._bindings) >= self._max_aors

    def all_bindings(self) -> list[Binding]:
        """Every binding held (expired ones too, until a lookup or the sweep drops them)."""
        return [binding for bindings in self._bindings.values() for binding in bindings]

    def watch(self, watcher: Callable[[str, list[Binding]], None]) -> None:
        """Call ``watcher(aor, bindings)`` with the whole new set after every change of an AOR's
        bindings (a REGISTER, an unregistration, an expiry); it must be quick and not raise."""
        self._watchers.append(watcher)

    # --- changes ---
    def replace(
        self,
        aor: str,
        bindings: list[Binding],
        removed: list[Binding],
        changed: list[Binding] | None = None,
    ) -> None:
        """Make ``bindings`` the whole set for ``aor``. Only ``changed`` bindings (default: all
        of them) are written and ``removed`` ones deleted: an extension with many devices must
        not rewrite every binding when one of them refreshes."""
        for binding in removed:
            self._queue_delete(binding)
        for binding in bindings if changed is None else changed:
            key = (binding.aor, binding.contact_uri)
            self._batch.deletes.discard(key)
            self._batch.upserts[key] = binding
        self._set(aor, bindings)
        self._kick()
        if self.on_replace is not None:
            self.on_replace(aor, bindings)

    def apply(self, aor: str, bindings: list[Binding]) -> None:
        """Take the whole set of ``aor`` as another process made it (nothing is written)."""
        self._set(aor, bindings)

    def remove_expired(self) -> int:
        now = self._wall()
        count = 0
        for aor in list(self._bindings):
            before = len(self._bindings.get(aor, []))
            count += before - len(self.lookup(aor))
        if count:
            self._kick()
        log.debug("expired %d bindings at %.0f", count, now)
        return count

    async def committed(self) -> None:
        """Wait until every change made so far is in the store."""
        if self._store is None or (not self._batch.upserts and not self._batch.deletes):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._batch.waiters.append(future)
        self._kick()
        await future

    def _set(self, aor: str, bindings: list[Binding]) -> None:
        if bindings:
            self._bindings[aor] = bindings
        else:
            self._bindings.pop(aor, None)
        for watcher in self._watchers:
            watcher(aor, bindings)

    def _queue_delete(self, binding: Binding) -> None:
        if self._owns is not None and not self._owns(binding.aor):
            return  # its owner deletes it
        key = (binding.aor, binding.contact_uri)
        self._batch.upserts.pop(key, None)
        self._batch.deletes.add(key)

    def _kick(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def _write_loop(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            # Let the REGISTERs that arrive in this loop iteration join the batch.
            await asyncio.sleep(0)
            batch, self._batch = self._batch, _Batch()
            if batch.upserts or batch.deletes:
                try:
                    if self._store is not None:
                        await self._store.apply(list(batch.upserts.values()), list(batch.deletes))
                except Exception as exc:  # noqa: BLE001 - report to every waiter, keep serving
                    log.error("could not store %d binding changes: %s", len(batch.upserts), exc)
                    for waiter in batch.waiters:
                        if not waiter.done():
                            waiter.set_exception(exc)
                    continue
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_result(None)
            if self._closing and not self._batch.upserts and not self._batch.deletes:
                for waiter in self._batch.waiters:
                    if not waiter.done():
                        waiter.set_result(None)
                return
