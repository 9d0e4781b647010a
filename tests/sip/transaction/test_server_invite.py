"""INVITE server transaction: 100 Trying, absorbed retransmissions, Timer G/H/I for 3xx–6xx,
the RFC 6026 Accepted state for 2xx (retransmitted until the ACK with a new branch, on_no_ack
after Timer L), and CANCEL handling."""

from __future__ import annotations

from sipswitch.sip.message import Request, make_response
from sipswitch.sip.transaction import ServerInviteTransaction, ServerTransaction, State

from .helpers import PEER, Env, make_env, request_bytes, status_is

G_SCHEDULE = [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]


def answer_with(env: Env, status: int, to_tag: str = "srv-tag") -> None:
    def answer(request: Request, txn: ServerTransaction | None) -> None:
        if txn is not None and request.method == "INVITE":
            txn.respond(make_response(request, status, to_tag=to_tag))

    env.tu.answer = answer


def invite_txn(env: Env) -> ServerInviteTransaction:
    txn = env.tu.calls[0][1]
    assert isinstance(txn, ServerInviteTransaction)
    return txn


def ack_for(status_tag: str, branch: str = "z9hG4bKpeer1", **kwargs: object) -> bytes:
    return request_bytes("ACK", branch=branch, to_tag=status_tag, **kwargs)  # type: ignore[arg-type]


def test_invite_gets_100_trying_at_once_and_reaches_the_tu() -> None:
    env = make_env()
    env.peer_send(request_bytes("INVITE"))
    assert env.tu.methods() == ["INVITE"]
    request, txn, source = env.tu.calls[0]
    assert isinstance(txn, ServerInviteTransaction)
    assert txn.request is request and txn.source == source == PEER
    assert txn.state is State.PROCEEDING
    trying = env.inbox.responses(100)
    assert len(trying) == 1
    assert trying[0].to.tag is None
    assert trying[0].top_via.branch == "z9hG4bKpeer1"


def test_no_100_when_the_tu_answered_at_once() -> None:
    env = make_env()
    answer_with(env, 180)
    env.peer_send(request_bytes("INVITE"))
    assert [r.status for r in env.inbox.responses()] == [180]


def test_retransmitted_invite_is_absorbed_and_gets_the_last_response() -> None:
    env = make_env()
    env.peer_send(request_bytes("INVITE"))
    env.at(0.5)
    env.peer_send(request_bytes("INVITE"))
    assert [r.status for r in env.inbox.responses()] == [100, 100]
    invite_txn(env).respond(make_response(env.tu.calls[0][0], 180, to_tag="t1"))
    env.at(1.5)
    env.peer_send(request_bytes("INVITE"))
    assert [r.status for r in env.inbox.responses()] == [100, 100, 180, 180]
    assert env.tu.methods() == ["INVITE"]


def test_non_2xx_is_retransmitted_on_timer_g_until_the_ack_which_is_absorbed() -> None:
    env = make_env()
    answer_with(env, 486)
    env.peer_send(request_bytes("INVITE"))
    txn = invite_txn(env)
    assert txn.state is State.COMPLETED
    env.at(5)
    env.peer_send(ack_for("srv-tag"))
    assert txn.state is State.CONFIRMED
    env.at(40)
    assert env.inbox.times(status_is(486)) == [0, 0.5, 1.5, 3.5]
    assert env.tu.methods() == ["INVITE"]  # the ACK did not reach the TU


def test_confirmed_lingers_timer_i_then_ends() -> None:
    env = make_env()
    answer_with(env, 486)
    env.peer_send(request_bytes("INVITE"))
    txn = invite_txn(env)
    env.at(1)
    env.peer_send(ack_for("srv-tag"))
    env.at(3)
    env.peer_send(ack_for("srv-tag"))
    env.peer_send(request_bytes("INVITE"))
    assert len(env.inbox.responses(486)) == 2  # 0 and 0.5; nothing resent while Confirmed
    assert env.tu.methods() == ["INVITE"]
    env.at(5.9)
    assert txn.state is State.CONFIRMED
    env.at(6.1)
    assert txn.terminated
    assert env.layer.transaction_count == 0


def test_timer_h_ends_the_transaction_when_no_ack_comes() -> None:
    env = make_env()
    answer_with(env, 486)
    env.peer_send(request_bytes("INVITE"))
    txn = invite_txn(env)
    no_ack_calls: list[bool] = []
    txn.on_no_ack = lambda: no_ack_calls.append(True)
    env.at(31.9)
    assert txn.state is State.COMPLETED
    env.at(100)
    assert env.inbox.times(status_is(486)) == G_SCHEDULE
    assert txn.terminated
    assert no_ack_calls == []  # on_no_ack is about 2xx only
    assert env.layer.transaction_count == 0


def test_non_2xx_over_reliable_transport_is_sent_once_and_ack_ends_it() -> None:
    env = make_env(reliable=True)
    answer_with(env, 486)
    env.peer_send(request_bytes("INVITE", transport="TCP", sent_by="127.0.0.2:40123"))
    txn = invite_txn(env)
    env.at(10)
    assert len(env.inbox.responses(486)) == 1
    env.peer_send(ack_for("srv-tag", transport="TCP", sent_by="127.0.0.2:40123"))
    assert txn.terminated


def test_2xx_is_retransmitted_until_the_ack_with_a_new_branch() -> None:
    env = make_env()
    answer_with(env, 200, to_tag="callee")
    env.peer_send(request_bytes("INVITE"))
    txn = invite_txn(env)
    no_ack_calls: list[bool] = []
    txn.on_no_ack = lambda: no_ack_calls.append(True)
    assert txn.state is State.ACCEPTED
    env.at(4)
    env.peer_send(ack_for("callee", branch="z9hG4bKack-new"))
    assert txn.acked
    env.at(100)
    assert env.inbox.times(status_is(200)) == [0, 0.5, 1.5, 3.5]
    # The ACK for a 2xx is a request of its own: it reaches the TU without a transaction.
    assert env.tu.methods() == ["INVITE", "ACK"]
    assert env.tu.calls[1][1] is None
    assert env.tu.calls[1][2] == PEER
    assert no_ack_calls == []
    assert txn.terminated
    assert env.layer.transaction_count == 0


def test_ack_for_another_dialog_does_not_stop_the_2xx() -> None:
    env = make_env()
    answer_with(env, 200, to_tag="callee")
    env.peer_send(request_bytes("INVITE"))
    env.at(1)
    env.peer_send(ack_for("other-tag", branch="z9hG4bKack-new"))
    assert not invite_txn(env).acked
    assert env.tu.methods() == ["INVITE", "ACK"]


def test_on_no_ack_after_timer_l_without_ack() -> None:
    env = make_env()
    answer_with(env, 200)
    env.peer_send(request_bytes("INVITE"))
    txn = invite_txn(env)
    no_ack_at: list[float] = []
    txn.on_no_ack = lambda: no_ack_at.append(env.clock.now())
    env.at(100)
    assert env.inbox.times(status_is(200)) == G_SCHEDULE
    assert no_ack_at == [32.0]
    assert txn.terminated


def test_2xx_over_reliable_transport_is_not_retransmitted_but_still_waits_for_ack() -> None:
    env = make_env(reliable=True)
    answer_with(env, 200)
    env.peer_send(request_bytes("INVITE", transport="TCP", sent_by="127.0.0.2:40123"))
    txn = invite_txn(env)
    no_ack_at: list[float] = []
    txn.on_no_ack = lambda: no_ack_at.append(env.clock.now())
    env.at(100)
    assert len(env.inbox.responses(200)) == 1
    assert no_ack_at == [32.0]


def test_retransmitted_invite_while_accepted_resends_the_2xx_not_the_tu() -> None:
    env = make_env()
    answer_with(env, 200)
    env.peer_send(request_bytes("INVITE"))
    env.at(0.2)
    env.peer_send(request_bytes("INVITE"))
    assert env.inbox.times(status_is(200)) == [0, 0.2]
    assert env.tu.methods() == ["INVITE"]


def test_cancel_is_answered_200_and_the_tu_answers_487_whose_ack_is_absorbed() -> None:
    env = make_env()
    env.peer_send(request_bytes("INVITE"))
    txn = invite_txn(env)
    txn.respond(make_response(txn.request, 180, to_tag="ring"))

    def on_cancel() -> None:
        txn.respond(make_response(txn.request, 487, to_tag="ring"))

    txn.on_cancel = on_cancel
    env.at(2)
    env.peer_send(request_bytes("CANCEL"))
    assert txn.cancelled
    cancel_ok = env.inbox.responses(200, "CANCEL")
    assert len(cancel_ok) == 1
    assert cancel_ok[0].to.tag == "ring"  # RFC 3261 §9.2: same To tag as the INVITE's responses
    assert len(env.inbox.responses(487, "INVITE")) == 1
    assert env.tu.methods() == ["INVITE"]  # the layer handled the CANCEL itself
    env.peer_send(ack_for("ring"))
    assert txn.state is State.CONFIRMED
    assert env.tu.methods() == ["INVITE"]
    # A retransmitted CANCEL gets its 200 again, and on_cancel is not called twice.
    env.peer_send(request_bytes("CANCEL"))
    assert len(env.inbox.responses(200, "CANCEL")) == 2
    assert len(env.inbox.responses(487, "INVITE")) == 1


def test_cancel_sets_cancelled_even_without_callback() -> None:
    env = make_env()
    env.peer_send(request_bytes("INVITE"))
    env.peer_send(request_bytes("CANCEL"))
    assert invite_txn(env).cancelled
    assert len(env.inbox.responses(200, "CANCEL")) == 1


def test_cancel_for_unknown_transaction_gets_481() -> None:
    env = make_env()
    env.peer_send(request_bytes("CANCEL", branch="z9hG4bKnothing"))
    responses = env.inbox.responses()
    assert [r.status for r in responses] == [481]
    assert responses[0].cseq.method == "CANCEL"
    assert responses[0].to.tag
    assert env.tu.calls == []
    assert env.layer.transaction_count == 0


def test_cancel_after_final_response_is_answered_but_does_not_cancel() -> None:
    env = make_env()
    answer_with(env, 486)
    env.peer_send(request_bytes("INVITE"))
    calls: list[bool] = []
    invite_txn(env).on_cancel = lambda: calls.append(True)
    env.peer_send(request_bytes("CANCEL"))
    assert len(env.inbox.responses(200, "CANCEL")) == 1
    assert calls == []
    assert not invite_txn(env).cancelled


def test_cancel_from_another_sender_does_not_match() -> None:
    env = make_env()
    env.peer_send(request_bytes("INVITE"))
    env.peer_send(request_bytes("CANCEL", sent_by="127.0.0.3:5070"))
    assert [r.status for r in env.inbox.responses(method="CANCEL")] == [481]
    assert not invite_txn(env).cancelled


def test_tu_failure_is_answered_500() -> None:
    env = make_env()

    def broken(request: Request, txn: ServerTransaction | None) -> None:
        raise RuntimeError("TU bug")

    env.tu.answer = broken
    env.peer_send(request_bytes("INVITE"))
    assert [r.status for r in env.inbox.responses()] == [500]
