"""Time as an injected object: the asyncio loop's clock in production, a virtual clock in tests.

Timers (RFC 3261 A–K, ring timeouts, registration expiry) are set through ``Clock.call_later``
so tests advance virtual time instead of sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any, Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds, for timers and intervals."""
        ...

    def wall(self) -> float:
        """Epoch seconds, for expiry times that are stored and for CDRs."""
        ...

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        ...


class LoopClock:
    """The running asyncio loop's clock."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        return self.loop.time()

    def wall(self) -> float:
        return time.time()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        return self.loop.call_later(delay, callback, *args)


class _VirtualTimer:
    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    """A clock that only moves when told to; ``advance`` fires due timers in order."""

    def __init__(self, start: float = 1000.0, wall_offset: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_offset
        self._queue: list[tuple[float, int, _VirtualTimer]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        timer = _VirtualTimer(self._now + max(0.0, delay), callback, args)
        heapq.heappush(self._queue, (timer.when, next(self._seq), timer))
        return timer

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        return self.call_later(0.0, callback, *args)

    def advance(self, seconds: float = 0.0, max_events: int = 1_000_000) -> int:
        """Move time forward, running every timer due by then (including ones they schedule).
        Returns how many callbacks ran."""
        target = self._now + seconds
        ran = 0
        while self._queue and self._queue[0][0] <= target and ran < max_events:
            when, _, timer = heapq.heappop(self._queue)
            if timer.cancelled:
                continue
            self._now = max(self._now, when)
            timer.callback(*timer.args)
            ran += 1
        self._now = max(self._now, target)
        return ran

    def run_until_idle(self, limit: float = 3600.0) -> int:
        """Run every pending timer up to ``limit`` seconds ahead."""
        return self.advance(limit)

    @property
    def pending(self) -> int:
        return sum(1 for _, _, t in self._queue if not t.cancelled)
