"""Shared helpers of the IVR tests: scripts from snippets, errors as (line, col, message)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

import pytest

from sipswitch.ivr.engine import CallResult, FlowEngine, TraceEvent
from sipswitch.ivr.errors import ScriptError
from sipswitch.ivr.interface import CallOutcome
from sipswitch.ivr.loader import parse_flow
from sipswitch.ivr.model import Flow
from sipswitch.ivr.simulate import ScriptedCall

FIXTURES = Path(__file__).parent / "fixtures"

# The prompts the shipped scripts use; tests resolve prompts through this set.
PROMPTS = frozenset(
    ["welcome", "enter-extension", "invalid", "please-hold", "busy", "no-answer", "goodbye"]
    + [f"digit-{n}" for n in range(10)]
    + ["menu", "sales", "support", "closed", "hold-music", "beep"]
)


def has_prompt(name: str) -> bool:
    return name in PROMPTS


def script(body: str) -> str:
    """A script whose root holds ``body`` (the root is on line 1, ``body`` from line 2)."""
    return f'<mssxml version="1">\n{body}\n</mssxml>\n'


def load(text: str, file: str = "test.xml") -> Flow:
    return parse_flow(text, file, has_prompt)


def issues(text: str, file: str = "test.xml") -> list[tuple[int, int, str]]:
    """The errors of a script that must not load, as (line, column, message)."""
    with pytest.raises(ScriptError) as info:
        parse_flow(text, file, has_prompt)
    for issue in info.value.issues:
        assert issue.position.file == file
        assert str(issue) == f"{file}:{issue.position.line}:{issue.position.column}: " + (
            issue.message
        )
    return [(i.position.line, i.position.column, i.message) for i in info.value.issues]


def locate(text: str, needle: str, occurrence: int = 1) -> tuple[int, int]:
    """1-based line and column of the n-th ``needle`` in ``text`` (to state expectations)."""
    index = -1
    for _ in range(occurrence):
        index = text.index(needle, index + 1)
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column


class Run:
    """The result of running a flow on a ScriptedCall, with the trace kept."""

    def __init__(self, result: CallResult, call: ScriptedCall, trace: list[TraceEvent]) -> None:
        self.result = result
        self.call = call
        self.trace = trace

    @property
    def actions(self) -> list[str]:
        """The names of the actions run, in order."""
        return [e.action for e in self.trace if e.kind == "action"]

    @property
    def messages(self) -> list[str]:
        return [e.message for e in self.trace if e.kind == "event"]


def run(
    flow: Flow | str,
    digits: Iterable[str] = (),
    outcomes: Iterable[CallOutcome | str] = (),
    *,
    step_budget: int = 1000,
    ring_timeout: float = 30.0,
    **call_options: object,
) -> Run:
    if isinstance(flow, str):
        flow = load(flow)
    call = ScriptedCall(digits, outcomes, **call_options)  # type: ignore[arg-type]
    trace: list[TraceEvent] = []
    engine = FlowEngine(step_budget=step_budget, ring_timeout=ring_timeout, tracer=trace.append)
    result = asyncio.run(engine.run(flow, call))
    return Run(result, call, trace)
