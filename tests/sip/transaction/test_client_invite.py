"""INVITE client transaction: Timer A/B schedule, 1xx/2xx/non-2xx handling, the ACK it builds,
the RFC 6026 Accepted state and CANCEL (deferred until a provisional response)."""

from __future__ import annotations

import pytest

from sipswitch.sip.message import Request, make_response
from sipswitch.sip.transaction import ClientInviteTransaction, State
from sipswitch.sip.transport.base import Address

from .helpers import PEER, PEER_TCP, Env, make_env, method_is, outgoing

ROUTES = ("<sip:proxy1.example.com;lr>", "<sip:proxy2.example.com;lr>")


def start_invite(env: Env, **kwargs: object) -> ClientInviteTransaction:
    if env.remote.reliable:
        kwargs.setdefault("transport", "TCP")
    txn = env.layer.send_request(outgoing("INVITE", **kwargs), env.remote, env.listener)
    env.clock.advance(0)
    assert isinstance(txn, ClientInviteTransaction)
    return txn


def received_invite(env: Env) -> Request:
    return env.inbox.requests("INVITE")[0]


def test_udp_retransmits_on_timer_a_and_times_out_on_timer_b() -> None:
    env = make_env()
    txn = start_invite(env)
    env.at(40)
    assert env.send_times(method_is("INVITE")) == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert env.listener.events == [("timeout", None, 32.0)]
    assert txn.terminated
    assert env.layer.transaction_count == 0


def test_reliable_transport_sends_once_and_still_times_out() -> None:
    env = make_env(reliable=True)
    txn = start_invite(env)
    env.at(40)
    assert env.send_times(method_is("INVITE")) == [0]
    assert env.listener.events == [("timeout", None, 32.0)]
    assert txn.terminated


def test_provisional_stops_retransmission_and_timer_b() -> None:
    env = make_env()
    txn = start_invite(env)
    env.at(0.7)
    env.reply(received_invite(env), 180)
    env.at(100)
    assert env.send_times(method_is("INVITE")) == [0, 0.5]
    assert env.listener.events == [("response", 180, 0.7)]
    assert txn.state is State.PROCEEDING
    assert env.layer.transaction_count == 1


def test_non_2xx_is_acknowledged_by_the_transaction() -> None:
    env = make_env()
    txn = start_invite(env, routes=ROUTES, uri="sip:bob@127.0.0.1;transport=udp")
    env.at(0.2)
    invite = received_invite(env)
    env.reply(invite, 180)
    env.at(1)
    env.reply(invite, 486, to_tag="busy-tag")
    acks = env.inbox.requests("ACK")
    assert len(acks) == 1
    ack = acks[0]
    assert str(ack.uri) == "sip:bob@127.0.0.1;transport=udp"
    assert ack.headers.get_all("Via") == [invite.headers.get("Via")]
    assert ack.top_via.branch == invite.top_via.branch == txn.branch
    assert ack.call_id == invite.call_id
    assert ack.headers.get("From") == invite.headers.get("From")
    assert ack.to.tag == "busy-tag"
    assert str(ack.to.uri) == str(invite.to.uri)
    assert str(ack.cseq) == f"{invite.cseq.number} ACK"
    assert ack.headers.get_all("Route") == list(ROUTES)
    assert ack.max_forwards == 70
    assert env.listener.statuses() == [180, 486]
    assert txn.state is State.COMPLETED

    # A retransmitted 486 (our ACK was lost) gets the ACK again but is not reported twice.
    env.at(2)
    env.reply(invite, 486, to_tag="busy-tag")
    assert len(env.inbox.requests("ACK")) == 2
    assert env.inbox.requests("ACK")[1].to_bytes() == ack.to_bytes()
    assert env.listener.statuses() == [180, 486]

    # Timer D: 32 s in Completed over UDP.
    env.at(32.9)
    assert not txn.terminated
    env.at(33.1)
    assert txn.terminated
    assert env.layer.transaction_count == 0


def test_non_2xx_over_reliable_transport_ends_at_once() -> None:
    env = make_env(reliable=True)
    txn = start_invite(env)
    env.reply(received_invite(env), 404)
    assert len(env.inbox.requests("ACK")) == 1
    assert env.listener.statuses() == [404]
    assert txn.terminated
    assert env.layer.transaction_count == 0


def test_2xx_enters_accepted_and_passes_every_2xx_to_the_tu() -> None:
    env = make_env()
    txn = start_invite(env)
    env.at(0.1)
    invite = received_invite(env)
    env.reply(invite, 200, to_tag="fork-a")
    assert txn.state is State.ACCEPTED
    env.at(1)
    env.reply(invite, 200, to_tag="fork-a")  # retransmission
    env.reply(invite, 200, to_tag="fork-b")  # another fork
    env.reply(invite, 486, to_tag="fork-c")  # non-2xx after a 2xx: ignored
    assert [r.to.tag for r in env.listener.responses] == ["fork-a", "fork-a", "fork-b"]
    assert env.inbox.requests("ACK") == []  # the TU acknowledges a 2xx itself
    assert env.send_times(method_is("INVITE")) == [0]  # no retransmission after the 2xx
    env.at(0.1 + 32 - 0.01)
    assert txn.state is State.ACCEPTED
    env.at(0.1 + 32 + 0.01)  # Timer M
    assert txn.terminated
    env.reply(invite, 200, to_tag="fork-a")
    assert len(env.listener.responses) == 3


def test_cancel_before_any_provisional_is_deferred_until_one_arrives() -> None:
    env = make_env()
    txn = start_invite(env, routes=ROUTES)
    txn.cancel()
    env.at(0.3)
    assert env.inbox.requests("CANCEL") == []
    invite = received_invite(env)
    env.reply(invite, 100)
    cancels = env.inbox.requests("CANCEL")
    assert len(cancels) == 1
    cancel = cancels[0]
    assert cancel.top_via.branch == txn.branch
    assert cancel.headers.get_all("Via") == [invite.headers.get("Via")]
    assert str(cancel.uri) == str(invite.uri)
    assert cancel.call_id == invite.call_id
    assert cancel.headers.get("From") == invite.headers.get("From")
    assert cancel.headers.get("To") == invite.headers.get("To")
    assert str(cancel.cseq) == f"{invite.cseq.number} CANCEL"
    assert cancel.headers.get_all("Route") == list(ROUTES)
    assert txn.cancel_transaction is not None
    assert env.layer.find_client(txn.branch, "CANCEL") is txn.cancel_transaction

    # The CANCEL is its own non-INVITE transaction: retransmitted on Timer E until answered.
    env.at(1.0)
    assert env.send_times(method_is("CANCEL")) == [0.3, 0.8]
    env.reply(cancel, 200)
    env.reply(invite, 487, to_tag="t487")
    env.at(5)
    assert env.send_times(method_is("CANCEL")) == [0.3, 0.8]
    assert env.listener.statuses() == [100, 487]
    assert len(env.inbox.requests("ACK")) == 1


def test_cancel_is_not_sent_when_a_final_response_arrives_first() -> None:
    env = make_env()
    txn = start_invite(env)
    txn.cancel()
    env.at(0.2)
    env.reply(received_invite(env), 603)
    env.at(40)
    assert env.inbox.requests("CANCEL") == []
    assert txn.cancel_transaction is None
    assert env.listener.statuses() == [603]


def test_cancel_after_provisional_is_sent_at_once_with_reason() -> None:
    env = make_env()
    txn = start_invite(env)
    env.at(0.2)
    invite = received_invite(env)
    env.reply(invite, 180)
    env.at(3)
    txn.cancel(reason='SIP;cause=200;text="Call completed elsewhere"')
    env.clock.advance(0)
    cancels = env.inbox.requests("CANCEL")
    assert len(cancels) == 1
    assert cancels[0].headers.get("Reason") == 'SIP;cause=200;text="Call completed elsewhere"'
    txn.cancel()  # a second call sends nothing more
    env.clock.advance(0)
    assert len(env.inbox.requests("CANCEL")) == 1


def test_cancel_without_final_response_gives_up_after_64_t1() -> None:
    env = make_env()
    txn = start_invite(env)
    env.at(0.2)
    invite = received_invite(env)
    env.reply(invite, 180)
    env.at(10)
    txn.cancel()
    env.clock.advance(0)
    env.reply(env.inbox.requests("CANCEL")[0], 200)
    env.at(41.9)
    assert txn.state is State.PROCEEDING
    env.at(42.1)
    assert txn.terminated
    assert env.listener.events[-1] == ("timeout", None, 42.0)


def test_cancel_after_final_response_does_nothing() -> None:
    env = make_env()
    txn = start_invite(env)
    env.reply(received_invite(env), 200)
    txn.cancel()
    env.at(1)
    assert env.inbox.requests("CANCEL") == []


def test_transport_error_is_reported_after_send_request_returns() -> None:
    env = make_env(reliable=True)
    nowhere = Address("tcp", "127.0.0.9", 5060)
    txn = env.layer.send_request(outgoing("INVITE", transport="TCP"), nowhere, env.listener)
    assert txn.terminated
    assert env.listener.events == []
    env.clock.advance(0)
    assert env.listener.events == [("transport_error", None, 0.0)]
    assert env.layer.transaction_count == 0


def test_branch_is_added_when_the_via_has_none_and_ack_is_refused() -> None:
    env = make_env()
    txn = env.layer.send_request(outgoing("INVITE", branch=None), PEER, env.listener)
    env.clock.advance(0)
    assert txn.branch.startswith("z9hG4bK") and len(txn.branch) > 7
    assert received_invite(env).top_via.branch == txn.branch
    with pytest.raises(ValueError):
        env.layer.send_request(outgoing("ACK"), PEER, env.listener)
    with pytest.raises(ValueError):  # the same branch twice
        env.layer.send_request(outgoing("INVITE", branch=txn.branch), PEER, env.listener)


def test_response_for_another_method_with_the_same_branch_is_not_matched() -> None:
    env = make_env()
    txn = start_invite(env)
    invite = received_invite(env)
    bogus = make_response(invite, 200, to_tag="x")
    bogus.headers.set("CSeq", f"{invite.cseq.number} BYE")
    env.peer_send(bogus)
    assert env.listener.events == []
    assert txn.state is State.CALLING


def test_reliable_peer_address_is_used_as_given() -> None:
    env = make_env(reliable=True)
    txn = start_invite(env)
    assert txn.destination == PEER_TCP
    assert env.net.sent[0][1] == PEER_TCP


def test_peer_unreachable_ends_the_unanswered_transactions_toward_it() -> None:
    """A connection that could not be set up after the request was queued (refused, timed
    out, certificate refused): its unanswered transactions end with a transport error at once;
    one that already has an answer, and those toward other peers, go on."""
    env = make_env(reliable=True)
    waiting = start_invite(env, branch="z9hG4bK-waiting")
    answered = start_invite(env, branch="z9hG4bK-answered")
    env.reply(env.inbox.requests("INVITE")[1], 180)
    env.layer.peer_unreachable(Address("tcp", "127.0.0.77", 5060))  # another peer
    env.clock.advance(0)
    assert not waiting.terminated
    env.layer.peer_unreachable(env.remote)
    env.clock.advance(0)
    assert waiting.terminated
    assert not answered.terminated
    assert [kind for kind, _, _ in env.listener.events].count("transport_error") == 1
