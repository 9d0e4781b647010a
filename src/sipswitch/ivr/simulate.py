"""A scripted :class:`CallControl` that needs no phone: the caller's keys and the callees'
outcomes are given in advance, prompts are printed instead of played, and time is virtual.
``sipswitch ivr simulate`` and the engine tests run flows with it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sipswitch.ivr.engine import DEFAULT_STEP_BUDGET, CallResult, FlowEngine, TraceEvent
from sipswitch.ivr.interface import CallerHungUp, CallOutcome
from sipswitch.ivr.model import Flow

# A --digits entry that stands for "the caller presses nothing".
SILENCE = ("", "-")


@dataclass(frozen=True)
class CallRecord:
    """One thing the simulated call was asked to do (for tests and the printed transcript)."""

    at: float  # virtual seconds since the call started
    what: str
    args: tuple[object, ...]


class ScriptedCall:
    """A call whose caller presses the keys in ``digits`` (one entry per collection: each
    attempt of a getdtmf takes the next entry) and whose ``callto`` attempts end with the
    ``outcomes`` in order (``answered`` once they run out).

    An entry ``""`` or ``"-"`` is silence (a timeout). With ``barge_in`` the caller starts
    typing during the prompts, so an interruptible prompt is cut short by the first key.
    Once the entries run out the caller stays silent, or with ``hang_up_when_done`` hangs up.
    Time advances only by the timeouts, waits, recordings and rings the flow meets."""

    def __init__(
        self,
        digits: Iterable[str] = (),
        outcomes: Iterable[CallOutcome | str] = (),
        *,
        caller: str = "100",
        called: str = "800",
        start: datetime | None = None,
        barge_in: bool = False,
        hang_up_when_done: bool = False,
        output: Callable[[str], None] | None = None,
    ) -> None:
        self._caller = caller
        self._called = called
        self.digits = list(digits)
        self.outcomes = [CallOutcome(o) if isinstance(o, str) else o for o in outcomes]
        self.start = start or datetime(2026, 1, 5, 10, 0, 0)
        self.barge_in = barge_in
        self.hang_up_when_done = hang_up_when_done
        self.output = output
        self.elapsed = 0.0
        self.answered = False
        self.hung_up = False
        self.log: list[CallRecord] = []
        self._pending: str | None = None  # keys typed during a prompt, after the first

    @property
    def caller(self) -> str:
        return self._caller

    @property
    def called(self) -> str:
        return self._called

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.elapsed)

    def say(self, text: str) -> None:
        if self.output is not None:
            self.output(f"[{self.now():%H:%M:%S}]     {text}")

    def _record(self, what: str, *args: object) -> None:
        if self.hung_up:
            raise CallerHungUp()
        self.log.append(CallRecord(self.elapsed, what, args))

    def calls(self, what: str) -> list[tuple[object, ...]]:
        """The arguments of every call of one method, in order."""
        return [record.args for record in self.log if record.what == what]

    def _next_entry(self) -> str:
        if not self.digits and self.hang_up_when_done:
            self.say("the caller hangs up")
            self.hung_up = True
            raise CallerHungUp()
        entry = self.digits.pop(0) if self.digits else ""
        return "" if entry in SILENCE else entry

    # -- CallControl

    async def answer(self) -> None:
        self._record("answer")
        self.answered = True

    async def play(self, prompts: list[str], interruptible: bool) -> str | None:
        self._record("play", tuple(prompts), interruptible)
        if interruptible and self.barge_in:
            entry = self._next_entry()
            if entry:
                self._pending = entry[1:]
                self.say(f"the caller presses {entry[0]} during the prompt")
                return entry[0]
        return None

    async def collect_digits(
        self,
        max_digits: int,
        first_timeout: float,
        inter_digit_timeout: float,
        terminator: str | None,
    ) -> str:
        self._record("collect_digits", max_digits, first_timeout, inter_digit_timeout, terminator)
        if self._pending is not None:
            entry, self._pending = self._pending, None
        else:
            entry = self._next_entry()
            if not entry:
                self.elapsed += first_timeout
                self.say(f"the caller presses nothing for {first_timeout:g} s")
                return ""
        keys = ""
        used = 0
        for key in entry:
            used += 1
            if terminator is not None and key == terminator:
                break
            keys += key
            if len(keys) == max_digits:
                break
        else:
            # The caller stopped typing: the collection ends after the inter-digit timeout.
            self.elapsed += inter_digit_timeout
        self.say(f"the caller presses {entry[:used] or 'nothing more'}")
        return keys

    async def callto(
        self, destination: str, ring_timeout: float, caller_id: str | None
    ) -> CallOutcome:
        self._record("callto", destination, ring_timeout, caller_id)
        outcome = self.outcomes.pop(0) if self.outcomes else CallOutcome.ANSWERED
        if outcome is CallOutcome.NO_ANSWER:
            self.elapsed += ring_timeout
        return outcome

    async def record(
        self, path: str, max_seconds: float, terminator: str | None, beep: bool
    ) -> str:
        self._record("record", path, max_seconds, terminator, beep)
        self.elapsed += max_seconds
        self.say(f"the caller speaks for {max_seconds:g} s")
        return path

    async def voicemail(self, mailbox: str) -> None:
        self._record("voicemail", mailbox)
        self.say(f"the caller leaves a message for {mailbox}")

    async def wait(self, seconds: float) -> None:
        self._record("wait", seconds)
        self.elapsed += seconds

    async def hangup(self) -> None:
        if not self.hung_up:
            self.log.append(CallRecord(self.elapsed, "hangup", ()))
            self.hung_up = True


async def simulate(
    flow: Flow,
    call: ScriptedCall,
    *,
    step_budget: int = DEFAULT_STEP_BUDGET,
    ring_timeout: float = 30.0,
    output: Callable[[str], None] = print,
) -> CallResult:
    """Run ``flow`` on ``call``, printing every step and what the caller met."""
    call.output = output

    def tracer(event: TraceEvent) -> None:
        if event.kind == "action":
            output(f"[{call.now():%H:%M:%S}] step {event.step}: {event.action} ({event.method})")
        elif event.kind == "end":
            output(f"[{call.now():%H:%M:%S}] {event.message}")
        else:
            output(f"[{call.now():%H:%M:%S}]   {event.message}")

    engine = FlowEngine(step_budget=step_budget, ring_timeout=ring_timeout)
    return await engine.run(flow, call, tracer)
