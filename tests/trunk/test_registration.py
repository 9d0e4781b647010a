"""Line registration in virtual time: digest answers, refresh at 80 % of the granted period,
exponential back-off capped, 423 handling, unregistration on stop."""

from __future__ import annotations

import pytest

from sipswitch.config.trunks import TrunkSettings
from sipswitch.sip.auth import parse_credentials
from sipswitch.trunk.registration import LineRegistration, RegistrationState

from .virtual import CARRIER, REALM, Bench, Registrar

PASSWORD = "line-secret"


def _line(**changes: object) -> TrunkSettings:
    values: dict[str, object] = {
        "name": "carrier",
        "kind": "line",
        "host": CARRIER.host,
        "port": CARRIER.port,
        "username": "5551000",
        "password": PASSWORD,
        "expires": 600,
    }
    values.update(changes)
    return TrunkSettings.model_validate(values)


def _start(
    bench: Bench, trunk: TrunkSettings, **options: float
) -> tuple[LineRegistration, Registrar]:
    registrar = Registrar(bench.clock, bench.network, PASSWORD)
    registration = LineRegistration(
        trunk,
        CARRIER,
        bench.layer,
        bench.clock,
        bench.local_address,
        bench.changed,
        **options,  # type: ignore[arg-type]
    )
    registration.start()
    return registration, registrar


def test_registers_with_digest_and_refreshes_at_80_percent() -> None:
    bench = Bench()
    registration, registrar = _start(bench, _line())
    assert registration.state is RegistrationState.REGISTERING
    bench.run(1)
    assert registration.state is RegistrationState.REGISTERED
    assert registration.granted == 120
    first, second = registrar.registers()[:2]
    assert "Authorization" not in first[1].headers
    creds = parse_credentials(second[1].headers.get("Authorization") or "")
    assert creds is not None and creds.username == "5551000" and creds.realm == REALM
    assert creds.uri == f"sip:{CARRIER.host}:{CARRIER.port}"
    request = second[1]
    assert str(request.uri) == f"sip:{CARRIER.host}:{CARRIER.port}"
    assert request.to.sip_uri.user == "5551000"
    assert request.headers.get("Expires") == "600"
    assert request.cseq.number == first[1].cseq.number + 1
    assert request.call_id == first[1].call_id
    assert bench.changes >= 2  # registering, registered

    # The refresh goes out at 80 % of 120 s and keeps the Call-ID, CSeq going up.
    registered_at = second[0]
    bench.until(lambda: len(registrar.authorized()) == 2)
    refresh_at, refresh = registrar.registers()[2]
    assert refresh_at - registered_at == pytest.approx(96, abs=0.5)
    assert refresh.call_id == first[1].call_id
    assert refresh.cseq.number > request.cseq.number
    assert registration.state is RegistrationState.REGISTERED
    assert registration.registered


def test_expires_header_is_used_without_a_contact_parameter() -> None:
    bench = Bench()
    registration, registrar = _start(bench, _line())
    registrar.in_contact = False
    registrar.granted = 50
    bench.run(1)
    assert registration.granted == 50
    assert registration.refresh_at == pytest.approx(bench.clock.now() - 1 + 40, abs=0.5)


def test_wrong_password_backs_off_exponentially_up_to_the_cap() -> None:
    bench = Bench()
    registration, registrar = _start(bench, _line(password="wrong"), retry_min=5, retry_max=60)
    bench.run(1)
    assert registration.state is RegistrationState.FAILED
    assert registration.reason == "401 authentication refused"
    assert not registration.registered
    # One unanswered challenge, one refused answer: no loop of answers per attempt.
    assert len(registrar.registers()) == 2
    starts: list[float] = []
    for attempt in range(2, 8):
        wanted = 2 * attempt
        bench.until(lambda: len(registrar.registers()) >= wanted)  # noqa: B023
        starts.append(registrar.registers()[-2][0])
    gaps = [round(b - a) for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps == [10, 20, 40, 60, 60]
    assert registration.failures == 7


def test_recovers_after_the_carrier_comes_back() -> None:
    bench = Bench()
    registration, registrar = _start(bench, _line(), retry_min=5, retry_max=300)
    registrar.silent = True
    bench.run(33)  # Timer F: 32 s without an answer
    assert registration.state is RegistrationState.FAILED
    assert registration.reason == "no answer from the registrar"
    registrar.silent = False
    bench.until(lambda: registration.state is RegistrationState.REGISTERED)
    assert registration.failures == 0


def test_error_answer_is_the_reason() -> None:
    bench = Bench()
    registration, registrar = _start(bench, _line())
    registrar.status = 403
    bench.run(1)
    assert registration.state is RegistrationState.FAILED
    assert registration.reason == "403 Forbidden"
    assert registration.retry_at is not None


def test_stale_nonce_is_answered_again() -> None:
    bench = Bench()
    registration, registrar = _start(bench, _line())
    registrar.stale_once = True
    bench.run(1)
    assert registration.state is RegistrationState.REGISTERED
    assert len(registrar.authorized()) == 2


def test_interval_too_brief_takes_min_expires() -> None:
    bench = Bench()
    registration, registrar = _start(bench, _line(expires=60))
    registrar.min_expires = 300
    registrar.granted = 3600
    bench.run(1)
    assert registration.state is RegistrationState.REGISTERED
    assert registration.granted == 300
    assert registrar.registers()[-1][1].headers.get("Expires") == "300"


def test_realm_mismatch_is_not_answered() -> None:
    bench = Bench()
    registration, registrar = _start(bench, _line(realm="other.example"))
    bench.run(1)
    assert registration.state is RegistrationState.FAILED
    assert "realm" in registration.reason
    assert registrar.authorized() == []


def test_stop_unregisters_and_reports_done() -> None:
    bench = Bench()
    registration, registrar = _start(bench, _line())
    bench.run(1)
    assert registrar.bindings
    done: list[bool] = []
    registration.stop(lambda: done.append(True))
    bench.run(1)
    assert done == [True]
    assert registration.state is RegistrationState.UNREGISTERED
    assert registrar.bindings == {}
    assert registrar.registers()[-1][1].headers.get("Expires") == "0"
    sent = len(registrar.received)
    bench.run(3600)
    assert len(registrar.received) == sent  # no refresh after stop


def test_stop_while_failing_sends_nothing() -> None:
    bench = Bench()
    registration, registrar = _start(bench, _line())
    registrar.status = 500
    bench.run(1)
    sent = len(registrar.received)
    done: list[bool] = []
    registration.stop(lambda: done.append(True))
    assert done == [True]
    bench.run(3600)
    assert len(registrar.received) == sent
