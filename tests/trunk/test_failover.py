"""IP-trusted trunks over the loop network: failover to the next trunk rule of the same prefix
when a trunk fails or is down (OPTIONS), 503 at once when none is left, callee answers final."""

from __future__ import annotations

import asyncio
import time

from sipswitch.pbx.routing import ToTrunk
from sipswitch.pbx.server import SipServer
from sipswitch.sip.transport.base import Address
from sipswitch.trunk.health import Health
from sipswitch.trunk.manager import TrunkManager

from .conftest import Carrier, Net, eventually

SERVER = Address("udp", "127.0.0.1", 5060)
FIRST = Address("udp", "127.0.0.21", 5060)
SECOND = Address("udp", "127.0.0.22", 5070)

CONFIG = """
[[trunks]]
name = "first"
host = "127.0.0.21"
options_interval = 0.2
options_failures = 2

[[trunks]]
name = "second"
host = "127.0.0.22"
port = 5070
options_interval = 0.2
options_failures = 2

[[dialplan]]
prefix = "0"
target = "trunk:first"

[[dialplan]]
prefix = "0"
prepend = "49"
strip = 1
target = "trunk:second"
"""


async def _setup(net: Net) -> tuple[SipServer, Carrier, Carrier]:
    first = net.carrier(FIRST, SERVER, "-", "-", "x")
    second = net.carrier(SECOND, SERVER, "-", "-", "x")
    first.challenge_invites = second.challenge_invites = False
    server = await net.server("pbx", SERVER, CONFIG, ("200",))
    manager = _manager(server)
    await eventually(lambda: all(m.health is Health.UP for m in manager.monitors.values()))
    return server, first, second


def _manager(server: SipServer) -> TrunkManager:
    assert isinstance(server.trunks, TrunkManager)
    return server.trunks


def test_route_lists_the_fallbacks_in_written_order() -> None:
    from sipswitch.config.routing import DialRule
    from sipswitch.config.settings import ListSettings
    from sipswitch.pbx.routing import Router

    class _NoExtensions:
        def lookup(self, number: str) -> None:
            return None

    rules = [
        DialRule(prefix="0", target="trunk:first"),
        DialRule(prefix="00", target="trunk:intl"),
        DialRule(prefix="0", strip=1, prepend="49", target="trunk:second"),
        DialRule(prefix="0", target="number"),
    ]
    router = Router(_NoExtensions(), [], rules, ListSettings())  # type: ignore[arg-type]
    route = router.resolve("0301234")
    assert route.destination == ToTrunk("first", "0301234", (ToTrunk("second", "49301234"),))
    assert router.describe(route) == (
        "0301234: trunk first dialling 0301234, else trunk second dialling 49301234 "
        "(rule prefix '0')"
    )
    assert router.resolve("00441").destination == ToTrunk("intl", "00441")


async def test_a_failing_trunk_is_followed_by_the_next(net: Net) -> None:
    server, first, second = await _setup(net)
    first.answer = 503
    alice = await net.registered("200", server)
    response, _ = await alice.call("0301234")
    assert response.status == 200
    assert [str(r.uri) for r in first.requests("INVITE")] == ["sip:0301234@127.0.0.21:5060"]
    assert [str(r.uri) for r in second.requests("INVITE")] == ["sip:49301234@127.0.0.22:5070"]
    assert second.requests("INVITE")[0].from_.sip_uri.user == "200"


async def test_a_busy_callee_is_final(net: Net) -> None:
    server, first, second = await _setup(net)
    first.answer = 486
    alice = await net.registered("200", server)
    response, _ = await alice.call("0301234")
    assert response.status == 486
    assert second.requests("INVITE") == []


async def test_a_down_trunk_is_skipped_and_none_left_is_503_at_once(net: Net) -> None:
    server, first, second = await _setup(net)
    manager = _manager(server)
    first.offline = True
    await eventually(lambda: manager.monitors["first"].health is Health.DOWN)
    assert manager.destination("first") is None
    status = manager.status()
    assert status[0]["health"] == "down" and status[0]["available"] is False
    alice = await net.registered("200", server)
    response, _ = await alice.call("0301234")
    assert response.status == 200
    assert first.requests("INVITE") == []
    assert len(second.requests("INVITE")) == 1

    second.offline = True
    await eventually(lambda: manager.monitors["second"].health is Health.DOWN)
    started = time.monotonic()
    response, _ = await alice.call("0301234")
    elapsed = time.monotonic() - started
    assert response.status == 503
    assert response.reason == "Trunk second is unavailable"
    assert len(second.requests("INVITE")) == 1
    print(f"503 from a server whose trunks are down after {elapsed * 1000:.1f} ms")

    # Back up at the first answered check.
    first.offline = False
    await eventually(lambda: manager.monitors["first"].health is Health.UP)
    response, _ = await alice.call("0301234")
    assert response.status == 200


async def test_a_silent_trunk_fails_over_after_timer_b(net: Net) -> None:
    """No answer at all to the INVITE (the peer died between two checks)."""
    server, first, second = await _setup(net)
    alice = await net.registered("200", server)
    # Drop the INVITEs to the first trunk only; its OPTIONS still pass.
    net.network.drop_matching(lambda src, dst, data: dst == FIRST and data.startswith(b"INVITE"))
    call = asyncio.create_task(alice.call("0301234"))
    await eventually(lambda: len(second.requests("INVITE")) == 1, timeout=40)
    response, _ = await asyncio.wait_for(call, 5)
    assert response.status == 200
