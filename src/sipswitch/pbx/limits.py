"""Per-extension call limits: concurrent calls and concurrent outgoing calls.

Calls are counted in *profiles* (one set of live calls per extension and direction), the single
counting primitive behind every limit: a call joins its caller's and callee's profiles when it
is admitted and leaves them exactly once when it ends, however it ends. A limit of ``None`` is
unlimited; ``max_calls = 0`` means the extension can neither make nor receive a call.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from ..store import Extension


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str


class CallLimits:
    def __init__(self) -> None:
        self._all: dict[str, set[Hashable]] = {}
        self._outgoing: dict[str, set[Hashable]] = {}
        self._members: dict[Hashable, list[tuple[dict[str, set[Hashable]], str]]] = {}

    def active(self, number: str) -> int:
        return len(self._all.get(number, ()))

    def outgoing(self, number: str) -> int:
        return len(self._outgoing.get(number, ()))

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
        members = self._members.setdefault(call, [])
        entry = (self._all, number)
        if entry not in members:
            self._all.setdefault(number, set()).add(call)
            members.append(entry)

    def leave(self, call: Hashable, number: str) -> None:
        """Stop counting ``call`` for ``number`` (a callee rung that did not answer); the
        caller's own count stays until the call ends."""
        members = self._members.get(call)
        if members is None or (self._outgoing, number) in members:
            return
        entry = (self._all, number)
        if entry in members:
            members.remove(entry)
            self._discard(self._all, number, call)

    def _discard(self, profile: dict[str, set[Hashable]], number: str, call: Hashable) -> None:
        calls = profile.get(number)
        if calls is not None:
            calls.discard(call)
            if not calls:
                del profile[number]

    def admit(
        self, call: Hashable, caller: Extension | None, callee: Extension | None
    ) -> Refusal | None:
        """Check both sides and, if both may, count the call for them."""
        refusal = (self.check_caller(caller) if caller else None) or (
            self.check_callee(callee) if callee else None
        )
        if refusal is not None:
            return refusal
        joined: list[tuple[dict[str, set[Hashable]], str]] = []
        if caller is not None:
            joined.append((self._all, caller.number))
            joined.append((self._outgoing, caller.number))
        if callee is not None and (caller is None or callee.number != caller.number):
            joined.append((self._all, callee.number))
        for profile, number in joined:
            profile.setdefault(number, set()).add(call)
        self._members.setdefault(call, []).extend(joined)
        return None

    def release(self, call: Hashable) -> None:
        """Leave every profile the call joined; a second release does nothing."""
        for profile, number in self._members.pop(call, ()):
            self._discard(profile, number, call)

    @property
    def live_calls(self) -> int:
        return len(self._members)
