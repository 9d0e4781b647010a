"""Forwarding, star codes and groups, driven by SIPp against the running server: the caller is
a SIPp UAC, every callee a SIPp UAS registered for its extension."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import sip_trace
from .conftest import ServerFactory, UasFactory
from .harness import SipswitchServer, server_missing
from .rtp_probe import RtpProbe, decode_pcmu, rms
from .sipp import Sipp, SippResult, run_sipp

pytestmark = [
    pytest.mark.blackbox,
    pytest.mark.skipif(server_missing(), reason="sipswitch.pbx.server does not exist yet"),
]

GROUPS = """
[[groups]]
number = "600"
strategy = "ring"
members = ["201", "202"]
ring_timeout = 10

[[groups]]
number = "610"
strategy = "linear"
members = ["201", "202"]
ring_timeout = 5
"""


def _server(
    factory: ServerFactory, *settings: tuple[str, ...], **options: object
) -> SipswitchServer:
    server = factory(start=False, **options)
    for args in settings:
        result = server.cli("ext", "set", *args)
        assert result.returncode == 0, result.stderr
    server.start()
    return server


def _call(server: SipswitchServer, number: str, workdir: Path) -> SippResult:
    return run_sipp(
        "uac_call_forwarded",
        server.remote,
        workdir,
        service=number,
        users=[("200", server.users["200"])],
        timeout_s=60,
        # Forwarding on no answer waits 5 s with nothing new for the caller to receive.
        recv_timeout_ms=15000,
        name=f"call-{number}",
    )


def test_forward_always(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    server = _server(sipswitch_server, ("201", "--forward-always", "202"))
    target = sipp_uas(server, "202", "uas_answer")
    caller = _call(server, "201", tmp_path)
    assert caller.ok, caller.describe()
    assert target.wait(timeout_s=30).ok


def test_forward_on_busy(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    server = _server(sipswitch_server, ("201", "--forward-busy", "202"))
    busy = sipp_uas(server, "201", "uas_busy")
    target = sipp_uas(server, "202", "uas_answer")
    caller = _call(server, "201", tmp_path)
    assert caller.ok, caller.describe()
    assert busy.wait(timeout_s=30).ok and target.wait(timeout_s=30).ok


def test_forward_on_no_answer(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    server = _server(
        sipswitch_server, ("201", "--forward-no-answer", "202", "--no-answer-timeout", "5")
    )
    ringing = sipp_uas(server, "201", "uas_ring")  # cancelled after 5 s
    target = sipp_uas(server, "202", "uas_answer")
    caller = _call(server, "201", tmp_path)
    assert caller.ok, caller.describe()
    assert ringing.wait(timeout_s=30).ok and target.wait(timeout_s=30).ok


def test_forward_when_unreachable(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    server = _server(sipswitch_server, ("201", "--forward-unreachable", "202"))
    target = sipp_uas(server, "202", "uas_answer")  # 201 is not registered
    caller = _call(server, "201", tmp_path)
    assert caller.ok, caller.describe()
    assert target.wait(timeout_s=30).ok


def test_ring_group_first_answer_wins(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    server = _server(sipswitch_server, extra_config=GROUPS)
    ringing = sipp_uas(server, "201", "uas_ring")  # gets the CANCEL when 202 answers
    target = sipp_uas(server, "202", "uas_answer")
    caller = _call(server, "600", tmp_path)
    assert caller.ok, caller.describe()
    assert ringing.wait(timeout_s=30).ok and target.wait(timeout_s=30).ok


def test_linear_hunt_group_moves_on_from_busy(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    server = _server(sipswitch_server, extra_config=GROUPS)
    busy = sipp_uas(server, "201", "uas_busy")
    target = sipp_uas(server, "202", "uas_answer")
    caller = _call(server, "610", tmp_path)
    assert caller.ok, caller.describe()
    assert busy.wait(timeout_s=30).ok and target.wait(timeout_s=30).ok


def test_star_code_is_confirmed_by_voice_then_applies(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    """200 dials *93*202#: the server answers, says "call forwarding is set to two zero two"
    (RTP to SIPp's media port) and hangs up with a BYE; a call to 200 then reaches 202."""
    server = _server(sipswitch_server)
    with RtpProbe() as probe:
        setter = Sipp(
            "vm_uac_listen",  # answered by the server, which then hangs up
            server.remote,
            tmp_path,
            service="*93*202#",
            users=[("200", server.users["200"])],
            timeout_s=60,
            extra=["-key", "rtpport", str(probe.port)],
            name="star-code",
        ).start()
        confirmed = setter.wait()
    assert confirmed.ok, confirmed.describe()
    assert sip_trace.find(confirmed, "received", method="BYE"), confirmed.describe()
    spoken = [p for p in probe.packets if p.payload_type == 0]
    # The prompt (1.9 s) and three digits (3.6 s in all): well over 2.5 s of 20 ms packets.
    assert len(spoken) > 125, (len(spoken), len(probe.packets), server.log_tail())
    loud = [p for p in spoken if rms(decode_pcmu(p.payload)) > 500]
    assert len(loud) > 50, len(loud)  # speech, not silence

    target = sipp_uas(server, "202", "uas_answer")
    caller = run_sipp(
        "uac_call_forwarded",
        server.remote,
        tmp_path,
        service="200",
        users=[("201", server.users["201"])],
        timeout_s=60,
        recv_timeout_ms=15000,  # as the other calls here: a loaded machine is slow to ring
        name="call-200",
    )
    assert caller.ok, caller.describe()
    assert target.wait(timeout_s=30).ok
