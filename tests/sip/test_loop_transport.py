"""The in-memory loop network: delivery after a latency on the clock, parsing on the way, loss
injection, recording, reliable destinations without a listener, and use under asyncio."""

from __future__ import annotations

import asyncio

import pytest

from sipswitch.sip.clock import LoopClock, VirtualClock
from sipswitch.sip.message import Message, Request
from sipswitch.sip.parser import MessageError
from sipswitch.sip.transport.base import Address
from sipswitch.sip.transport.loop import LoopNetwork, LoopTransport

A = Address("udp", "127.0.0.1", 5060)
B = Address("udp", "127.0.0.2", 5060)
B_TCP = Address("tcp", "127.0.0.2", 5060)
A_TCP = Address("tcp", "127.0.0.1", 40000)

OPTIONS = (
    b"OPTIONS sip:b@127.0.0.2 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKloop\r\n"
    b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:b@127.0.0.2>\r\n"
    b"Call-ID: loop-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)


class Sink:
    def __init__(self) -> None:
        self.messages: list[tuple[Message, Address, Address]] = []
        self.errors: list[tuple[MessageError, Address, Address]] = []

    def on_message(self, message: Message, source: Address, local: Address) -> None:
        self.messages.append((message, source, local))

    def on_parse_error(self, error: MessageError, source: Address, local: Address) -> None:
        self.errors.append((error, source, local))


def pair(latency: float = 0.05) -> tuple[VirtualClock, LoopNetwork, LoopTransport, Sink]:
    clock = VirtualClock(start=0.0)
    net = LoopNetwork(clock, latency=latency)
    a = LoopTransport(net, A, Sink())
    sink = Sink()
    LoopTransport(net, B, sink)
    return clock, net, a, sink


def test_message_is_parsed_and_delivered_after_the_latency() -> None:
    clock, net, a, sink = pair()
    assert a.send(OPTIONS, B)
    clock.advance(0.049)
    assert sink.messages == []
    clock.advance(0.002)
    message, source, local = sink.messages[0]
    assert isinstance(message, Request) and message.method == "OPTIONS"
    assert (source, local) == (A, B)
    assert net.sent == [(A, B, OPTIONS)]
    assert net.sent_times == [0.0]
    assert net.delivered == 1


def test_unparsable_bytes_reach_on_parse_error() -> None:
    clock, _, a, sink = pair()
    a.send(b"NOT SIP AT ALL\r\n\r\n", B)
    a.send(OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 99"), B)
    clock.advance(1)
    assert sink.messages == []
    assert [error.status for error, _, _ in sink.errors] == [400, 400]
    assert sink.errors[0][1:] == (A, B)


def test_drop_next_and_drop_matching_with_a_limit() -> None:
    clock, net, a, sink = pair()
    net.drop_next(2)
    for _ in range(3):
        a.send(OPTIONS, B)
    clock.advance(1)
    assert len(sink.messages) == 1
    assert len(net.dropped) == 2
    assert len(net.sent) == 3  # dropped messages are recorded as sent too

    net.drop_matching(lambda s, d, data: b"CSeq: 2" in data, limit=1)
    a.send(OPTIONS.replace(b"CSeq: 1", b"CSeq: 2"), B)
    a.send(OPTIONS.replace(b"CSeq: 1", b"CSeq: 2"), B)
    a.send(OPTIONS, B)
    clock.advance(1)
    assert len(sink.messages) == 3
    assert len(net.dropped) == 3

    net.drop_matching(lambda s, d, data: True)
    a.send(OPTIONS, B)
    a.send(OPTIONS, B)
    net.drop_matching(None)
    a.send(OPTIONS, B)
    clock.advance(1)
    assert len(sink.messages) == 4


def test_sent_between_filters_and_times() -> None:
    clock, net, a, sink = pair()
    a.send(OPTIONS, B)
    clock.advance(2)
    a.send(OPTIONS, B)
    assert net.sent_between(A, B) == [(0.0, OPTIONS), (2.0, OPTIONS)]
    assert net.sent_between(B, A) == []
    net.clear_record()
    assert net.sent == [] and net.sent_times == []


def test_datagram_to_nobody_is_lost_but_reliable_send_fails() -> None:
    clock = VirtualClock(start=0.0)
    net = LoopNetwork(clock)
    a = LoopTransport(net, A)
    assert a.send(OPTIONS, Address("udp", "127.0.0.9", 5060)) is True
    a_tcp = LoopTransport(net, A_TCP)
    assert a_tcp.send(OPTIONS, B_TCP) is False
    sink = Sink()
    LoopTransport(net, B_TCP, sink)
    assert a_tcp.send(OPTIONS, B_TCP) is True
    assert a.send(OPTIONS, B_TCP) is False  # a UDP endpoint cannot reach a TCP address
    clock.advance(1)
    assert len(sink.messages) == 1


def test_attach_twice_is_refused_and_close_detaches() -> None:
    clock, net, a, _ = pair()
    with pytest.raises(ValueError):
        LoopTransport(net, A, Sink())
    a.close()
    assert not net.is_attached(A)
    LoopTransport(net, A, Sink())


async def test_runs_on_the_asyncio_loop_clock() -> None:
    loop = asyncio.get_running_loop()
    clock = LoopClock(loop)
    net = LoopNetwork(clock, latency=0.0)
    arrived: asyncio.Future[Message] = loop.create_future()

    class FutureSink(Sink):
        def on_message(self, message: Message, source: Address, local: Address) -> None:
            if not arrived.done():
                arrived.set_result(message)

    a = LoopTransport(net, A, Sink())
    LoopTransport(net, B, FutureSink())
    a.send(OPTIONS, B)
    message = await asyncio.wait_for(arrived, timeout=5)
    assert isinstance(message, Request) and message.call_id == "loop-1"
