"""The media relay on loopback: a call to an extension set to forward media (``sipswitch ext
set 201 --forward-media``), or any call with ``[relay] always``, reaches each phone with the
server's address and relay ports in its SDP instead of the other phone's; RTP sent by the
caller comes back from the callee's SIPp echo (``-rtp_echo``) through the relay; after the BYE
the relay's ports are closed. Each with the in-process relay and with an rtpengine daemon
(``[relay] engine = "rtpengine"``). A call between two local phones with neither switch keeps
the phones' own media addresses.

The caller's media port is an RTP socket of the test (SIPp's ``-key rtpport``), which sends
G.711 packets with its own SSRC and records what comes back."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sipswitch.media.rtpengine import RtpEngineDaemon
from sipswitch.sdp import SessionDescription, parse
from tests.netns.sipswitch_ns import RtpEngineProcess

from . import sip_trace
from .conftest import ServerFactory
from .harness import SipswitchServer, server_missing
from .ports import HOST, free_port, free_port_block, port_in_use
from .rtp_probe import RtpProbe
from .sipp import Sipp, SippResult, run_sipp

pytestmark = [
    pytest.mark.blackbox,
    pytest.mark.skipif(server_missing(), reason="sipswitch.pbx.server does not exist yet"),
]

CALLER, CALLEE = "200", "201"
MEDIA_PORTS = 200  # the server's [media] range for relay ports
PACKETS = 100  # 2 s of 20 ms packets from the caller
CALLER_SSRC = 0x5EED0200
CALL_LENGTH_MS = 3500
WAIT_S = 10.0


def _wait(predicate: Callable[[], object], timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def _sdp(message: sip_trace.TracedMessage) -> SessionDescription:
    assert message.body.strip(), f"no SDP in {message.start_line}"
    return parse(message.body.replace("\r\n", "\n").replace("\n", "\r\n"))


def _address(sdp: SessionDescription) -> tuple[str, int]:
    """Where the SDP's first audio stream is to be sent."""
    media = sdp.media[0]
    connection = media.connection or sdp.connection
    assert connection is not None, sdp.to_text()
    return connection.address, media.port


def _traced(
    sipp: Sipp,
    direction: str = "received",
    *,
    method: str | None = None,
    status: int | None = None,
) -> list[sip_trace.TracedMessage]:
    """Messages SIPp sent or received so far (its trace file is read while it runs); responses
    to INVITE only."""
    return sip_trace.find(
        sipp.workdir / "messages.log",
        direction,
        method=method,
        status=status,
        cseq_method=None if status is None else "INVITE",
    )


class Phones:
    """Caller 200 (SIPp, media on the test's RTP socket) and callee 201 (SIPp registered, with
    ``-rtp_echo`` on its media port)."""

    def __init__(self, server: SipswitchServer, workdir: Path, probe: RtpProbe) -> None:
        port = free_port()
        registered = run_sipp(
            "register",
            server.remote,
            workdir,
            users=[(CALLEE, server.users[CALLEE])],
            local_port=port,
            timeout_s=20,
            name=f"register-{CALLEE}",
        )
        assert registered.ok, registered.describe()
        self.callee = Sipp(
            "uas_answer",
            None,
            workdir,
            local_port=port,
            timeout_s=60,
            recv_timeout_ms=60000,
            extra=["-rtp_echo"],
            name=f"uas-echo-{CALLEE}",
        )
        self.callee.start().wait_listening()
        self.caller = Sipp(
            "ivr_uac_listen",  # PCMU offer on -key rtpport, stays -d ms, hangs up
            server.remote,
            workdir,
            service=CALLEE,
            users=[(CALLER, server.users[CALLER])],
            call_length_ms=CALL_LENGTH_MS,
            timeout_s=60,
            extra=["-key", "rtpport", str(probe.port)],
            name=f"uac-{CALLER}",
        )
        self.caller.start()

    def answer_sdp(self) -> SessionDescription:
        """The SDP of the 200 OK the caller got, once it got it."""
        assert _wait(lambda: _traced(self.caller, status=200)), (
            "the caller got no 200 OK:\n" + self.caller.stop().describe()
        )
        return _sdp(_traced(self.caller, status=200)[0])

    def finish(self) -> tuple[SippResult, SippResult]:
        caller = self.caller.wait(timeout_s=30)
        callee = self.callee.wait(timeout_s=15)
        return caller, callee

    def stop(self) -> None:
        self.caller.stop()
        self.callee.stop()


def _send_rtp(probe: RtpProbe, dest: tuple[str, int], count: int) -> None:
    """``count`` PCMU packets, 20 ms apart, from the probe's socket (the caller's media port)."""
    start = time.monotonic()
    for seq in range(count):
        header = struct.pack("!BBHII", 0x80, 0, seq, seq * 160, CALLER_SSRC)
        probe.sock.sendto(header + bytes([0xFF]) * 160, dest)
        delay = start + (seq + 1) * 0.02 - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _closed(port: int) -> bool:
    """Nothing listens on the UDP port: a datagram to it is refused (ICMP port unreachable)."""
    if port_in_use(port, "udp"):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        sock.connect((HOST, port))
        sock.send(b"\x80\x00\x00\x01" + bytes(168))
        try:
            sock.recv(2048)
        except ConnectionRefusedError:
            return True
        except TimeoutError:
            return False
    return False


def _relay_server(
    factory: ServerFactory, how: str, rtpengine: RtpEngineProcess | None = None
) -> tuple[SipswitchServer, range]:
    """A server whose calls to 201 are relayed (``how``: "extension" sets 201's forward_media,
    "always" sets [relay] always, "off" neither), by ``rtpengine`` when given."""
    if rtpengine is not None:
        low, high = rtpengine.daemon.port_min, rtpengine.daemon.port_max
        config = rtpengine.relay_config
    else:
        low = free_port_block(MEDIA_PORTS)
        high = low + MEDIA_PORTS - 1
        config = f"[media]\nrtp_port_min = {low}\nrtp_port_max = {high}\n\n[relay]\n"
    if how == "always":
        config += "always = true\n"
    server = factory(extra_config=config, start=False)
    if how == "extension":
        done = server.cli("ext", "set", CALLEE, "--forward-media")
        assert done.returncode == 0, done.stdout + done.stderr
    server.start()
    return server, range(low, high + 1)


@pytest.fixture(params=["inprocess", "rtpengine"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RtpEngineProcess | None]:
    """The relay engine: the server's own (None), or an rtpengine daemon on 127.0.0.1."""
    if request.param == "inprocess":
        yield None
        return
    if RtpEngineDaemon.available() is None:
        pytest.skip("rtpengine is not installed (Debian package rtpengine-daemon)")
    low = free_port_block(MEDIA_PORTS)
    daemon = RtpEngineProcess(
        (HOST,), (low, low + MEDIA_PORTS - 1), (HOST, free_port()), tmp_path / "rtpengine.log"
    )
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.mark.parametrize("how", ["extension", "always"])
def test_relayed_call_carries_rtp_both_ways_and_closes_its_ports(
    sipswitch_server: ServerFactory,
    tmp_path: Path,
    how: str,
    engine: RtpEngineProcess | None,
) -> None:
    server, relay_ports = _relay_server(sipswitch_server, how, engine)
    with RtpProbe() as probe:
        phones = Phones(server, tmp_path, probe)
        try:
            to_caller = phones.answer_sdp()
            offers = _traced(phones.callee, method="INVITE")
            assert offers, "the callee got no INVITE"
            to_callee = _sdp(offers[0])
            answered = _traced(phones.callee, "sent", status=200)
            callee_media = answered[0].audio_port()
            # Each phone is told to send to the server's relay, not to the other phone.
            caller_dest, callee_dest = _address(to_caller), _address(to_callee)
            assert caller_dest[0] == server.host and callee_dest[0] == server.host
            assert to_callee.origin.address == server.host, to_callee.to_text()
            assert caller_dest[1] in relay_ports, (caller_dest, relay_ports)
            assert callee_dest[1] in relay_ports, (callee_dest, relay_ports)
            assert caller_dest[1] != callee_media and callee_dest[1] != probe.port
            assert caller_dest[1] != callee_dest[1]
            # Two-way audio: caller -> relay -> callee's echo -> relay -> caller.
            _send_rtp(probe, caller_dest, PACKETS)
            _wait(lambda: len(probe.packets) >= PACKETS, 2.0)
        finally:
            caller, callee = phones.finish()
            phones.stop()
    assert caller.ok, caller.describe()
    assert callee.ok, callee.describe()
    back = [p for p in probe.packets if p.ssrc == CALLER_SSRC]
    assert len(back) >= PACKETS - 2, f"{len(back)} of {PACKETS} packets came back"
    assert {p.source for p in back} == {caller_dest}, {p.source for p in back}
    assert all(p.seq < PACKETS for p in back)
    # The call is over: no port of it is open any more (RTP and RTCP of both sides).
    used = [caller_dest[1], caller_dest[1] + 1, callee_dest[1], callee_dest[1] + 1]
    assert _wait(lambda: all(not port_in_use(port, "udp") for port in used)), [
        port for port in used if port_in_use(port, "udp")
    ]
    assert _closed(caller_dest[1]) and _closed(callee_dest[1])


def test_local_call_without_forward_media_keeps_phone_addresses(
    sipswitch_server: ServerFactory, tmp_path: Path
) -> None:
    """Two phones on the server's own network, neither asking for the relay: the SDP passes
    end to end, the RTP goes straight from phone to phone."""
    server, relay_ports = _relay_server(sipswitch_server, "off")
    with RtpProbe() as probe:
        phones = Phones(server, tmp_path, probe)
        try:
            to_caller = phones.answer_sdp()
            to_callee = _sdp(_traced(phones.callee, method="INVITE")[0])
            callee_media = _traced(phones.callee, "sent", status=200)[0].audio_port()
            assert _address(to_callee) == (HOST, probe.port)
            assert _address(to_caller) == (HOST, callee_media)
            _send_rtp(probe, _address(to_caller), 10)
            _wait(lambda: len(probe.packets) >= 10, 2.0)
        finally:
            caller, callee = phones.finish()
            phones.stop()
    assert caller.ok, caller.describe()
    assert callee.ok, callee.describe()
    back = [p for p in probe.packets if p.ssrc == CALLER_SSRC]
    assert len(back) >= 8 and {p.source for p in back} == {(HOST, callee_media)}
    assert not any(port_in_use(port, "udp") for port in relay_ports)
