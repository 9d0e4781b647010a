"""TransportManager: binding UDP and TCP on one port, IPv4 with IPv6, dispatching sends,
advertised addresses, and releasing every port on stop()."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator

import pytest

from sipswitch.sip.clock import VirtualClock
from sipswitch.sip.message import Request
from sipswitch.sip.transport.base import Address
from sipswitch.sip.transport.manager import TransportManager
from sipswitch.sip.transport.udp import UdpTransport

from .support import (
    WAIT,
    MessageReader,
    RecordingSink,
    needs_ipv6,
    request,
    response,
    wait_until_closed,
)


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
async def manager(sink: RecordingSink) -> AsyncIterator[TransportManager]:
    transports = TransportManager(sink, VirtualClock())
    yield transports
    await transports.stop()


def udp_exchange(host: str, port: int, data: bytes) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    sock.sendto(data, (host, port))
    return sock


async def receive(sock: socket.socket) -> bytes:
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 65536), WAIT)


async def check_udp(manager: TransportManager, sink: RecordingSink, host: str) -> None:
    port = next(a.port for a in manager.bound["udp"] if a.host == host)
    before = len(sink.messages)
    with udp_exchange(host, port, request(call_id=f"udp-{host}")) as sock:
        await sink.wait_for(messages=before + 1)
        message, source, local = sink.messages[-1]
        assert message.call_id == f"udp-{host}"
        assert source == Address("udp", host, sock.getsockname()[1])
        assert local == Address("udp", host, port)
        assert manager.send(response(call_id=f"udp-{host}"), source)
        assert (await receive(sock)).startswith(b"SIP/2.0 200 OK")


async def check_tcp(manager: TransportManager, sink: RecordingSink, host: str) -> None:
    port = next(a.port for a in manager.bound["tcp"] if a.host == host)
    before = len(sink.messages)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), WAIT)
    try:
        writer.write(request(call_id=f"tcp-{host}"))
        await sink.wait_for(messages=before + 1)
        message, source, local = sink.messages[-1]
        assert message.call_id == f"tcp-{host}"
        assert source == Address("tcp", host, writer.get_extra_info("sockname")[1])
        assert local == Address("tcp", host, port)
        assert manager.send(request(call_id="to-client"), source)
        answer = await MessageReader(reader).next()
        assert isinstance(answer, Request) and answer.call_id == "to-client"
    finally:
        writer.close()


async def test_udp_and_tcp_share_one_free_port(
    manager: TransportManager, sink: RecordingSink
) -> None:
    await manager.start(["127.0.0.1"], 0, 0)
    assert [a.transport for a in manager.bound] == ["udp", "tcp"]
    udp, tcp = manager.bound
    assert udp.port == tcp.port != 0
    assert manager.bound["udp"] == [udp] and manager.bound["tcp"] == [tcp]
    assert manager.bound.port("tcp") == tcp.port
    await check_udp(manager, sink, "127.0.0.1")
    await check_tcp(manager, sink, "127.0.0.1")


@needs_ipv6
async def test_ipv4_and_ipv6_together(manager: TransportManager, sink: RecordingSink) -> None:
    await manager.start(["127.0.0.1", "[::1]"], 0, 0)
    assert sorted((a.transport, a.host) for a in manager.bound) == [
        ("tcp", "127.0.0.1"), ("tcp", "::1"), ("udp", "127.0.0.1"), ("udp", "::1"),
    ]
    assert len({a.port for a in manager.bound}) == 1
    for host in ("127.0.0.1", "::1"):
        await check_udp(manager, sink, host)
        await check_tcp(manager, sink, host)


@needs_ipv6
async def test_wildcards_of_both_families(manager: TransportManager, sink: RecordingSink) -> None:
    await manager.start(["0.0.0.0", "::"], 0, 0)
    port = manager.bound[0].port
    assert {(a.transport, a.host, a.port) for a in manager.bound} == {
        ("udp", "0.0.0.0", port), ("udp", "::", port), ("tcp", "0.0.0.0", port),
        ("tcp", "::", port),
    }
    with udp_exchange("::1", port, request(call_id="v6-wild")):
        await sink.wait_for(messages=1)
    assert sink.messages[0][2] == Address("udp", "::", port)


async def test_explicit_ports(manager: TransportManager, sink: RecordingSink) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe_udp, socket.socket(
        socket.AF_INET, socket.SOCK_STREAM
    ) as probe_tcp:
        probe_udp.bind(("127.0.0.1", 0))
        probe_tcp.bind(("127.0.0.1", 0))
        udp_port, tcp_port = probe_udp.getsockname()[1], probe_tcp.getsockname()[1]
    await manager.start(["127.0.0.1"], udp_port, tcp_port)
    assert manager.bound.port("udp") == udp_port and manager.bound.port("tcp") == tcp_port


async def test_taken_tcp_port_makes_it_choose_again(
    manager: TransportManager, sink: RecordingSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hold a TCP port, and make the first UDP bind land on that number: TCP cannot follow, so
    # the manager must release the UDP socket and choose another port for both.
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    taken_port = taken.getsockname()[1]
    real_open = UdpTransport.open.__func__  # type: ignore[attr-defined]
    calls: list[int] = []

    async def open_first_on_taken(
        cls: type[UdpTransport], host: str, port: int = 0, sink: object = None
    ) -> UdpTransport:
        calls.append(port)
        if len(calls) == 1:
            port = taken_port
        return await real_open(cls, host, port, sink)  # type: ignore[no-any-return]

    monkeypatch.setattr(UdpTransport, "open", classmethod(open_first_on_taken))
    try:
        await manager.start(["127.0.0.1"], 0, 0)
    finally:
        taken.close()
    assert len(calls) == 2
    udp, tcp = manager.bound
    assert udp.port == tcp.port != taken_port
    await check_udp(manager, sink, "127.0.0.1")


async def test_configured_port_in_use_is_an_error(manager: TransportManager) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        with pytest.raises(OSError) as raised:
            await manager.start(["127.0.0.1"], taken.getsockname()[1], 0)
        assert raised.value.errno == errno.EADDRINUSE
    assert list(manager.bound) == [] and manager.udp == []


async def test_listen_addresses_must_be_ip_literals(manager: TransportManager) -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        await manager.start(["localhost"], 0, 0)


async def test_stop_releases_every_port(sink: RecordingSink) -> None:
    manager = TransportManager(sink, VirtualClock())
    await manager.start(["127.0.0.1"], 0, 0)
    port = manager.bound.port("udp")
    await check_udp(manager, sink, "127.0.0.1")
    await check_tcp(manager, sink, "127.0.0.1")
    await manager.stop()
    assert list(manager.bound) == []
    assert not manager.send(b"x", Address("udp", "127.0.0.1", 9))
    await wait_until_closed(Address("tcp", "127.0.0.1", port))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))
    again = TransportManager(sink, VirtualClock())
    await again.start(["127.0.0.1"], port, port)  # the same ports, right away
    assert [a.port for a in again.bound] == [port, port]
    await again.stop()


async def test_send_dispatch(manager: TransportManager) -> None:
    await manager.start(["127.0.0.1"], 0, 0)
    assert not manager.send(b"x", Address("tls", "127.0.0.1", 5061))
    assert not manager.send(b"x", Address("udp", "::1", 5060))  # no IPv6 socket
    assert not manager.send(b"x", Address("tcp", "example.com", 5060))


async def test_set_sink_reaches_every_transport(manager: TransportManager) -> None:
    await manager.start(["127.0.0.1"], 0, 0)
    replacement = RecordingSink()
    manager.set_sink(replacement)
    await check_udp(manager, replacement, "127.0.0.1")
    await check_tcp(manager, replacement, "127.0.0.1")


async def test_local_address_of_a_specific_listener(manager: TransportManager) -> None:
    await manager.start(["127.0.0.1"], 0, 0)
    port = manager.bound.port("udp")
    assert manager.local_address("udp", "127.0.0.1") == ("127.0.0.1", port)
    assert manager.local_address("tcp", "192.0.2.7") == ("127.0.0.1", port)
    # No IPv6 listener: the best it can do is the IPv4 one.
    assert manager.local_address("udp", "::1") == ("127.0.0.1", port)
    with pytest.raises(LookupError):
        manager.local_address("tls", "127.0.0.1")


async def test_local_address_answers_are_kept_only_while_the_sockets_are(
    sink: RecordingSink,
) -> None:
    manager = TransportManager(sink, VirtualClock())
    await manager.start(["127.0.0.1"], 0, 0)
    port = manager.bound.port("udp")
    for _ in range(2):  # the second answer comes from the cache
        assert manager.local_address("udp", "192.0.2.7") == ("127.0.0.1", port)
    await manager.stop()
    with pytest.raises(LookupError):
        manager.local_address("udp", "192.0.2.7")  # nothing bound: no stale answer
    await manager.start(["127.0.0.1"], 0, 0)
    new_port = manager.bound.port("udp")
    assert manager.local_address("udp", "192.0.2.7") == ("127.0.0.1", new_port)
    await manager.stop()


async def test_local_address_behind_a_wildcard(manager: TransportManager) -> None:
    await manager.start(["0.0.0.0"], 0, 0)
    port = manager.bound.port("udp")
    assert manager.bound["udp"][0].host == "0.0.0.0"
    assert manager.local_address("udp", "127.0.0.1") == ("127.0.0.1", port)
    assert manager.local_address("tcp", "127.0.0.5") == ("127.0.0.1", port)
    host, _ = manager.local_address("udp", "pbx.example.com")  # a name: default route or loopback
    socket.inet_pton(socket.AF_INET, host)
    assert host != "0.0.0.0"


@needs_ipv6
async def test_local_address_picks_the_family(manager: TransportManager) -> None:
    await manager.start(["0.0.0.0", "::"], 0, 0)
    port = manager.bound.port("udp")
    assert manager.local_address("udp", "::1") == ("::1", port)
    assert manager.local_address("tcp", "[::1]") == ("::1", port)
    assert manager.local_address("udp", "127.0.0.1") == ("127.0.0.1", port)


async def test_start_twice_is_refused(manager: TransportManager) -> None:
    await manager.start(["127.0.0.1"], 0, 0)
    with pytest.raises(RuntimeError):
        await manager.start(["127.0.0.1"], 0, 0)


async def test_several_addresses_of_one_family_each_peer_gets_the_routed_one(
    manager: TransportManager,
) -> None:
    # Two IPv4 addresses, the one the system does NOT route from listed first: a message to a
    # peer leaves from (and Via/Contact name) the address the route to that peer uses.
    await manager.start(["127.0.0.5", "127.0.0.1"], 0, 0)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.9", 0))
    peer.setblocking(False)
    try:
        port = peer.getsockname()[1]
        host, _ = manager.local_address("udp", "127.0.0.9")
        assert host == "127.0.0.1"
        assert manager.send(b"hello", Address("udp", "127.0.0.9", port))
        loop = asyncio.get_running_loop()
        data, source = await asyncio.wait_for(loop.sock_recvfrom(peer, 100), 2)
        assert data == b"hello" and source[0] == "127.0.0.1"
    finally:
        peer.close()
