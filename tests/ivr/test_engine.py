"""The flow engine over a scripted call: every method and every event, variables, patterns,
checktime, the callto outcome table, the step budget, and a caller who hangs up."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

import pytest

from sipswitch.ivr.engine import EndReason, FlowEngine, run_flow
from sipswitch.ivr.interface import CallerHungUp
from sipswitch.ivr.loader import load_flow
from sipswitch.ivr.registry import BUILTIN_SCRIPTS
from sipswitch.ivr.simulate import ScriptedCall
from tests.ivr.helpers import FIXTURES, has_prompt, load, run, script

MONDAY_10 = datetime(2026, 1, 5, 10, 0)


# ---------------------------------------------------------------------------- play, goto, end


def test_play_answers_once_repeats_and_falls_through_to_the_end() -> None:
    r = run(
        script(
            '<action name="a" method="play"><voice>welcome</voice><voice>menu</voice>'
            "<repeat>2</repeat></action>\n"
            '<action name="b" method="play"><voice>goodbye</voice></action>'
        )
    )
    assert [rec.what for rec in r.call.log] == ["answer", "play", "play", "play", "hangup"]
    assert r.call.calls("play") == [
        (("welcome", "menu"), False),
        (("welcome", "menu"), False),
        (("goodbye",), False),
    ]
    assert r.actions == ["a", "b"]
    assert r.result.reason is EndReason.END_OF_FLOW and r.result.steps == 2


def test_nextaction_overrides_document_order_and_goto_jumps() -> None:
    r = run(
        script(
            '<action name="a" method="play"><voice>welcome</voice><nextaction>c</nextaction>'
            "</action>\n"
            '<action name="b" method="play"><voice>menu</voice></action>\n'
            '<action name="c" method="goto"><nextaction>e</nextaction></action>\n'
            '<action name="d" method="play"><voice>sales</voice></action>\n'
            '<action name="e" method="hangup"/>\n'
            '<action name="f" method="play"><voice>support</voice></action>'
        )
    )
    assert r.actions == ["a", "c", "e"]
    assert r.result.reason is EndReason.HANGUP
    assert [rec.what for rec in r.call.log][-1] == "hangup"
    assert "go to -> e" in r.messages


def test_actions_that_need_no_media_do_not_answer() -> None:
    r = run(
        script(
            '<action name="s" method="setvar"><var name="x">1</var></action>\n'
            '<action name="w" method="wait"><seconds>4</seconds></action>\n'
            '<action name="c" method="callto"><destination>100</destination></action>'
        ),
        outcomes=["answered"],
    )
    assert not r.call.answered
    assert r.call.calls("wait") == [(4.0,)]
    assert r.call.calls("callto") == [("100", 30.0, None)]
    assert r.call.log[-2].at == 4.0  # the callto came after 4 s of silence


# ---------------------------------------------------------------------------- getdtmf

MENU = script(
    """\
<action name="menu" method="getdtmf">
  <voice>menu</voice><maxdigits>3</maxdigits><timeout>5</timeout>
  <interdigit-timeout>2</interdigit-timeout><retries>2</retries>
  <match-digits>
    <match digits="1" nextaction="sales"/>
    <match pattern="1XX" nextaction="dial"/>
    <match pattern="9." nextaction="outside"/>
  </match-digits>
  <monitor-events>
    <monitor-event detection="timeout" nextaction="noinput"/>
    <monitor-event detection="invalid" nextaction="wrong"/>
  </monitor-events>
</action>
<action name="sales" method="hangup"/>
<action name="dial" method="callto"><destination>${dtmf}</destination></action>
<action name="outside" method="callto"><destination>${dtmf}</destination></action>
<action name="noinput" method="hangup"/>
<action name="wrong" method="play"><voice>invalid</voice></action>"""
)


def test_exact_match_wins_in_document_order() -> None:
    r = run(MENU, ["1"])
    assert r.actions == ["menu", "sales"]
    assert r.result.variables["dtmf"] == "1"
    # "1" is shorter than maxdigits: the collection ended after the inter-digit timeout.
    assert r.call.elapsed == 2.0
    assert "digits '1' match digits=\"1\" -> sales" in r.messages


def test_pattern_with_x_dials_what_the_caller_typed() -> None:
    r = run(MENU, ["101"], ["answered"])
    assert r.actions == ["menu", "dial"]
    assert r.call.calls("callto") == [("101", 30.0, None)]
    assert r.result.reason is EndReason.BRIDGED
    assert r.call.elapsed == 0.0  # three keys: maxdigits reached, no timeout


def test_pattern_with_dot_matches_a_run_of_digits() -> None:
    r = run(MENU, ["912"], ["answered"])
    assert r.actions == ["menu", "outside"]
    assert r.call.calls("callto")[0][0] == "912"


def test_timeout_after_all_retries_takes_the_timeout_event() -> None:
    r = run(MENU, ["", "-"])  # two explicit silences, then the input has run out
    assert r.actions == ["menu", "noinput"]
    assert r.call.calls("play") == [(("menu",), True)] * 3
    assert r.call.calls("collect_digits") == [(3, 5.0, 2.0, "#")] * 3
    assert r.call.elapsed == 15.0
    assert r.result.variables["dtmf"] == ""
    assert "monitor-event timeout -> noinput" in r.messages


def test_invalid_after_all_retries_takes_the_invalid_event() -> None:
    r = run(MENU, ["55", "7", "2"])
    assert r.actions == ["menu", "wrong"]
    assert r.result.variables["dtmf"] == "2"
    assert r.messages.count("digits '55' match nothing (attempt 1 of 3)") == 1


def test_a_retry_that_matches_goes_on() -> None:
    r = run(MENU, ["", "55", "1"])
    assert r.actions == ["menu", "sales"]
    assert len(r.call.calls("play")) == 3


def test_events_without_monitor_event_take_the_default_path() -> None:
    flow = script(
        '<action name="ask" method="getdtmf"><retries>0</retries><match-digits>'
        '<match digits="1" nextaction="one"/></match-digits></action>\n'
        '<action name="next" method="play"><voice>menu</voice></action>\n'
        '<action name="one" method="hangup"/>'
    )
    assert run(flow, [""]).actions == ["ask", "next", "one"]
    assert run(flow, ["2"]).actions == ["ask", "next", "one"]
    assert run(flow, ["1"]).actions == ["ask", "one"]


def test_without_matches_any_digits_continue_and_fill_the_variable() -> None:
    r = run(
        script(
            '<action name="ask" method="getdtmf"><maxdigits>4</maxdigits><var>pin</var>'
            "<nextaction>use</nextaction></action>\n"
            '<action name="skipped" method="hangup"/>\n'
            '<action name="use" method="callto"><destination>${pin}</destination></action>'
        ),
        ["12#9"],
        ["busy"],
    )
    assert r.actions == ["ask", "use"]
    assert r.result.variables["pin"] == "12" and r.result.variables["dtmf"] == "12"
    assert r.call.calls("callto")[0][0] == "12"
    assert r.result.reason is EndReason.CALLTO_FAILED


def test_terminator_alone_is_no_input_and_none_disables_it() -> None:
    flow = (
        '<action name="ask" method="getdtmf"><maxdigits>3</maxdigits><retries>0</retries>'
        '{}<monitor-events><monitor-event detection="timeout" nextaction="t"/>'
        "</monitor-events></action>\n"
        '<action name="ok" method="hangup"/>\n<action name="t" method="hangup"/>'
    )
    assert run(script(flow.format("")), ["#"]).actions == ["ask", "t"]
    r = run(script(flow.format("<terminator>none</terminator>")), ["1#2"])
    assert r.actions == ["ask", "ok"] and r.result.variables["dtmf"] == "1#2"
    r = run(script(flow.format("<terminator>*</terminator>")), ["12*"])
    assert r.result.variables["dtmf"] == "12" and r.call.elapsed == 0.0


def test_a_key_during_the_prompt_interrupts_it() -> None:
    r = run(MENU, ["101"], ["answered"], barge_in=True)
    assert r.actions == ["menu", "dial"]
    assert r.call.calls("play") == [(("menu",), True)]
    # the first key came with the prompt; the rest is collected with the inter-digit timeout
    assert r.call.calls("collect_digits") == [(2, 2.0, 2.0, "#")]
    single = script(
        '<action name="m" method="getdtmf"><voice>menu</voice><match-digits>'
        '<match digits="2" nextaction="two"/></match-digits></action>\n'
        '<action name="two" method="hangup"/>'
    )
    r = run(single, ["2"], barge_in=True)
    assert r.actions == ["m", "two"] and r.call.calls("collect_digits") == []


def test_getdtmf_without_prompt_only_listens() -> None:
    r = run(script('<action name="a" method="getdtmf"><timeout>7</timeout></action>'), [""])
    assert r.call.calls("play") == []
    assert r.call.calls("collect_digits") == [(1, 7.0, 3.0, "#")] * 3
    assert r.call.answered and r.call.elapsed == 21.0


def test_keys_from_the_call_control_are_sanitised() -> None:
    class Noisy(ScriptedCall):
        async def collect_digits(
            self, max_digits: int, first: float, inter: float, terminator: str | None
        ) -> str:
            return "1x2\x003a4567"

    call = Noisy()
    flow = load(script('<action name="a" method="getdtmf"><maxdigits>4</maxdigits></action>'))
    result = asyncio.run(run_flow(flow, call))
    assert result.variables["dtmf"] == "123A"


# ---------------------------------------------------------------------------- callto

CALLTO = script(
    """\
<action name="first" method="callto">
  <destination>100</destination><timeout>15</timeout><callerid>IVR ${caller}</callerid>
  <monitor-events>
    <monitor-event detection="busy" nextaction="busy"/>
    <monitor-event detection="no-answer" nextaction="noanswer"/>
    <monitor-event detection="unreachable" nextaction="unreachable"/>
    <monitor-event detection="reject" nextaction="reject"/>
    <monitor-event detection="failure" nextaction="failure"/>
  </monitor-events>
</action>
<action name="busy" method="hangup"/>
<action name="noanswer" method="hangup"/>
<action name="unreachable" method="hangup"/>
<action name="reject" method="hangup"/>
<action name="failure" method="hangup"/>"""
)


@pytest.mark.parametrize(
    ("outcome", "target"),
    [
        ("busy", "busy"),
        ("no-answer", "noanswer"),
        ("unreachable", "unreachable"),
        ("reject", "reject"),
        ("failure", "failure"),
    ],
)
def test_each_callto_outcome_takes_its_monitor_event(outcome: str, target: str) -> None:
    r = run(CALLTO, outcomes=[outcome], caller="205")
    assert r.actions == ["first", target]
    assert r.call.calls("callto") == [("100", 15.0, "IVR 205")]
    assert f"monitor-event {outcome} -> {target}" in r.messages


def test_failure_catches_every_failed_outcome_without_its_own_event() -> None:
    flow = script(
        '<action name="c" method="callto"><destination>100</destination><monitor-events>'
        '<monitor-event detection="busy" nextaction="b"/>'
        '<monitor-event detection="failure" nextaction="f"/></monitor-events></action>\n'
        '<action name="b" method="hangup"/>\n<action name="f" method="hangup"/>'
    )
    for outcome, target in [
        ("busy", "b"),
        ("no-answer", "f"),
        ("unreachable", "f"),
        ("reject", "f"),
        ("failure", "f"),
    ]:
        assert run(flow, outcomes=[outcome]).actions == ["c", target], outcome


@pytest.mark.parametrize("outcome", ["busy", "no-answer", "unreachable", "reject", "failure"])
def test_a_failed_callto_without_monitor_event_ends_the_ivr(outcome: str) -> None:
    r = run(
        script(
            '<action name="c" method="callto"><destination>100</destination></action>\n'
            '<action name="never" method="play"><voice>menu</voice></action>'
        ),
        outcomes=[outcome],
    )
    assert r.actions == ["c"]
    assert r.result.reason is EndReason.CALLTO_FAILED
    assert r.result.detail == f"callto 100 ended with {outcome} and no monitor-event for it"
    assert r.call.log[-1].what == "hangup"


def test_an_answered_callto_ends_the_ivr_when_the_bridged_call_ends() -> None:
    r = run(CALLTO + "", outcomes=["answered"])
    assert r.actions == ["first"]
    assert r.result.reason is EndReason.BRIDGED
    assert r.result.detail == "the bridged call to 100 ended"


def test_ring_timeout_defaults_to_the_engine_setting_and_no_answer_takes_that_long() -> None:
    r = run(
        script('<action name="c" method="callto"><destination>100</destination></action>'),
        outcomes=["no-answer"],
        ring_timeout=12,
    )
    assert r.call.calls("callto") == [("100", 12.0, None)]
    assert r.call.elapsed == 12.0


def test_a_destination_that_is_no_number_is_unreachable_without_a_call() -> None:
    r = run(
        script(
            '<action name="ask" method="getdtmf"><retries>0</retries></action>\n'
            '<action name="c" method="callto"><destination>${dtmf}</destination>'
            '<monitor-events><monitor-event detection="unreachable" nextaction="u"/>'
            "</monitor-events></action>\n"
            '<action name="u" method="hangup"/>'
        ),
        [""],
    )
    assert r.actions == ["ask", "c", "u"]
    assert r.call.calls("callto") == []
    r = run(
        script('<action name="c" method="callto"><destination>${caller}</destination></action>'),
        caller="evil<sip:x>",
    )
    assert r.call.calls("callto") == [] and r.result.reason is EndReason.CALLTO_FAILED


def test_the_spec_example_runs() -> None:
    flow = load_flow(FIXTURES / "spec-example.xml", has_prompt)
    # "1" goes to sales (100), which is busy: the busy monitor-event calls 101.
    r = run(flow, ["1"], ["busy", "answered"])
    assert r.actions == ["mainAction", "sales", "callto101"]
    assert [c[0] for c in r.call.calls("callto")] == ["100", "101"]
    # "123" dials 123; it does not exist, and failure catches unreachable: the operator.
    r = run(flow, ["123"], ["unreachable", "answered"])
    assert r.actions == ["mainAction", "dialExtension", "operator"]
    assert [c[0] for c in r.call.calls("callto")] == ["123", "102"]
    # nothing typed three times: timeout, the operator.
    r = run(flow, [], ["answered"])
    assert r.actions == ["mainAction", "operator"]
    # no-answer at sales goes to 101 as well; 101 busy without events ends the IVR.
    r = run(flow, ["1"], ["no-answer", "busy"])
    assert r.actions == ["mainAction", "sales", "callto101"]
    assert r.result.reason is EndReason.CALLTO_FAILED


def test_a_minisipserver_script_runs() -> None:
    flow = load_flow(FIXTURES / "mss-callto.xml")
    r = run(flow, outcomes=["busy", "answered"])
    assert r.actions == ["mainAction", "callto101"]
    assert r.result.reason is EndReason.BRIDGED
    r = run(flow, outcomes=["no-answer"])
    assert r.actions == ["mainAction"] and r.result.reason is EndReason.CALLTO_FAILED


def test_the_shipped_auto_attendant() -> None:
    flow = load_flow(BUILTIN_SCRIPTS / "auto-attendant.xml", has_prompt)
    r = run(flow, ["101", "102", "103#"], ["busy", "no-answer", "answered"])
    assert r.actions == [
        "welcome",
        "askExtension",
        "pleaseHold",
        "dialExtension",
        "extensionBusy",
        "askExtension",
        "pleaseHold",
        "dialExtension",
        "noAnswer",
        "askExtension",
        "pleaseHold",
        "dialExtension",
    ]
    assert [c[0] for c in r.call.calls("callto")] == ["101", "102", "103"]
    assert r.result.reason is EndReason.BRIDGED
    played = [p[0] for p in r.call.calls("play")]
    assert played[:4] == [("welcome",), ("enter-extension",), ("please-hold",), ("busy",)]
    # an unknown extension hears "invalid", a silent caller hears goodbye
    r = run(flow, ["999"], ["unreachable"])
    assert r.actions[-5:] == [
        "dialExtension",
        "invalidExtension",
        "askExtension",
        "goodbye",
        "end",
    ]
    assert r.result.reason is EndReason.HANGUP
    assert [p[0] for p in r.call.calls("play")][-1] == ("goodbye",)


# ---------------------------------------------------------------------------- the rest


def test_record_names_the_file_safely_and_keeps_it_in_a_variable() -> None:
    flow = script(
        '<action name="r" method="record"><file>../${caller}/msg</file><maxtime>20</maxtime>'
        "<beep>no</beep><var>saved</var></action>\n"
        '<action name="r2" method="record"/>'
    )
    r = run(flow, caller="10 1", start=MONDAY_10)
    assert r.call.calls("record") == [
        (".._10_1_msg.wav".lstrip("."), 20.0, "#", False),
        ("10_1-20260105-100020.wav", 60.0, "#", True),
    ]
    assert r.result.variables["saved"] == "_10_1_msg.wav"
    assert r.result.variables["recording"] == "10_1-20260105-100020.wav"
    assert r.call.elapsed == 80.0


def test_voicemail_takes_a_message_and_ends() -> None:
    flow = script(
        '<action name="v" method="voicemail"><mailbox>1${dtmf}</mailbox></action>\n'
        '<action name="never" method="play"><voice>menu</voice></action>'
    )
    r = run(flow)
    assert r.call.answered and r.call.calls("voicemail") == [("1",)]
    assert r.result.reason is EndReason.VOICEMAIL and r.actions == ["v"]
    empty = script('<action name="v" method="voicemail"><mailbox>${caller}</mailbox></action>')
    r = run(empty, caller="")
    assert r.call.calls("voicemail") == [] and r.result.reason is EndReason.HANGUP


def test_setvar_assigns_in_order_and_variables_expand_everywhere() -> None:
    r = run(
        script(
            '<action name="s" method="setvar"><var name="prefix">9</var>'
            '<var name="target">${prefix}${called}</var><var name="dtmf">7</var></action>\n'
            '<action name="c" method="callto"><destination>${target}${dtmf}</destination>'
            "<callerid>${caller}</callerid></action>"
        ),
        caller="201",
        called="800",
    )
    assert r.call.calls("callto") == [("98007", 30.0, "201")]
    assert r.result.variables["target"] == "9800"
    assert "set target = '9800'" in r.messages


CHECKTIME = script(
    """\
<action name="when" method="checktime">
  <period days="mon-fri" time="09:00-18:00" nextaction="open"/>
  <period days="fri" time="22:00-06:00" nextaction="night"/>
  <nextaction>closed</nextaction>
</action>
<action name="open" method="hangup"/>
<action name="night" method="hangup"/>
<action name="closed" method="hangup"/>"""
)


@pytest.mark.parametrize(
    ("moment", "target"),
    [
        (datetime(2026, 1, 5, 9, 0), "open"),  # Monday
        (datetime(2026, 1, 9, 17, 59), "open"),  # Friday
        (datetime(2026, 1, 5, 18, 0), "closed"),
        (datetime(2026, 1, 9, 23, 30), "night"),  # Friday night
        (datetime(2026, 1, 10, 3, 0), "night"),  # Saturday 03:00: Friday's night
        (datetime(2026, 1, 9, 3, 0), "closed"),  # Friday 03:00: Thursday has no night
        (datetime(2026, 1, 10, 12, 0), "closed"),  # Saturday
    ],
)
def test_checktime_routes_by_local_time(moment: datetime, target: str) -> None:
    assert run(CHECKTIME, start=moment).actions == ["when", target]


def test_checktime_without_otherwise_goes_to_the_next_action() -> None:
    flow = script(
        '<action name="t" method="checktime"><period days="sun" nextaction="s"/></action>\n'
        '<action name="n" method="hangup"/>\n<action name="s" method="hangup"/>'
    )
    assert run(flow, start=MONDAY_10).actions == ["t", "n"]
    assert run(flow, start=datetime(2026, 1, 11, 10)).actions == ["t", "s"]


def test_wait_passes_time() -> None:
    r = run(script('<action name="w" method="wait"><seconds>2.5</seconds></action>'))
    assert r.call.elapsed == 2.5 and r.messages == ["waited 2.5 s"]


# ---------------------------------------------------------------------------- budget, ending


def test_the_step_budget_stops_a_runaway_loop(caplog: pytest.LogCaptureFixture) -> None:
    flow = script(
        '<action name="hold" method="play"><voice>hold-music</voice></action>\n'
        '<action name="again" method="goto"><nextaction>hold</nextaction></action>'
    )
    with caplog.at_level(logging.WARNING, logger="sipswitch.ivr"):
        r = run(flow, step_budget=7, caller="100", called="801")
    assert r.result.reason is EndReason.STEP_BUDGET
    assert r.result.steps == 7 and r.actions == ["hold", "again"] * 3 + ["hold"]
    assert r.call.log[-1].what == "hangup"
    [record] = caplog.records
    assert record.getMessage() == (
        "test.xml:3:1: call from 100 to 801 used its step budget of 7 steps at action "
        "'again'; hanging up (does the flow loop?)"
    )
    with pytest.raises(ValueError):
        FlowEngine(step_budget=0)


def test_a_caller_who_hangs_up_ends_the_flow_without_a_hangup() -> None:
    r = run(MENU, hang_up_when_done=True)
    assert r.result.reason is EndReason.CALLER_HUNG_UP
    assert "hangup" not in [rec.what for rec in r.call.log]
    assert r.trace[-1].kind == "end" and r.trace[-1].message == "call ended: the caller hung up"


def test_a_failing_call_control_ends_the_call_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(ScriptedCall):
        async def play(self, prompts: list[str], interruptible: bool) -> str | None:
            raise RuntimeError("media gone")

        async def hangup(self) -> None:
            raise CallerHungUp()

    flow = load(script('<action name="a" method="play"><voice>welcome</voice></action>'))
    with caplog.at_level(logging.ERROR, logger="sipswitch.ivr"):
        result = asyncio.run(run_flow(flow, Broken()))
    assert result.reason is EndReason.ERROR
    assert result.detail == "error: RuntimeError: media gone"
    assert "test.xml:2:1: call from 100 to 800 failed in action 'a'" in caplog.text


def test_the_tracer_sees_every_step_with_its_position() -> None:
    r = run(MENU, ["1"])
    kinds = [(e.kind, e.step, e.action) for e in r.trace]
    assert kinds[0] == ("action", 1, "menu")
    assert ("action", 2, "sales") in kinds
    assert kinds[-1] == ("end", 2, "sales")
    first = r.trace[0]
    assert str(first) == "step 1: menu (getdtmf)"
    assert (first.position.line, first.position.column) == (2, 1)  # type: ignore[union-attr]


def test_the_engine_runs_many_calls_at_once() -> None:
    flow = load(MENU)
    engine = FlowEngine()

    async def all_calls() -> list[EndReason]:
        keys = (["1"], ["101"], ["55"] * 3, [])
        calls = [ScriptedCall(k, ["answered"]) for k in keys]
        results = await asyncio.gather(*(engine.run(flow, c) for c in calls))
        return [r.reason for r in results]

    assert asyncio.run(all_calls()) == [
        EndReason.HANGUP,
        EndReason.BRIDGED,
        EndReason.END_OF_FLOW,
        EndReason.HANGUP,
    ]
