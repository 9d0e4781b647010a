"""Call limits counted in a table shared with other server processes, through the server: calls
another process holds count against extensions and trunks, a place another process takes between
the check and the count is not given twice, and a full table refuses with 503."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sipswitch.pbx.limits import CallLimits, Refusal
from sipswitch.pbx.server import SipServer
from sipswitch.pbx.shared_counts import SharedCounts
from sipswitch.store import Extension
from tests.trunk.conftest import Carrier, Net
from tests.trunk.test_lines import _setup

from .conftest import Lab
from .phone import Phone
from .test_limits import _registered, _set_limits


@pytest.fixture
def tables(tmp_path: Path) -> Iterator[tuple[SharedCounts, SharedCounts]]:
    """A table as the primary creates it (this server's) and worker 1's view of it."""
    path = tmp_path / "calls.counts"
    with SharedCounts.create(path, 2) as primary, SharedCounts.attach(path, 1) as worker:
        yield primary, worker


def _share(server: SipServer, limits: CallLimits) -> None:
    assert server.calls is not None
    server.calls.limits = limits


async def test_calls_held_by_another_process_count(
    lab: Lab, tables: tuple[SharedCounts, SharedCounts]
) -> None:
    primary, worker = tables
    server = await lab.start_server()
    _share(server, CallLimits(primary))
    elsewhere = CallLimits(worker)
    alice = await _registered(lab, "200")
    bob = await _registered(lab, "201")
    await _set_limits(lab, "201", max_calls=1)
    await _set_limits(lab, "200", max_calls=1)
    elsewhere.join("their-call", "201")
    assert (await alice.call("201"))[0].status == 486
    elsewhere.release("their-call")
    assert elsewhere.admit("their-call", _ext(server, "200"), None) is None
    response, _ = await alice.call("201")
    assert response.status == 403 and response.reason == "Max concurrent calls reached (1)"
    elsewhere.release("their-call")
    response, dialog = await alice.call("201")
    assert response.status == 200 and dialog is not None
    assert elsewhere.active("201") == 1 and elsewhere.active("200") == 1
    assert (await alice.send_in_dialog(dialog, "BYE")).status == 200
    assert primary.total("all:201") == primary.total("all:200") == 0
    assert len(bob.calls) == 1


def _ext(server: SipServer, number: str) -> Extension:
    assert server.directory is not None
    extension = server.directory.lookup(number)
    assert extension is not None
    return extension


class TakenMeanwhile(CallLimits):
    """Limits whose callee check is followed, before the server counts the call, by another
    process taking the callee's last place: the interleaving two processes can produce."""

    def __init__(self, counts: SharedCounts, elsewhere: CallLimits) -> None:
        super().__init__(counts)
        self.elsewhere = elsewhere

    def check_callee(self, extension: Extension) -> Refusal | None:
        answer = super().check_callee(extension)
        if answer is None and extension.number == "201":
            self.elsewhere.join("their-call", "201")
        return answer


async def test_a_place_taken_between_check_and_count_is_not_given_twice(
    lab: Lab, tables: tuple[SharedCounts, SharedCounts]
) -> None:
    primary, worker = tables
    server = await lab.start_server()
    elsewhere = CallLimits(worker)
    _share(server, TakenMeanwhile(primary, elsewhere))
    alice = await _registered(lab, "200")
    bob = await _registered(lab, "201")
    await _set_limits(lab, "201", max_calls=1)
    response, _ = await alice.call("201")
    assert response.status == 486
    assert not bob.calls  # never rung
    assert primary.total("all:201") == 1  # only the other process's call
    assert server.calls is not None and server.calls.limits.live_calls == 0
    elsewhere.release("their-call")
    server.calls.limits = CallLimits(primary)
    response, dialog = await alice.call("201")
    assert response.status == 200 and dialog is not None
    await alice.send_in_dialog(dialog, "BYE")


async def test_a_full_table_refuses_calls_with_503(lab: Lab, tmp_path: Path) -> None:
    server = await lab.start_server()
    with SharedCounts.create(tmp_path / "tiny.counts", 1, capacity=1) as counts:
        _share(server, CallLimits(counts))
        alice = await _registered(lab, "200")
        await _registered(lab, "201")
        response, _ = await alice.call("201")
        assert response.status == 503 and response.reason == "Call limit table full"
        assert counts.total("all:200") == 0


# --- trunks ---
@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    network = Net(tmp_path)
    yield network
    await network.stop()


async def _line(net: Net) -> tuple[SipServer, Carrier, Phone]:
    """The line of the trunk tests, limited to one call each way, and extension 200."""
    server, carrier = await _setup(net, "max_incoming = 1\nmax_outgoing = 1")
    return server, carrier, await net.registered("200", server)


async def test_trunk_limits_count_calls_of_other_processes(
    net: Net, tables: tuple[SharedCounts, SharedCounts]
) -> None:
    primary, worker = tables
    server, carrier, alice = await _line(net)
    _share(server, CallLimits(primary))
    elsewhere = CallLimits(worker)
    assert elsewhere.join_within("their-in", "trunk:carrier:in", 1)
    assert elsewhere.join_within("their-out", "trunk:carrier:out", 1)
    response, _ = await carrier.call("5551000")
    assert response.status == 503 and response.reason == "Max incoming calls reached (1)"
    response, _ = await alice.call("90611223344")
    assert response.status == 503 and response.reason == "Trunk carrier: max outgoing calls reached"
    assert carrier.requests("INVITE") == []
    elsewhere.release("their-in")
    elsewhere.release("their-out")
    response, dialog = await carrier.call("5551000")
    assert response.status == 200 and dialog is not None
    assert elsewhere.active("trunk:carrier:in") == 1
    await carrier.send_in_dialog(dialog, "BYE")
    response, dialog = await alice.call("90611223344")
    assert response.status == 200 and dialog is not None
    assert elsewhere.active("trunk:carrier:out") == 1
    await alice.send_in_dialog(dialog, "BYE")
    async with asyncio.timeout(5):
        while primary.total("trunk:carrier:out") or primary.total("trunk:carrier:in"):
            await asyncio.sleep(0.01)


async def test_a_full_table_refuses_trunk_calls_with_503(net: Net, tmp_path: Path) -> None:
    server, carrier, alice = await _line(net)
    with SharedCounts.create(tmp_path / "tiny.counts", 1, capacity=2) as counts:
        _share(server, CallLimits(counts))
        # The caller's two keys fill the table: the trunk's has no room.
        response, _ = await alice.call("90611223344")
        assert response.status == 503 and response.reason == "Call limit table full"
        assert carrier.requests("INVITE") == []
        response, _ = await carrier.call("5551000")
        assert response.status == 503 and response.reason == "Call limit table full"
        assert counts.keys == 2 and counts.total("all:200") == 0
