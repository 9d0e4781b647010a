"""OPTIONS health checks in virtual time: down after N unanswered checks in a row, up again at
the first answer, 503 counts as no answer, late answers do not count."""

from __future__ import annotations

from sipswitch.sip.message import Request, make_response
from sipswitch.sip.transaction import ServerTransaction
from sipswitch.sip.transport.base import Address
from sipswitch.trunk.health import Health, HealthMonitor

from .virtual import CARRIER, Bench, Registrar


def _monitor(bench: Bench, interval: float = 10, failures: int = 3) -> HealthMonitor:
    monitor = HealthMonitor(
        "hq",
        CARRIER.host,
        CARRIER,
        bench.layer,
        bench.clock,
        bench.local_address,
        interval,
        failures,
        bench.changed,
    )
    monitor.start()
    return monitor


def test_up_down_and_up_again() -> None:
    bench = Bench()
    peer = Registrar(bench.clock, bench.network, "x")
    monitor = _monitor(bench, interval=10, failures=3)
    assert monitor.health is Health.UNKNOWN
    bench.run(1)
    assert monitor.health is Health.UP
    assert monitor.detail == "200 OK"
    options = [r for _, r in peer.received if r.method == "OPTIONS"]
    assert str(options[0].uri) == f"sip:{CARRIER.host}:{CARRIER.port}"

    peer.silent = True
    bench.run(10 + 5 + 0.5)  # one check unanswered (5 s wait)
    assert monitor.health is Health.UP and monitor.missed == 1
    bench.run(10)
    assert monitor.health is Health.UP and monitor.missed == 2
    went_down = bench.until(lambda: monitor.health is Health.DOWN)
    assert monitor.missed == 3
    assert went_down < 10

    peer.silent = False
    bench.until(lambda: monitor.health is Health.UP, limit=11)
    assert monitor.missed == 0
    assert bench.changes == 3  # up, down, up


def test_short_interval_checks_every_interval() -> None:
    bench = Bench()
    peer = Registrar(bench.clock, bench.network, "x")
    peer.silent = True
    monitor = _monitor(bench, interval=1, failures=2)
    bench.run(10)
    sent = [at for at, r in peer.received if r.method == "OPTIONS"]
    assert len(sent) == 10  # at 0, 1, ..., 9: a pending check never delays the next one
    assert monitor.health is Health.DOWN
    # Down within two intervals of the peer going silent.
    assert monitor.missed >= 9


def test_503_counts_as_a_failure_and_4xx_as_an_answer() -> None:
    bench = Bench()
    peer = Registrar(bench.clock, bench.network, "x")
    monitor = _monitor(bench, interval=5, failures=1)
    peer.status = 503
    answers: list[int] = [503]

    def answer(request: Request, txn: ServerTransaction | None, source: Address) -> None:
        if txn is not None:
            txn.respond(make_response(request, answers[0]))

    peer.layer._on_request = answer
    bench.run(1)
    assert monitor.health is Health.DOWN
    assert monitor.detail == "503 Service Unavailable"
    answers[0] = 405
    bench.run(5)
    assert monitor.health is Health.UP


def test_stop_sends_no_more_checks() -> None:
    bench = Bench()
    peer = Registrar(bench.clock, bench.network, "x")
    monitor = _monitor(bench, interval=2)
    bench.run(5)
    monitor.stop()
    count = len(peer.received)
    bench.run(100)
    assert len(peer.received) == count
