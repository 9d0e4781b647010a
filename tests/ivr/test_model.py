"""Pure parts of the flow model: variables, digit patterns, time periods, and the mapping of
SIP final responses to callto outcomes."""

from __future__ import annotations

from datetime import datetime

import pytest

from sipswitch.ivr.errors import Position
from sipswitch.ivr.interface import CallOutcome, outcome_of_response
from sipswitch.ivr.model import (
    MAX_VALUE_LENGTH,
    DigitMatch,
    Period,
    Template,
    parse_days,
    parse_time_ranges,
)

HERE = Position("t.xml", 1, 1)


def test_templates_expand_variables() -> None:
    template = Template.parse("9${dtmf}@${called}$x}")
    assert template.variables == ("dtmf", "called")
    assert template.expand({"dtmf": "101", "called": "800"}) == "9101@800$x}"
    assert template.expand({}) == "9@$x}"
    assert str(template) == "9${dtmf}@${called}$x}"
    assert Template.parse("plain").is_constant
    assert Template.parse("${a}").expand({"a": "x" * 5000}) == "x" * MAX_VALUE_LENGTH


@pytest.mark.parametrize("text", ["${dtmf", "${}", "${1a}", "${a b}", "x${a}${"])
def test_bad_variable_references(text: str) -> None:
    with pytest.raises(ValueError):
        Template.parse(text)


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("1XX", ["100", "199"], ["10", "1000", "200", "1*0"]),
        ("9.", ["90", "9123456"], ["9", "8123", "9*"]),
        ("*X#", ["*1#"], ["*#", "*11#"]),
        ("x", ["5"], ["*", "55"]),
        ("1.2", ["102", "1992"], ["12", "1x2"]),
    ],
)
def test_digit_patterns(pattern: str, yes: list[str], no: list[str]) -> None:
    match = DigitMatch.of_pattern(pattern, "next", HERE)
    assert all(match.matches(d) for d in yes)
    assert not any(match.matches(d) for d in no)


def test_exact_digits() -> None:
    match = DigitMatch.exact("1*", "next", HERE)
    assert match.matches("1*") and not match.matches("1") and not match.matches("1*1")
    assert match.min_length == 2
    assert DigitMatch.of_pattern("1.", "n", HERE).min_length == 2
    for bad in ("", "1a", "1 "):
        with pytest.raises(ValueError):
            DigitMatch.exact(bad, "n", HERE)
    with pytest.raises(ValueError):
        DigitMatch.of_pattern("1[0-9]", "n", HERE)


def test_days() -> None:
    assert parse_days("mon-fri") == frozenset({0, 1, 2, 3, 4})
    assert parse_days("sat,sun") == frozenset({5, 6})
    assert parse_days("Fri-Mon") == frozenset({4, 5, 6, 0})
    assert parse_days("wednesday") == frozenset({2})
    assert parse_days("sun-sun") == frozenset({6})
    for bad in ("", "mon-", "funday", "mon,,tue"):
        with pytest.raises(ValueError):
            parse_days(bad)


def test_time_ranges() -> None:
    assert parse_time_ranges("09:00-18:00") == ((540, 1080),)
    assert parse_time_ranges("9:30-12:00, 13:00-24:00") == ((570, 720), (780, 1440))
    assert parse_time_ranges("22:00-06:00") == ((1320, 360),)
    assert parse_time_ranges("00:00-24:00") == ((0, 1440),)
    for bad in ("09:00", "9-17", "09:60-10:00", "24:00-01:00", "10:00-10:00", "0:00-0:00"):
        with pytest.raises(ValueError):
            parse_time_ranges(bad)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """2026-01-05 is a Monday: day 0 is Monday."""
    return datetime(2026, 1, 5 + day, hour, minute)


def test_office_hours() -> None:
    period = Period("open", HERE, parse_days("mon-fri"), parse_time_ranges("09:00-18:00"))
    assert period.contains(at(0, 9)) and period.contains(at(4, 17, 59))
    assert not period.contains(at(0, 8, 59)) and not period.contains(at(0, 18))
    assert not period.contains(at(5, 12))


def test_a_night_range_crosses_midnight_and_belongs_to_the_day_it_starts() -> None:
    night = Period("night", HERE, parse_days("fri"), parse_time_ranges("22:00-06:00"))
    assert night.contains(at(4, 22)) and night.contains(at(4, 23, 59))
    assert night.contains(at(5, 0)) and night.contains(at(5, 5, 59))  # Saturday morning
    assert not night.contains(at(5, 6))
    assert not night.contains(at(4, 2))  # Friday early morning belongs to Thursday's night
    assert not night.contains(at(4, 21, 59))
    every_night = Period("n", HERE, times=parse_time_ranges("22:00-06:00"))
    assert every_night.contains(at(0, 3)) and every_night.contains(at(6, 23))
    assert not every_night.contains(at(3, 12))


def test_days_without_time_and_time_without_days() -> None:
    weekend = Period("w", HERE, parse_days("sat-sun"))
    assert weekend.contains(at(5, 0)) and weekend.contains(at(6, 23, 59))
    assert not weekend.contains(at(0, 0))
    lunch = Period("l", HERE, times=parse_time_ranges("12:00-13:00"))
    assert all(lunch.contains(at(day, 12, 30)) for day in range(7))


# The spec's table: SIP final response (and whether the callee rang first) to the outcome.
OUTCOMES = [
    (200, False, CallOutcome.ANSWERED),
    (200, True, CallOutcome.ANSWERED),
    (486, False, CallOutcome.BUSY),
    (486, True, CallOutcome.BUSY),
    (600, True, CallOutcome.BUSY),
    (408, True, CallOutcome.NO_ANSWER),
    (480, True, CallOutcome.NO_ANSWER),
    (404, False, CallOutcome.UNREACHABLE),
    (404, True, CallOutcome.UNREACHABLE),
    (480, False, CallOutcome.UNREACHABLE),
    (503, False, CallOutcome.UNREACHABLE),
    (408, False, CallOutcome.UNREACHABLE),
    (603, False, CallOutcome.REJECT),
    (403, True, CallOutcome.REJECT),
    (503, True, CallOutcome.FAILURE),
    (500, False, CallOutcome.FAILURE),
    (488, False, CallOutcome.FAILURE),
    (487, True, CallOutcome.FAILURE),
    (401, False, CallOutcome.FAILURE),
]


@pytest.mark.parametrize(("status", "rang", "outcome"), OUTCOMES)
def test_outcome_of_response(status: int, rang: bool, outcome: CallOutcome) -> None:
    assert outcome_of_response(status, rang=rang) is outcome
