"""Forwarding, groups, the dial plan, lists, star codes and call duration, over the loop
transport with scripted phones."""

from __future__ import annotations

import asyncio

from sipswitch.pbx.routing import Reject, Router, ToExtension, ToGroup, ToTrunk

from .conftest import Lab
from .phone import Phone

GROUPS = """
[[groups]]
number = "600"
members = ["201", "202"]
ring_timeout = 5

[[groups]]
number = "610"
strategy = "linear"
members = ["201", "202"]
ring_timeout = 1

[[groups]]
number = "620"
strategy = "circular"
members = ["201", "202"]
ring_timeout = 1

[[groups]]
number = "630"
strategy = "linear"
members = ["201"]
ring_timeout = 1
overflow = "202"

[[dialplan]]
prefix = "8"
strip = 1
target = "number"

[[dialplan]]
prefix = "0900"
target = "reject"
status = 403

[[dialplan]]
prefix = "00"
target = "trunk:carrier"

[lists]
deny_called = ["666"]
"""


async def _registered(lab: Lab, number: str) -> Phone:
    phone = lab.phone(number)
    assert (await phone.register()).status == 200
    return phone


async def _set(lab: Lab, number: str, **changes: object) -> None:
    assert lab.server is not None and lab.server.directory is not None
    await lab.server.database.extensions.set(number, **changes)  # type: ignore[arg-type]
    await lab.server.directory.load()


async def _hang_up(phone: Phone, dialog: object) -> None:
    assert dialog is not None
    assert (await phone.send_in_dialog(dialog, "BYE")).status == 200  # type: ignore[arg-type]


def _router(lab: Lab) -> Router:
    assert lab.server is not None and lab.server.calls is not None
    return lab.server.calls.router


async def test_router_resolution_order(lab: Lab) -> None:
    lab.extra_config = GROUPS
    await lab.start_server()
    router = _router(lab)
    assert isinstance(router.resolve("201").destination, ToExtension)
    assert isinstance(router.resolve("600").destination, ToGroup)
    rewritten = router.resolve("8201")
    assert isinstance(rewritten.destination, ToExtension) and rewritten.number == "201"
    assert router.resolve("0900123").destination == Reject(403, "Rejected by the dial plan")
    assert router.resolve("0044123").destination == ToTrunk("carrier", "0044123")
    assert router.resolve("666").destination.status == 403  # type: ignore[union-attr]
    assert router.resolve("777").destination == Reject(404, "Not Found")
    assert router.resolve("20;1").destination == Reject(404, "Not Found")
    assert "rule prefix '8'" in router.describe(rewritten)


async def test_forward_always(lab: Lab) -> None:
    await lab.start_server()
    alice = await _registered(lab, "200")
    bob = await _registered(lab, "201")
    carol = await _registered(lab, "202")
    await _set(lab, "201", forward_always="202")
    response, dialog = await alice.call("201")
    assert response.status == 200
    assert carol.calls and not bob.calls
    await _hang_up(alice, dialog)


async def test_forward_on_busy_tells_the_caller_181(lab: Lab) -> None:
    await lab.start_server()
    alice = await _registered(lab, "200")
    bob = await _registered(lab, "201")
    carol = await _registered(lab, "202")
    bob.answer = 486
    await _set(lab, "201", forward_busy="202")
    response, dialog = await alice.call("201")
    assert response.status == 200
    assert 181 in alice.statuses
    assert bob.calls and carol.calls
    await _hang_up(alice, dialog)


async def test_forward_on_no_answer_after_its_own_timeout(lab: Lab) -> None:
    await lab.start_server()
    alice = await _registered(lab, "200")
    bob = await _registered(lab, "201")
    carol = await _registered(lab, "202")
    bob.answer = None
    await _set(lab, "201", forward_no_answer="202", no_answer_timeout=5)
    assert lab.server is not None and lab.server.directory is not None
    # 5 s is the shortest allowed; shorten it in memory for the test.
    ext = lab.server.directory.lookup("201")
    assert ext is not None
    from dataclasses import replace

    lab.server.directory._extensions["201"] = replace(ext, no_answer_timeout=1)
    response, dialog = await alice.call("201")
    assert response.status == 200 and carol.calls
    ringing = await asyncio.wait_for(bob.incoming.get(), 2)
    assert ringing.cancelled  # the server gave up on 201 before trying 202
    await _hang_up(alice, dialog)


async def test_forward_when_unreachable_and_loops_stop(lab: Lab) -> None:
    await lab.start_server()
    alice = await _registered(lab, "200")
    await _set(lab, "201", forward_unreachable="202")
    carol = await _registered(lab, "202")
    response, dialog = await alice.call("201")
    assert response.status == 200 and carol.calls
    await _hang_up(alice, dialog)
    # 201 -> 202 -> 201: the loop stops with the status of the step that forwarded.
    await _set(lab, "202", forward_always="201")
    response, _ = await alice.call("201")
    assert response.status == 480


async def test_ring_group_first_answer_wins(lab: Lab) -> None:
    lab.extra_config = GROUPS
    await lab.start_server()
    alice = await _registered(lab, "200")
    bob = await _registered(lab, "201")
    carol = await _registered(lab, "202")
    bob.answer = None
    response, dialog = await alice.call("600")
    assert response.status == 200
    ringing = await asyncio.wait_for(bob.incoming.get(), 2)
    assert carol.calls
    for _ in range(100):
        if ringing.cancelled:
            break
        await asyncio.sleep(0.01)
    assert ringing.cancelled
    await _hang_up(alice, dialog)


async def test_linear_hunt_moves_on_and_overflow(lab: Lab) -> None:
    lab.extra_config = GROUPS
    await lab.start_server()
    alice = await _registered(lab, "200")
    bob = await _registered(lab, "201")
    carol = await _registered(lab, "202")
    bob.answer = 486
    response, dialog = await alice.call("610")
    assert response.status == 200 and carol.calls and bob.calls
    await _hang_up(alice, dialog)
    bob.answer = None
    response, dialog = await alice.call("630")  # 201 does not answer in 1 s -> overflow 202
    assert response.status == 200
    await _hang_up(alice, dialog)
    carol.answer = 486
    bob.answer = 486
    response, _ = await alice.call("610")
    assert response.status == 486


async def test_circular_hunt_starts_after_the_last_answer(lab: Lab) -> None:
    lab.extra_config = GROUPS
    await lab.start_server()
    alice = await _registered(lab, "200")
    bob = await _registered(lab, "201")
    carol = await _registered(lab, "202")
    response, dialog = await alice.call("620")
    assert response.status == 200 and len(bob.calls) == 1 and not carol.calls
    await _hang_up(alice, dialog)
    response, dialog = await alice.call("620")
    assert response.status == 200 and len(carol.calls) == 1 and len(bob.calls) == 1
    await _hang_up(alice, dialog)


async def test_dial_plan_and_lists_over_sip(lab: Lab) -> None:
    lab.extra_config = GROUPS
    await lab.start_server()
    alice = await _registered(lab, "200")
    bob = await _registered(lab, "201")
    response, dialog = await alice.call("8201")
    assert response.status == 200 and bob.calls
    await _hang_up(alice, dialog)
    assert (await alice.call("0900555"))[0].status == 403
    assert (await alice.call("666"))[0].status == 403
    assert (await alice.call("0044555"))[0].status == 503


async def test_star_codes_set_and_clear_forwarding(lab: Lab) -> None:
    server = await lab.start_server()
    alice = await _registered(lab, "200")
    response, _ = await alice.call("*90*202#")
    assert response.status == 480 and response.reason == "Forwarding busy to 202"
    assert server.directory is not None
    ext = server.directory.lookup("200")
    assert ext is not None and ext.forward_busy == "202"
    response, _ = await alice.call("*90#")
    assert response.reason == "Forwarding busy cleared"
    ext = server.directory.lookup("200")
    assert ext is not None and ext.forward_busy is None


async def test_max_call_duration_hangs_up_both_legs(lab: Lab) -> None:
    await lab.start_server()
    alice = await _registered(lab, "200")
    bob = await _registered(lab, "201")
    await _set(lab, "200", max_call_duration=10)
    assert lab.server is not None and lab.server.directory is not None
    from dataclasses import replace

    ext = lab.server.directory.lookup("200")
    assert ext is not None
    lab.server.directory._extensions["200"] = replace(ext, max_call_duration=1)
    response, dialog = await alice.call("201")
    assert response.status == 200
    await asyncio.wait_for(bob.in_dialog.get(), 2)  # ACK
    bye_to_bob = await asyncio.wait_for(bob.in_dialog.get(), 3)
    bye_to_alice = await asyncio.wait_for(alice.in_dialog.get(), 3)
    assert bye_to_bob.method == bye_to_alice.method == "BYE"
