"""SecurityGate on a virtual clock: bans after failed authentications (window, expiry, allow
list, one log line), the per-source token bucket, scanner drops, overload and bounded tables."""

from __future__ import annotations

import logging

import pytest

from sipswitch.config.settings import SecuritySettings
from sipswitch.pbx.security import SecurityGate
from sipswitch.sip.clock import VirtualClock
from sipswitch.sip.message import Message
from sipswitch.sip.parser import MessageError, parse_datagram
from sipswitch.sip.transport.base import Address

LOCAL = Address("udp", "192.0.2.1", 5060)


def request_bytes(user_agent: str | None = None, method: str = "REGISTER") -> bytes:
    agent = f"User-Agent: {user_agent}\r\n" if user_agent is not None else ""
    return (
        f"{method} sip:192.0.2.1 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-g1\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:200@192.0.2.1>;tag=1\r\nTo: <sip:200@192.0.2.1>\r\n"
        f"Call-ID: gate-1\r\nCSeq: 1 {method}\r\n{agent}Content-Length: 0\r\n\r\n"
    ).encode()


class Inner:
    def __init__(self) -> None:
        self.messages: list[tuple[Message, Address]] = []
        self.errors: list[MessageError] = []

    def on_message(self, message: Message, source: Address, local: Address) -> None:
        self.messages.append((message, source))

    def on_parse_error(self, error: MessageError, source: Address, local: Address) -> None:
        self.errors.append(error)


def gate(**settings: object) -> tuple[SecurityGate, Inner, VirtualClock]:
    clock = VirtualClock()
    inner = Inner()
    values: dict[str, object] = {"allow": []}
    values.update(settings)
    return SecurityGate(SecuritySettings.model_validate(values), clock, inner), inner, clock


def send(g: SecurityGate, host: str, user_agent: str | None = None) -> None:
    g.on_message(parse_datagram(request_bytes(user_agent)), Address("udp", host, 5060), LOCAL)


def test_five_failures_within_the_window_ban_the_source(caplog: pytest.LogCaptureFixture) -> None:
    g, inner, clock = gate()
    caplog.set_level(logging.WARNING, logger="sipswitch.security")
    for _ in range(4):
        assert not g.auth_failed("198.51.100.7")
        clock.advance(10)
    assert g.auth_failed("198.51.100.7")
    bans = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ban ")]
    assert bans == [
        "ban 198.51.100.7: 5 failed authentications within 60 s; ignored for 300 s"
    ]
    send(g, "198.51.100.7")
    send(g, "198.51.100.8")  # another source is served
    assert [source.host for _, source in inner.messages] == ["198.51.100.8"]
    assert not g.admit_connection("198.51.100.7") and g.admit_connection("198.51.100.8")
    # The ban ends after ban_time.
    clock.advance(299)
    assert g.banned("198.51.100.7")
    clock.advance(2)
    send(g, "198.51.100.7")
    assert [source.host for _, source in inner.messages][-1] == "198.51.100.7"
    assert g.banned_count == 0


def test_failures_spread_wider_than_the_window_do_not_ban() -> None:
    g, _, clock = gate()
    for _ in range(20):
        assert not g.auth_failed("198.51.100.7")
        clock.advance(16)  # 5 failures always span more than 60 s
    assert not g.banned("198.51.100.7")


def test_allow_list_is_never_banned_or_limited() -> None:
    g, inner, _ = gate(allow=["198.51.100.0/24", "2001:db8::/32"], rate_limit=1, rate_burst=1)
    for _ in range(50):
        assert not g.auth_failed("198.51.100.7")
        assert not g.auth_failed("2001:db8::5")
    for _ in range(20):
        send(g, "198.51.100.7")
    assert len(inner.messages) == 20 and g.banned_count == 0


def test_rate_limit_allows_a_burst_then_the_sustained_rate() -> None:
    g, inner, clock = gate(rate_limit=10, rate_burst=20)
    for _ in range(50):
        send(g, "198.51.100.7")
    assert len(inner.messages) == 20  # the burst
    assert g.dropped_rate == 30
    send(g, "198.51.100.9")  # other sources are not affected
    assert len(inner.messages) == 21
    clock.advance(1.0)  # ten more tokens
    for _ in range(15):
        send(g, "198.51.100.7")
    assert len(inner.messages) == 31
    # Steady traffic at the limit passes entirely.
    for _ in range(30):
        clock.advance(0.1)
        send(g, "198.51.100.7")
    assert len(inner.messages) == 61


def test_rate_limit_zero_means_no_limit() -> None:
    g, inner, _ = gate(rate_limit=0)
    for _ in range(1000):
        send(g, "198.51.100.7")
    assert len(inner.messages) == 1000


def test_parse_errors_count_against_the_rate_and_are_dropped_from_banned_sources() -> None:
    g, inner, _ = gate(rate_limit=1, rate_burst=2)
    error = MessageError(400, "Bad Request")
    for _ in range(5):
        g.on_parse_error(error, Address("udp", "198.51.100.7", 5060), LOCAL)
    assert len(inner.errors) == 2
    g.ban("198.51.100.8", "test")
    g.on_parse_error(error, Address("udp", "198.51.100.8", 5060), LOCAL)
    assert len(inner.errors) == 2


@pytest.mark.parametrize(
    "agent", ["friendly-scanner", "sipvicious 0.3.3", "SIPCLI/v1.8", "VaxSIPUserAgent/3.1"]
)
def test_scanner_user_agents_are_dropped(agent: str) -> None:
    g, inner, _ = gate()
    send(g, "198.51.100.7", agent)
    send(g, "198.51.100.7", "Yealink SIP-T46S 66.86.0.15")
    send(g, "198.51.100.7")
    assert len(inner.messages) == 2 and g.dropped_scanner == 1


def test_scanners_pass_when_dropping_is_off() -> None:
    g, inner, _ = gate(drop_scanners=False)
    send(g, "198.51.100.7", "friendly-scanner")
    assert len(inner.messages) == 1


def test_responses_always_pass() -> None:
    g, inner, _ = gate(rate_limit=1, rate_burst=1)
    g.ban("198.51.100.7", "test")
    answer = parse_datagram(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-x\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: r\r\nCSeq: 1 OPTIONS\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    for _ in range(3):
        g.on_message(answer, Address("udp", "198.51.100.7", 5060), LOCAL)
    assert len(inner.messages) == 3


def test_overload_switches_on_and_off(caplog: pytest.LogCaptureFixture) -> None:
    g, _, _ = gate(overload_pending=100)
    caplog.set_level(logging.INFO, logger="sipswitch.security")
    assert not g.overloaded(99)
    assert g.overloaded(100) and g.overloaded(150)
    assert not g.overloaded(10)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "overload: 100 requests in progress, answering 503",
        "overload over: 10 requests in progress",
    ]
    assert g.overload_answers == 2


def test_tables_stay_bounded_under_a_flood_of_new_sources() -> None:
    clock = VirtualClock()
    g = SecurityGate(
        SecuritySettings.model_validate({"allow": [], "ban_failures": 2}),
        clock,
        Inner(),
        max_sources=1000,
    )
    for i in range(20_000):
        host = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        send(g, host)
        g.auth_failed(host)
        g.auth_failed(host)  # banned
        if i % 100 == 0:
            clock.advance(0.01)
    assert len(g._buckets) <= 1000
    assert len(g._failures) <= 1000
    assert g.banned_count <= 1000
    # The most recent ban is still in force.
    assert g.banned("10.0.78.31")
