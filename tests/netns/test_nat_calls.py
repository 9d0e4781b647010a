"""Calls through a sipswitch server between a phone behind an nftables NAT and a phone on the
WAN, in network namespaces (see topology.py): the server listens on its local address
(10.200.2.1, toward the LAN) and its external one (198.51.100.1, toward the WAN), with ``[nat]``
naming both and 10.200.0.0/16 as its local network.

SIPp phones: 200 in the LAN (registers through the NAT), 201 on the WAN. A call is made once
per direction and relay engine (the in-process relay; an rtpengine daemon in the server's
namespace), and its evidence is checked by several tests:

- both calls connect (the LAN phone is reached through its NAT mapping);
- the Via and Contact the server sends name its external address toward the WAN phone and its
  local one toward the LAN phone;
- so does every SDP it sends, with ports of its relay (relayed without any switch: one side is
  behind NAT and the two are in different realms), and no address of one realm reaches the
  other;
- two-way audio: the LAN phone plays an RTP stream (SIPp ``play_pcap_audio``), the WAN phone
  echoes it (``-rtp_echo``); nftables counters in each phone's namespace see the stream arrive
  at the WAN phone from 198.51.100.1 and come back to the LAN phone from 10.200.2.1, which only
  works when the relay latched onto the NAT's public port;
- a third WAN address (198.51.100.3) sending to the relay's ports during the call is dropped:
  neither phone ever sees its SSRC, and it hears nothing of the call. (The WAN namespace gets a
  route to the server's local address, so it can aim at every relay socket; the counters at
  the WAN phone accept only packets from the external address.)
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sipswitch.media.rtpengine import RtpEngineDaemon
from sipswitch.sdp import SessionDescription, parse
from tests.blackbox import sip_trace
from tests.blackbox.harness import DEFAULT_USERS, server_missing
from tests.blackbox.ports import free_port
from tests.blackbox.sipp import Sipp, SippResult, sipp_available

from .counters import PacketCounters, rtp_ssrc
from .relay_control import RtpPeer
from .rtp_pcap import write_rtp_pcap
from .sipswitch_ns import (
    RTP_PORTS,
    SIP_PORT,
    NamespaceServer,
    RtpEngineProcess,
    sipp_in,
    wait_bound,
)
from .topology import IP, NatTopology

pytestmark = [
    pytest.mark.blackbox,
    pytest.mark.skipif(server_missing(), reason="sipswitch.pbx.server does not exist yet"),
    pytest.mark.skipif(not sipp_available(), reason="sipp is not installed: make test-deps"),
]

LAN_EXT, WAN_EXT = "200", "201"
PACKETS = 150  # 3 s of RTP from the LAN phone
PHONE_SSRC = 0x5EED0200
THIRD_SSRC = 0xBAD
THIRD_PACKETS = 100
CALL_LENGTH_MS = 5000
ANSWER_WAIT_S = 15.0


@dataclass
class Side:
    """One phone's namespace, address, extension and the server address it talks to."""

    name: str
    ns: str
    address: str
    extension: str
    server_address: str
    sipp_port: int = field(default_factory=free_port)

    @property
    def remote(self) -> str:
        return f"{self.server_address}:{SIP_PORT}"


@dataclass
class CallRecord:
    """What one call left: both SIPp runs, the registration, packet counts in each phone's
    namespace and the third party's reports."""

    engine: str  # the [relay] engine
    caller_side: str  # "lan" or "wan"
    caller: SippResult
    callee: SippResult
    register: SippResult
    lan: Side
    wan: Side
    lan_counts: dict[str, int]
    wan_counts: dict[str, int]
    server_counts: dict[str, int]
    third: list[dict[str, Any]]
    server_log: str

    def sipp_of(self, side: Side) -> SippResult:
        return self.caller if side.name == self.caller_side else self.callee

    def received(self, side: Side) -> list[sip_trace.TracedMessage]:
        return [m for m in sip_trace.messages(self.sipp_of(side)) if m.direction == "received"]

    def sdp_to(self, side: Side) -> SessionDescription:
        """The SDP the server sent to ``side``: in the INVITE to the callee, in the 200 OK to
        the caller."""
        for message in self.received(side):
            if message.body.strip() and (
                message.method == "INVITE"
                or (message.status == 200 and message.cseq_method == "INVITE")
            ):
                return _sdp(message.body)
        raise AssertionError(f"no SDP reached the {side.name} phone:\n{self.describe()}")

    def describe(self) -> str:
        return "\n".join(
            (self.caller.describe(), self.callee.describe(), "--- server log ---",
             self.server_log[-6000:])
        )  # fmt: skip


def _sdp(body: str) -> SessionDescription:
    return parse(body.replace("\r\n", "\n").replace("\n", "\r\n"))


def _host_of(value: str) -> str:
    """The host of a Via value or of a name-addr/URI (Contact, Record-Route)."""
    if value.startswith("SIP/2.0/"):
        return value.split()[1].split(";")[0].rsplit(":", 1)[0]
    found = re.search(r"sips?:(?:[^@>;]*@)?(\[[^\]]+\]|[^:;>]+)", value)
    assert found, value
    return found.group(1)


def _received_sdp_port(sipp: Sipp) -> int | None:
    """The audio port of the first SDP SIPp received so far (its trace is read as it runs)."""
    for message in sip_trace.messages(sipp.workdir / "messages.log"):
        if message.direction == "received" and message.body.strip():
            port = message.audio_port()
            if port is not None:
                return port
    return None


@pytest.fixture(scope="module", params=["inprocess", "rtpengine"])
def engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "rtpengine" and RtpEngineDaemon.available() is None:
        pytest.skip("rtpengine is not installed (Debian package rtpengine-daemon)")
    return name


@pytest.fixture(scope="module")
def server(
    nat: NatTopology, engine: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NamespaceServer]:
    """The server in its namespace, relaying with ``engine`` (an rtpengine daemon beside it in
    the namespace for "rtpengine")."""
    # The third party may aim at the server's local address as well as its external one.
    nat.run(nat.wan, IP, "route", "replace", "10.200.2.0/24", "via", nat.server_external)
    workdir = tmp_path_factory.mktemp(f"nat-calls-{engine}")
    rtpengine = (
        RtpEngineProcess.beside(nat, workdir / "rtpengine.log") if engine == "rtpengine" else None
    )
    sipswitch = NamespaceServer(
        workdir,
        nat,
        users={LAN_EXT: DEFAULT_USERS[LAN_EXT], WAN_EXT: DEFAULT_USERS[WAN_EXT]},
        extra_config=rtpengine.relay_config if rtpengine is not None else "",
    )
    try:
        sipswitch.add_extensions()
        sipswitch.start()
        yield sipswitch
        sipswitch.stop(check=True)
    finally:
        sipswitch.kill9()
        if rtpengine is not None:
            rtpengine.stop()


def _sides(nat: NatTopology) -> tuple[Side, Side]:
    lan = Side("lan", nat.lan, nat.phone, LAN_EXT, nat.server_local)
    wan = Side("wan", nat.wan, nat.wan_peer, WAN_EXT, nat.server_external)
    return lan, wan


def _phone(
    nat: NatTopology,
    side: Side,
    scenario: str,
    workdir: Path,
    *,
    caller: bool,
    callee: Side | None = None,
    server: NamespaceServer,
) -> Sipp:
    """The SIPp run for one side: the LAN phone plays its RTP stream, the WAN phone echoes."""
    plays = side.name == "lan"
    options: dict[str, Any] = {
        "local_port": side.sipp_port,
        "timeout_s": 60,
        "name": f"{'uac' if caller else 'uas'}-{side.name}",
        "extra": [] if plays else ["-rtp_echo"],
    }
    if caller:
        assert callee is not None
        options |= {
            "service": callee.extension,
            "users": [(side.extension, server.users[side.extension])],
            "call_length_ms": CALL_LENGTH_MS,
        }
    else:
        options["recv_timeout_ms"] = 60000
    sipp = sipp_in(nat, side.ns, side.address, scenario, side.remote if caller else None,
                   workdir, **options)  # fmt: skip
    if plays:
        write_rtp_pcap(sipp.workdir / "voice.pcap", PACKETS, PHONE_SSRC)
    return sipp


def _run_call(
    nat: NatTopology, server: NamespaceServer, engine: str, workdir: Path, lan_calls: bool
) -> CallRecord:
    lan, wan = _sides(nat)
    caller, callee = (lan, wan) if lan_calls else (wan, lan)
    register = sipp_in(
        nat, callee.ns, callee.address, "register", callee.remote, workdir,
        users=[(callee.extension, server.users[callee.extension])],
        local_port=callee.sipp_port, timeout_s=20, name=f"register-{callee.name}",
    ).start().wait()  # fmt: skip
    assert register.ok, register.describe() + "\n" + server.log_tail()
    lan_in = PacketCounters(nat, nat.lan, {
        "echo": f"ip saddr {nat.server_local} {rtp_ssrc(PHONE_SSRC)}",
        "stranger": rtp_ssrc(THIRD_SSRC),
    })  # fmt: skip
    lan_out = PacketCounters(nat, nat.lan, {"sent": rtp_ssrc(PHONE_SSRC)}, hook="output")
    wan_in = PacketCounters(nat, nat.wan, {
        "heard": f"ip saddr {nat.server_external} ip daddr {nat.wan_peer} "
                 f"{rtp_ssrc(PHONE_SSRC)}",
        "stranger": f"ip daddr {nat.wan_peer} {rtp_ssrc(THIRD_SSRC)}",
        "to_third": f"meta l4proto udp ip daddr {nat.third}",
    })  # fmt: skip
    server_in = PacketCounters(nat, nat.server, {
        "from_third": f"ip saddr {nat.third} udp dport {RTP_PORTS[0]}-{RTP_PORTS[1]}",
    })  # fmt: skip
    third: list[RtpPeer] = []
    uas = _phone(nat, callee, "relay_uas_play" if callee is lan else "uas_answer", workdir,
                 caller=False, server=server)  # fmt: skip
    uac = _phone(nat, caller, "relay_uac_play" if caller is lan else "uac_call", workdir,
                 caller=True, callee=callee, server=server)  # fmt: skip
    try:
        wait_bound(uas.start())
        uac.start()
        # Once the call is answered, the relay's ports are in the SDPs the phones received;
        # a second into the call a third party on the WAN starts sending to them.
        deadline = time.monotonic() + ANSWER_WAIT_S
        lan_port = wan_port = None
        while time.monotonic() < deadline and uac.running:
            lan_port = _received_sdp_port(uac if caller is lan else uas)
            wan_port = _received_sdp_port(uac if caller is wan else uas)
            if lan_port is not None and wan_port is not None:
                break
            time.sleep(0.05)
        targets = [
            (nat.server_external, wan_port),
            (nat.server_external, lan_port),
            (nat.server_local, lan_port),
        ]
        for number, (host, port) in enumerate(targets):
            if port is None:
                continue
            third.append(RtpPeer(
                nat, nat.wan, "--bind", f"{nat.third}:{7100 + 2 * number}",
                "--to", f"{host}:{port}", "--count", str(THIRD_PACKETS),
                "--ssrc", hex(THIRD_SSRC), "--delay", "1.0", "--linger", "1.0",
            ))  # fmt: skip
        caller_result = uac.wait(timeout_s=40)
        callee_result = uas.wait(timeout_s=20)
        reports = [peer.result() for peer in third]
        lan_counts = lan_in.read() | lan_out.read()
        wan_counts = wan_in.read()
        server_counts = server_in.read()
    finally:
        uac.stop()
        uas.stop()
        for counters in (lan_in, lan_out, wan_in, server_in):
            counters.remove()
    return CallRecord(
        engine=engine, caller_side=caller.name, caller=caller_result, callee=callee_result,
        register=register, lan=lan, wan=wan, lan_counts=lan_counts, wan_counts=wan_counts,
        server_counts=server_counts, third=reports, server_log=server.log_tail(20000),
    )  # fmt: skip


@pytest.fixture(scope="module", params=["lan-calls-wan", "wan-calls-lan"])
def call(
    request: pytest.FixtureRequest,
    nat: NatTopology,
    engine: str,
    server: NamespaceServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> CallRecord:
    """One call per direction (and engine), made once and examined by the tests below."""
    key: str = request.param
    workdir = tmp_path_factory.mktemp(f"{engine}-{key}")
    return _run_call(nat, server, engine, workdir, lan_calls=key == "lan-calls-wan")


def test_call_connects_through_the_nat(call: CallRecord) -> None:
    assert call.caller.ok, call.describe()
    assert call.callee.ok, call.describe()
    # The callee registered first (the LAN phone from behind the NAT, reached through it).
    assert call.register.ok, call.register.describe()


def test_via_and_contact_name_the_address_of_each_side(call: CallRecord) -> None:
    """Every request the server sent a phone (INVITE, ACK, BYE) has the server's address on
    that phone's side in its Via; every Contact (and Record-Route) a phone got names it."""
    callee = call.wan if call.caller_side == "lan" else call.lan
    assert any(m.method == "INVITE" for m in call.received(callee)), call.describe()
    for side in (call.lan, call.wan):
        messages = call.received(side)
        for message in messages:
            if message.method is not None:
                via = message.header("Via") or message.header("v")
                assert via is not None and _host_of(via) == side.server_address, (
                    side.name,
                    message.start_line,
                    via,
                )
            for name in ("Contact", "m", "Record-Route"):
                value = message.header(name)
                if value is not None:
                    assert _host_of(value) == side.server_address, (
                        side.name,
                        message.start_line,
                        name,
                        value,
                    )
        assert any(m.header("Contact") for m in messages), (side.name, call.describe())


def test_sdp_names_the_relay_on_the_address_of_each_side(call: CallRecord) -> None:
    for side, other in ((call.lan, call.wan), (call.wan, call.lan)):
        sdp = call.sdp_to(side)
        assert sdp.connection is not None, sdp.to_text()
        assert sdp.connection.address == side.server_address, (side.name, sdp.to_text())
        assert sdp.origin.address == side.server_address, (side.name, sdp.to_text())
        for media in sdp.media:
            assert media.connection is None or media.connection.address == side.server_address
        port = sdp.media[0].port
        assert RTP_PORTS[0] <= port <= RTP_PORTS[1], (side.name, sdp.to_text())
        # Nothing of the other realm: neither the other phone's address nor the server's
        # address there (nor the LAN's private range toward the WAN).
        text = sdp.to_text()
        assert other.address not in text and other.server_address not in text, text
        if side is call.wan:
            assert "10.200." not in text, text


def test_two_way_audio_through_the_relay_behind_nat(call: CallRecord) -> None:
    sent = call.lan_counts["sent"]
    assert sent >= PACKETS - 2, (call.lan_counts, call.describe())
    # LAN phone -> NAT -> relay (local address) -> relay (external address) -> WAN phone ...
    assert call.wan_counts["heard"] >= sent - 3, (call.wan_counts, sent)
    # ... whose echo comes back through the relay and the NAT's mapping to the LAN phone.
    assert call.lan_counts["echo"] >= sent - 5, (call.lan_counts, sent)


def test_third_address_is_dropped(call: CallRecord) -> None:
    # The third party did aim at the relay's ports, for the whole call's middle.
    assert len(call.third) == 3, call.describe()
    for side in (call.lan, call.wan):
        port = call.sdp_to(side).media[0].port
        assert RTP_PORTS[0] <= port <= RTP_PORTS[1], (side.name, port)
    assert all(report["sent"] == THIRD_PACKETS for report in call.third), call.third
    # Its packets reached the server's relay ports (the counter is in the server's namespace).
    assert call.server_counts["from_third"] >= 3 * THIRD_PACKETS - 3, call.server_counts
    # Neither phone heard it (the WAN phone would have echoed it to the LAN phone too) ...
    assert call.lan_counts["stranger"] == 0, call.lan_counts
    assert call.wan_counts["stranger"] == 0, call.wan_counts
    # ... and nothing of the call went its way.
    assert all(report["received"] == 0 for report in call.third), call.third
    assert call.wan_counts["to_third"] == 0, call.wan_counts
    # The call itself went on: the phones kept hearing each other.
    assert call.lan_counts["echo"] >= PACKETS - 5, call.lan_counts
