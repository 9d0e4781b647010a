"""The loader: every kind of error with its exact line and column, safe XML, and the scripts
that must load (the spec's example, miniSIPServer-style scripts, the shipped default)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipswitch.ivr.errors import ScriptError
from sipswitch.ivr.loader import MAX_SCRIPT_BYTES, load_flow, parse_flow
from sipswitch.ivr.model import (
    CallToAction,
    CheckTimeAction,
    GetDtmfAction,
    GotoAction,
    HangupAction,
    PlayAction,
    RecordAction,
    SetVarAction,
    Template,
    VoicemailAction,
    WaitAction,
)
from sipswitch.ivr.registry import BUILTIN_SCRIPTS
from tests.ivr.helpers import FIXTURES, has_prompt, issues, load, locate, script

# ---------------------------------------------------------------------------- scripts that load


def test_the_spec_example_loads_with_every_value() -> None:
    flow = load_flow(FIXTURES / "spec-example.xml", has_prompt)
    assert [a.name for a in flow.actions] == [
        "mainAction",
        "sales",
        "callto101",
        "dialExtension",
        "operator",
    ]
    main = flow.entry
    assert isinstance(main, GetDtmfAction)
    assert (main.voices, main.max_digits, main.first_timeout, main.retries) == (
        ("welcome",),
        3,
        5.0,
        2,
    )
    assert [str(m) for m in main.matches] == ['digits="1"', 'pattern="1XX"']
    assert {d: r.nextaction for d, r in main.events.items()} == {
        "timeout": "operator",
        "invalid": "operator",
    }
    dial = flow.action("dialExtension")
    assert isinstance(dial, CallToAction)
    assert dial.destination == Template.parse("${dtmf}")
    assert main.position.line == 3 and main.position.column == 3


def test_a_minisipserver_callto_script_loads_unchanged() -> None:
    flow = load_flow(FIXTURES / "mss-callto.xml")
    first = flow.entry
    assert isinstance(first, CallToAction) and str(first.destination) == "100"
    assert first.events["busy"].nextaction == "callto101"
    assert flow.following(first) is flow.action("callto101")


def test_a_monitor_event_directly_in_the_action_is_accepted() -> None:
    flow = load(
        script(
            '<action name="a" method="callto"><destination>100</destination>\n'
            '  <monitor-event detection="busy" nextaction="b"/></action>\n'
            '<action name="b" method="hangup"/>'
        )
    )
    assert flow.entry.events["busy"].nextaction == "b"


def test_the_shipped_auto_attendant_loads_with_the_shipped_prompt_names() -> None:
    used: list[str] = []

    def exists(name: str) -> bool:
        used.append(name)
        return has_prompt(name)

    flow = load_flow(BUILTIN_SCRIPTS / "auto-attendant.xml", exists)
    assert set(used) == {
        "welcome",
        "enter-extension",
        "please-hold",
        "busy",
        "no-answer",
        "invalid",
        "goodbye",
    }
    assert flow.entry.name == "welcome"


def test_every_method_with_every_child() -> None:
    flow = load(
        script(
            """\
<action name="p" method="play"><voice>welcome.wav</voice><voice>menu</voice>
  <repeat>2</repeat><nextaction>g</nextaction></action>
<action name="g" method="getdtmf"><voice>menu</voice><maxdigits>4</maxdigits>
  <timeout>2.5</timeout><interdigit-timeout>1</interdigit-timeout>
  <terminator>*</terminator><retries>0</retries><var>choice</var>
  <match-digits><match digits="1" nextaction="c"/><match pattern="9." nextaction="r"/>
  </match-digits><nextaction>r</nextaction></action>
<action name="c" method="callto"><destination>1${choice}</destination><timeout>20</timeout>
  <callerid>${caller}</callerid></action>
<action name="r" method="record"><file>msg-${caller}</file><maxtime>30</maxtime>
  <terminator>none</terminator><beep>no</beep><var>saved</var><nextaction>s</nextaction></action>
<action name="s" method="setvar"><var name="who">${saved}</var><var name="empty"></var>
  <nextaction>t</nextaction></action>
<action name="t" method="checktime">
  <period days="mon-fri" time="09:00-12:00,13:00-18:00" nextaction="w"/>
  <period days="sat" nextaction="v"/><period time="22:00-06:00" nextaction="h"/>
  <nextaction>v</nextaction></action>
<action name="w" method="wait"><seconds>0.5</seconds><nextaction>v</nextaction></action>
<action name="v" method="voicemail"><mailbox>${called}</mailbox></action>
<action name="h" method="hangup"/>
<action name="x" method="goto"><nextaction>h</nextaction></action>"""
        )
    )
    p, g, c, r, s, t, w, v, h, x = flow.actions
    assert isinstance(p, PlayAction) and p.voices == ("welcome", "menu") and p.repeat == 2
    assert isinstance(g, GetDtmfAction)
    assert (g.max_digits, g.first_timeout, g.inter_digit_timeout) == (4, 2.5, 1.0)
    assert (g.terminator, g.retries, g.var, g.nextaction) == ("*", 0, "choice", "r")
    assert isinstance(c, CallToAction) and c.ring_timeout == 20 and str(c.caller_id) == "${caller}"
    assert isinstance(r, RecordAction)
    assert (r.max_seconds, r.terminator, r.beep, r.var) == (30, None, False, "saved")
    assert isinstance(s, SetVarAction) and [n for n, _ in s.assignments] == ["who", "empty"]
    assert isinstance(t, CheckTimeAction) and len(t.periods) == 3
    assert t.periods[0].days == frozenset(range(5))
    assert t.periods[0].times == ((540, 720), (780, 1080))
    assert t.periods[2].times == ((1320, 360),)
    assert isinstance(w, WaitAction) and w.seconds == 0.5
    assert isinstance(v, VoicemailAction) and isinstance(h, HangupAction)
    assert isinstance(x, GotoAction) and x.nextaction == "h"


def test_defaults_of_an_action_without_children() -> None:
    flow = load(script('<action name="g" method="getdtmf"/>\n<action name="w" method="wait"/>'))
    g, w = flow.actions
    assert isinstance(g, GetDtmfAction)
    assert (g.voices, g.max_digits, g.first_timeout, g.inter_digit_timeout) == ((), 1, 5.0, 3.0)
    assert (g.terminator, g.retries, g.var, g.matches) == ("#", 2, "dtmf", ())
    assert isinstance(w, WaitAction) and w.seconds == 1.0


def test_comments_cdata_and_whitespace_are_fine() -> None:
    flow = load(
        "<?xml version='1.0' encoding='UTF-8'?>\n<!-- a comment -->\n"
        '<mssxml version=" 1 ">\n  <!-- c -->\n'
        '  <action name=" a " method=" callto ">'
        "<destination><![CDATA[ 100 ]]></destination></action>\n</mssxml>"
    )
    action = flow.entry
    assert action.name == "a" and isinstance(action, CallToAction)
    assert str(action.destination) == "100"


# ---------------------------------------------------------------------------- error positions


def test_not_well_formed_xml_points_at_the_error() -> None:
    text = script('<action name="a" method="play">\n<voice>welcome</voice>')
    line, col = locate(text, "</mssxml>")
    # expat points at the name in the closing tag
    assert issues(text) == [(line, col + 2, "not well-formed XML: mismatched tag")]
    assert issues('<mssxml version="1">\n  <action name="a" name="b"/>') == [
        (2, 20, "not well-formed XML: duplicate attribute")
    ]
    assert issues("") == [(1, 1, "not well-formed XML: no element found")]


def test_wrong_root_and_version() -> None:
    assert issues('<?xml version="1.0"?>\n<vxml version="1"/>') == [
        (2, 1, "the root element must be <mssxml>, not <vxml>")
    ]
    text = '<mssxml version="2">\n<action name="a" method="hangup"/></mssxml>'
    assert issues(text) == [(1, 9, "unsupported IVR-XML version '2' (this server reads version 1)")]
    assert issues('<mssxml>\n<action name="a" method="hangup"/></mssxml>') == [
        (1, 1, '<mssxml> needs version="1"')
    ]
    assert issues('<mssxml version="1" lang="en"/>') == [
        (1, 21, "unknown attribute 'lang': <mssxml> takes only version"),
    ]
    assert issues('<mssxml version="1">\n</mssxml>') == [(1, 1, "<mssxml> holds no <action>")]


def test_unknown_method() -> None:
    text = script('<action name="a" method="dance"/>')
    assert issues(text) == [
        (
            2,
            18,
            "unknown method 'dance' (known: play, getdtmf, callto, goto, hangup, record, "
            "voicemail, setvar, checktime, wait)",
        )
    ]


def test_missing_and_duplicate_names() -> None:
    text = script(
        '<action method="hangup"/>\n'
        '<action name="" method="hangup"/>\n'
        '<action name="a" method="hangup"/>\n'
        '<action  name="a" method="hangup"/>\n'
        '<action name="b"/>'
    )
    assert issues(text) == [
        (2, 1, "<action> needs a non-empty name"),
        (3, 9, "<action> needs a non-empty name"),
        (5, 10, "duplicate action name 'a' (first at line 4, column 1)"),
        (6, 1, "action 'b' needs a method"),
    ]


def test_nextaction_naming_no_action_in_every_place() -> None:
    text = script(
        """\
<action name="g" method="getdtmf">
  <match-digits><match digits="1" nextaction="m1"/></match-digits>
  <monitor-events><monitor-event detection="timeout" nextaction="m2"/></monitor-events>
  <nextaction>m3</nextaction>
</action>
<action name="t" method="checktime"><period days="sun" nextaction="m4"/></action>
<action name="j" method="goto"><nextaction>m5</nextaction></action>"""
    )
    expected = [
        (*locate(text, 'nextaction="m1"'), "nextaction 'm1' names no action"),
        (*locate(text, 'nextaction="m2"'), "nextaction 'm2' names no action"),
        (*locate(text, "<nextaction>m3"), "nextaction 'm3' names no action"),
        (*locate(text, 'nextaction="m4"'), "nextaction 'm4' names no action"),
        (*locate(text, "<nextaction>m5"), "nextaction 'm5' names no action"),
    ]
    assert issues(text) == expected
    assert expected[0][:2] == (3, 35)


def test_a_reference_to_an_action_that_failed_is_not_reported_twice() -> None:
    text = script(
        '<action name="a" method="dance"/>\n<action name="b" method="goto">'
        "<nextaction>a</nextaction></action>"
    )
    assert [message for _, _, message in issues(text)] == [
        "unknown method 'dance' (known: play, getdtmf, callto, goto, hangup, record, "
        "voicemail, setvar, checktime, wait)"
    ]


def test_unknown_child_elements_and_attributes() -> None:
    text = script(
        """\
<action name="a" method="play" color="red">
  <voice>welcome</voice>
  <destination>100</destination>
  <voice loud="yes">menu</voice>
</action>
<action name="b" method="callto"><destination>1<b>0</b>0</destination>
  <monitor-events><event/></monitor-events></action>
<bogus/>
<action name="c" method="getdtmf"><match-digits><match digits="1" nextaction="a" x="1"/>
  <case/></match-digits></action>"""
    )
    assert issues(text) == [
        (2, 32, "unknown attribute 'color': <action> takes only name, method"),
        (4, 3, "unknown element <destination> in a play action"),
        (5, 10, "unknown attribute 'loud': <voice> takes no attributes"),
        (7, 48, "unknown element <b> in <destination>"),
        (8, 19, "unknown element <event> in <monitor-events>"),
        (9, 1, "unknown element <bogus> in <mssxml>"),
        (10, 82, "unknown attribute 'x': <match> takes only digits, pattern, nextaction"),
        (11, 3, "unknown element <case> in <match-digits>"),
    ]


def test_stray_text_and_repeated_children() -> None:
    text = script(
        '<action name="a" method="callto">hello<destination>1</destination>'
        "<destination>2</destination></action>"
    )
    assert issues(text) == [
        (2, 1, "unexpected text 'hello' in <action>"),
        (2, 67, "<destination> is given twice"),
    ]


def test_missing_required_children() -> None:
    text = script(
        '<action name="a" method="play"/>\n<action name="b" method="callto"/>\n'
        '<action name="c" method="goto"/>\n<action name="d" method="setvar"/>\n'
        '<action name="e" method="checktime"/>\n<action name="f" method="voicemail"/>'
    )
    assert issues(text) == [
        (2, 1, "a play action needs <voice>"),
        (3, 1, "a callto action needs <destination>"),
        (4, 1, "a goto action needs <nextaction>"),
        (5, 1, "a setvar action needs <var>"),
        (6, 1, "a checktime action needs <period>"),
        (7, 1, "a voicemail action needs <mailbox>"),
    ]


@pytest.mark.parametrize(
    ("child", "message"),
    [
        (
            "<maxdigits>abc</maxdigits>",
            "<maxdigits>: expected a whole number from 1 to 32, got 'abc'",
        ),
        ("<maxdigits>0</maxdigits>", "<maxdigits>: expected a whole number from 1 to 32, got '0'"),
        (
            "<maxdigits>2.5</maxdigits>",
            "<maxdigits>: expected a whole number from 1 to 32, got '2.5'",
        ),
        ("<timeout>-1</timeout>", "<timeout>: expected seconds from 0.1 to 600, got '-1'"),
        ("<timeout>1e3</timeout>", "<timeout>: expected seconds from 0.1 to 600, got '1e3'"),
        (
            f"<timeout>{'9' * 5000}</timeout>",
            "<timeout>: expected seconds from 0.1 to 600, got '99999999999999999...'",
        ),
        ("<timeout>nan</timeout>", "<timeout>: expected seconds from 0.1 to 600, got 'nan'"),
        ("<retries>11</retries>", "<retries>: expected a whole number from 0 to 10, got '11'"),
        (
            "<interdigit-timeout>0</interdigit-timeout>",
            "<interdigit-timeout>: expected seconds from 0.1 to 60, got '0'",
        ),
        (
            "<terminator>##</terminator>",
            "<terminator>: expected one key (0-9, *, #) or none, got '##'",
        ),
        (
            "<var>1x</var>",
            "'1x' is not a variable name (a letter or _, then letters, digits, _ . -; at most 64)",
        ),
        ("<var>caller</var>", "${caller} is set by the call and cannot be assigned"),
    ],
)
def test_bad_values_point_at_their_element(child: str, message: str) -> None:
    text = script(f'<action name="g" method="getdtmf">\n  {child}\n</action>')
    found = issues(text)
    assert len(found) == 1
    assert found[0][:2] == (3, 3)
    assert found[0][2].startswith(message)
    assert len(found[0][2]) < 300


def test_bad_values_of_other_methods() -> None:
    text = script(
        """\
<action name="a" method="play"><voice>welcome</voice><repeat>0</repeat></action>
<action name="b" method="callto"><destination> </destination></action>
<action name="c" method="callto"><destination>${dtmf</destination></action>
<action name="d" method="record"><beep>maybe</beep></action>
<action name="e" method="wait"><seconds>99999</seconds></action>
<action name="f" method="setvar"><var>x</var></action>
<action name="g" method="setvar"><var name="called">1</var></action>
<action name="h" method="callto"><destination>${who}</destination></action>
<action name="i" method="voicemail"><mailbox></mailbox></action>"""
    )
    assert issues(text) == [
        (2, 54, "<repeat>: expected a whole number from 1 to 100, got '0'"),
        (3, 34, "<destination> is empty"),
        (4, 34, "<destination>: '${' without a closing '}' in '${dtmf'"),
        (5, 34, "<beep>: expected yes or no, got 'maybe'"),
        (6, 32, "<seconds>: expected seconds from 0.1 to 3600, got '99999'"),
        (7, 34, '<var> needs a name="…" attribute'),
        (8, 39, "${called} is set by the call and cannot be assigned"),
        (9, 34, "unknown variable ${who}: no action sets it"),
        (10, 37, "<mailbox> is empty"),
    ]


def test_digit_matches_are_checked() -> None:
    text = script(
        """\
<action name="g" method="getdtmf"><maxdigits>2</maxdigits><match-digits>
  <match digits="1a" nextaction="g"/>
  <match pattern="1Y" nextaction="g"/>
  <match digits="1" pattern="1" nextaction="g"/>
  <match digits="1"/>
  <match pattern="1XX" nextaction="g"/>
</match-digits></action>
<action name="h" method="getdtmf"><match-digits/></action>"""
    )
    assert issues(text) == [
        (3, 10, "digits='1a': use the keys 0-9, *, # and A-D"),
        (4, 10, "pattern='1Y': use the keys 0-9, *, #, A-D, X (any digit) and . (any digits)"),
        (5, 3, '<match> needs either digits="…" or pattern="…"'),
        (6, 3, '<match> needs a nextaction="…" attribute'),
        (7, 10, 'pattern="1XX" can never match: it needs 3 keys and <maxdigits> is 2'),
        (9, 35, "<match-digits> holds no <match>"),
    ]


def test_monitor_events_are_checked() -> None:
    text = script(
        """\
<action name="c" method="callto"><destination>100</destination><monitor-events>
  <monitor-event detection="engaged" nextaction="c"/>
  <monitor-event detection="timeout" nextaction="c"/>
  <monitor-event detection="busy" nextaction="c"/>
  <monitor-event detection="busy" nextaction="c"/>
  <monitor-event nextaction="c"/>
  <monitor-event detection="reject"/>
</monitor-events></action>
<action name="p" method="play"><voice>welcome</voice>
  <monitor-events><monitor-event detection="busy" nextaction="c"/></monitor-events></action>"""
    )
    assert issues(text) == [
        (
            3,
            18,
            "unknown detection 'engaged' (known: busy, no-answer, unreachable, reject, failure, "
            "timeout, invalid)",
        ),
        (4, 18, "a callto action never raises 'timeout' (only getdtmf does)"),
        (6, 18, "a second monitor-event for 'busy'"),
        (7, 3, '<monitor-event> needs a detection="…" attribute'),
        (8, 3, '<monitor-event> needs a nextaction="…" attribute'),
        (11, 34, "a play action never raises 'busy' (only callto does)"),
    ]


def test_checktime_periods_are_checked() -> None:
    text = script(
        """\
<action name="t" method="checktime">
  <period days="mon-fry" nextaction="t2"/>
  <period time="9:00-25:00" nextaction="t2"/>
  <period time="09:00" nextaction="t2"/>
  <period time="10:00-10:00" nextaction="t2"/>
  <period days="sat" time="24:00-01:00" nextaction="t2"/>
</action>
<action name="t2" method="hangup"/>"""
    )
    assert issues(text) == [
        (3, 11, "'fry' is not a day (mon, tue, wed, thu, fri, sat, sun)"),
        (4, 11, "'25:00' is not a time of day"),
        (5, 11, "time='09:00': expected HH:MM-HH:MM"),
        (6, 11, "time='10:00-10:00': the range is empty"),
        (7, 22, "'24:00' is not a time of day"),
    ]


def test_missing_prompts_are_load_errors() -> None:
    text = script(
        '<action name="a" method="play"><voice>welcome</voice>\n'
        "  <voice>nosuch.wav</voice></action>\n"
        '<action name="b" method="getdtmf"><voice>../../etc/passwd</voice></action>\n'
        '<action name="c" method="play"><voice>digit-${dtmf}</voice></action>\n'
        '<action name="d" method="play"><voice> </voice></action>\n'
        '<action name="e" method="play"><voice>sales//x</voice></action>'
    )
    rule = "a prompt name in the voice folder (a sub-folder is fine; no '..', no variables)"
    assert issues(text) == [
        (3, 3, "prompt 'nosuch' does not exist in the voice folder"),
        (4, 35, f"<voice> '../../etc/passwd': {rule}"),
        (5, 32, f"<voice> 'digit-${{dtmf}}': {rule}"),
        (6, 32, "<voice> is empty"),
        (7, 32, f"<voice> 'sales//x': {rule}"),
    ]


def test_the_prompt_callback_may_say_what_is_wrong_and_is_asked_once() -> None:
    asked: list[str] = []

    def check(name: str) -> bool:
        asked.append(name)
        if name == "sales/intro":
            return True
        raise ValueError(f"{name}.wav: 44100 Hz, expected 8000 Hz")

    text = script(
        '<action name="a" method="play"><voice>sales/intro</voice><voice>loud</voice>\n'
        "<voice>loud.wav</voice><voice>sales/intro.WAV</voice></action>"
    )
    with pytest.raises(ScriptError) as info:
        parse_flow(text, "t.xml", check)
    assert [str(i) for i in info.value.issues] == [
        "t.xml:2:58: prompt 'loud': loud.wav: 44100 Hz, expected 8000 Hz",
        "t.xml:3:1: prompt 'loud': loud.wav: 44100 Hz, expected 8000 Hz",
    ]
    assert asked == ["sales/intro", "loud"]


def test_prompts_are_not_checked_without_a_callback() -> None:
    flow = parse_flow(script('<action name="a" method="play"><voice>any</voice></action>'))
    assert flow.prompts() == ["any"]


# ---------------------------------------------------------------------------- loops


def test_a_goto_loop_is_found_statically() -> None:
    text = script(
        """\
<action name="start" method="play"><voice>welcome</voice></action>
<action name="a" method="goto"><nextaction>b</nextaction></action>
<action name="b" method="goto"><nextaction>a</nextaction></action>"""
    )
    assert issues(text) == [(3, 1, "actions a → b → a loop forever without waiting for the caller")]


def test_a_setvar_and_checktime_loop_and_a_self_loop() -> None:
    text = script(
        """\
<action name="s" method="setvar"><var name="x">${x}1</var></action>
<action name="t" method="checktime"><period days="mon" nextaction="s"/>
  <nextaction>u</nextaction></action>
<action name="u" method="goto"><nextaction>u</nextaction></action>"""
    )
    assert issues(text) == [
        (2, 1, "actions s → t → s loop forever without waiting for the caller"),
        (5, 1, "actions u → u loop forever without waiting for the caller"),
    ]


def test_loops_through_an_action_that_waits_are_fine() -> None:
    flow = load(
        script(
            """\
<action name="hold" method="play"><voice>hold-music</voice></action>
<action name="count" method="setvar"><var name="n">${n}1</var></action>
<action name="again" method="goto"><nextaction>hold</nextaction></action>
<action name="ask" method="getdtmf"><monitor-events>
  <monitor-event detection="timeout" nextaction="ask"/></monitor-events></action>"""
        )
    )
    assert len(flow.actions) == 4


def test_the_default_path_into_a_loop_counts() -> None:
    # t falls through to the next action (u) when no period matches, and u jumps back to t.
    text = script(
        '<action name="t" method="checktime"><period days="mon" nextaction="h"/></action>\n'
        '<action name="u" method="goto"><nextaction>t</nextaction></action>\n'
        '<action name="h" method="hangup"/>'
    )
    assert issues(text) == [(2, 1, "actions t → u → t loop forever without waiting for the caller")]


# ---------------------------------------------------------------------------- safe XML, files


def test_entity_expansion_is_refused() -> None:
    with pytest.raises(ScriptError) as info:
        load_flow(FIXTURES / "billion-laughs.xml")
    assert str(info.value) == (
        f"{FIXTURES / 'billion-laughs.xml'}:3:3: entity declaration 'lol' refused: "
        "IVR-XML allows no entity declarations"
    )


def test_external_entities_are_refused() -> None:
    with pytest.raises(ScriptError) as info:
        load_flow(FIXTURES / "external-entity.xml")
    issue = info.value.first
    assert (issue.position.line, issue.position.column) == (3, 3)
    assert issue.message == (
        "external entity declaration 'secret' refused: IVR-XML allows no entity declarations"
    )
    text = '<?xml version="1.0"?>\n<!DOCTYPE mssxml SYSTEM "http://example.invalid/x.dtd">\n'
    assert issues(text + '<mssxml version="1"/>') == [
        (
            2,
            1,
            "external reference 'http://example.invalid/x.dtd' refused: IVR-XML allows no "
            "external DTD or entities",
        )
    ]


def test_an_undeclared_entity_is_not_well_formed() -> None:
    assert issues('<mssxml version="1">\n  <x>&nope;</x></mssxml>') == [
        (2, 6, "not well-formed XML: undefined entity")
    ]


def test_encoding_rules() -> None:
    assert issues('<?xml version="1.0" encoding="ISO-8859-1"?>\n<mssxml version="1"/>') == [
        (1, 31, "the script must be UTF-8, not 'ISO-8859-1'")
    ]
    data = b'<mssxml version="1">\n  <action name="\xe9" method="hangup"/></mssxml>'
    with pytest.raises(ScriptError) as info:
        parse_flow(data, "latin.xml")
    assert str(info.value) == "latin.xml:2:17: the script is not valid UTF-8"


def test_columns_count_characters_not_bytes() -> None:
    text = script('<action name="äöü" method="play"><voice>nicht-da</voice></action>')
    assert issues(text) == [(2, 34, "prompt 'nicht-da' does not exist in the voice folder")]


def test_a_file_that_cannot_be_read_or_is_too_large(tmp_path: Path) -> None:
    with pytest.raises(ScriptError) as info:
        load_flow(tmp_path / "missing.xml")
    assert str(info.value).startswith(f"{tmp_path / 'missing.xml'}:1:1: cannot read the file:")
    big = tmp_path / "big.xml"
    big.write_bytes(b"<mssxml version='1'>" + b" " * MAX_SCRIPT_BYTES + b"</mssxml>")
    with pytest.raises(ScriptError) as info:
        load_flow(big)
    assert info.value.first.message == f"the script is larger than {MAX_SCRIPT_BYTES} bytes"


def test_many_errors_are_capped() -> None:
    body = "\n".join(f'<action name="a{i}" method="nope"/>' for i in range(200))
    with pytest.raises(ScriptError) as info:
        parse_flow(script(body))
    assert len(info.value.issues) == 50


SPEC_BYTES = (FIXTURES / "spec-example.xml").read_bytes()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(SPEC_BYTES)), st.integers(0, 8), st.binary(max_size=8)),
        min_size=1,
        max_size=4,
    )
)
def test_a_mangled_script_loads_or_fails_with_positions(
    edits: list[tuple[int, int, bytes]],
) -> None:
    data = SPEC_BYTES
    for start, length, insert in edits:
        data = data[:start] + insert + data[start + length :]
    try:
        parse_flow(data, "m.xml", has_prompt)
    except ScriptError as exc:
        lines = data.count(b"\n") + 1
        for issue in exc.issues:
            assert issue.position.file == "m.xml"
            assert 1 <= issue.position.line <= lines and issue.position.column >= 1
