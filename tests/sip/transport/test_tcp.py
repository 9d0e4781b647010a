"""TcpTransport over real loopback connections: framing, keepalives, timeouts (on a virtual
clock), framing errors, connection reuse, outgoing connections and the connection limit."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from sipswitch.sip.clock import VirtualClock
from sipswitch.sip.message import Request, Response
from sipswitch.sip.parser import parse_datagram
from sipswitch.sip.transport.base import Address
from sipswitch.sip.transport.tcp import TcpConnection, TcpTransport

from .support import (
    WAIT,
    MessageReader,
    RecordingSink,
    needs_ipv6,
    read_to_eof,
    request,
    response,
    wait_until,
    wait_until_closed,
)

Client = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
async def tcp(sink: RecordingSink, clock: VirtualClock) -> AsyncIterator[TcpTransport]:
    transport = TcpTransport(sink, clock, idle_timeout=300.0, read_timeout=32.0)
    await transport.listen("127.0.0.1", 0)
    yield transport
    await transport.close()


_opened: list[asyncio.StreamWriter] = []


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    yield
    while _opened:
        _opened.pop().close()


async def connect(tcp: TcpTransport, index: int = 0) -> Client:
    local = tcp.listening[index]
    client = await asyncio.wait_for(asyncio.open_connection(local.host, local.port), WAIT)
    _opened.append(client[1])
    return client


def peer_of(client: Client) -> Address:
    host, port = client[1].get_extra_info("sockname")[:2]
    return Address("tcp", host, port)


async def server_side(tcp: TcpTransport, client: Client) -> TcpConnection:
    """The transport's end of a client's connection, once it has been accepted."""
    peer = peer_of(client)
    await wait_until(lambda: tcp.connection(peer) is not None)
    connection = tcp.connection(peer)
    assert connection is not None
    return connection


def close(client: Client) -> None:
    client[1].close()


async def test_two_messages_in_one_segment(sink: RecordingSink, tcp: TcpTransport) -> None:
    client = await connect(tcp)
    client[1].write(request(call_id="first") + request(call_id="second", body=b"hello"))
    await sink.wait_for(messages=2)
    assert [m.call_id for m, _, _ in sink.messages] == ["first", "second"]
    assert sink.messages[1][0].body == b"hello"
    for _, source, local in sink.messages:
        assert source == peer_of(client)
        assert local == tcp.listening[0]
    close(client)


async def test_a_message_split_byte_by_byte(sink: RecordingSink, tcp: TcpTransport) -> None:
    client = await connect(tcp)
    connection = await server_side(tcp, client)
    data = request(call_id="split", body=b"v=0\r\n")
    for index in range(len(data) - 1):
        client[1].write(data[index : index + 1])
        # Wait until that byte has arrived, so each is its own read on the server.
        await wait_until(lambda n=index + 1: connection.buffered == n)
        assert sink.messages == []
    client[1].write(data[-1:])
    await sink.wait_for(messages=1)
    message = sink.messages[0][0]
    assert message.call_id == "split" and message.body == b"v=0\r\n"
    assert connection.buffered == 0
    close(client)


async def test_leading_crlfs_are_ignored_and_a_ping_gets_one_pong(
    sink: RecordingSink, tcp: TcpTransport
) -> None:
    client = await connect(tcp)
    reader, writer = client
    # A lone CRLF is not a ping; CRLF CRLF CRLF holds one ping and a stray CRLF.
    writer.write(b"\r\n" + request(call_id="a") + b"\r\n\r\n\r\n" + request(call_id="b"))
    await sink.wait_for(messages=2)
    assert [m.call_id for m, _, _ in sink.messages] == ["a", "b"]
    assert tcp.send(response(call_id="b"), sink.messages[1][1])
    expected = b"\r\n" + response(call_id="b")
    received = await asyncio.wait_for(reader.readexactly(len(expected)), WAIT)
    assert received == expected
    close(client)


async def test_pings_are_answered_even_when_split(
    tcp: TcpTransport, clock: VirtualClock
) -> None:
    client = await connect(tcp)
    reader, writer = client
    connection = await server_side(tcp, client)
    writer.write(b"\r\n\r\n")
    assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"\r\n"
    writer.write(b"\r\n\r\n\r\n\r\n")  # two pings, two pongs
    assert await asyncio.wait_for(reader.readexactly(4), WAIT) == b"\r\n\r\n"
    # Half a ping, then (once it has surely arrived) the other half.
    clock.advance(1.0)
    writer.write(b"\r\n")
    await wait_until(lambda: connection.last_activity == clock.now())
    writer.write(b"\r\n")
    assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"\r\n"
    close(client)


async def test_incomplete_message_is_closed_by_the_read_timeout(
    sink: RecordingSink, tcp: TcpTransport, clock: VirtualClock
) -> None:
    client = await connect(tcp)
    connection = await server_side(tcp, client)
    client[1].write(request(call_id="slow", content_length="100") + b"0123456789")
    await wait_until(lambda: connection.buffered > 0)
    clock.advance(31.9)
    assert connection.connected
    client[1].write(b"more body, still not complete")  # does not extend the deadline
    await wait_until(lambda: connection.last_activity == clock.now() and connection.buffered > 200)
    clock.advance(0.1)
    assert not connection.connected
    assert tcp.connection_count == 0
    assert await read_to_eof(client[0]) == b""
    assert sink.messages == []


async def test_read_timeout_restarts_for_each_message(
    sink: RecordingSink, tcp: TcpTransport, clock: VirtualClock
) -> None:
    client = await connect(tcp)
    connection = await server_side(tcp, client)
    partial = request(call_id="second", content_length="4")
    client[1].write(partial)
    await wait_until(lambda: connection.buffered == len(partial))
    clock.advance(30.0)
    client[1].write(b"body" + partial)  # completes one message and starts the next
    await sink.wait_for(messages=1)
    clock.advance(30.0)
    assert connection.connected  # 30 s into the second message
    clock.advance(2.0)
    assert not connection.connected


@pytest.mark.parametrize("length", ["-1", "abc", "99999999999"])
async def test_invalid_content_length_is_answered_400_and_closed(
    sink: RecordingSink, tcp: TcpTransport, length: str
) -> None:
    client = await connect(tcp)
    client[1].write(request(call_id="bad-length", content_length=length))
    answer = parse_datagram(await read_to_eof(client[0]))
    assert isinstance(answer, Response)
    assert (answer.status, answer.reason) == (400, "Malformed Content-Length")
    assert answer.call_id == "bad-length"
    assert answer.headers.get("Via") == "SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK-1"
    assert answer.cseq.method == "OPTIONS"
    assert sink.messages == [] and tcp.connection_count == 0


async def test_oversize_message_is_answered_with_the_errors_status(tcp: TcpTransport) -> None:
    client = await connect(tcp)
    client[1].write(request(call_id="big", content_length="70000"))
    answer = parse_datagram(await read_to_eof(client[0]))
    assert isinstance(answer, Response) and answer.status == 513


async def test_broken_response_closes_without_an_answer(
    sink: RecordingSink, tcp: TcpTransport
) -> None:
    client = await connect(tcp)
    client[1].write(response().replace(b"Content-Length: 0", b"Content-Length: x"))
    assert await read_to_eof(client[0]) == b""
    assert sink.messages == [] and sink.errors == []


async def test_send_to_a_connected_peer_reuses_its_connection(
    sink: RecordingSink, tcp: TcpTransport
) -> None:
    client = await connect(tcp)
    client[1].write(request(method="REGISTER", call_id="reg"))
    await sink.wait_for(messages=1)
    source = sink.messages[0][1]
    assert source == peer_of(client)
    assert tcp.send(request(call_id="to-phone"), source)
    message = await MessageReader(client[0]).next()
    assert isinstance(message, Request) and message.call_id == "to-phone"
    assert tcp.connection_count == 1
    close(client)


class FarEnd:
    """A plain TCP server on loopback that records the connections it accepts."""

    def __init__(self) -> None:
        self.clients: list[Client] = []
        self.server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1") -> Address:
        self.server = await asyncio.start_server(self._accept, host, 0)
        sockname = self.server.sockets[0].getsockname()
        return Address("tcp", sockname[0], sockname[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients.append((reader, writer))

    async def stop(self) -> None:
        assert self.server is not None
        for _, writer in self.clients:
            writer.close()
        self.server.close()
        await self.server.wait_closed()


async def test_send_to_a_fresh_address_opens_a_connection(
    sink: RecordingSink, tcp: TcpTransport
) -> None:
    far = FarEnd()
    address = await far.start()
    try:
        assert tcp.send(request(call_id="out-1"), address)  # queued until connected
        assert tcp.send(request(call_id="out-2"), address)
        await wait_until(lambda: len(far.clients) == 1)
        reader, writer = far.clients[0]
        messages = MessageReader(reader)
        assert (await messages.next()).call_id == "out-1"
        assert (await messages.next()).call_id == "out-2"
        # The connection leaves from the listening address and is known by the far end's.
        assert writer.get_extra_info("peername")[0] == "127.0.0.1"
        writer.write(response(call_id="out-1"))
        await sink.wait_for(messages=1)
        message, source, local = sink.messages[0]
        assert isinstance(message, Response) and message.call_id == "out-1"
        assert source == address and local == tcp.listening[0]
        assert tcp.send(request(call_id="out-3"), address)
        assert (await messages.next()).call_id == "out-3"
        assert len(far.clients) == 1 and tcp.connection_count == 1
    finally:
        await far.stop()


async def test_failed_connection_is_forgotten_and_reported(tcp: TcpTransport) -> None:
    far = FarEnd()
    address = await far.start()
    await far.stop()  # nothing listens there any more
    unreachable: list[Address] = []
    tcp.on_unreachable = unreachable.append
    assert tcp.send(request(), address)
    assert tcp.connection_count == 1
    await wait_until(lambda: tcp.connection_count == 0)
    assert tcp.connection(address) is None
    assert unreachable == [address]  # so its requests fail now, not when their timers run out


async def test_connect_timeout_runs_on_the_clock(
    tcp: TcpTransport, clock: VirtualClock
) -> None:
    # A listener that never accepts, with its accept queue filled: further SYNs are dropped, so
    # a connection attempt hangs until the transport gives up.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as deaf:
        deaf.bind(("127.0.0.1", 0))
        deaf.listen(0)
        address = Address("tcp", "127.0.0.1", deaf.getsockname()[1])
        fillers = []
        try:
            for _ in range(3):
                filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                fillers.append(filler)
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", address.port))
            await asyncio.sleep(0.05)  # let the handshakes that can complete do so
            assert tcp.send(request(), address)
            connection = tcp.connection(address)
            assert connection is not None
            await asyncio.sleep(0.05)
            assert tcp.connection_count == 1 and not connection.connected
            clock.advance(tcp.connect_timeout - 0.5)
            await asyncio.sleep(0)
            assert tcp.connection_count == 1
            unreachable: list[Address] = []
            tcp.on_unreachable = unreachable.append
            clock.advance(0.5)
            await wait_until(lambda: tcp.connection_count == 0)
            assert tcp.connection(address) is None
            assert unreachable == [address]
        finally:
            for filler in fillers:
                filler.close()


async def test_send_refuses_names_without_resolving(tcp: TcpTransport) -> None:
    assert not tcp.send(b"x", Address("tcp", "localhost", 5060))
    assert not tcp.send(b"x", Address("tcp", "127.0.0.1", 0))
    assert tcp.connection_count == 0


async def test_idle_connection_is_closed(
    sink: RecordingSink, tcp: TcpTransport, clock: VirtualClock
) -> None:
    client = await connect(tcp)
    reader, writer = client
    connection = await server_side(tcp, client)
    clock.advance(299.0)
    assert connection.connected
    writer.write(b"\r\n\r\n")  # traffic at t=299 restarts the idle period
    assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"\r\n"
    clock.advance(299.0)
    assert connection.connected
    clock.advance(1.0)
    assert not connection.connected and tcp.connection_count == 0
    assert await read_to_eof(reader) == b""


async def test_connection_limit(sink: RecordingSink, clock: VirtualClock) -> None:
    tcp = TcpTransport(sink, clock, max_connections=2)
    await tcp.listen("127.0.0.1", 0)
    try:
        first = await connect(tcp)
        second = await connect(tcp)
        await server_side(tcp, first)
        await server_side(tcp, second)
        third = await connect(tcp)
        assert await read_to_eof(third[0]) == b""  # refused: closed at once
        assert tcp.connection_count == 2
        assert not tcp.send(request(), Address("tcp", "127.0.0.1", 9))  # no room to dial out
        first[1].write(request(call_id="still-served"))
        await sink.wait_for(messages=1)
        close(first)
        await wait_until(lambda: tcp.connection_count == 1)
        fourth = await connect(tcp)
        fourth[1].write(request(call_id="room-again"))
        await sink.wait_for(messages=2)
        assert [m.call_id for m, _, _ in sink.messages] == ["still-served", "room-again"]
        close(second)
        close(fourth)
    finally:
        await tcp.close()


async def test_peer_that_does_not_read_is_dropped(clock: VirtualClock) -> None:
    tcp = TcpTransport(RecordingSink(), clock, max_write_buffer=64 * 1024)
    await tcp.listen("127.0.0.1", 0)
    try:
        client = await connect(tcp)
        connection = await server_side(tcp, client)
        assert connection.peer is not None
        chunk = b"x" * 65536
        sent = 0
        while connection.connected and sent < 4096:  # the kernel buffers some megabytes first
            tcp.send(chunk, connection.peer)
            sent += 1
        assert not connection.connected
        assert tcp.connection(connection.peer) is None and tcp.connection_count == 0
    finally:
        await tcp.close()


async def test_close_releases_the_port_and_every_connection(
    sink: RecordingSink, clock: VirtualClock
) -> None:
    tcp = TcpTransport(sink, clock)
    local = await tcp.listen("127.0.0.1", 0)
    client = await connect(tcp)
    await server_side(tcp, client)
    await tcp.close()
    assert tcp.connection_count == 0
    assert await read_to_eof(client[0]) == b""
    again = TcpTransport(sink, clock)
    assert await again.listen("127.0.0.1", local.port) == local
    await again.close()
    await wait_until_closed(local)


@needs_ipv6
async def test_ipv6_round_trip_and_reuse(sink: RecordingSink, clock: VirtualClock) -> None:
    tcp = TcpTransport(sink, clock)
    await tcp.listen("::1", 0)
    try:
        client = await connect(tcp)
        client[1].write(request(call_id="v6"))
        await sink.wait_for(messages=1)
        source = sink.messages[0][1]
        assert source.host == "::1"
        # A differently spelled address of the same peer still finds its connection.
        spelled = Address("tcp", "0:0:0:0:0:0:0:1", source.port)
        assert tcp.send(request(call_id="back"), spelled)
        assert (await MessageReader(client[0]).next()).call_id == "back"
        assert tcp.connection_count == 1
        close(client)
    finally:
        await tcp.close()
