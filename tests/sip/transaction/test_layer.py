"""Transaction layer: Via stamping (received/rport), response destinations, RFC 2543 matching,
dropped responses, the bound on live transactions, requests that cannot be matched."""

from __future__ import annotations

from sipswitch.sip.message import Request, make_response
from sipswitch.sip.parser import parse_datagram
from sipswitch.sip.transaction import (
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    ServerTransaction,
    State,
    response_destination,
)
from sipswitch.sip.transport.base import Address

from .helpers import PEER, PEER_TCP, make_env, outgoing, request_bytes


def parsed(data: bytes) -> Request:
    message = parse_datagram(data)
    assert isinstance(message, Request)
    return message


# --- received / rport ---


def test_empty_rport_is_filled_and_received_added_and_responses_echo_them() -> None:
    env = make_env()
    env.peer_send(request_bytes("OPTIONS", sent_by="192.0.2.10:5060", rport=True))
    request = env.tu.calls[0][0]
    via = request.top_via
    assert via.params["rport"] == "5070"
    assert via.params["received"] == "127.0.0.2"
    assert via.params["branch"] == "z9hG4bKpeer1"
    txn = env.tu.last_txn
    assert txn.destination == PEER  # received:rport, not the sent-by
    txn.respond(make_response(request, 200, to_tag="x"))
    env.clock.advance(0)
    response = env.inbox.responses(200)[0]
    assert response.top_via.params["rport"] == "5070"
    assert response.top_via.params["received"] == "127.0.0.2"


def test_rport_with_matching_host_still_gets_received() -> None:
    env = make_env()
    env.peer_send(request_bytes("OPTIONS", sent_by="127.0.0.2:5070", rport=True))
    via = env.tu.calls[0][0].top_via
    assert via.params["rport"] == "5070"
    assert via.params["received"] == "127.0.0.2"  # RFC 3581 §4 asks for it with rport


def test_matching_host_without_rport_is_left_alone() -> None:
    env = make_env()
    raw = request_bytes("OPTIONS", sent_by="127.0.0.2:5070")
    env.peer_send(raw)
    request = env.tu.calls[0][0]
    assert request.headers.get("Via") == "SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bKpeer1"


def test_received_without_rport_sends_to_the_via_port() -> None:
    env = make_env()
    env.peer_send(request_bytes("OPTIONS", sent_by="phone.example.com:5080"))
    request = env.tu.calls[0][0]
    assert request.top_via.params["received"] == "127.0.0.2"
    assert "rport" not in request.top_via.params
    txn = env.tu.last_txn
    assert txn.destination == Address("udp", "127.0.0.2", 5080)
    txn.respond(make_response(request, 200, to_tag="x"))
    assert env.net.sent[-1][1] == Address("udp", "127.0.0.2", 5080)


def test_only_the_top_via_is_rewritten_and_the_order_is_kept() -> None:
    env = make_env()
    via = (
        "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKtop;rport, "
        "SIP/2.0/UDP 192.0.2.20;branch=z9hG4bKsecond"
    )
    env.peer_send(request_bytes("OPTIONS", via=via, extra=("Via: SIP/2.0/TCP 192.0.2.30",)))
    request = env.tu.calls[0][0]
    assert [v.host for v in request.vias] == ["192.0.2.10", "192.0.2.20", "192.0.2.30"]
    assert request.vias[0].params["received"] == "127.0.0.2"
    assert request.vias[1].params == {"branch": "z9hG4bKsecond"}
    response = make_response(request, 200)
    assert [v.host for v in response.vias] == ["192.0.2.10", "192.0.2.20", "192.0.2.30"]


# --- response_destination ---


def test_response_destination_rules() -> None:
    def dest(via: str, source: Address = PEER) -> Address:
        return response_destination(parsed(request_bytes("OPTIONS", via=via)), source)

    assert dest("SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKa;received=127.0.0.5;rport=6000") == (
        Address("udp", "127.0.0.5", 6000)
    )
    assert dest("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa;received=127.0.0.5") == Address(
        "udp", "127.0.0.5", 5060
    )
    assert dest("SIP/2.0/UDP 127.0.0.2:5099;branch=z9hG4bKa") == Address("udp", "127.0.0.2", 5099)
    assert dest("SIP/2.0/UDP 127.0.0.2;branch=z9hG4bKa;rport") == Address("udp", "127.0.0.2", 5060)
    assert dest("SIP/2.0/UDP [::1]:5070;branch=z9hG4bKa;received=[::1];rport=5071") == Address(
        "udp", "::1", 5071
    )
    assert dest("SIP/2.0/TCP 192.0.2.1;branch=z9hG4bKa", PEER_TCP) == PEER_TCP
    assert dest("garbage", PEER) == PEER


# --- requests that cannot be matched ---


def test_request_without_via_reaches_the_tu_without_transaction() -> None:
    env = make_env()
    via_line = b"Via: SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bKpeer1\r\n"
    raw = request_bytes("OPTIONS").replace(via_line, b"")
    assert raw != request_bytes("OPTIONS")
    env.peer_send(raw)

    def answer_400(request: Request, txn: ServerTransaction | None) -> None:
        assert txn is None
        destination = env.layer.response_destination(request, PEER)
        env.layer.send_stateless(make_response(request, 400, to_tag="x"), destination)

    env.tu.answer = answer_400
    env.peer_send(request_bytes("OPTIONS", via="SIP/2.0/UDP"))
    assert [txn for _, txn, _ in env.tu.calls] == [None, None]
    assert [r.status for r in env.inbox.responses()] == [400]
    assert env.layer.transaction_count == 0


def test_request_with_broken_cseq_reaches_the_tu_without_transaction() -> None:
    env = make_env()
    env.peer_send(request_bytes("OPTIONS", cseq_method="OPTIONS x"))
    assert env.tu.calls[0][1] is None


def test_parse_errors_are_forwarded() -> None:
    env = make_env()
    env.peer_send(b"INVITE sip:bob@127.0.0.1 SIP/7.0\r\nVia: SIP/2.0/UDP h\r\n\r\n")
    assert len(env.parse_errors) == 1
    assert env.parse_errors[0].status == 505
    assert env.tu.calls == []


# --- RFC 2543 matching ---


def test_rfc2543_request_without_magic_cookie_is_matched_by_its_fields() -> None:
    env = make_env()
    env.peer_send(request_bytes("INVITE", branch=None))
    txn = env.tu.last_txn
    assert isinstance(txn, ServerInviteTransaction)
    env.peer_send(request_bytes("INVITE", branch=None))  # retransmission
    assert env.tu.methods() == ["INVITE"]
    assert [r.status for r in env.inbox.responses()] == [100, 100]
    # A different From tag or CSeq is another transaction.
    env.peer_send(request_bytes("INVITE", branch=None, from_tag="other"))
    env.peer_send(request_bytes("INVITE", branch=None, cseq=2))
    assert env.tu.methods() == ["INVITE", "INVITE", "INVITE"]

    # CANCEL finds the INVITE by the same fields.
    env.peer_send(request_bytes("CANCEL", branch=None))
    assert txn.cancelled
    assert len(env.inbox.responses(200, "CANCEL")) == 1
    txn.respond(make_response(txn.request, 487, to_tag="t487"))
    # ACK with the To tag of our 487 is absorbed; with another tag it is not ours.
    env.peer_send(request_bytes("ACK", branch=None, to_tag="t487"))
    assert txn.state is State.CONFIRMED
    assert env.tu.methods() == ["INVITE", "INVITE", "INVITE"]


def test_rfc2543_ack_with_wrong_to_tag_is_not_absorbed() -> None:
    env = make_env()
    env.peer_send(request_bytes("INVITE", branch="1"))  # a non-cookie branch is RFC 2543 too
    txn = env.tu.last_txn
    txn.respond(make_response(txn.request, 486, to_tag="busy"))
    env.peer_send(request_bytes("ACK", branch="1", to_tag="not-ours"))
    assert txn.state is State.COMPLETED
    assert env.tu.methods() == ["INVITE", "ACK"]


def test_short_branch_equal_to_the_cookie_is_rfc2543() -> None:
    env = make_env()
    env.peer_send(request_bytes("OPTIONS", branch="z9hG4bK"))
    env.peer_send(request_bytes("OPTIONS", branch="z9hG4bK", from_tag="other"))
    assert env.tu.methods() == ["OPTIONS", "OPTIONS"]
    assert env.layer.transaction_count == 2


def test_same_branch_from_another_sent_by_is_another_transaction() -> None:
    env = make_env()
    env.peer_send(request_bytes("OPTIONS"))
    env.peer_send(request_bytes("OPTIONS", sent_by="127.0.0.3:5070"))
    assert env.tu.methods() == ["OPTIONS", "OPTIONS"]


def test_same_branch_different_method_is_another_transaction() -> None:
    env = make_env()
    env.peer_send(request_bytes("INVITE"))
    env.peer_send(request_bytes("INFO", cseq=2))
    assert env.tu.methods() == ["INVITE", "INFO"]
    assert isinstance(env.tu.calls[1][1], ServerNonInviteTransaction)


# --- responses ---


def test_unmatched_and_malformed_responses_are_dropped() -> None:
    env = make_env()
    txn = env.layer.send_request(outgoing("OPTIONS"), PEER, env.listener)
    env.clock.advance(0)
    request = env.inbox.requests("OPTIONS")[0]
    stray = make_response(parsed(request_bytes("OPTIONS", branch="z9hG4bKunknown")), 200)
    env.peer_send(stray)
    no_branch = make_response(parsed(request_bytes("OPTIONS", branch=None)), 200)
    env.peer_send(no_branch)
    broken = make_response(request, 200, to_tag="x")
    broken.headers.set("CSeq", "banana")
    env.peer_send(broken)
    no_from = make_response(request, 200, to_tag="x")
    no_from.headers.remove("From")
    env.peer_send(no_from)
    assert env.listener.events == []
    assert txn.state is State.TRYING
    assert env.tu.calls == []  # responses never reach the request handler
    env.reply(request, 200)
    assert env.listener.statuses() == [200]


# --- bounds ---


def test_new_requests_beyond_the_bound_get_503_with_retry_after() -> None:
    env = make_env(max_transactions=2)
    env.peer_send(request_bytes("OPTIONS", branch="z9hG4bKone"))
    env.peer_send(request_bytes("OPTIONS", branch="z9hG4bKtwo"))
    env.peer_send(request_bytes("OPTIONS", branch="z9hG4bKthree"))
    assert env.tu.methods() == ["OPTIONS", "OPTIONS"]
    rejected = env.inbox.responses(503)
    assert len(rejected) == 1
    assert rejected[0].top_via.branch == "z9hG4bKthree"
    assert rejected[0].headers.get("Retry-After") == "5"
    # Retransmissions of live transactions are still absorbed, and an ACK is never answered.
    env.peer_send(request_bytes("OPTIONS", branch="z9hG4bKone"))
    env.peer_send(request_bytes("ACK", branch="z9hG4bKfour", to_tag="x"))
    assert len(env.inbox.responses(503)) == 1
    assert env.tu.methods() == ["OPTIONS", "OPTIONS", "ACK"]
    # Once a transaction ends, there is room again.
    env.at(33)
    env.peer_send(request_bytes("OPTIONS", branch="z9hG4bKfive"))
    assert env.tu.methods()[-1] == "OPTIONS"
    assert env.layer.transaction_count == 1


def test_many_transactions_leave_the_tables_empty() -> None:
    env = make_env()

    def answer(request: Request, txn: ServerTransaction | None) -> None:
        if txn is not None:
            txn.respond(make_response(request, 200, to_tag="x"))

    env.tu.answer = answer
    for index in range(200):
        env.peer_send(request_bytes("OPTIONS", branch=f"z9hG4bK{index:04d}"))
    assert env.layer.transaction_count == 200
    env.at(40)
    assert env.layer.transaction_count == 0
    assert env.clock.pending == 0
