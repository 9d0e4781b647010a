"""The flow engine: runs a loaded IVR-XML :class:`Flow` for one call over a
:class:`CallControl`, step by step, within a step budget, reporting each step to a tracer."""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from sipswitch.ivr.errors import Position
from sipswitch.ivr.interface import CallControl, CallerHungUp, CallOutcome
from sipswitch.ivr.model import (
    DTMF_KEYS,
    FAILURE,
    INVALID,
    MAX_VALUE_LENGTH,
    TIMEOUT,
    Action,
    CallToAction,
    CheckTimeAction,
    Flow,
    GetDtmfAction,
    GotoAction,
    HangupAction,
    PlayAction,
    RecordAction,
    SetVarAction,
    VoicemailAction,
    WaitAction,
)

DEFAULT_STEP_BUDGET = 1000
DEFAULT_RING_TIMEOUT = 30.0
_DESTINATION = re.compile(r"[A-Za-z0-9+*#._@:-]{1,128}")
_FILE_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

log = logging.getLogger("sipswitch.ivr")


class EndReason(enum.Enum):
    """Why the IVR ended for a call."""

    HANGUP = "hangup"  # a hangup action
    END_OF_FLOW = "end-of-flow"  # past the last action
    BRIDGED = "bridged"  # a callto was answered, and the bridged call has ended
    CALLTO_FAILED = "callto-failed"  # a callto failed with no matching monitor-event
    VOICEMAIL = "voicemail"  # a voicemail action took the message
    CALLER_HUNG_UP = "caller-hung-up"
    STEP_BUDGET = "step-budget"  # the per-call step budget ran out (a runaway loop)
    ERROR = "error"  # the call control failed unexpectedly


@dataclass(frozen=True)
class TraceEvent:
    """One thing the engine did. ``kind``: "action" when a step starts, "event" for what
    happened inside it, "end" when the flow ends."""

    step: int
    action: str
    method: str
    kind: str
    message: str
    position: Position | None = None

    def __str__(self) -> str:
        if self.kind == "action":
            return f"step {self.step}: {self.action} ({self.method})"
        return self.message


Tracer = Callable[[TraceEvent], None]


@dataclass(frozen=True)
class CallResult:
    reason: EndReason
    steps: int
    action: str | None
    detail: str
    variables: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Stop:
    reason: EndReason
    detail: str


_Next = Action | None | _Stop


class FlowEngine:
    """Runs flows. One engine serves every call; each :meth:`run` is independent."""

    def __init__(
        self,
        *,
        step_budget: int = DEFAULT_STEP_BUDGET,
        ring_timeout: float = DEFAULT_RING_TIMEOUT,
        tracer: Tracer | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if step_budget < 1:
            raise ValueError("the step budget must be at least 1")
        self.step_budget = step_budget
        self.ring_timeout = ring_timeout
        self.tracer = tracer
        self.log = logger or log

    async def run(self, flow: Flow, call: CallControl, tracer: Tracer | None = None) -> CallResult:
        """Run ``flow`` for ``call`` until it ends; the call is hung up at the end unless the
        caller already left. Never raises for a failing call (cancellation passes through)."""
        return await _Run(self, flow, call, tracer or self.tracer).run()


async def run_flow(
    flow: Flow,
    call: CallControl,
    *,
    step_budget: int = DEFAULT_STEP_BUDGET,
    ring_timeout: float = DEFAULT_RING_TIMEOUT,
    tracer: Tracer | None = None,
) -> CallResult:
    """Run one flow for one call (a :class:`FlowEngine` with these settings)."""
    engine = FlowEngine(step_budget=step_budget, ring_timeout=ring_timeout)
    return await engine.run(flow, call, tracer)


class _Run:
    def __init__(
        self, engine: FlowEngine, flow: Flow, call: CallControl, tracer: Tracer | None
    ) -> None:
        self.engine = engine
        self.flow = flow
        self.call = call
        self.tracer = tracer
        self.steps = 0
        self.answered = False
        self.current: Action | None = None
        self.variables: dict[str, str] = {
            "caller": _clip(call.caller),
            "called": _clip(call.called),
            "dtmf": "",
        }

    # -- reporting

    def trace(self, kind: str, message: str, position: Position | None = None) -> None:
        if self.tracer is None:
            return
        action = self.current
        self.tracer(
            TraceEvent(
                self.steps,
                action.name if action else "",
                action.method if action else "",
                kind,
                message,
                position if position is not None else (action.position if action else None),
            )
        )

    def end(self, reason: EndReason, detail: str) -> CallResult:
        self.trace("end", f"call ended: {detail}")
        return CallResult(
            reason,
            self.steps,
            self.current.name if self.current else None,
            detail,
            dict(self.variables),
        )

    # -- the loop

    async def run(self) -> CallResult:
        try:
            stop = await self.loop()
        except CallerHungUp:
            return self.end(EndReason.CALLER_HUNG_UP, "the caller hung up")
        except Exception as exc:
            where = self.current.position if self.current else self.flow.file
            self.engine.log.exception(
                "%s: call from %s to %s failed in action %r",
                where,
                self.variables["caller"],
                self.variables["called"],
                self.current.name if self.current else None,
            )
            stop = _Stop(EndReason.ERROR, f"error: {exc.__class__.__name__}: {exc}")
        try:
            await self.call.hangup()
        except CallerHungUp:
            pass
        except Exception:
            self.engine.log.exception("%s: hanging up failed", self.flow.file)
        return self.end(stop.reason, stop.detail)

    async def loop(self) -> _Stop:
        action: Action | None = self.flow.entry
        while True:
            if action is None:
                return _Stop(EndReason.END_OF_FLOW, "past the last action: hang up")
            if self.steps >= self.engine.step_budget:
                self.engine.log.warning(
                    "%s: call from %s to %s used its step budget of %d steps at action %r; "
                    "hanging up (does the flow loop?)",
                    action.position,
                    self.variables["caller"],
                    self.variables["called"],
                    self.engine.step_budget,
                    action.name,
                )
                return _Stop(
                    EndReason.STEP_BUDGET,
                    f"step budget of {self.engine.step_budget} steps used up at "
                    f"{action.name!r}: hang up",
                )
            self.steps += 1
            self.current = action
            self.trace("action", f"{action.name} ({action.method})")
            if action.needs_media and not self.answered:
                await self.call.answer()
                self.answered = True
                self.trace("event", "answer the call")
            following = await self.step(action)
            if isinstance(following, _Stop):
                return following
            action = following

    async def step(self, action: Action) -> _Next:
        if isinstance(action, PlayAction):
            return await self.play(action)
        if isinstance(action, GetDtmfAction):
            return await self.getdtmf(action)
        if isinstance(action, CallToAction):
            return await self.callto(action)
        if isinstance(action, GotoAction):
            return self.jump(action.nextaction, "go to")
        if isinstance(action, HangupAction):
            return _Stop(EndReason.HANGUP, f"hangup at {action.name!r}")
        if isinstance(action, RecordAction):
            return await self.record(action)
        if isinstance(action, VoicemailAction):
            return await self.voicemail(action)
        if isinstance(action, SetVarAction):
            return self.setvar(action)
        if isinstance(action, CheckTimeAction):
            return self.checktime(action)
        if isinstance(action, WaitAction):
            await self.call.wait(action.seconds)
            self.trace("event", f"waited {action.seconds:g} s")
            return self.default(action)
        raise TypeError(f"no engine support for {action.method!r}")  # pragma: no cover

    def default(self, action: Action) -> _Next:
        return self.flow.default_next(action)

    def jump(self, name: str | None, why: str) -> Action | None:
        """The action called ``name``, reporting ``why`` the flow goes there."""
        target = self.flow.action(name) if name is not None else None
        if target is not None:
            self.trace("event", f"{why} -> {target.name}")
        return target

    def route(self, action: Action, detection: str, catch_all: str | None = None) -> Action | None:
        """The monitor-event for ``detection`` (or the catch-all one), or None."""
        for name in (detection, catch_all):
            if name is None:
                continue
            route = action.events.get(name)
            if route is not None:
                return self.jump(route.nextaction, f"monitor-event {name}")
        return None

    # -- methods

    async def play(self, action: PlayAction) -> _Next:
        for _ in range(action.repeat):
            self.trace("event", "play " + " ".join(action.voices))
            await self.call.play(list(action.voices), False)
        return self.default(action)

    async def getdtmf(self, action: GetDtmfAction) -> _Next:
        attempts = action.retries + 1
        detection = TIMEOUT
        for attempt in range(1, attempts + 1):
            digits = await self.collect(action)
            self.assign("dtmf", digits)
            if action.var != "dtmf":
                self.assign(action.var, digits)
            tries = f"attempt {attempt} of {attempts}"
            if not digits:
                detection = TIMEOUT
                self.trace("event", f"no key before the timeout ({tries})")
                continue
            if not action.matches:
                self.trace("event", f"digits {digits!r}")
                return self.default(action)
            for match in action.matches:
                if match.matches(digits):
                    return self.jump(match.nextaction, f"digits {digits!r} match {match}")
            detection = INVALID
            self.trace("event", f"digits {digits!r} match nothing ({tries})")
        routed = self.route(action, detection)
        if routed is not None:
            return routed
        self.trace("event", f"{detection} with no monitor-event: default path")
        return self.default(action)

    async def collect(self, action: GetDtmfAction) -> str:
        first: str | None = None
        if action.voices:
            self.trace("event", "play " + " ".join(action.voices) + " (a key interrupts)")
            first = await self.call.play(list(action.voices), True)
        if first:
            key = _keys(first, 1)
            if not key or key == action.terminator:
                return ""
            if action.max_digits == 1:
                return key
            rest = await self.call.collect_digits(
                action.max_digits - 1,
                action.inter_digit_timeout,
                action.inter_digit_timeout,
                action.terminator,
            )
            return _keys(key + rest, action.max_digits)
        keys = await self.call.collect_digits(
            action.max_digits,
            action.first_timeout,
            action.inter_digit_timeout,
            action.terminator,
        )
        return _keys(keys, action.max_digits)

    async def callto(self, action: CallToAction) -> _Next:
        destination = action.destination.expand(self.variables).strip()
        ring_timeout = action.ring_timeout or self.engine.ring_timeout
        caller_id = action.caller_id.expand(self.variables).strip() if action.caller_id else None
        if not _DESTINATION.fullmatch(destination):
            self.trace("event", f"callto {destination!r}: not a number that can be called")
            outcome = CallOutcome.UNREACHABLE
        else:
            shown = f"callto {destination} (ring up to {ring_timeout:g} s"
            shown += f", caller id {caller_id})" if caller_id else ")"
            self.trace("event", shown)
            outcome = await self.call.callto(destination, ring_timeout, caller_id or None)
        if outcome is CallOutcome.ANSWERED:
            self.trace("event", f"callto {destination}: answered; bridged until either hangs up")
            return _Stop(EndReason.BRIDGED, f"the bridged call to {destination} ended")
        self.trace("event", f"callto {destination}: {outcome.value}")
        routed = self.route(action, outcome.value, FAILURE)
        if routed is not None:
            return routed
        return _Stop(
            EndReason.CALLTO_FAILED,
            f"callto {destination} ended with {outcome.value} and no monitor-event for it",
        )

    async def record(self, action: RecordAction) -> _Next:
        if action.file is not None:
            name = action.file.expand(self.variables)
        else:
            name = f"{self.variables['caller']}-{self.call.now():%Y%m%d-%H%M%S}"
        path = _safe_file_name(name)
        self.trace("event", f"record {path} (up to {action.max_seconds:g} s)")
        written = await self.call.record(path, action.max_seconds, action.terminator, action.beep)
        self.assign(action.var, written)
        return self.default(action)

    async def voicemail(self, action: VoicemailAction) -> _Next:
        mailbox = action.mailbox.expand(self.variables).strip()
        if not _DESTINATION.fullmatch(mailbox):
            self.trace("event", f"voicemail {mailbox!r}: not a mailbox")
            return _Stop(EndReason.HANGUP, f"no mailbox {mailbox!r}: hang up")
        self.trace("event", f"voicemail for {mailbox}")
        await self.call.voicemail(mailbox)
        return _Stop(EndReason.VOICEMAIL, f"voicemail left for {mailbox}")

    def setvar(self, action: SetVarAction) -> _Next:
        for name, template in action.assignments:
            self.assign(name, template.expand(self.variables))
            self.trace("event", f"set {name} = {self.variables[name]!r}")
        return self.default(action)

    def checktime(self, action: CheckTimeAction) -> _Next:
        now = self.call.now()
        for period in action.periods:
            if period.contains(now):
                return self.jump(period.nextaction, f"{now:%a %H:%M} is in a period")
        self.trace("event", f"{now:%a %H:%M} is in no period")
        return self.default(action)

    def assign(self, name: str, value: str) -> None:
        self.variables[name] = _clip(value)


def _clip(value: str) -> str:
    return value[:MAX_VALUE_LENGTH]


def _keys(text: str, limit: int) -> str:
    """Only DTMF keys, at most ``limit`` of them (whatever a call control returned)."""
    return "".join(ch for ch in text.upper() if ch in DTMF_KEYS)[:limit]


def _safe_file_name(name: str) -> str:
    """A recording name that stays inside the recordings folder, whatever variables held."""
    stem = name.strip()
    if stem.lower().endswith(".wav"):
        stem = stem[:-4]
    stem = _FILE_UNSAFE.sub("_", stem).lstrip(".")[:100] or "recording"
    return f"{stem}.wav"
