"""What ``sipswitch ivr check`` and ``sipswitch ivr simulate`` do, without the argument parsing
(the ``sipswitch`` command wires these to its options)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TextIO

from sipswitch.ivr.engine import EndReason
from sipswitch.ivr.errors import ScriptError
from sipswitch.ivr.interface import CallOutcome
from sipswitch.ivr.loader import PromptCheck, load_flow
from sipswitch.ivr.simulate import ScriptedCall, simulate

OUTCOMES = tuple(outcome.value for outcome in CallOutcome)


def parse_time(text: str) -> datetime:
    """``2026-01-05 10:00`` (or ISO 8601) as a naive local time; ValueError otherwise."""
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"expected a time like '2026-01-05 10:00', got {text!r}") from None


def check_scripts(
    paths: Sequence[Path], prompt_exists: PromptCheck | None, out: TextIO, err: TextIO
) -> int:
    """Load every script; 0 when all load, 1 otherwise (errors as ``file:line:col: msg``)."""
    failed = 0
    for path in paths:
        try:
            flow = load_flow(path, prompt_exists)
        except ScriptError as exc:
            print(exc, file=err)
            failed += 1
        else:
            print(f"OK: {path} ({len(flow.actions)} actions)", file=out)
    return 1 if failed else 0


def simulate_script(
    path: Path,
    *,
    digits: Sequence[str],
    outcomes: Sequence[str],
    caller: str,
    called: str,
    start: datetime,
    barge_in: bool,
    step_budget: int,
    ring_timeout: float,
    prompt_exists: PromptCheck | None,
    out: TextIO,
    err: TextIO,
) -> int:
    """Run a script with scripted keys and outcomes, printing every step. 0 when the flow
    ended by itself, 1 when it does not load, used up the step budget or failed."""
    try:
        flow = load_flow(path, prompt_exists)
    except ScriptError as exc:
        print(exc, file=err)
        return 1
    call = ScriptedCall(
        digits, outcomes, caller=caller, called=called, start=start, barge_in=barge_in
    )
    print(
        f"simulating {path}: call from {caller} to {called} on {start:%a %Y-%m-%d %H:%M:%S}",
        file=out,
    )
    result = asyncio.run(
        simulate(
            flow,
            call,
            step_budget=step_budget,
            ring_timeout=ring_timeout,
            output=lambda line: print(line, file=out),
        )
    )
    print(f"{result.steps} steps; ended: {result.reason.value}", file=out)
    return 1 if result.reason in (EndReason.STEP_BUDGET, EndReason.ERROR) else 0
