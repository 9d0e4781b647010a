"""Per-extension call limits: unit tests of the profiles (counted in this process or in a shared
table) and calls over the loop transport."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipswitch.pbx.limits import CallLimits
from sipswitch.pbx.shared_counts import SharedCounts
from sipswitch.store import Extension, InvalidExtension

from .conftest import Lab
from .phone import Phone


def ext(number: str, max_calls: int | None = None, max_out: int | None = None) -> Extension:
    return Extension(number, "", "sipswitch", "", "", max_calls, max_out, True)


@pytest.fixture(params=["alone", "shared"])
def limits(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CallLimits]:
    """The limits of a server running alone, or of worker 1 of a count table shared with the
    primary (``pbx.shared_counts``): the same answers either way."""
    if request.param == "alone":
        yield CallLimits()
        return
    path = tmp_path / "calls.counts"
    with SharedCounts.create(path, 2), SharedCounts.attach(path, 1) as counts:
        yield CallLimits(counts)


def test_profiles_count_and_release_exactly_once(limits: CallLimits) -> None:
    a, b = ext("100", max_calls=1), ext("101", max_calls=2)
    assert limits.admit("call-1", a, b) is None
    assert limits.active("100") == 1 and limits.outgoing("100") == 1 and limits.active("101") == 1
    refusal = limits.admit("call-2", a, b)
    assert refusal is not None and refusal.status == 403 and "(1)" in refusal.reason
    assert limits.admit("call-3", ext("102"), b) is None
    refusal = limits.admit("call-4", ext("102"), b)
    assert refusal is not None and refusal.status == 486
    limits.release("call-1")
    limits.release("call-1")
    assert limits.active("100") == 0 and limits.active("101") == 1
    limits.release("call-3")
    assert limits.live_calls == 0 and limits.active("101") == 0


def test_zero_means_no_calls_at_all(limits: CallLimits) -> None:
    none = ext("100", max_calls=0)
    assert limits.check_caller(none) is not None
    assert limits.check_callee(none) is not None
    assert limits.admit("c", none, ext("101")) is not None
    assert limits.live_calls == 0 and limits.active("101") == 0


def test_a_call_to_oneself_counts_once(limits: CallLimits) -> None:
    me = ext("100", max_calls=1)
    assert limits.admit("c", me, me) is None
    assert limits.active("100") == 1
    limits.release("c")
    assert limits.active("100") == 0


def test_outgoing_limit(limits: CallLimits) -> None:
    a = ext("100", max_calls=3, max_out=1)
    assert limits.admit("c1", a, None) is None
    refusal = limits.admit("c2", a, None)
    assert refusal is not None and refusal.reason == "Max outgoing calls reached (1)"
    limits.join("c3", "100")  # a call to 100 counts for its calls, not its outgoing ones
    assert limits.active("100") == 2 and limits.outgoing("100") == 1


def test_join_and_leave(limits: CallLimits) -> None:
    limits.join("c", "101")
    limits.join("c", "101")  # once per call
    limits.join("c", "102")
    assert limits.active("101") == 1 and limits.active("102") == 1 and limits.live_calls == 1
    limits.leave("c", "101")
    limits.leave("c", "101")
    limits.leave("other", "102")  # a call that never joined takes nothing away
    assert limits.active("101") == 0 and limits.active("102") == 1
    # The caller's own count stays until the call ends, even when its number is "left".
    assert limits.admit("d", ext("100"), None) is None
    limits.join("d", "100")
    limits.leave("d", "100")
    assert limits.active("100") == 1
    limits.release("d")
    limits.release("c")
    assert limits.active("100") == limits.active("102") == limits.live_calls == 0


def test_join_within(limits: CallLimits) -> None:
    assert limits.join_within("c1", "trunk:t:in", 2)
    assert limits.join_within("c2", "trunk:t:in", 2)
    assert not limits.join_within("c3", "trunk:t:in", 2)
    assert limits.active("trunk:t:in") == 2 and limits.live_calls == 2  # c3 holds nothing
    assert not limits.join_within("c1", "trunk:t:in", 2)  # the check is the same as before
    assert limits.join_within("c1", "trunk:t:in", None)  # and a member counts once
    assert limits.active("trunk:t:in") == 2
    assert not limits.join_within("c4", "trunk:t:out", 0)
    refusal = limits.join_or_refuse("c4", "trunk:t:in", 2, "Max incoming calls reached (2)")
    assert refusal is not None and refusal.status == 503 and "(2)" in refusal.reason
    limits.release("c1")
    assert limits.join_or_refuse("c4", "trunk:t:in", 2, "unused") is None
    limits.release("c2")
    limits.release("c4")
    assert limits.active("trunk:t:in") == 0 and limits.live_calls == 0


def test_admit_counts_a_profile_a_call_joined_once(limits: CallLimits) -> None:
    limits.join("c", "101")
    assert limits.admit("c", ext("100"), ext("101")) is None
    assert limits.active("101") == 1 and limits.active("100") == 1
    limits.release("c")
    assert limits.active("101") == 0 and limits.active("100") == 0


async def _registered(lab: Lab, number: str) -> Phone:
    phone = lab.phone(number)
    assert (await phone.register()).status == 200
    return phone


async def _set_limits(lab: Lab, number: str, **limits: int | None) -> None:
    assert lab.server is not None and lab.server.directory is not None
    await lab.server.database.extensions.set(number, **limits)  # type: ignore[arg-type]
    await lab.server.directory.load()


async def test_store_refuses_outgoing_above_concurrent(lab: Lab) -> None:
    server = await lab.start_server()
    with pytest.raises(InvalidExtension, match="cannot exceed"):
        await server.database.extensions.set("200", max_calls=1, max_outgoing_calls=2)
    with pytest.raises(InvalidExtension, match="cannot exceed"):
        await server.database.extensions.add("299", "password-1", "sipswitch", "", 1, 2)


async def test_limit_zero_over_sip(lab: Lab) -> None:
    await lab.start_server()
    alice = await _registered(lab, "200")
    await _registered(lab, "201")
    await _set_limits(lab, "200", max_calls=0)
    response, _ = await alice.call("201")
    assert response.status == 403 and "Max concurrent calls" in response.reason
    await _set_limits(lab, "200", max_calls=None)
    await _set_limits(lab, "201", max_calls=0)
    assert (await alice.call("201"))[0].status == 486


async def test_second_call_to_a_limit_one_extension_is_busy(lab: Lab) -> None:
    await lab.start_server()
    alice = await _registered(lab, "200")
    bob = await _registered(lab, "201")
    carol = await _registered(lab, "202")
    await _set_limits(lab, "201", max_calls=1)
    first, dialog = await alice.call("201")
    assert first.status == 200 and dialog is not None
    busy, _ = await carol.call("201")
    assert busy.status == 486
    assert (await alice.send_in_dialog(dialog, "BYE")).status == 200
    again, dialog = await carol.call("201")
    assert again.status == 200 and dialog is not None
    await carol.send_in_dialog(dialog, "BYE")
    assert bob.calls


async def test_outgoing_limit_gets_403_naming_it(lab: Lab) -> None:
    await lab.start_server()
    alice = await _registered(lab, "200")
    await _registered(lab, "201")
    await _registered(lab, "202")
    await _set_limits(lab, "200", max_calls=3, max_outgoing_calls=1)
    first, dialog = await alice.call("201")
    assert first.status == 200 and dialog is not None
    second, _ = await alice.call("202")
    assert second.status == 403 and second.reason == "Max outgoing calls reached (1)"
    await alice.send_in_dialog(dialog, "BYE")
    third, dialog = await alice.call("202")
    assert third.status == 200 and dialog is not None
    await alice.send_in_dialog(dialog, "BYE")


async def test_counters_return_to_zero_after_a_storm(lab: Lab) -> None:
    """Calls that are answered and hung up, refused busy, cancelled and timed out, in a random
    but seeded order, all release what they counted."""
    lab.ring_timeout = 0.2
    server = await lab.start_server()
    callers = [await _registered(lab, "200"), await _registered(lab, "202")]
    callee = await _registered(lab, "201")
    await _set_limits(lab, "201", max_calls=2)
    rng = random.Random(7)

    async def one(caller: Phone, how: str) -> None:
        # The callee's behaviour is shared by concurrent calls, so any call may end up answered:
        # whoever gets a dialog hangs it up.
        callee.answer = {"answer": 200, "busy": 486}.get(how)
        task = asyncio.ensure_future(caller.call("201"))
        if how == "cancel":
            await asyncio.sleep(0.05)
            for txn in caller.layer_client_invites():
                txn.cancel()
        _, dialog = await task
        if dialog is not None:
            await asyncio.sleep(rng.random() * 0.05)
            assert (await caller.send_in_dialog(dialog, "BYE")).status == 200

    kinds = ["answer", "busy", "timeout", "cancel"]
    for _ in range(6):
        batch = [one(rng.choice(callers), rng.choice(kinds)) for _ in range(3)]
        await asyncio.gather(*batch)
    assert server.calls is not None
    for _ in range(100):
        if server.calls.limits.live_calls == 0:
            break
        await asyncio.sleep(0.02)
    leftover = [(c.state, [f.final_status for f in c.forks], c.inbound.txn.last_response)
                for c in server.calls.calls]
    assert server.calls.limits.live_calls == 0, leftover
    assert server.calls.limits.active("201") == 0 and server.calls.limits.active("200") == 0
    assert not server.calls.calls
