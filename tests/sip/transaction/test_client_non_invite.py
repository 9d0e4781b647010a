"""Non-INVITE client transaction: Timer E schedule (doubling, capped at T2, T2 in Proceeding),
Timer F timeout, Timer K, no retransmission over reliable transports."""

from __future__ import annotations

import pytest

from sipswitch.sip.transaction import ClientNonInviteTransaction, State, TimerSettings

from .helpers import Env, make_env, method_is, outgoing


def start(env: Env, method: str = "OPTIONS") -> ClientNonInviteTransaction:
    transport = "TCP" if env.remote.reliable else "UDP"
    txn = env.layer.send_request(outgoing(method, transport=transport), env.remote, env.listener)
    env.clock.advance(0)
    assert isinstance(txn, ClientNonInviteTransaction)
    return txn


def test_timer_e_doubles_up_to_t2_and_timer_f_times_out() -> None:
    env = make_env()
    txn = start(env)
    env.at(40)
    assert env.send_times(method_is("OPTIONS")) == [
        0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5,
    ]
    assert env.listener.events == [("timeout", None, 32.0)]
    assert txn.terminated
    assert env.layer.transaction_count == 0


def test_custom_timers_scale_the_schedule() -> None:
    env = make_env(timers=TimerSettings(t1=0.1, t2=0.4))
    start(env)
    env.at(10)
    times = env.send_times(method_is("OPTIONS"))
    assert times[:6] == pytest.approx([0, 0.1, 0.3, 0.7, 1.1, 1.5])
    assert times[-1] == pytest.approx(6.3)
    assert [kind for kind, _, _ in env.listener.events] == ["timeout"]
    assert env.listener.events[0][2] == pytest.approx(6.4)


def test_reliable_transport_never_retransmits() -> None:
    env = make_env(reliable=True)
    start(env, "REGISTER")
    env.at(40)
    assert env.send_times(method_is("REGISTER")) == [0]
    assert env.listener.events == [("timeout", None, 32.0)]


def test_provisional_moves_to_proceeding_where_timer_e_is_t2() -> None:
    env = make_env()
    txn = start(env)
    env.at(0.6)
    env.reply(env.inbox.requests("OPTIONS")[0], 100)
    assert txn.state is State.PROCEEDING
    env.at(40)
    # The E already armed (for 1.5) still fires; from then on every T2 until Timer F at 32.
    assert env.send_times(method_is("OPTIONS")) == [
        0, 0.5, 1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5,
    ]
    assert env.listener.events == [("response", 100, 0.6), ("timeout", None, 32.0)]


def test_final_response_completes_absorbs_retransmissions_and_lingers_timer_k() -> None:
    env = make_env()
    txn = start(env, "BYE")
    env.at(1)
    bye = env.inbox.requests("BYE")[0]
    env.reply(bye, 200)
    assert txn.state is State.COMPLETED
    env.reply(bye, 200)
    assert env.listener.statuses() == [200]
    env.at(5.9)
    assert txn.state is State.COMPLETED
    env.at(6.1)
    assert txn.terminated
    assert env.send_times(method_is("BYE")) == [0, 0.5]
    assert env.layer.transaction_count == 0


def test_final_response_over_reliable_transport_ends_at_once() -> None:
    env = make_env(reliable=True)
    txn = start(env, "BYE")
    env.reply(env.inbox.requests("BYE")[0], 481)
    assert env.listener.statuses() == [481]
    assert txn.terminated


def test_listener_failure_does_not_break_the_transaction() -> None:
    env = make_env()
    txn = start(env)

    def explode(*args: object) -> None:
        raise RuntimeError("TU bug")

    env.listener.on_response = explode  # type: ignore[method-assign]
    env.reply(env.inbox.requests("OPTIONS")[0], 200)
    assert txn.state is State.COMPLETED
