"""Extensions as the call path sees them: a short-lived cache in front of the extension store.

The cache keeps REGISTER and INVITE handling off the database for known numbers; entries live a
few seconds, so `sipswitch ext ...` changes made by another process are seen quickly.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from ..store import Extension, ExtensionStore


class ExtensionDirectory:
    def __init__(
        self,
        store: ExtensionStore,
        clock: Callable[[], float],
        ttl: float = 5.0,
        max_entries: int = 200_000,
    ) -> None:
        self._store = store
        self._clock = clock
        self._ttl = ttl
        self._max = max_entries
        self._cache: OrderedDict[str, tuple[float, Extension | None]] = OrderedDict()

    def cached(self, number: str) -> tuple[bool, Extension | None]:
        """(hit, extension) without touching the database."""
        entry = self._cache.get(number)
        if entry is None or entry[0] < self._clock():
            return False, None
        return True, entry[1]

    async def get(self, number: str) -> Extension | None:
        hit, extension = self.cached(number)
        if hit:
            return extension
        extension = await self._store.get(number) if _plausible(number) else None
        self._cache[number] = (self._clock() + self._ttl, extension)
        self._cache.move_to_end(number)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return extension

    def forget(self, number: str) -> None:
        self._cache.pop(number, None)


def _plausible(number: str) -> bool:
    return 0 < len(number) <= 64
