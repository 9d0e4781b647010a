"""A multi-branch network over the loop network: two local servers (1xxx, 4xxx) that only know
the trunk server, which routes by range and holds the company's carrier line; the configuration
is the one of docs/multi-branch.md (with other addresses)."""

from __future__ import annotations

import asyncio

from sipswitch.pbx.server import SipServer
from sipswitch.sip.transport.base import Address
from sipswitch.trunk.health import Health
from sipswitch.trunk.manager import TrunkManager

from .conftest import Net, eventually

HQ = Address("udp", "127.0.0.10", 5060)
BRANCH_A = Address("udp", "127.0.0.11", 5060)
BRANCH_B = Address("udp", "127.0.0.12", 5060)

CARRIER = Address("udp", "127.0.0.9", 5060)

HQ_CONFIG = """
[[trunks]]
name = "carrier"
kind = "line"
host = "127.0.0.9"
username = "5551000"
password = "line-secret"
dids = { "5551001" = "1001", "5554001" = "4001" }
transit = ["branch-a", "branch-b"]
options_interval = 0

[[trunks]]
name = "branch-a"
host = "127.0.0.11"
transit = true
max_incoming = 2
options_interval = 0.3
options_failures = 2

[[trunks]]
name = "branch-b"
host = "127.0.0.12"
transit = true
max_incoming = 2
options_interval = 0.3
options_failures = 2

[[dialplan]]
prefix = "1"
target = "trunk:branch-a"

[[dialplan]]
prefix = "4"
target = "trunk:branch-b"

[[dialplan]]
prefix = "0"
target = "trunk:carrier"
"""

BRANCH_CONFIG = """
[[trunks]]
name = "hq"
host = "127.0.0.10"
options_interval = 0.3

[[dialplan]]
prefix = "{other}"
target = "trunk:hq"

[[dialplan]]
prefix = "0"
target = "trunk:hq"
"""


async def _network(net: Net) -> tuple[SipServer, SipServer, SipServer]:
    net.carrier(CARRIER, HQ, "5551000", "line-secret", "0611223344")
    hq = await net.server("hq", HQ, HQ_CONFIG)
    a = await net.server("a", BRANCH_A, BRANCH_CONFIG.format(other="4"), ("1001", "1002"))
    b = await net.server("b", BRANCH_B, BRANCH_CONFIG.format(other="1"), ("4001", "4002"))
    manager = hq.trunks
    assert isinstance(manager, TrunkManager)
    await eventually(lambda: all(m.health is Health.UP for m in manager.monitors.values()))
    return hq, a, b


async def test_branch_to_branch_with_the_caller_number(net: Net) -> None:
    hq, a, b = await _network(net)
    alice = await net.registered("1001", a)
    dave = await net.registered("4001", b)
    response, dialog = await alice.call("4001")
    assert response.status == 200 and dialog is not None
    ring = await asyncio.wait_for(dave.incoming.get(), 2)
    assert ring.request.from_.sip_uri.user == "1001"
    assert ring.request.to.sip_uri.user == "4001"
    # Max-Forwards went down at each server: 70 from the phone, three B2BUAs.
    assert ring.request.max_forwards == 67
    # The BYE crosses the three servers.
    assert (await alice.send_in_dialog(dialog, "BYE")).status == 200
    bye = await asyncio.wait_for(dave.in_dialog.get(), 2)
    while bye.method != "BYE":
        bye = await asyncio.wait_for(dave.in_dialog.get(), 2)
    await eventually(lambda: all(s.calls is not None and not s.calls.calls for s in (a, b, hq)))

    # And back: 4001 calls 1001.
    response, _ = await dave.call("1001")
    assert response.status == 200
    ring = await asyncio.wait_for(alice.incoming.get(), 2)
    assert ring.request.from_.sip_uri.user == "4001"


async def test_unknown_number_in_a_branch_comes_back_404(net: Net) -> None:
    _, a, _ = await _network(net)
    alice = await net.registered("1001", a)
    response, _ = await alice.call("4999")
    assert response.status == 404


async def test_the_trunk_server_limits_calls_per_branch(net: Net) -> None:
    hq, a, b = await _network(net)
    alice = await net.registered("1001", a)
    bob = await net.registered("1002", a)
    dave = await net.registered("4001", b)
    erin = await net.registered("4002", b)
    dave.answer = erin.answer = None  # ringing
    ringing = [
        asyncio.create_task(alice.call("4001")),
        asyncio.create_task(bob.call("4002")),
    ]
    await asyncio.wait_for(dave.incoming.get(), 2)
    await asyncio.wait_for(erin.incoming.get(), 2)
    third = await net.registered("1001", a)
    response, _ = await third.call("4002")
    assert response.status == 503
    assert response.reason == "Max incoming calls reached (2)"
    for task in ringing:
        task.cancel()


async def test_a_branch_that_is_down_gets_503_within_seconds(net: Net) -> None:
    hq, a, b = await _network(net)
    alice = await net.registered("1001", a)
    loop = asyncio.get_running_loop()
    stopped = loop.time()
    await b.stop()
    net.servers.remove(b)
    manager = hq.trunks
    assert isinstance(manager, TrunkManager)
    await eventually(lambda: manager.monitors["branch-b"].health is Health.DOWN, timeout=5)
    down_after = loop.time() - stopped
    started = loop.time()
    response, _ = await alice.call("4001")
    assert response.status == 503
    print(f"branch down after {down_after:.2f} s; 503 in {(loop.time() - started) * 1000:.1f} ms")
    assert {e["name"]: e for e in manager.status()}["branch-b"]["health"] == "down"


async def test_outside_calls_through_the_trunk_servers_line(net: Net) -> None:
    hq, a, b = await _network(net)
    manager = hq.trunks
    assert isinstance(manager, TrunkManager)
    await eventually(lambda: manager.available("carrier"))
    carrier = net.carriers[0]
    alice = await net.registered("1001", a)
    dave = await net.registered("4001", b)

    # Out: a branch sends 0... to the trunk server, which sends it out through its line.
    response, _ = await alice.call("0611223344")
    assert response.status == 200
    invite = carrier.requests("INVITE")[-1]
    assert str(invite.uri) == "sip:0611223344@127.0.0.9:5060"
    assert invite.from_.sip_uri.user == "1001"

    # In: the company's numbers reach the branches (the line may transit to them only).
    response, _ = await carrier.call("5554001")
    assert response.status == 200
    ring = await asyncio.wait_for(dave.incoming.get(), 2)
    assert ring.request.from_.sip_uri.user == "0611223344"
    # ... never back out through the line itself.
    invites = len(carrier.requests("INVITE"))
    response, _ = await carrier.call("00441234")
    assert response.status == 403
    assert len(carrier.requests("INVITE")) == invites


async def test_cancel_crosses_the_network(net: Net) -> None:
    hq, a, b = await _network(net)
    alice = await net.registered("1001", a)
    dave = await net.registered("4001", b)
    dave.answer = None
    call = asyncio.create_task(alice.call("4001"))
    ringing = await asyncio.wait_for(dave.incoming.get(), 2)
    invite = alice.layer_client_invites()[-1]
    invite.cancel()
    response, _ = await asyncio.wait_for(call, 5)
    assert response.status == 487
    await eventually(lambda: ringing.cancelled)
    await eventually(lambda: all(s.calls is not None and not s.calls.calls for s in (a, b, hq)))


async def test_a_branch_does_not_forward_calls_from_the_trunk_server_back(net: Net) -> None:
    hq, a, b = await _network(net)
    alice = await net.registered("1001", a)
    bob = await net.registered("1002", a)
    assert b.directory is not None
    await b.database.extensions.set("4001", forward_always="1002")
    await b.directory.load()
    response, _ = await alice.call("4001")
    assert response.status == 403
    assert response.reason == "No transit through this server"
    assert bob.incoming.empty()
    # A call of branch B itself is forwarded.
    dave = await net.registered("4002", b)
    response, _ = await dave.call("4001")
    assert response.status == 200
    ring = await asyncio.wait_for(bob.incoming.get(), 2)
    assert ring.request.from_.sip_uri.user == "4002"
