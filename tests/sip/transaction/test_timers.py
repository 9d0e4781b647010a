"""Timer values: RFC 3261 defaults, derivation from T1/T2/T4, zero waits over reliable
transports, validation."""

from __future__ import annotations

import dataclasses

import pytest

from sipswitch.sip.transaction import DEFAULT_TIMERS, TimerSettings


def test_rfc_3261_defaults() -> None:
    t = TimerSettings()
    assert (t.t1, t.t2, t.t4) == (0.5, 4.0, 5.0)
    assert (t.timer_a, t.timer_b) == (0.5, 32.0)
    assert (t.timer_d(False), t.timer_d(True)) == (32.0, 0.0)
    assert (t.timer_e, t.timer_f, t.timer_g, t.timer_h) == (0.5, 32.0, 0.5, 32.0)
    assert (t.timer_i(False), t.timer_i(True)) == (5.0, 0.0)
    assert (t.timer_j(False), t.timer_j(True)) == (32.0, 0.0)
    assert (t.timer_k(False), t.timer_k(True)) == (5.0, 0.0)
    assert (t.timer_l, t.timer_m) == (32.0, 32.0)
    assert DEFAULT_TIMERS == t


def test_derived_from_configured_base_values() -> None:
    t = TimerSettings(t1=0.1, t2=2.0, t4=3.0, d_unreliable=40.0)
    assert t.timer_b == t.timer_f == t.timer_h == t.timer_l == pytest.approx(6.4)
    assert t.timer_j(False) == pytest.approx(6.4)
    assert t.timer_d(False) == 40.0
    assert t.timer_k(False) == t.timer_i(False) == 3.0


def test_frozen_and_validated() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_TIMERS.t1 = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        TimerSettings(t1=0)
    with pytest.raises(ValueError):
        TimerSettings(t1=2.0, t2=1.0)
