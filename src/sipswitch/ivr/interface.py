"""What the IVR engine needs from a call: the abstract :class:`CallControl` it runs a flow over,
the outcomes of ``callto``, and the mapping from a SIP final response to such an outcome.

The server implements CallControl with real SIP legs and RTP media; the simulator and the tests
implement it with scripted input, so flows are tested without sockets.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Protocol


class CallOutcome(enum.Enum):
    """How a ``callto`` ended; every value but ANSWERED is a ``<monitor-event>`` detection."""

    ANSWERED = "answered"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    UNREACHABLE = "unreachable"
    REJECT = "reject"
    FAILURE = "failure"


class CallerHungUp(Exception):
    """Raised by any CallControl method once the caller has left; the flow stops at once."""


class CallControl(Protocol):
    """One caller's call as the flow sees it. Every method may raise CallerHungUp."""

    @property
    def caller(self) -> str:
        """The caller's number (user part of From), for ``${caller}``."""
        ...

    @property
    def called(self) -> str:
        """The number the caller dialled (the IVR's number), for ``${called}``."""
        ...

    async def answer(self) -> None:
        """Answer the call (200 OK with media); called once, before the first prompt."""
        ...

    async def play(self, prompts: list[str], interruptible: bool) -> str | None:
        """Play the prompts (names in the voice folder, without ``.wav``) in order.

        With ``interruptible``, a key press stops the playback and is returned (it is the
        first key of the input that follows); otherwise keys pressed meanwhile are dropped."""
        ...

    async def collect_digits(
        self,
        max_digits: int,
        first_timeout: float,
        inter_digit_timeout: float,
        terminator: str | None,
    ) -> str:
        """Collect up to ``max_digits`` keys. Returns early on the terminator (not included),
        after ``inter_digit_timeout`` seconds without a key, and with ``""`` when no key came
        within ``first_timeout`` seconds."""
        ...

    async def callto(
        self, destination: str, ring_timeout: float, caller_id: str | None
    ) -> CallOutcome:
        """Call ``destination`` through the call model. When answered, the caller is bridged
        to it and this returns ANSWERED once the bridged call has ended; otherwise it returns
        the failure (see :func:`outcome_of_response`)."""
        ...

    async def record(
        self, path: str, max_seconds: float, terminator: str | None, beep: bool
    ) -> str:
        """Record the caller into ``path`` (a relative file name under the data directory's
        ``recordings/``) until the terminator key, silence or ``max_seconds``; returns the
        name of the file written."""
        ...

    async def voicemail(self, mailbox: str) -> None:
        """Play the mailbox's greeting and record a message for that extension."""
        ...

    async def wait(self, seconds: float) -> None:
        """Keep the line open (silence) for ``seconds``."""
        ...

    async def hangup(self) -> None:
        """End the call; harmless when it has already ended."""
        ...

    def now(self) -> datetime:
        """The server's local time, for ``checktime``."""
        ...


def outcome_of_response(status: int, *, rang: bool) -> CallOutcome:
    """The ``callto`` outcome for the final SIP response of the outgoing leg.

    ``rang``: a 180/183 was received before it. The table of the IVR-XML spec:
    486/600 busy; 408/480 after ringing no-answer; 404, and 480/503 without ringing,
    unreachable; 603/403 reject; anything else failure. A 408 without ringing is a request
    that timed out before the callee said anything (Timer B): the transport-failure case,
    unreachable. A ring timeout of our own is ``NO_ANSWER``, a transport failure
    ``UNREACHABLE`` and a callee at its call limit ``BUSY``: those the caller of this
    function knows without a response."""
    if 200 <= status < 300:
        return CallOutcome.ANSWERED
    if status in (486, 600):
        return CallOutcome.BUSY
    if status in (408, 480) and rang:
        return CallOutcome.NO_ANSWER
    if status == 404 or (status in (408, 480, 503) and not rang):
        return CallOutcome.UNREACHABLE
    if status in (603, 403):
        return CallOutcome.REJECT
    return CallOutcome.FAILURE
