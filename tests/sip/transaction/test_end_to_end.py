"""Two transaction layers talking over the loop network: a full INVITE/180/200/ACK/BYE call,
with and without lost messages."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from sipswitch.sip.clock import LoopClock, VirtualClock
from sipswitch.sip.message import Headers, Request, Response, make_response
from sipswitch.sip.transaction import (
    ClientTransaction,
    ServerTransaction,
    TimerSettings,
    TransactionLayer,
    new_branch,
)
from sipswitch.sip.transport.base import Address
from sipswitch.sip.transport.loop import LoopNetwork, LoopTransport
from sipswitch.sip.uri import parse_uri

CALLER = Address("udp", "127.0.0.1", 5060)
CALLEE = Address("udp", "127.0.0.2", 5062)


class Callee:
    """Answers an INVITE with 180 then, a second later, 200; answers BYE with 200."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.requests: list[tuple[str, ServerTransaction | None]] = []
        self.no_ack = False

    def __call__(self, request: Request, txn: ServerTransaction | None, source: Address) -> None:
        self.requests.append((request.method, txn))
        if txn is None:
            return
        if request.method == "INVITE":
            txn.respond(make_response(request, 180, to_tag="callee"))
            txn.on_no_ack = self._on_no_ack
            self.clock.call_later(1.0, self._answer, txn)
        elif request.method == "BYE":
            txn.respond(make_response(request, 200))

    def _answer(self, txn: ServerTransaction) -> None:
        ok = make_response(txn.request, 200, to_tag="callee")
        ok.headers.add("Contact", "<sip:bob@127.0.0.2:5062>")
        txn.respond(ok)

    def _on_no_ack(self) -> None:
        self.no_ack = True

    def methods(self) -> list[str]:
        return [method for method, _ in self.requests]


@dataclass
class Caller:
    """Sends the ACK for a 2xx itself (RFC 3261 §13.2.2.4) and then a BYE."""

    layer: TransactionLayer | None = None
    statuses: list[tuple[str, int]] = field(default_factory=list)
    timeouts: int = 0

    def on_response(self, response: Response, txn: ClientTransaction) -> None:
        self.statuses.append((txn.request.method, response.status))
        if txn.request.method == "INVITE" and 200 <= response.status < 300:
            assert self.layer is not None
            self.layer.send_stateless(in_dialog(txn.request, response, "ACK"), CALLEE)

    def on_timeout(self, txn: ClientTransaction) -> None:
        self.timeouts += 1

    def on_transport_error(self, txn: ClientTransaction) -> None:
        raise AssertionError("unexpected transport error")


def new_invite() -> Request:
    headers = Headers()
    headers.add("Via", f"SIP/2.0/UDP 127.0.0.1:5060;branch={new_branch()};rport")
    headers.add("Max-Forwards", "70")
    headers.add("From", "<sip:alice@127.0.0.1>;tag=caller")
    headers.add("To", "<sip:bob@127.0.0.2>")
    headers.add("Call-ID", "e2e-call@127.0.0.1")
    headers.add("CSeq", "1 INVITE")
    headers.add("Contact", "<sip:alice@127.0.0.1:5060>")
    return Request("INVITE", parse_uri("sip:bob@127.0.0.2:5062"), headers)


def in_dialog(invite: Request, response: Response, method: str) -> Request:
    headers = Headers()
    headers.add("Via", f"SIP/2.0/UDP 127.0.0.1:5060;branch={new_branch()}")
    headers.add("Max-Forwards", "70")
    headers.add("From", invite.headers.get("From") or "")
    headers.add("To", response.headers.get("To") or "")
    headers.add("Call-ID", invite.call_id)
    number = invite.cseq.number if method == "ACK" else invite.cseq.number + 1
    headers.add("CSeq", f"{number} {method}")
    contact = response.contacts
    target = contact[0].uri if contact else invite.uri
    return Request(method, target, headers)


@dataclass
class Call:
    clock: VirtualClock
    net: LoopNetwork
    caller_layer: TransactionLayer
    callee_layer: TransactionLayer
    caller: Caller
    callee: Callee


def setup(latency: float = 0.01) -> Call:
    clock = VirtualClock(start=0.0)
    net = LoopNetwork(clock, latency=latency)
    caller = Caller()
    callee = Callee(clock)
    a_transport = LoopTransport(net, CALLER)
    caller_layer = TransactionLayer(a_transport, clock, lambda r, t, s: None)
    a_transport.attach(caller_layer)
    caller.layer = caller_layer
    b_transport = LoopTransport(net, CALLEE)
    callee_layer = TransactionLayer(b_transport, clock, callee)
    b_transport.attach(callee_layer)
    return Call(clock, net, caller_layer, callee_layer, caller, callee)


def wire_log(call: Call) -> list[str]:
    out = []
    for source, _, data in call.net.sent:
        first = data.split(b"\r\n", 1)[0].decode()
        side = "A" if source == CALLER else "B"
        out.append(f"{side} {first}")
    return out


def run_call(call: Call) -> None:
    invite_txn = call.caller_layer.send_request(new_invite(), CALLEE, call.caller)
    call.clock.advance(3)
    ok = invite_txn.last_response
    assert ok is not None and ok.status == 200
    bye = in_dialog(invite_txn.request, ok, "BYE")
    call.caller_layer.send_request(bye, CALLEE, call.caller)
    call.clock.advance(1)


def test_full_call_invite_180_200_ack_bye() -> None:
    call = setup()
    run_call(call)
    assert call.caller.statuses == [("INVITE", 180), ("INVITE", 200), ("BYE", 200)]
    assert call.callee.methods() == ["INVITE", "ACK", "BYE"]
    assert call.callee.requests[1][1] is None  # the ACK of the 2xx has no transaction
    assert wire_log(call) == [
        "A INVITE sip:bob@127.0.0.2:5062 SIP/2.0",
        "B SIP/2.0 180 Ringing",
        "B SIP/2.0 200 OK",
        "A ACK sip:bob@127.0.0.2:5062 SIP/2.0",
        "A BYE sip:bob@127.0.0.2:5062 SIP/2.0",
        "B SIP/2.0 200 OK",
    ]
    call.clock.advance(60)
    assert not call.callee.no_ack
    assert call.caller.timeouts == 0
    assert call.caller_layer.transaction_count == 0
    assert call.callee_layer.transaction_count == 0
    assert call.clock.pending == 0


def test_lost_invite_is_retransmitted_and_the_call_completes() -> None:
    call = setup()
    call.net.drop_next(1)
    run_call(call)
    assert len(call.net.dropped) == 1
    assert call.net.dropped[0][2].startswith(b"INVITE ")
    invites = [
        at for at, data in call.net.sent_between(CALLER, CALLEE) if data.startswith(b"INVITE")
    ]
    assert invites == [0, 0.5]
    assert call.callee.methods() == ["INVITE", "ACK", "BYE"]
    assert call.caller.statuses[-1] == ("BYE", 200)


def test_lost_200_is_retransmitted_by_the_callee_until_acknowledged() -> None:
    call = setup()
    call.net.drop_matching(lambda s, d, data: data.startswith(b"SIP/2.0 200 OK"), limit=2)
    run_call(call)
    oks = [
        at
        for at, data in call.net.sent_between(CALLEE, CALLER)
        if data.startswith(b"SIP/2.0 200") and b"CSeq: 1 INVITE" in data
    ]
    # The INVITE arrives at 0.01 and is answered a second later; two 200s are lost, the third
    # gets through and is acknowledged.
    assert oks == pytest.approx([1.01, 1.51, 2.51])
    assert call.caller.statuses.count(("INVITE", 200)) == 1
    assert call.callee.methods() == ["INVITE", "ACK", "BYE"]
    call.clock.advance(60)
    assert not call.callee.no_ack


def test_callee_reports_no_ack_when_every_ack_is_lost() -> None:
    call = setup()
    call.net.drop_matching(lambda s, d, data: data.startswith(b"ACK "))
    call.caller_layer.send_request(new_invite(), CALLEE, call.caller)
    call.clock.advance(60)
    assert call.callee.no_ack
    # Every retransmitted 2xx reached the caller's Accepted transaction and was passed on,
    # and every one was acknowledged again (and lost).
    assert call.caller.statuses.count(("INVITE", 200)) == len(call.net.dropped)
    assert len(call.net.dropped) == 11



async def test_call_on_the_asyncio_loop_clock_with_a_lost_request() -> None:
    """The same layers on the real event loop (short timers keep it quick; bounded wait)."""
    loop = asyncio.get_running_loop()
    clock = LoopClock(loop)
    net = LoopNetwork(clock, latency=0.0)
    timers = TimerSettings(t1=0.01, t2=0.04, t4=0.05)
    done: asyncio.Future[int] = loop.create_future()

    class Listener:
        def on_response(self, response: Response, txn: ClientTransaction) -> None:
            if response.status >= 200 and not done.done():
                done.set_result(response.status)

        def on_timeout(self, txn: ClientTransaction) -> None:
            if not done.done():
                done.set_result(408)

        def on_transport_error(self, txn: ClientTransaction) -> None:
            if not done.done():
                done.set_result(503)

    def answer(request: Request, txn: ServerTransaction | None, source: Address) -> None:
        if txn is not None:
            txn.respond(make_response(request, 200, to_tag="x"))

    a = LoopTransport(net, CALLER)
    a_layer = TransactionLayer(a, clock, lambda r, t, s: None, timers=timers)
    a.attach(a_layer)
    b = LoopTransport(net, CALLEE)
    b_layer = TransactionLayer(b, clock, answer, timers=timers)
    b.attach(b_layer)
    net.drop_next(1)
    request = in_dialog(new_invite(), make_response(new_invite(), 200, to_tag="x"), "OPTIONS")
    a_layer.send_request(request, CALLEE, Listener())
    assert await asyncio.wait_for(done, timeout=5) == 200
    assert len(net.dropped) == 1
    a_layer.close()
    b_layer.close()
    assert a_layer.transaction_count == b_layer.transaction_count == 0
