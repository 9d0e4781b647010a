"""IVR flows on the running server with SIPp as the phones: the auto attendant on 800 answers
and plays paced RTP, takes an extension number as RFC 4733 events or SIP INFO and joins the
caller to that extension (RFC 3725 flow I: the callee is invited without an offer, its offer
goes to the caller in a re-INVITE, the caller's answer back in the ACK), and a script's
``callto`` monitor-events (busy, no-answer, unreachable) lead the call to another extension."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import sip_trace
from .conftest import ServerFactory, UasFactory
from .harness import SipswitchServer, server_missing
from .rtp_probe import RtpProbe, by_ssrc, check_stream, decode_pcmu, rms
from .sipp import Sipp, SippResult, run_sipp

pytestmark = [
    pytest.mark.blackbox,
    pytest.mark.skipif(server_missing(), reason="sipswitch.pbx.server does not exist yet"),
]

CALLER = "200"
ATTENDANT = "800"  # the shipped auto attendant's number
SCRIPT_NUMBER = "810"
PCMU = 0
FRAME = 160  # samples in a 20 ms PCMU packet


def _call(
    server: SipswitchServer, scenario: str, number: str, workdir: Path, **options: object
) -> SippResult:
    return run_sipp(
        scenario,
        server.remote,
        workdir,
        service=number,
        users=[(CALLER, server.users[CALLER])],
        timeout_s=60,
        name=f"{scenario}-{number}",
        **options,
    )


def _assert_joined(caller: SippResult, callee: SippResult) -> None:
    """The callee's offer reached the caller in the server's re-INVITE, and the caller's answer
    reached the callee in the ACK: the two phones now send their audio to each other."""
    offers = sip_trace.find(callee, "sent", status=200, cseq_method="INVITE")
    reinvites = sip_trace.find(caller, "received", method="INVITE")
    answers = sip_trace.find(caller, "sent", status=200, cseq_method="INVITE")
    acks = sip_trace.find(callee, "received", method="ACK")
    assert offers and reinvites and answers and acks, (offers, reinvites, answers, acks)
    assert sip_trace.find(callee, "received", method="INVITE")[0].audio_port() is None
    assert reinvites[-1].audio_port() == offers[-1].audio_port() is not None
    assert acks[-1].audio_port() == answers[-1].audio_port() is not None


def test_attendant_answers_with_paced_rtp(
    sipswitch_server: ServerFactory, tmp_path: Path
) -> None:
    """The welcome prompt arrives as one PCMU stream of 20 ms packets, about 50 a second,
    with sequence numbers +1 and timestamps +160 from packet to packet."""
    server = sipswitch_server()
    with RtpProbe() as probe:
        result = _call(
            server,
            "ivr_uac_listen",
            ATTENDANT,
            tmp_path,
            call_length_ms=3000,
            extra=["-key", "rtpport", str(probe.port)],
        )
    assert result.ok, result.describe()
    streams = by_ssrc(probe.packets)
    assert len(streams) == 1, {hex(k): len(v) for k, v in streams.items()}
    (packets,) = streams.values()
    assert len(packets) >= 100, len(packets)
    stream = check_stream(packets)
    assert stream.payload_types == {PCMU}, stream.describe()
    assert stream.first_marker, stream.describe()
    # Continuity: every packet follows the one before, on a 20 ms timestamp grid. A server
    # that fell far behind may skip frames (a timestamp jump with the next sequence number),
    # never go back or leave the grid.
    assert set(stream.seq_steps) == {1}, stream.describe()
    assert all(step > 0 and step % FRAME == 0 for step in stream.ts_steps), stream.describe()
    assert stream.ts_steps[FRAME] >= 0.99 * (len(packets) - 1), stream.describe()
    # Pacing: 50 packets a second, and the media clock keeps pace with the arrivals.
    assert 45 <= stream.packets_per_s <= 55, stream.describe()
    assert abs(stream.timestamp_span_s / stream.arrival_span_s - 1) < 0.1, stream.describe()
    # It is the prompt, not a silent line: a second or more of audible frames.
    audible = [p for p in packets if rms(decode_pcmu(p.payload)) > 300]
    assert len(audible) >= 50, f"{len(audible)} audible packets of {len(packets)}"


@pytest.mark.parametrize(
    ("scenario", "how"),
    [("ivr_uac_dial_rfc4733", "RFC 4733 events"), ("ivr_uac_dial_info", "SIP INFO")],
    ids=["rfc4733", "info"],
)
def test_attendant_dials_extension_and_joins_the_caller(
    sipswitch_server: ServerFactory,
    sipp_uas: UasFactory,
    tmp_path: Path,
    scenario: str,
    how: str,
) -> None:
    """The caller types 2 0 1 # (as RFC 4733 events or SIP INFO) after the welcome; after
    "please hold" extension 201 rings, answers, and is joined to the caller."""
    server = sipswitch_server()
    callee = sipp_uas(server, "201", "ivr_uas_offer", timeout_s=60)
    caller = _call(server, scenario, ATTENDANT, tmp_path)
    assert caller.ok, f"dialling by {how}:\n{caller.describe()}"
    answered = callee.wait(timeout_s=30)
    assert answered.ok and answered.successful == 1, answered.describe()
    _assert_joined(caller, answered)
    # The caller hung up the joined call: the callee saw the BYE from the server.
    assert sip_trace.find(answered, "received", method="BYE")


def _fallback_script(detection: str, *, answer_first: bool = True) -> str:
    """Rings 201 for 2 s; the ``detection`` outcome goes on to 202, any other failure hangs
    up (so reaching 202 proves the outcome was the one named)."""
    hold = '  <action name="hold" method="play"><voice>please-hold</voice></action>\n'
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<mssxml version="1">\n'
        + (hold if answer_first else "")
        + '  <action name="first" method="callto">\n'
        "    <destination>201</destination>\n"
        "    <timeout>2</timeout>\n"
        "    <monitor-events>\n"
        f'      <monitor-event detection="{detection}" nextaction="second"/>\n'
        '      <monitor-event detection="failure" nextaction="refuse"/>\n'
        "    </monitor-events>\n"
        "  </action>\n"
        '  <action name="refuse" method="hangup"/>\n'
        '  <action name="second" method="callto">\n'
        "    <destination>202</destination>\n"
        "  </action>\n"
        "</mssxml>\n"
    )


def _script_server(factory: ServerFactory, script: str) -> SipswitchServer:
    """A server with ``script`` in its data/xml folder, bound to SCRIPT_NUMBER."""
    server = factory(
        start=False, extra_config=f'[ivr.numbers]\n"{SCRIPT_NUMBER}" = "fallback.xml"\n'
    )
    folder = server.data_dir / "xml"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fallback.xml").write_text(script)
    return server.start()


FIRST_CALLEE = {"busy": "uas_busy", "no-answer": "uas_ring", "unreachable": None}


@pytest.mark.parametrize("detection", ["busy", "no-answer", "unreachable"])
def test_callto_monitor_event_leads_to_second_extension(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path, detection: str
) -> None:
    """201 answers 486 / rings past the 2 s timeout / is not registered; the script's
    monitor-event for that outcome calls 202, which answers and is joined to the caller."""
    server = _script_server(sipswitch_server, _fallback_script(detection))
    first: Sipp | None = None
    scenario = FIRST_CALLEE[detection]
    if scenario is not None:
        first = sipp_uas(server, "201", scenario, timeout_s=60)
    second = sipp_uas(server, "202", "ivr_uas_offer", timeout_s=60)
    caller = _call(server, "ivr_uac_joined", SCRIPT_NUMBER, tmp_path)
    assert caller.ok, caller.describe()
    if first is not None:
        rung = first.wait(timeout_s=30)
        assert rung.ok, rung.describe()
    answered = second.wait(timeout_s=30)
    assert answered.ok and answered.successful == 1, answered.describe()
    _assert_joined(caller, answered)


def test_other_outcome_takes_the_failure_event(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    """Control: the script continues on ``busy`` only; 201 rings without answering, so the
    outcome is no-answer, the ``failure`` event hangs up, and 202 never rings."""
    server = _script_server(sipswitch_server, _fallback_script("busy"))
    first = sipp_uas(server, "201", "uas_ring", timeout_s=60)
    second = sipp_uas(server, "202", "ivr_uas_offer", timeout_s=60)
    caller = _call(server, "ivr_uac_hung_up", SCRIPT_NUMBER, tmp_path)
    assert caller.ok, caller.describe()
    rung = first.wait(timeout_s=30)
    assert rung.ok, rung.describe()
    assert not sip_trace.find(second.stop(), "received", method="INVITE")


def test_callto_as_first_action_reaches_the_callee(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    """A script that starts with callto: the caller is not answered by the server, hears the
    callee ring, and is connected when it answers, with one complete offer/answer exchange
    between the phones (the caller's offer in the callee's INVITE or the callee's answer to
    it in the ACK)."""
    server = _script_server(sipswitch_server, _fallback_script("busy", answer_first=False))
    callee = sipp_uas(server, "201", "uas_answer", timeout_s=60)
    caller = _call(server, "uac_call", SCRIPT_NUMBER, tmp_path, call_length_ms=500)
    assert caller.ok, caller.describe()
    answered = callee.wait(timeout_s=30)
    assert answered.ok, answered.describe()
    assert sip_trace.find(caller, "received", status=180), "the caller did not hear it ring"
    invite = sip_trace.find(answered, "received", method="INVITE")[0]
    ack = sip_trace.find(answered, "received", method="ACK")[0]
    sent_offer = sip_trace.find(caller, "sent", method="INVITE")[-1].audio_port()
    if invite.audio_port() is not None:
        # The caller's offer was passed on: the callee's answer reached the caller.
        assert invite.audio_port() == sent_offer
        got = sip_trace.find(caller, "received", status=200, cseq_method="INVITE")[-1]
        callee_sdp = sip_trace.find(answered, "sent", status=200, cseq_method="INVITE")[-1]
        assert got.audio_port() == callee_sdp.audio_port()
    else:
        # Invited without an offer: the callee's offer needs an answer in the ACK.
        assert ack.audio_port() is not None, "the ACK to an offer in a 2xx carries no answer"
