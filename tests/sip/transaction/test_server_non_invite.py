"""Non-INVITE server transaction: retransmissions absorbed (last response resent), Timer J,
the bound on unanswered transactions."""

from __future__ import annotations

from sipswitch.sip.message import make_response
from sipswitch.sip.transaction import ServerNonInviteTransaction, State

from .helpers import Env, make_env, request_bytes


def options_txn(env: Env) -> ServerNonInviteTransaction:
    txn = env.tu.calls[-1][1]
    assert isinstance(txn, ServerNonInviteTransaction)
    return txn


def test_final_response_is_resent_for_retransmissions_until_timer_j() -> None:
    env = make_env()
    env.peer_send(request_bytes("OPTIONS"))
    txn = options_txn(env)
    assert txn.state is State.TRYING
    assert env.inbox.received == []  # no 100 Trying for non-INVITE
    txn.respond(make_response(txn.request, 200, to_tag="x"))
    assert txn.state is State.COMPLETED
    env.at(0.5)
    env.peer_send(request_bytes("OPTIONS"))
    env.at(1.5)
    env.peer_send(request_bytes("OPTIONS"))
    assert env.inbox.times(lambda m: True) == [0, 0.5, 1.5]
    assert env.tu.methods() == ["OPTIONS"]
    env.at(31.9)
    assert txn.state is State.COMPLETED
    env.at(32.1)
    assert txn.terminated
    assert env.layer.transaction_count == 0
    # After Timer J the same request is new again.
    env.peer_send(request_bytes("OPTIONS"))
    assert env.tu.methods() == ["OPTIONS", "OPTIONS"]


def test_retransmission_while_trying_is_absorbed_silently() -> None:
    env = make_env()
    env.peer_send(request_bytes("REGISTER"))
    env.at(0.5)
    env.peer_send(request_bytes("REGISTER"))
    assert env.tu.methods() == ["REGISTER"]
    assert env.inbox.received == []


def test_provisional_is_resent_while_proceeding() -> None:
    env = make_env()
    env.peer_send(request_bytes("SUBSCRIBE"))
    txn = options_txn(env)
    txn.respond(make_response(txn.request, 100))
    assert txn.state is State.PROCEEDING
    env.peer_send(request_bytes("SUBSCRIBE"))
    assert [r.status for r in env.inbox.responses()] == [100, 100]
    txn.respond(make_response(txn.request, 202, to_tag="x"))
    txn.respond(make_response(txn.request, 500, to_tag="x"))  # a second final is ignored
    env.clock.advance(0)
    assert [r.status for r in env.inbox.responses()] == [100, 100, 202]


def test_reliable_transport_ends_at_the_final_response() -> None:
    env = make_env(reliable=True)
    env.peer_send(request_bytes("OPTIONS", transport="TCP", sent_by="127.0.0.2:40123"))
    txn = options_txn(env)
    txn.respond(make_response(txn.request, 200, to_tag="x"))
    assert txn.terminated
    assert env.layer.transaction_count == 0
    env.clock.advance(0)
    assert len(env.inbox.responses(200)) == 1


def test_unanswered_transaction_is_dropped_after_64_t1() -> None:
    env = make_env()
    env.peer_send(request_bytes("OPTIONS"))
    txn = options_txn(env)
    env.at(31.9)
    assert env.layer.transaction_count == 1
    env.at(32.1)
    assert txn.terminated
    assert env.layer.transaction_count == 0
    txn.respond(make_response(txn.request, 200, to_tag="late"))
    env.clock.advance(0)
    assert env.inbox.received == []


def test_completed_transaction_keeps_only_the_wire_bytes() -> None:
    env = make_env()
    env.peer_send(request_bytes("REGISTER"))
    txn = options_txn(env)
    original = txn.request
    txn.respond(make_response(original, 401, to_tag="x"))
    # The parsed request and response are let go; the status stays readable.
    assert txn.request is not original and len(txn.request.headers) == 0
    assert txn.request.method == "REGISTER"
    assert txn.last_response is not None and txn.last_response.status == 401
    assert len(txn.last_response.headers) == 0
    assert len(original.headers) > 0, "the TU's own request object is left untouched"
    env.at(1.0)
    env.peer_send(request_bytes("REGISTER"))
    first, again = env.inbox.responses()
    assert first.to_bytes() == again.to_bytes() and first.status == 401
