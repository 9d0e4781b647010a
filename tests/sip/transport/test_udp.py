"""UdpTransport over real loopback sockets: round trips, what is dropped, parse errors."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import cast

import pytest

from sipswitch.sip.message import Request, Response
from sipswitch.sip.transport.base import Address
from sipswitch.sip.transport.udp import UdpTransport

from .support import WAIT, RecordingSink, needs_ipv6, request, response


class Peer(asyncio.DatagramProtocol):
    """The far end: a plain UDP socket that queues what it receives."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait((data, addr))

    def send(self, data: bytes, to: Address) -> None:
        assert self.transport is not None
        if data:
            self.transport.sendto(data, (to.host, to.port))
        else:  # asyncio does not send empty datagrams; the socket itself does
            sock = self.transport.get_extra_info("socket")
            with socket.socket(sock.family, socket.SOCK_DGRAM) as plain:
                plain.sendto(data, (to.host, to.port))

    @property
    def address(self) -> Address:
        assert self.transport is not None
        name = self.transport.get_extra_info("sockname")
        return Address("udp", name[0], name[1])

    async def next(self) -> bytes:
        data, _ = await asyncio.wait_for(self.received.get(), WAIT)
        return data


_opened: list[Peer] = []


@pytest.fixture(autouse=True)
async def close_peers() -> AsyncIterator[None]:
    yield
    while _opened:
        transport = _opened.pop().transport
        if transport is not None:
            transport.close()


async def open_peer(host: str) -> Peer:
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_datagram_endpoint(Peer, local_addr=(host, 0))
    _opened.append(peer)
    return peer


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
async def udp(sink: RecordingSink) -> AsyncIterator[UdpTransport]:
    transport = await UdpTransport.open("127.0.0.1", 0, sink)
    yield transport
    transport.close()
    await transport.wait_closed()


async def round_trip(host: str, sink: RecordingSink, udp: UdpTransport) -> None:
    peer = await open_peer(host)
    try:
        peer.send(request(call_id="rt"), udp.local)
        await sink.wait_for(messages=1)
        message, source, local = sink.messages[0]
        assert isinstance(message, Request) and message.method == "OPTIONS"
        assert message.call_id == "rt"
        assert source == peer.address
        assert local == udp.local and local.port != 0
        assert udp.send(response(call_id="rt"), source)
        assert (await peer.next()).startswith(b"SIP/2.0 200 OK\r\n")
    finally:
        assert peer.transport is not None
        peer.transport.close()


async def test_round_trip_ipv4(sink: RecordingSink, udp: UdpTransport) -> None:
    assert udp.local.host == "127.0.0.1"
    await round_trip("127.0.0.1", sink, udp)


@needs_ipv6
async def test_round_trip_ipv6(sink: RecordingSink) -> None:
    udp = await UdpTransport.open("::1", 0, sink)
    try:
        assert udp.local.host == "::1"
        await round_trip("::1", sink, udp)
    finally:
        udp.close()
        await udp.wait_closed()


async def test_responses_are_delivered_too(sink: RecordingSink, udp: UdpTransport) -> None:
    peer = await open_peer("127.0.0.1")
    peer.send(response(status=180), udp.local)
    await sink.wait_for(messages=1)
    message = sink.messages[0][0]
    assert isinstance(message, Response) and message.status == 180


async def test_junk_is_dropped_and_the_socket_keeps_working(
    sink: RecordingSink, udp: UdpTransport
) -> None:
    peer = await open_peer("127.0.0.1")
    junk = [
        b"",  # empty datagram
        b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12),  # a STUN binding request
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        b"INVITE",  # a token with no space after it
        b"\xff" * 65000,  # large binary
    ]
    for data in junk:
        peer.send(data, udp.local)
    peer.send(b"\r\n\r\n", udp.local)  # a keepalive: ignored, not counted as junk
    peer.send(b"\r\n" + request(call_id="after-junk"), udp.local)  # leading CRLF tolerated
    await sink.wait_for(messages=1)
    assert [m.call_id for m, _, _ in sink.messages] == ["after-junk"]
    assert sink.errors == []
    assert udp.dropped == len(junk)


async def test_oversize_datagram_is_dropped(sink: RecordingSink, udp: UdpTransport) -> None:
    # The network cannot carry a UDP payload over 65,507 bytes on IPv4, so hand the protocol
    # such a datagram directly, as a jumbogram-capable path would.
    oversize = request(body=b"x" * 70000)
    udp.datagram_received(oversize, ("127.0.0.1", 5060))
    assert udp.dropped == 1 and sink.messages == [] and sink.errors == []
    await round_trip("127.0.0.1", sink, udp)


async def test_parse_errors_reach_the_sink(sink: RecordingSink, udp: UdpTransport) -> None:
    peer = await open_peer("127.0.0.1")
    peer.send(request(call_id="bad-cl", content_length="-1"), udp.local)
    peer.send(request(call_id="short", content_length="500"), udp.local)
    peer.send(b"OPTIONS sip:100@127.0.0.1 SIP/3.0\r\nCall-ID: v\r\n\r\n", udp.local)
    await sink.wait_for(errors=3)
    statuses = [(error.status, error.reason) for error, _, _ in sink.errors]
    assert statuses == [
        (400, "Malformed Content-Length"),
        (400, "Content-Length larger than the message"),
        (505, "Unsupported SIP version"),
    ]
    for error, source, local in sink.errors:
        assert source == peer.address and local == udp.local
        assert isinstance(error.partial, Request)
    assert sink.messages == []


async def test_a_failing_sink_does_not_stop_the_socket(udp: UdpTransport) -> None:
    class Failing(RecordingSink):
        def on_message(self, message, source, local):  # type: ignore[no-untyped-def]
            super().on_message(message, source, local)
            if len(self.messages) == 1:
                raise RuntimeError("handler bug")

    sink = Failing()
    udp.sink = sink
    peer = await open_peer("127.0.0.1")
    peer.send(request(call_id="one"), udp.local)
    peer.send(request(call_id="two"), udp.local)
    await sink.wait_for(messages=2)
    assert [m.call_id for m, _, _ in sink.messages] == ["one", "two"]


async def test_send_refuses_names_and_the_other_family(udp: UdpTransport) -> None:
    assert not udp.send(b"x", Address("udp", "localhost", 5060))
    assert not udp.send(b"x", Address("udp", "::1", 5060))
    assert not udp.send(b"x", Address("udp", "", 5060))


async def test_closed_transport_refuses_to_send_and_frees_the_port() -> None:
    udp = await UdpTransport.open("127.0.0.1", 0, RecordingSink())
    port = udp.local.port
    udp.close()
    await udp.wait_closed()
    assert udp.closed
    assert not udp.send(b"x", Address("udp", "127.0.0.1", 9))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))


async def test_large_socket_buffers(udp: UdpTransport) -> None:
    assert udp._transport is not None
    sock = udp._transport.get_extra_info("socket")
    # Linux reports twice the size asked for; with a low rmem_max it is capped, never refused.
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) > 0


@needs_ipv6
async def test_ipv4_and_ipv6_wildcards_share_a_port(sink: RecordingSink) -> None:
    v4 = await UdpTransport.open("0.0.0.0", 0, sink)
    try:
        v6 = await UdpTransport.open("::", v4.local.port, sink)
        try:
            assert v6.local == Address("udp", "::", v4.local.port)
        finally:
            v6.close()
            await v6.wait_closed()
    finally:
        v4.close()
        await v4.wait_closed()
