"""Settings reloaded at run time (what SIGHUP does): the settings file is edited, the server
reads it again, and the next call meets the new groups, dial plan and lists; a call in progress
keeps its group; a broken file is logged with its line and changes nothing; settings that need a
restart are logged as such and left as they are."""

from __future__ import annotations

import asyncio
import functools
import logging

import pytest

from sipswitch.config.settings import load_settings
from sipswitch.pbx.server import SipServer

from .conftest import Lab
from .phone import Phone

RING_GROUP = """
[[groups]]
number = "600"
strategy = "ring"
members = ["201", "202"]
ring_timeout = 5
"""


async def _server(lab: Lab, config: str = "") -> SipServer:
    lab.extra_config = config
    server = await lab.start_server()
    server.settings_source = functools.partial(
        load_settings, lab.tmp_path / "sipswitch.toml", lab.tmp_path / "data"
    )
    return server


def _rewrite(lab: Lab, config: str) -> None:
    """The settings file as ``Lab.start_server`` writes it, with ``config`` in it."""
    path = lab.tmp_path / "sipswitch.toml"
    path.write_text(f"{config}\n[calls]\nring_timeout = {lab.ring_timeout}\n")


async def _registered(lab: Lab, number: str) -> Phone:
    phone = lab.phone(number)
    assert (await phone.register()).status == 200
    return phone


async def _hang_up(phone: Phone, dialog: object) -> None:
    assert dialog is not None
    assert (await phone.send_in_dialog(dialog, "BYE")).status == 200  # type: ignore[arg-type]


async def test_a_new_group_and_list_apply_to_the_next_call(lab: Lab) -> None:
    server = await _server(lab)
    alice = await _registered(lab, "200")
    bob = await _registered(lab, "201")
    carol = await _registered(lab, "202")
    carol.answer = None  # rings; bob answers
    assert (await alice.call("600"))[0].status == 404

    _rewrite(lab, RING_GROUP + '\n[lists]\ndeny_called = ["666"]\n')
    assert server.reload_settings()
    response, dialog = await alice.call("600")
    assert response.status == 200
    assert bob.calls and carol.calls  # both members rang
    ringing = await asyncio.wait_for(carol.incoming.get(), 2)
    for _ in range(100):  # the CANCEL follows the answer over the (simulated) network
        if ringing.cancelled:
            break
        await asyncio.sleep(0.01)
    assert ringing.cancelled  # the other member stops ringing once one answers
    await _hang_up(alice, dialog)
    assert (await alice.call("666"))[0].status == 403
    assert [g.number for g in server.settings.groups] == ["600"]


async def test_a_call_in_progress_keeps_its_group(lab: Lab) -> None:
    hunt = '[[groups]]\nnumber = "610"\nstrategy = "linear"\nring_timeout = 1\n'
    server = await _server(lab, hunt + 'members = ["201", "202"]\n')
    alice = await _registered(lab, "200")
    bob = await _registered(lab, "201")
    carol = await _registered(lab, "202")
    bob.answer = None  # 201 does not answer: the hunt goes on to 202
    call = asyncio.ensure_future(alice.call("610"))
    await asyncio.wait_for(bob.incoming.get(), 2)
    _rewrite(lab, hunt + 'members = ["201"]\n')
    assert server.reload_settings()
    response, dialog = await call
    assert response.status == 200 and carol.calls  # the group as it was when the call began
    await _hang_up(alice, dialog)
    carol.calls.clear()
    response, _ = await alice.call("610")
    assert response.status in (408, 480) and not carol.calls  # the next call: 201 only


async def test_a_broken_file_is_logged_and_the_old_routing_stays(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    server = await _server(lab, RING_GROUP)
    alice = await _registered(lab, "200")
    bob = await _registered(lab, "201")
    await _registered(lab, "202")
    for broken, line in [
        (RING_GROUP.replace('"202"]', '"2x2"]'), 5),  # a bad member number
        (RING_GROUP + "\n[[dialplan]\n", 8),  # a TOML syntax error
    ]:
        _rewrite(lab, broken)
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="sipswitch"):
            assert not server.reload_settings()
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "settings not reloaded" in errors[0], errors
        assert f"sipswitch.toml:{line}:" in errors[0], errors
        response, dialog = await alice.call("600")
        assert response.status == 200 and bob.calls  # still the group
        await _hang_up(alice, dialog)


async def test_settings_that_need_a_restart_are_logged_and_kept(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    server = await _server(lab)
    _rewrite(lab, '[sip]\nudp_port = 5070\nrealm = "other"\n' + RING_GROUP)
    with caplog.at_level(logging.WARNING, logger="sipswitch"):
        assert server.reload_settings()
    warnings = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert warnings == [
        "setting sip.realm changed: it needs a restart to apply",
        "setting sip.udp_port changed: it needs a restart to apply",
    ]
    assert (server.settings.sip.udp_port, server.settings.sip.realm) == (5060, "sipswitch")
    assert [g.number for g in server.settings.groups] == ["600"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sipswitch"):  # still not applied: said again
        assert server.reload_settings()
    assert len([r for r in caplog.records if "needs a restart" in r.getMessage()]) == 2


async def test_without_a_settings_source_nothing_is_reloaded(lab: Lab) -> None:
    server = await lab.start_server()
    _rewrite(lab, RING_GROUP)
    assert not server.reload_settings()
    assert server.calls is not None and server.calls.router.groups == {}
