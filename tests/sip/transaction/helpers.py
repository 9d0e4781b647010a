"""Test doubles for the transaction layer: a raw peer on the loop network, a recording TU and
client listener, and builders for request bytes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sipswitch.sip.clock import VirtualClock
from sipswitch.sip.message import Message, Request, Response, make_response
from sipswitch.sip.parser import MessageError, parse_datagram
from sipswitch.sip.transaction import (
    ClientTransaction,
    ServerTransaction,
    TimerSettings,
    TransactionLayer,
)
from sipswitch.sip.transport.base import Address
from sipswitch.sip.transport.loop import LoopNetwork, LoopTransport

SERVER = Address("udp", "127.0.0.1", 5060)
PEER = Address("udp", "127.0.0.2", 5070)
SERVER_TCP = Address("tcp", "127.0.0.1", 5060)
PEER_TCP = Address("tcp", "127.0.0.2", 40123)


def request_bytes(
    method: str = "INVITE",
    *,
    branch: str | None = "z9hG4bKpeer1",
    sent_by: str = "127.0.0.2:5070",
    transport: str = "UDP",
    rport: bool = False,
    via: str | None = None,
    call_id: str = "call-1@127.0.0.2",
    cseq: int = 1,
    cseq_method: str | None = None,
    from_tag: str | None = "ft1",
    to_tag: str | None = None,
    uri: str = "sip:bob@127.0.0.1",
    routes: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> bytes:
    if via is None:
        via = f"SIP/2.0/{transport} {sent_by}"
        if branch is not None:
            via += f";branch={branch}"
        if rport:
            via += ";rport"
    lines = [f"{method} {uri} SIP/2.0", f"Via: {via}", "Max-Forwards: 70"]
    lines += [f"Route: {route}" for route in routes]
    lines.append("From: <sip:alice@127.0.0.2>" + (f";tag={from_tag}" if from_tag else ""))
    lines.append("To: <sip:bob@127.0.0.1>" + (f";tag={to_tag}" if to_tag else ""))
    lines.append(f"Call-ID: {call_id}")
    lines.append(f"CSeq: {cseq} {cseq_method or method}")
    lines += list(extra)
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def outgoing(method: str = "INVITE", **kwargs: object) -> Request:
    """A request as the local TU would hand it to ``send_request`` (our own Via)."""
    kwargs.setdefault("sent_by", "127.0.0.1:5060")
    kwargs.setdefault("branch", "z9hG4bKlocal1")
    message = parse_datagram(request_bytes(method, **kwargs))  # type: ignore[arg-type]
    assert isinstance(message, Request)
    return message


class Collector:
    """A MessageSink that records what arrives, with the clock time."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.received: list[tuple[float, Message, Address]] = []
        self.errors: list[MessageError] = []

    def on_message(self, message: Message, source: Address, local: Address) -> None:
        self.received.append((self.clock.now(), message, source))

    def on_parse_error(self, error: MessageError, source: Address, local: Address) -> None:
        self.errors.append(error)

    def responses(self, status: int | None = None, method: str | None = None) -> list[Response]:
        return [
            m
            for _, m, _ in self.received
            if isinstance(m, Response)
            and (status is None or m.status == status)
            and (method is None or m.cseq.method == method)
        ]

    def requests(self, method: str | None = None) -> list[Request]:
        return [
            m
            for _, m, _ in self.received
            if isinstance(m, Request) and (method is None or m.method == method)
        ]

    def times(self, match: Callable[[Message], bool]) -> list[float]:
        return [at for at, m, _ in self.received if match(m)]


def status_is(status: int) -> Callable[[Message], bool]:
    return lambda m: isinstance(m, Response) and m.status == status


def method_is(method: str) -> Callable[[Message], bool]:
    return lambda m: isinstance(m, Request) and m.method == method


class RecordingTU:
    """The request handler: records every call and runs ``answer`` (if set) on it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Request, ServerTransaction | None, Address]] = []
        self.answer: Callable[[Request, ServerTransaction | None], None] | None = None

    def __call__(self, request: Request, txn: ServerTransaction | None, source: Address) -> None:
        self.calls.append((request, txn, source))
        if self.answer is not None:
            self.answer(request, txn)

    def methods(self) -> list[str]:
        return [request.method for request, _, _ in self.calls]

    @property
    def last_txn(self) -> ServerTransaction:
        txn = self.calls[-1][1]
        assert txn is not None
        return txn


class RecordingListener:
    """A ClientListener that records events with the clock time."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.events: list[tuple[str, int | None, float]] = []
        self.responses: list[Response] = []

    def on_response(self, response: Response, txn: ClientTransaction) -> None:
        self.events.append(("response", response.status, self.clock.now()))
        self.responses.append(response)

    def on_timeout(self, txn: ClientTransaction) -> None:
        self.events.append(("timeout", None, self.clock.now()))

    def on_transport_error(self, txn: ClientTransaction) -> None:
        self.events.append(("transport_error", None, self.clock.now()))

    def statuses(self) -> list[int | None]:
        return [status for kind, status, _ in self.events if kind == "response"]


@dataclass
class Env:
    """A transaction layer at SERVER and a raw peer at PEER on one loop network."""

    clock: VirtualClock
    net: LoopNetwork
    layer: TransactionLayer
    tu: RecordingTU
    peer: LoopTransport
    inbox: Collector
    local: Address
    remote: Address
    listener: RecordingListener
    parse_errors: list[MessageError] = field(default_factory=list)

    def at(self, when: float) -> None:
        """Run the clock up to the absolute time ``when``."""
        self.clock.advance(when - self.clock.now())

    def peer_send(self, data: bytes | Message) -> None:
        raw = data if isinstance(data, bytes) else data.to_bytes()
        self.peer.send(raw, self.local)
        self.clock.advance(0)

    def reply(self, request: Request, status: int, to_tag: str | None = "peer-tag") -> Response:
        response = make_response(request, status, to_tag=to_tag if status > 100 else None)
        self.peer_send(response)
        return response

    def sent_to_peer(self) -> list[tuple[float, Message]]:
        out = []
        for at, data in self.net.sent_between(self.local, self.remote):
            out.append((at, parse_datagram(data)))
        return out

    def send_times(self, match: Callable[[Message], bool]) -> list[float]:
        return [at for at, message in self.sent_to_peer() if match(message)]


def make_env(
    reliable: bool = False,
    timers: TimerSettings | None = None,
    max_transactions: int = 200_000,
) -> Env:
    clock = VirtualClock(start=0.0)
    net = LoopNetwork(clock, latency=0.0)
    local, remote = (SERVER_TCP, PEER_TCP) if reliable else (SERVER, PEER)
    tu = RecordingTU()
    errors: list[MessageError] = []
    transport = LoopTransport(net, local)
    layer = TransactionLayer(
        transport,
        clock,
        tu,
        timers=timers or TimerSettings(),
        max_transactions=max_transactions,
        on_parse_error=lambda error, source, local: errors.append(error),
    )
    transport.attach(layer)
    inbox = Collector(clock)
    peer = LoopTransport(net, remote, inbox)
    return Env(
        clock, net, layer, tu, peer, inbox, local, remote, RecordingListener(clock), errors
    )
