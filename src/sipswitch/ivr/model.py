"""The validated flow model of an IVR-XML script: actions, events, variables, digit patterns and
time periods. Pure data and pure functions; the loader builds it, the engine runs it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar

from sipswitch.ivr.errors import Position

# Detections (the `detection` attribute of <monitor-event>) and the methods that raise them.
BUSY = "busy"
NO_ANSWER = "no-answer"
UNREACHABLE = "unreachable"
REJECT = "reject"
FAILURE = "failure"
TIMEOUT = "timeout"
INVALID = "invalid"
CALLTO_DETECTIONS = (BUSY, NO_ANSWER, UNREACHABLE, REJECT, FAILURE)
GETDTMF_DETECTIONS = (TIMEOUT, INVALID)
DETECTIONS = CALLTO_DETECTIONS + GETDTMF_DETECTIONS

# Keys a caller can press.
DTMF_KEYS = frozenset("0123456789*#ABCD")
# Variables every flow has; a script cannot assign the caller's or the called number.
BUILTIN_VARIABLES = ("dtmf", "caller", "called")
READ_ONLY_VARIABLES = frozenset({"caller", "called"})
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
# A variable never grows past this many characters (a setvar loop could double it each round).
MAX_VALUE_LENGTH = 1024


# ---------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class Template:
    """A value that may use ``${name}`` variables, parsed once at load time."""

    parts: tuple[str | Variable, ...]

    @classmethod
    def parse(cls, text: str) -> Template:
        """Split ``text`` into literal parts and variables; ValueError names a bad reference."""
        parts: list[str | Variable] = []
        pos = 0
        while True:
            start = text.find("${", pos)
            if start < 0:
                break
            end = text.find("}", start + 2)
            if end < 0:
                raise ValueError(f"'${{' without a closing '}}' in {text!r}")
            name = text[start + 2 : end]
            if not VARIABLE_NAME.fullmatch(name):
                raise ValueError(f"'${{{name}}}' is not a variable name")
            if start > pos:
                parts.append(text[pos:start])
            parts.append(Variable(name))
            pos = end + 1
        if pos < len(text):
            parts.append(text[pos:])
        return cls(tuple(parts))

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(part.name for part in self.parts if isinstance(part, Variable))

    @property
    def is_constant(self) -> bool:
        return not self.variables

    def expand(self, values: Mapping[str, str]) -> str:
        """The text with every variable replaced by its value (unset ones are empty)."""
        text = "".join(
            part if isinstance(part, str) else values.get(part.name, "") for part in self.parts
        )
        return text[:MAX_VALUE_LENGTH]

    def __str__(self) -> str:
        return "".join(
            part if isinstance(part, str) else f"${{{part.name}}}" for part in self.parts
        )


@dataclass(frozen=True)
class Variable:
    name: str


# ---------------------------------------------------------------------------- digit matching


_PATTERN_CHARS = frozenset("0123456789*#ABCDXx.")


@dataclass(frozen=True)
class DigitMatch:
    """``<match digits="1">`` (exact) or ``<match pattern="1XX">`` (X: a digit, ``.``: digits)."""

    nextaction: str
    position: Position
    digits: str | None = None
    pattern: str | None = None
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def exact(cls, digits: str, nextaction: str, position: Position) -> DigitMatch:
        if not digits or any(ch not in DTMF_KEYS for ch in digits):
            raise ValueError(f"digits={digits!r}: use the keys 0-9, *, # and A-D")
        return cls(nextaction, position, digits=digits)

    @classmethod
    def of_pattern(cls, pattern: str, nextaction: str, position: Position) -> DigitMatch:
        if not pattern or any(ch not in _PATTERN_CHARS for ch in pattern):
            raise ValueError(
                f"pattern={pattern!r}: use the keys 0-9, *, #, A-D, X (any digit) "
                "and . (any digits)"
            )
        regex = "".join(
            "[0-9]" if ch in "Xx" else "[0-9]+" if ch == "." else re.escape(ch) for ch in pattern
        )
        return cls(nextaction, position, pattern=pattern, _regex=re.compile(regex))

    @property
    def min_length(self) -> int:
        """The fewest keys this can match; more than ``<maxdigits>`` can never match."""
        return len(self.digits if self.digits is not None else self.pattern or "")

    def matches(self, digits: str) -> bool:
        if self.digits is not None:
            return digits == self.digits
        return self._regex is not None and self._regex.fullmatch(digits) is not None

    def __str__(self) -> str:
        if self.digits is not None:
            return f'digits="{self.digits}"'
        return f'pattern="{self.pattern}"'


# ---------------------------------------------------------------------------- time periods


DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_CLOCK = re.compile(r"([0-9]{1,2}):([0-9]{2})")


def _day(text: str) -> int:
    word = text.strip().lower()
    for names in (DAY_NAMES, _FULL_DAY_NAMES):
        if word in names:
            return names.index(word)
    raise ValueError(f"{text.strip()!r} is not a day (mon, tue, wed, thu, fri, sat, sun)")


def parse_days(text: str) -> frozenset[int]:
    """``mon-fri``, ``sat,sun``, ``fri-mon`` (a range may wrap past Sunday): weekday numbers."""
    days: set[int] = set()
    for item in text.split(","):
        first, dash, last = item.partition("-")
        if not first.strip():
            raise ValueError(f"days={text!r}: an empty day")
        start = _day(first)
        end = _day(last) if dash else start
        day = start
        days.add(day)
        while day != end:
            day = (day + 1) % 7
            days.add(day)
    return frozenset(days)


def _minutes(text: str, *, end: bool) -> int:
    match = _CLOCK.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text.strip()!r} is not a time (HH:MM)")
    hours, minutes = int(match.group(1)), int(match.group(2))
    if minutes > 59 or hours > 24 or (hours == 24 and (minutes or not end)):
        raise ValueError(f"{text.strip()!r} is not a time of day")
    return hours * 60 + minutes


def parse_time_ranges(text: str) -> tuple[tuple[int, int], ...]:
    """``09:00-18:00``, ``22:00-06:00`` (crosses midnight), several separated by commas.

    Minutes since midnight; the start is included, the end is not."""
    ranges: list[tuple[int, int]] = []
    for item in text.split(","):
        first, dash, last = item.partition("-")
        if not dash:
            raise ValueError(f"time={text!r}: expected HH:MM-HH:MM")
        start, stop = _minutes(first, end=False), _minutes(last, end=True)
        if start == stop:
            raise ValueError(f"time={item.strip()!r}: the range is empty")
        ranges.append((start, stop))
    return tuple(ranges)


@dataclass(frozen=True)
class Period:
    """One ``<period days time nextaction>``; no days means every day, no time the whole day.

    A range that crosses midnight belongs to the day it starts on: ``fri 22:00-06:00``
    includes Saturday 02:00 but not Friday 02:00."""

    nextaction: str
    position: Position
    days: frozenset[int] = frozenset(range(7))
    times: tuple[tuple[int, int], ...] = ()

    def contains(self, moment: datetime) -> bool:
        day = moment.weekday()
        if not self.times:
            return day in self.days
        minute = moment.hour * 60 + moment.minute
        yesterday = (day - 1) % 7
        for start, stop in self.times:
            if start < stop:
                if start <= minute < stop and day in self.days:
                    return True
            else:
                if minute >= start and day in self.days:
                    return True
                if minute < stop and yesterday in self.days:
                    return True
        return False


# ---------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class EventRoute:
    """``<monitor-event detection nextaction>``: where an outcome continues the flow."""

    detection: str
    nextaction: str
    position: Position


@dataclass(frozen=True, kw_only=True)
class Action:
    """What every action has. ``nextaction`` overrides the default path where one exists."""

    method: ClassVar[str] = ""
    # The caller is answered before this action runs (it plays or listens).
    needs_media: ClassVar[bool] = False
    # It can run without waiting for the caller or for time to pass (loop detection).
    instant: ClassVar[bool] = False

    name: str
    position: Position
    events: Mapping[str, EventRoute] = field(default_factory=dict)
    nextaction: str | None = None

    def targets(self) -> list[tuple[str, Position]]:
        """Every action name this one may jump to explicitly, with where it is written."""
        found = [(route.nextaction, route.position) for route in self.events.values()]
        if self.nextaction is not None:
            found.append((self.nextaction, self.position))
        return found


@dataclass(frozen=True, kw_only=True)
class PlayAction(Action):
    method: ClassVar[str] = "play"
    needs_media: ClassVar[bool] = True
    voices: tuple[str, ...]
    repeat: int = 1


@dataclass(frozen=True, kw_only=True)
class GetDtmfAction(Action):
    method: ClassVar[str] = "getdtmf"
    needs_media: ClassVar[bool] = True
    voices: tuple[str, ...] = ()
    max_digits: int = 1
    first_timeout: float = 5.0
    inter_digit_timeout: float = 3.0
    terminator: str | None = "#"
    retries: int = 2
    var: str = "dtmf"
    matches: tuple[DigitMatch, ...] = ()

    def targets(self) -> list[tuple[str, Position]]:
        return super().targets() + [(m.nextaction, m.position) for m in self.matches]


@dataclass(frozen=True, kw_only=True)
class CallToAction(Action):
    method: ClassVar[str] = "callto"
    destination: Template
    ring_timeout: float | None = None
    caller_id: Template | None = None


@dataclass(frozen=True, kw_only=True)
class GotoAction(Action):
    method: ClassVar[str] = "goto"
    instant: ClassVar[bool] = True


@dataclass(frozen=True, kw_only=True)
class HangupAction(Action):
    method: ClassVar[str] = "hangup"


@dataclass(frozen=True, kw_only=True)
class RecordAction(Action):
    method: ClassVar[str] = "record"
    needs_media: ClassVar[bool] = True
    file: Template | None = None
    max_seconds: float = 60.0
    terminator: str | None = "#"
    beep: bool = True
    var: str = "recording"


@dataclass(frozen=True, kw_only=True)
class VoicemailAction(Action):
    method: ClassVar[str] = "voicemail"
    needs_media: ClassVar[bool] = True
    mailbox: Template


@dataclass(frozen=True, kw_only=True)
class SetVarAction(Action):
    method: ClassVar[str] = "setvar"
    instant: ClassVar[bool] = True
    assignments: tuple[tuple[str, Template], ...]


@dataclass(frozen=True, kw_only=True)
class CheckTimeAction(Action):
    method: ClassVar[str] = "checktime"
    instant: ClassVar[bool] = True
    periods: tuple[Period, ...]

    def targets(self) -> list[tuple[str, Position]]:
        return super().targets() + [(p.nextaction, p.position) for p in self.periods]


@dataclass(frozen=True, kw_only=True)
class WaitAction(Action):
    method: ClassVar[str] = "wait"
    seconds: float = 1.0


ACTION_TYPES: dict[str, type[Action]] = {
    cls.method: cls
    for cls in (
        PlayAction,
        GetDtmfAction,
        CallToAction,
        GotoAction,
        HangupAction,
        RecordAction,
        VoicemailAction,
        SetVarAction,
        CheckTimeAction,
        WaitAction,
    )
}
METHODS = tuple(ACTION_TYPES)
# The detections each method can raise; a <monitor-event> for any other is a mistake.
RAISED_BY: dict[str, tuple[str, ...]] = {"callto": CALLTO_DETECTIONS, "getdtmf": GETDTMF_DETECTIONS}


# ---------------------------------------------------------------------------- the flow


@dataclass(frozen=True)
class Flow:
    """A loaded script: its actions in document order; the first is the entry point."""

    file: str
    actions: tuple[Action, ...]
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.actions:
            raise ValueError("a flow needs at least one action")
        self._index.update({action.name: i for i, action in enumerate(self.actions)})

    @property
    def entry(self) -> Action:
        return self.actions[0]

    def action(self, name: str) -> Action:
        return self.actions[self._index[name]]

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def following(self, action: Action) -> Action | None:
        """The next action in document order, or None past the last (the call hangs up)."""
        i = self._index[action.name] + 1
        return self.actions[i] if i < len(self.actions) else None

    def default_next(self, action: Action) -> Action | None:
        """Where an action continues when nothing else chose: its ``<nextaction>``, else the
        next action in document order."""
        if action.nextaction is not None:
            return self.action(action.nextaction)
        return self.following(action)

    def successors(self, action: Action) -> list[Action]:
        """Every action the flow may take after ``action`` (for static checks)."""
        found = [self.action(name) for name, _ in action.targets() if name in self._index]
        if isinstance(action, HangupAction | VoicemailAction | GotoAction):
            return found
        if isinstance(action, CallToAction):
            return found  # answered or failed without a matching event: the IVR ends
        following = self.following(action)
        if following is not None and action.nextaction is None:
            found.append(following)
        return found

    def prompts(self) -> list[str]:
        names: list[str] = []
        for action in self.actions:
            voices = getattr(action, "voices", ())
            names.extend(v for v in voices if v not in names)
        return names
