"""Per-extension call limits: concurrent calls and concurrent outgoing calls.

Calls are counted in *profiles* (one set of live calls per extension and direction), the single
counting primitive behind every limit: a call joins its caller's and callee's profiles when it
is admitted and leaves them exactly once when it ends, however it ends. A limit of ``None`` is
unlimited; ``max_calls = 0`` means the extension can neither make nor receive a call.

The counts live under the keys ``all:NUMBER`` and ``out:NUMBER`` (a trunk's profile is a number
like ``trunk:NAME:in``): in this process, or, when several server processes share the calls, in
a ``SharedCounts`` table so that every limit holds machine-wide. Which call joined which profile
is always this process's own bookkeeping, so every join is undone exactly once; a check and the
joins that follow it are one step under the table's lock.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

from ..store import Extension
from .shared_counts import CountsFull, SharedCounts

log = logging.getLogger("sipswitch.limits")

ALL = "all:"
OUT = "out:"


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str


# A new key the shared table has no room for: the call is refused rather than left uncounted.
TABLE_FULL = Refusal(503, "Call limit table full")


class _Counts(Protocol):
    def locked(self) -> AbstractContextManager[object]: ...

    def total(self, key: str) -> int: ...

    def add(self, key: str, delta: int) -> int: ...


class _LocalCounts:
    """The counts of a server that runs alone: a dict, whose lock is no lock."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = nullcontext()

    def locked(self) -> AbstractContextManager[object]:
        return self._lock

    def total(self, key: str) -> int:
        return self._counts.get(key, 0)

    def add(self, key: str, delta: int) -> int:
        value = self._counts.get(key, 0) + delta
        if value:
            self._counts[key] = value
        else:
            self._counts.pop(key, None)
        return value


class CallLimits:
    """The live calls of every profile; ``counts``: the table shared with the other server
    processes (None: this process alone)."""

    def __init__(self, counts: SharedCounts | None = None) -> None:
        self.counts = counts
        self._counts: _Counts = counts if counts is not None else _LocalCounts()
        self._members: dict[Hashable, list[str]] = {}  # the keys each call joined

    def active(self, number: str) -> int:
        return self._counts.total(ALL + number)

    def outgoing(self, number: str) -> int:
        return self._counts.total(OUT + number)

    def check_caller(self, extension: Extension) -> Refusal | None:
        """403 when the caller may not place one more call (the reason names the limit)."""
        number = extension.number
        if extension.max_calls is not None and self.active(number) >= extension.max_calls:
            return Refusal(403, f"Max concurrent calls reached ({extension.max_calls})")
        limit = extension.max_outgoing_calls
        if limit is not None and self.outgoing(number) >= limit:
            return Refusal(403, f"Max outgoing calls reached ({limit})")
        return None

    def check_callee(self, extension: Extension) -> Refusal | None:
        """486 when the callee is at its limit, so busy handling applies."""
        limit = extension.max_calls
        if limit is not None and self.active(extension.number) >= limit:
            return Refusal(486, "Busy Here")
        return None

    def join(self, call: Hashable, number: str) -> None:
        """Count ``call`` as one of ``number``'s calls (a callee being rung)."""
        key = ALL + number
        members = self._members.setdefault(call, [])
        if key in members:
            return
        try:
            with self._counts.locked():
                self._counts.add(key, 1)
        except CountsFull as exc:
            log.error("a call to %s is not counted: %s", number, exc)
            return
        members.append(key)

    def join_within(self, call: Hashable, number: str, limit: int | None) -> bool:
        """Count ``call`` as one of ``number``'s calls only while they are fewer than ``limit``
        (None: no limit); False when they are not. The check and the join are one step, so
        processes sharing the counts cannot both take the last place. ``CountsFull`` when the
        shared table has no room for ``number`` (answer ``TABLE_FULL``)."""
        key = ALL + number
        counts = self._counts
        with counts.locked():
            if limit is not None and counts.total(key) >= limit:
                return False
            members = self._members.get(call)
            if members is None or key not in members:
                counts.add(key, 1)
                self._members.setdefault(call, []).append(key)
        return True

    def join_or_refuse(
        self, call: Hashable, number: str, limit: int | None, reason: str
    ) -> Refusal | None:
        """``join_within`` answered as a refusal: 503 ``reason`` at the limit, ``TABLE_FULL``
        when the shared table has no room; None when ``call`` joined."""
        try:
            if self.join_within(call, number, limit):
                return None
        except CountsFull as exc:
            log.error("call refused: %s", exc)
            return TABLE_FULL
        return Refusal(503, reason)

    def leave(self, call: Hashable, number: str) -> None:
        """Stop counting ``call`` for ``number`` (a callee rung that did not answer); the
        caller's own count stays until the call ends."""
        members = self._members.get(call)
        if members is None or OUT + number in members:
            return
        key = ALL + number
        if key in members:
            members.remove(key)
            with self._counts.locked():
                self._counts.add(key, -1)

    def admit(
        self, call: Hashable, caller: Extension | None, callee: Extension | None
    ) -> Refusal | None:
        """Check both sides and, if both may, count the call for them (one step)."""
        keys: list[str] = []
        if caller is not None:
            keys += (ALL + caller.number, OUT + caller.number)
        if callee is not None and (caller is None or callee.number != caller.number):
            keys.append(ALL + callee.number)
        members = self._members.get(call)
        new = keys if members is None else [key for key in keys if key not in members]
        counts = self._counts
        with counts.locked():
            refusal = (self.check_caller(caller) if caller is not None else None) or (
                self.check_callee(callee) if callee is not None else None
            )
            if refusal is not None:
                return refusal
            done = 0
            try:
                for key in new:
                    counts.add(key, 1)
                    done += 1
            except CountsFull as exc:
                for key in new[:done]:
                    counts.add(key, -1)
                log.error("call refused: %s", exc)
                return TABLE_FULL
        self._members.setdefault(call, []).extend(new)
        return None

    def release(self, call: Hashable) -> None:
        """Leave every profile the call joined; a second release does nothing."""
        keys = self._members.pop(call, None)
        if keys:
            with self._counts.locked():
                for key in keys:
                    self._counts.add(key, -1)

    @property
    def live_calls(self) -> int:
        return len(self._members)
