"""IVR-XML call flows: the loader (XML to a validated flow, errors with file:line:col), the
engine (runs a flow over an abstract call control), the script registry (numbers to scripts,
reload on change) and a scripted call for simulation."""

from sipswitch.ivr.engine import CallResult, EndReason, FlowEngine, TraceEvent, Tracer, run_flow
from sipswitch.ivr.errors import Position, ScriptError, ScriptIssue
from sipswitch.ivr.interface import CallControl, CallerHungUp, CallOutcome, outcome_of_response
from sipswitch.ivr.loader import PromptCheck, load_flow, parse_flow
from sipswitch.ivr.model import Flow
from sipswitch.ivr.prompts import PromptFolders, voice_dirs
from sipswitch.ivr.registry import ScriptRegistry
from sipswitch.ivr.simulate import ScriptedCall, simulate

__all__ = [
    "CallControl",
    "CallOutcome",
    "CallResult",
    "CallerHungUp",
    "EndReason",
    "Flow",
    "FlowEngine",
    "Position",
    "PromptCheck",
    "PromptFolders",
    "ScriptError",
    "ScriptIssue",
    "ScriptRegistry",
    "ScriptedCall",
    "TraceEvent",
    "Tracer",
    "load_flow",
    "outcome_of_response",
    "parse_flow",
    "run_flow",
    "simulate",
    "voice_dirs",
]
