"""NAT keepalives: which bindings are behind NAT, OPTIONS and CRLF pings spread over the
interval, phones marked unreachable after missed keepalives and reachable again when they answer
or register. In virtual time over the loop network, then through the whole in-process server."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from sipswitch.config import ConfigError
from sipswitch.config.settings import NatSettings, load_settings
from sipswitch.pbx.keepalive import NatKeepalive, behind_nat
from sipswitch.pbx.location import LocationService
from sipswitch.pbx.server import SipServer
from sipswitch.sip.auth import build_authorization, choose_challenge
from sipswitch.sip.clock import VirtualClock
from sipswitch.sip.message import Request, Response, make_response
from sipswitch.sip.parser import MessageError, parse_datagram
from sipswitch.sip.transaction import ServerTransaction, TransactionLayer
from sipswitch.sip.transport.base import Address, MessageSink
from sipswitch.sip.transport.loop import LoopNetwork, LoopTransport
from sipswitch.store import Binding

from .conftest import PASSWORD, Lab

SERVER_HOST = "203.0.113.1"
PUBLIC = "198.51.100.7"  # the NAT's public address, where NATed phones' packets come from


def binding(
    aor: str,
    contact: str,
    source: Address,
    *,
    cseq: int = 1,
    call_id: str = "reg-1",
    expires_at: float = 1e12,
) -> Binding:
    return Binding(
        aor=aor,
        contact_uri=contact,
        contact_value=f"<{contact}>",
        expires_at=expires_at,
        q=1.0,
        call_id=call_id,
        cseq=cseq,
        transport=source.transport,
        source_host=source.host,
        source_port=source.port,
    )


class Transports:
    """The server's UDP and TCP endpoints on the loop network, as one transport."""

    def __init__(self, network: LoopNetwork) -> None:
        self.udp = LoopTransport(network, Address("udp", SERVER_HOST, 5060))
        self.tcp = LoopTransport(network, Address("tcp", SERVER_HOST, 5060))

    def attach(self, sink: MessageSink) -> None:
        self.udp.attach(sink)
        self.tcp.attach(sink)

    def send(self, data: bytes, destination: Address) -> bool:
        return (self.tcp if destination.reliable else self.udp).send(data, destination)


class NatPhone:
    """A phone behind NAT as the server sees it: it sends from ``source`` and answers OPTIONS
    with ``status`` (None: it does not answer)."""

    def __init__(self, network: LoopNetwork, clock: VirtualClock, source: Address) -> None:
        self.source = source
        self.clock = clock
        self.transport = LoopTransport(network, source)
        self.layer = TransactionLayer(self.transport, clock, self._on_request)
        self.transport.attach(self.layer)
        self.status: int | None = 200
        self.options: list[tuple[float, Request]] = []

    def _on_request(self, request: Request, txn: ServerTransaction | None, src: Address) -> None:
        if request.method == "OPTIONS":
            self.options.append((self.clock.now(), request))
            if txn is not None and self.status is not None:
                txn.respond(make_response(request, self.status, to_tag="ph"))

    def gone(self) -> None:
        self.transport.close()


class Bench:
    def __init__(self, interval: float = 30.0, failures: int = 2, timeout: float = 4.0) -> None:
        self.clock = VirtualClock()
        self.network = LoopNetwork(self.clock)
        self.transports = Transports(self.network)
        self.layer = TransactionLayer(self.transports, self.clock, lambda *args: None)
        self.transports.attach(self.layer)
        self.location = LocationService(None, self.clock.wall)
        settings = NatSettings(
            keepalive_interval=interval, keepalive_failures=failures, keepalive_timeout=timeout
        )
        self.keepalive = NatKeepalive(
            self.layer,
            self.location,
            self.clock,
            settings,
            lambda destination: (SERVER_HOST, 5060),
        )
        self._port = 20000

    def source(self, transport: str = "udp", host: str = PUBLIC) -> Address:
        self._port += 1
        return Address(transport, host, self._port)

    def phone(self, source: Address | None = None) -> NatPhone:
        return NatPhone(self.network, self.clock, source or self.source())

    def register(self, *bindings: Binding) -> None:
        """What the registrar does with a REGISTER: the AOR's whole set of bindings."""
        self.location.replace(bindings[0].aor, list(bindings), [])

    def sent_to(self, destination: Address) -> list[tuple[float, bytes]]:
        return self.network.sent_between(destination=destination)


def options_times(phone: NatPhone) -> list[float]:
    return [at for at, _ in phone.options]


# --- settings ---


def test_keepalive_settings_defaults_and_errors(tmp_path: Path) -> None:
    nat = load_settings(None).nat
    assert (nat.keepalive_interval, nat.keepalive_timeout, nat.keepalive_failures) == (30, 4, 2)
    config = tmp_path / "sipswitch.toml"
    config.write_text("[nat]\nkeepalive_interval = 1\nkeepalive_failures = 3\n")
    nat = load_settings(config).nat
    assert (nat.keepalive_interval, nat.keepalive_failures) == (1.0, 3)
    for line in ("keepalive_interval = -1", "keepalive_failures = 0", "keepalive_timeout = 0"):
        config.write_text(f"[nat]\n{line}\n")
        with pytest.raises(ConfigError) as info:
            load_settings(config)
        assert str(info.value).startswith(f"{config}:2: nat.{line.split()[0]}")


# --- which bindings are behind NAT ---


@pytest.mark.parametrize(
    ("contact", "source", "nat"),
    [
        ("sip:200@192.168.1.20:5060", Address("udp", PUBLIC, 5060), True),  # private Contact
        ("sip:200@192.168.1.20:5060", Address("udp", "192.168.1.20", 5060), False),
        ("sip:200@192.168.1.20", Address("udp", "192.168.1.20", 5060), False),  # default port
        ("sips:200@192.168.1.20", Address("tls", "192.168.1.20", 5061), False),
        ("sip:200@192.168.1.20:5060", Address("udp", "192.168.1.20", 40123), True),  # port
        (f"sip:200@{PUBLIC}:5060", Address("udp", PUBLIC, 61000), True),  # STUN, port mapped
        (f"sip:200@{PUBLIC}:5060;transport=tcp", Address("tcp", PUBLIC, 51234), False),
        ("sip:200@10.0.0.5:5060;transport=tcp", Address("tcp", PUBLIC, 51234), True),
        ("sip:200@10.0.0.5:5060;transport=tls", Address("tls", PUBLIC, 51234), True),
        ("sip:200@[2001:db8::5]:5060", Address("udp", "2001:db8:0::5", 5060), False),
        ("sip:200@[2001:db8::5]:5060", Address("udp", "2001:db8::6", 5060), True),
        ("sip:200@phone.example.com:5060", Address("udp", PUBLIC, 5060), True),  # a name
        ("sip:200@10.0.0.5:5060", Address("udp", "::ffff:10.0.0.5", 5060), False),
        ("tel:+15551234", Address("udp", PUBLIC, 5060), True),  # not a SIP contact
    ],
)
def test_behind_nat_rule(contact: str, source: Address, nat: bool) -> None:
    assert behind_nat(binding("200", contact, source)) is nat


# --- pings over UDP ---


def test_answering_phone_is_pinged_at_its_source_every_interval_and_stays_reachable() -> None:
    bench = Bench(interval=30.0)
    phone = bench.phone()
    contact = binding("200", "sip:200@192.168.1.20:5060", phone.source)
    bench.keepalive.start()
    bench.register(contact)
    assert bench.keepalive.nat_bindings == 1
    bench.clock.advance(300.5)
    times = options_times(phone)
    assert len(times) == 10
    assert all(29.0 < b - a < 31.0 for a, b in zip(times, times[1:], strict=False))
    request = phone.options[0][1]
    assert str(request.uri) == "sip:200@192.168.1.20:5060"  # the Contact, sent to the source
    assert request.top_via.host == SERVER_HOST
    assert not bench.keepalive.unreachable(contact)
    assert bench.keepalive.reachable_bindings("200") == [contact]
    assert bench.keepalive.failed == 0


def test_silent_phone_becomes_unreachable_after_the_failures_then_answers_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bench = Bench(interval=30.0, failures=3, timeout=4.0)
    phone = bench.phone()
    contact = binding("200", "sip:200@192.168.1.20:5060", phone.source)
    bench.keepalive.start()
    bench.register(contact)
    bench.clock.advance(31)  # one answered ping
    first = options_times(phone)[0]
    phone.status = None
    caplog.set_level("INFO", logger="sipswitch.nat")
    bench.clock.advance(first + 2 * 30 + 4.5 - bench.clock.now())
    assert not bench.keepalive.unreachable(contact)  # two failures of three
    bench.clock.advance(30)
    assert bench.keepalive.unreachable(contact)
    assert bench.keepalive.reachable_bindings("200") == []
    assert bench.keepalive.unreachable_count() == 1
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1
    assert "192.168.1.20" in warnings[0].getMessage()
    # The OPTIONS were retransmitted for the 4 s wait only, not for Timer F's 32 s.
    sent = [at for at, data in bench.sent_to(phone.source) if data.startswith(b"OPTIONS")]
    assert all(any(-0.01 <= at - t <= 4.0 for t in options_times(phone)) for at in sent)
    assert bench.layer.transaction_count == 0
    bench.clock.advance(60)
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1
    phone.status = 404  # any answer shows the phone alive
    bench.clock.advance(30)
    assert not bench.keepalive.unreachable(contact)
    assert any("reachable again" in r.getMessage() for r in caplog.records)


def test_unreachable_phone_is_reachable_again_when_it_registers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bench = Bench(interval=20.0, failures=2)
    phone = bench.phone()
    phone.status = None
    contact = binding("200", "sip:200@192.168.1.20:5060", phone.source)
    bench.keepalive.start()
    bench.register(contact)
    bench.clock.advance(70)
    assert bench.keepalive.unreachable(contact)
    caplog.set_level("INFO", logger="sipswitch.nat")
    refreshed = binding("200", "sip:200@192.168.1.20:5060", phone.source, cseq=2)
    assert not bench.keepalive.unreachable(refreshed)  # a newer REGISTER than the failures
    bench.register(refreshed)
    assert not bench.keepalive.unreachable(refreshed)
    assert bench.keepalive.reachable_bindings("200") == [refreshed]
    assert any("reachable again: it registered" in r.getMessage() for r in caplog.records)
    # The failures count from zero again.
    bench.clock.advance(20)
    assert not bench.keepalive.unreachable(refreshed)
    bench.clock.advance(20)
    assert bench.keepalive.unreachable(refreshed)


def test_phone_that_moved_is_pinged_at_its_new_source() -> None:
    bench = Bench(interval=10.0)
    old, new = bench.phone(), bench.phone()
    bench.keepalive.start()
    bench.register(binding("200", "sip:200@192.168.1.20:5060", old.source))
    bench.clock.advance(10.5)
    assert len(old.options) == 1
    bench.register(binding("200", "sip:200@192.168.1.20:5060", new.source, cseq=2))
    bench.clock.advance(30)
    assert len(old.options) == 1
    assert len(new.options) == 3


def test_a_register_refresh_voids_the_ping_still_out() -> None:
    """A phone whose NAT moved registers again from a new port while an OPTIONS to its old
    port is unanswered: that OPTIONS does not count against it."""
    bench = Bench(interval=10.0, failures=1, timeout=4.0)
    old, new = bench.phone(), bench.phone()
    old.status = None
    bench.keepalive.start()
    bench.register(binding("200", "sip:200@192.168.1.20:5060", old.source))
    for _ in range(200):
        if old.options:
            break
        bench.clock.advance(0.1)
    assert len(old.options) == 1
    refreshed = binding("200", "sip:200@192.168.1.20:5060", new.source, cseq=2)
    bench.register(refreshed)
    bench.clock.advance(5)
    assert not bench.keepalive.unreachable(refreshed)
    assert bench.keepalive.failed == 0
    bench.clock.advance(10)
    assert len(new.options) >= 1
    assert not bench.keepalive.unreachable(refreshed)


def test_bindings_over_transports_it_cannot_ping_are_left_alone() -> None:
    bench = Bench(interval=10.0)
    bench.keepalive.start()
    bench.register(binding("200", "sip:200@10.0.0.5;transport=ws", bench.source("ws")))
    bench.clock.advance(60)
    assert bench.keepalive.nat_bindings == 0
    assert bench.network.sent == []


def test_phone_not_behind_nat_is_never_pinged() -> None:
    bench = Bench(interval=5.0)
    lan = bench.phone(Address("udp", "192.168.1.30", 5060))
    nated = bench.phone()
    bench.keepalive.start()
    bench.register(binding("201", "sip:201@192.168.1.30:5060", lan.source))
    bench.register(binding("202", "sip:202@192.168.1.20:5060", nated.source))
    bench.clock.advance(60)
    assert lan.options == []
    assert bench.sent_to(lan.source) == []
    assert len(nated.options) == 12
    assert bench.keepalive.nat_bindings == 1


def test_unregistered_and_expired_bindings_are_no_longer_pinged() -> None:
    bench = Bench(interval=10.0)
    leaving, expiring = bench.phone(), bench.phone()
    bench.keepalive.start()
    bench.register(binding("200", "sip:200@192.168.1.20:5060", leaving.source))
    expiry = bench.clock.now() + 25
    bench.register(
        binding(
            "201",
            "sip:201@192.168.1.21:5060",
            expiring.source,
            expires_at=bench.clock.wall() + 25,
        )
    )
    bench.clock.advance(10.5)
    assert len(leaving.options) == len(expiring.options) == 1
    bench.location.replace("200", [], bench.location.lookup("200"))  # Contact: *, Expires: 0
    assert bench.keepalive.nat_bindings == 1
    bench.clock.advance(60)
    assert len(leaving.options) == 1
    assert 2 <= len(expiring.options) <= 3
    assert all(at < expiry for at in options_times(expiring))
    assert bench.keepalive.nat_bindings == 0


def test_bindings_held_at_start_are_pinged() -> None:
    bench = Bench(interval=10.0)
    phone = bench.phone()
    bench.register(binding("200", "sip:200@192.168.1.20:5060", phone.source))
    bench.keepalive.start()
    bench.clock.advance(10.5)
    assert len(phone.options) == 1


def test_interval_zero_turns_keepalives_off() -> None:
    bench = Bench(interval=0.0)
    phone = bench.phone()
    bench.keepalive.start()
    bench.register(binding("200", "sip:200@192.168.1.20:5060", phone.source))
    bench.clock.advance(600)
    assert phone.options == []
    assert bench.keepalive.nat_bindings == 0
    assert bench.clock.pending == 0


def test_pings_are_spread_over_the_interval() -> None:
    """A thousand phones that registered in the same instant are pinged about 1000/30 per
    second, each once per interval; no second carries more than twice the even share."""
    bench = Bench(interval=30.0)
    bench.keepalive.start()
    sources = [bench.source() for _ in range(1000)]
    for index, source in enumerate(sources):
        contact = f"sip:{index}@10.9.{index // 250}.{index % 250}"
        bench.register(binding(str(1000 + index), contact, source))
    start = bench.clock.now()
    bench.clock.advance(90)
    # Nobody answers, so each OPTIONS is retransmitted within its wait: count new branches.
    first: dict[str, tuple[float, Address]] = {}
    for at, (_, destination, data) in zip(
        bench.network.sent_times, bench.network.sent, strict=True
    ):
        request = parse_datagram(data)
        assert isinstance(request, Request) and request.method == "OPTIONS"
        branch = request.top_via.branch
        assert branch is not None
        first.setdefault(branch, (at - start, destination))
    per_second = Counter(int(at) for at, _ in first.values())
    even = 1000 / 30
    assert max(per_second.values()) <= 2 * even
    assert min(per_second[second] for second in range(1, 89)) >= even / 2
    for interval in range(3):
        pinged = Counter(
            destination
            for at, destination in first.values()
            if interval * 30 < at <= (interval + 1) * 30
        )
        assert set(pinged) == set(sources)
        assert set(pinged.values()) == {1}


# --- pings over TCP ---


def test_tcp_phone_gets_crlf_pings_on_its_connection_and_a_closed_one_is_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bench = Bench(interval=15.0, failures=2)
    source = bench.source("tcp")
    received: list[bytes] = []

    class Connection:
        """The phone's end of its connection on the loop network: raw bytes are parse errors."""

        def on_message(self, message: object, src: Address, local: Address) -> None:
            raise AssertionError("the server sent a message, not a ping")

        def on_parse_error(self, error: MessageError, src: Address, local: Address) -> None:
            received.append(error.reason.encode())

    phone_end = LoopTransport(bench.network, source, Connection())
    contact = binding("200", "sip:200@10.0.0.5:5060;transport=tcp", source)
    bench.keepalive.start()
    bench.register(contact)
    bench.clock.advance(45.5)
    pings = [data for _, data in bench.sent_to(source)]
    assert pings == [b"\r\n\r\n"] * 3
    assert len(received) == 3
    assert bench.keepalive.pings_sent == 3
    caplog.set_level("INFO", logger="sipswitch.nat")
    phone_end.close()  # the connection is gone
    bench.clock.advance(15)
    assert not bench.keepalive.unreachable(contact)
    bench.clock.advance(15)
    assert bench.keepalive.unreachable(contact)
    assert "connection closed" in caplog.text


# --- the whole server ---


async def wait_for(condition: object, timeout: float = 10.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_server_pings_a_natted_phone_at_its_source_and_marks_it_unreachable(lab: Lab) -> None:
    lab.extra_config = "[nat]\nkeepalive_interval = 0.2\nkeepalive_timeout = 0.1\n"
    server = await lab.start_server()
    assert server.keepalive is not None
    nated = lab.phone("200")
    lan = lab.phone("201")
    # 200 says it is at a private address; its REGISTER comes from the loop address.
    response = await nated.register(contact="<sip:200@192.168.1.20:5062>")
    assert response.status == 200
    assert (await lan.register()).status == 200
    assert server.keepalive.nat_bindings == 1
    [contact] = server.location.lookup("200") if server.location else []
    await wait_for(lambda: nated.in_dialog.qsize() >= 3)
    options = nated.in_dialog.get_nowait()
    assert options.method == "OPTIONS"
    assert not server.keepalive.unreachable(contact)
    assert lan.in_dialog.empty()
    # The phone stops answering (its NAT mapping is gone): unreachable within a few intervals.
    lab.network.drop_matching(lambda src, dst, data: dst == nated.address)
    await wait_for(lambda: server.keepalive is not None and server.keepalive.unreachable(contact))
    assert server.keepalive.reachable_bindings("200") == []
    # It registers again: reachable at once.
    lab.network.drop_matching(None)
    assert (await nated.register(contact="<sip:200@192.168.1.20:5062>")).status == 200
    assert server.location is not None
    [refreshed] = server.location.lookup("200")
    assert not server.keepalive.unreachable(refreshed)
    assert lan.in_dialog.empty()


async def test_server_pings_a_tcp_phone_on_its_own_connection_over_real_sockets(
    tmp_path: Path,
) -> None:
    """A phone on a real TCP connection gets CRLF pings on it; once the connection is closed
    the phone is unreachable after the failures."""
    config = tmp_path / "sipswitch.toml"
    config.write_text(
        '[sip]\nlisten = ["127.0.0.1"]\nudp_port = 0\ntcp_port = 0\n'
        "[nat]\nkeepalive_interval = 0.2\nkeepalive_failures = 2\n"
    )
    settings = load_settings(config, tmp_path / "data")
    server = SipServer(settings, out=lambda line: None)
    await server.start()
    try:
        await server.database.extensions.add("200", PASSWORD, settings.sip.realm)
        assert server.directory is not None and server.keepalive is not None
        await server.directory.load()
        [listening] = server.transports.bound["tcp"] if server.transports else []
        reader, writer = await asyncio.open_connection(listening.host, listening.port)
        local_port = writer.get_extra_info("sockname")[1]

        def register(cseq: int, authorization: str = "") -> bytes:
            return (
                f"REGISTER sip:127.0.0.1 SIP/2.0\r\n"
                f"Via: SIP/2.0/TCP 127.0.0.1:{local_port};branch=z9hG4bK-ka-{cseq};rport\r\n"
                "Max-Forwards: 70\r\nFrom: <sip:200@127.0.0.1>;tag=ka\r\n"
                "To: <sip:200@127.0.0.1>\r\nCall-ID: keepalive-tcp\r\n"
                f"CSeq: {cseq} REGISTER\r\n"
                "Contact: <sip:200@192.168.1.20:5060;transport=tcp>\r\nExpires: 600\r\n"
                f"{authorization}Content-Length: 0\r\n\r\n"
            ).encode()

        async def response() -> Response:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            message = parse_datagram(head.lstrip(b"\r\n"))
            assert isinstance(message, Response)
            return message

        writer.write(register(1))
        challenge = choose_challenge((await response()).headers.get_all("WWW-Authenticate"))
        assert challenge is not None
        value = build_authorization(challenge, "REGISTER", "sip:127.0.0.1", "200", PASSWORD)
        writer.write(register(2, f"Authorization: {value}\r\n"))
        assert (await response()).status == 200
        assert server.keepalive.nat_bindings == 1
        # Two pings arrive on the phone's own connection (the server opens none).
        assert await asyncio.wait_for(reader.readexactly(8), 5) == b"\r\n\r\n" * 2
        assert server.location is not None
        [contact] = server.location.lookup("200")
        assert contact.source_port == local_port
        assert not server.keepalive.unreachable(contact)
        writer.close()
        await writer.wait_closed()
        await wait_for(
            lambda: server.keepalive is not None and server.keepalive.unreachable(contact)
        )
        assert server.keepalive.pings_sent >= 2
        assert server.keepalive.options_sent == 0
    finally:
        await server.stop()
