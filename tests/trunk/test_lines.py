"""An external line over the loop network: registration at a challenging carrier, calls out
through it (challenge answered, caller-number policy, P-Asserted-Identity), calls in by DID,
incoming and outgoing limits, toll-fraud protection, and ``sipswitch trunk list``."""

from __future__ import annotations

import asyncio
import json

import pytest

from sipswitch.cli.main import main as cli
from sipswitch.pbx.server import SipServer
from sipswitch.sip.auth import parse_credentials
from sipswitch.sip.dialog import Dialog
from sipswitch.sip.transport.base import Address
from sipswitch.trunk.manager import TrunkManager
from sipswitch.trunk.registration import LineRegistration, RegistrationState

from .conftest import Carrier, Net, eventually

SERVER = Address("udp", "127.0.0.1", 5060)
CARRIER = Address("udp", "127.0.0.9", 5060)
SECRET = "line-secret"

LINE = """
[security]
allow = []

[[trunks]]
name = "carrier"
kind = "line"
host = "127.0.0.9"
username = "5551000"
password = "line-secret"
expires = 300
dids = { "5551000" = "200", "5551001" = "201" }
caller_id = "fixed"
caller_number = "5551000"
asserted_identity = true
uri_params = "user=phone"
options_interval = 0
{extra}

[[dialplan]]
prefix = "9"
strip = 1
target = "trunk:carrier"
"""


async def _setup(net: Net, extra: str = "") -> tuple[SipServer, Carrier]:
    carrier = net.carrier(CARRIER, SERVER, "5551000", SECRET, "0611223344")
    server = await net.server("branch", SERVER, LINE.replace("{extra}", extra), ("200", "201"))
    await eventually(lambda: _registration(server).state is RegistrationState.REGISTERED)
    return server, carrier


def _manager(server: SipServer) -> TrunkManager:
    assert isinstance(server.trunks, TrunkManager)
    return server.trunks


def _registration(server: SipServer) -> LineRegistration:
    registration = _manager(server).registrations.get("carrier")
    assert registration is not None
    return registration


async def test_line_registers_and_status_is_listed(
    net: Net, capsys: pytest.CaptureFixture[str]
) -> None:
    server, carrier = await _setup(net)
    registers = carrier.requests("REGISTER")
    assert "Authorization" not in registers[0].headers
    creds = parse_credentials(registers[1].headers.get("Authorization") or "")
    assert creds is not None and creds.username == "5551000"
    assert list(carrier.bindings) == ["<sip:5551000@127.0.0.1:5060>"]
    # The carrier's address is never banned nor rate limited.
    assert server.security is not None and "127.0.0.9" in server.security.allow
    assert "127.0.0.50" not in server.security.allow

    status = json.loads((server.settings.data_dir / "trunks.json").read_text())
    entry = status["trunks"][0]
    assert entry["name"] == "carrier" and entry["registration"] == "registered"
    assert entry["available"] is True
    config = server.settings.data_dir.parent / "sipswitch.toml"
    data = str(server.settings.data_dir)
    assert cli(["trunk", "list", "--config", str(config), "--data", data]) == 0
    out = capsys.readouterr().out
    assert "carrier  line" in out and "registered" in out and "expires in" in out

    # Shutdown unregisters the line.
    await net.stop()
    assert carrier.bindings == {}
    status = json.loads((server.settings.data_dir / "trunks.json").read_text())
    assert status["stopped"] is True
    assert status["trunks"][0]["registration"] == "unregistered"


async def test_failed_registration_is_shown_and_retried(net: Net) -> None:
    carrier = net.carrier(CARRIER, SERVER, "5551000", "another-password", "x")
    server = await net.server("branch", SERVER, LINE.replace("{extra}", ""), ("200",))
    registration = _registration(server)
    await eventually(lambda: registration.state is RegistrationState.FAILED)
    assert registration.reason == "401 authentication refused"
    entry = _manager(server).status()[0]
    assert entry["registration"] == "failed" and entry["retry_at"] is not None
    assert entry["available"] is False
    before = len(carrier.requests("REGISTER"))
    await eventually(lambda: len(carrier.requests("REGISTER")) > before, timeout=3)
    # Calls out through a line that is not registered fail at once.
    alice = await net.registered("200", server)
    response, _ = await alice.call("90611223344")
    assert response.status == 503
    assert carrier.requests("INVITE") == []


async def test_call_out_answers_the_challenge_with_the_caller_policy(net: Net) -> None:
    server, carrier = await _setup(net)
    alice = await net.registered("200", server)
    invite = alice.invite("90611223344")
    invite.headers.add("P-Asserted-Identity", "<sip:999@127.0.0.1>")  # an extension's claim
    response, request = await alice.send_with_auth(invite, proxy=True)
    assert response.status == 200
    first, second = carrier.requests("INVITE")
    assert "Proxy-Authorization" not in first.headers
    assert second.call_id == first.call_id and second.from_.tag == first.from_.tag
    assert second.cseq.number == first.cseq.number + 1
    creds = parse_credentials(second.headers.get("Proxy-Authorization") or "")
    assert creds is not None and creds.username == "5551000"
    assert str(second.uri) == "sip:0611223344@127.0.0.9:5060;user=phone"
    assert second.from_.sip_uri.user == "5551000"
    assert second.headers.values("P-Asserted-Identity") == ["<sip:5551000@127.0.0.9>"]
    call = await asyncio.wait_for(carrier.incoming.get(), 2)
    assert call.request is second
    # Hang up from the extension: the carrier gets the BYE in the authenticated dialog.
    dialog = Dialog.as_uac(request, response, SERVER)
    alice.ack(dialog, response)
    assert (await alice.send_in_dialog(dialog, "BYE")).status == 200
    bye = await asyncio.wait_for(carrier.in_dialog.get(), 2)
    while bye.method != "BYE":
        bye = await asyncio.wait_for(carrier.in_dialog.get(), 2)
    assert bye.call_id == first.call_id and bye.cseq.number > second.cseq.number


async def test_call_in_by_did_and_default_destination(net: Net) -> None:
    server, carrier = await _setup(net, 'default_destination = "201"')
    bob = await net.registered("200", server)
    carol = await net.registered("201", server)
    response, _ = await carrier.call("5551000")
    assert response.status == 200
    ring = await asyncio.wait_for(bob.incoming.get(), 2)
    assert ring.request.from_.sip_uri.user == "0611223344"
    # The carrier is trusted by its address: no challenge.
    assert 407 not in carrier.statuses
    response, _ = await carrier.call("5559999")
    assert response.status == 200
    assert (await asyncio.wait_for(carol.incoming.get(), 2)).request.to.sip_uri.user == "201"


async def test_asserted_identity_from_the_carrier_is_the_caller(net: Net) -> None:
    server, carrier = await _setup(net)
    bob = await net.registered("200", server)
    invite = carrier.invite("5551000")
    invite.headers.add("P-Asserted-Identity", '"Ann" <sip:+4930123456@carrier.example>')
    response = await carrier.request_with_auth(invite, proxy=True)
    assert response.status == 200
    ring = await asyncio.wait_for(bob.incoming.get(), 2)
    assert ring.request.from_.sip_uri.user == "+4930123456"


async def test_unknown_did_without_default_is_not_found(net: Net) -> None:
    _, carrier = await _setup(net)
    response, _ = await carrier.call("5559999")
    assert response.status == 404


async def test_calls_from_the_carrier_cannot_leave_through_a_trunk(net: Net) -> None:
    server, carrier = await _setup(net)
    response, _ = await carrier.call("900441234")
    assert response.status == 403
    # Nor by forwarding: 201 forwards everything out through the line.
    assert server.directory is not None
    await server.database.extensions.set("201", forward_always="900441234")
    await server.directory.load()
    response, _ = await carrier.call("5551001")
    assert response.status == 403
    assert [r for r in carrier.requests("INVITE") if "00441234" in str(r.uri)] == []


async def test_an_unknown_address_is_still_challenged(net: Net) -> None:
    server, _ = await _setup(net)
    stranger = net.phone("0611223344", server, host="127.0.0.9")  # the carrier's host, not port
    response = await stranger._send(stranger.invite("5551000"))
    assert response.status == 407


async def test_incoming_limit(net: Net) -> None:
    server, carrier = await _setup(net, "max_incoming = 1")
    bob = await net.registered("200", server)
    bob.answer = None  # keeps ringing
    first = asyncio.create_task(carrier.call("5551000"))
    await asyncio.wait_for(bob.incoming.get(), 2)
    response, _ = await carrier.call("5551000")
    assert response.status == 503
    assert response.reason == "Max incoming calls reached (1)"
    first.cancel()


async def test_outgoing_limit_zero_means_no_calls(net: Net) -> None:
    server, carrier = await _setup(net, "max_outgoing = 0")
    alice = await net.registered("200", server)
    response, _ = await alice.call("90611223344")
    assert response.status == 503
    assert carrier.requests("INVITE") == []


async def test_outgoing_limit_counts_live_calls(net: Net) -> None:
    server, carrier = await _setup(net, "max_outgoing = 1")
    alice = await net.registered("200", server)
    carrier.answer = None
    first = asyncio.create_task(alice.call("90611223344"))
    await asyncio.wait_for(carrier.incoming.get(), 2)
    response, _ = await alice.call("90611223355")
    assert response.status == 503
    first.cancel()
    # When the first call ends unanswered, the line is free again.
    call = carrier.calls[next(iter(carrier.calls))]
    carrier.respond_call(call, 486)
    await eventually(lambda: server.calls is not None and not server.calls.calls)
    carrier.answer = 200
    response, _ = await alice.call("90611223366")
    assert response.status == 200


async def test_forward_media_on_the_line_relays_its_calls(net: Net) -> None:
    server, carrier = await _setup(net, "forward_media = true")
    alice = await net.registered("200", server)
    relay = server.relay
    assert relay is not None
    # Out through the line: the carrier is offered the relay, not the extension's media.
    response, request = await alice.send_with_auth(alice.invite("90611223344"), proxy=True)
    assert response.status == 200
    _, second = carrier.requests("INVITE")
    assert b"m=audio 40000 " in request.body and b"m=audio 40000 " not in second.body
    assert b"m=audio 40000 " not in response.body  # nor the extension the carrier's
    assert second.call_id != request.call_id and request.call_id in relay
    dialog = Dialog.as_uac(request, response, SERVER)
    alice.ack(dialog, response)
    assert (await alice.send_in_dialog(dialog, "BYE")).status == 200
    # In from the line: the extension is offered the relay too.
    response, _ = await carrier.call("5551000")
    assert response.status == 200
    ring = await asyncio.wait_for(alice.incoming.get(), 2)
    assert b"m=audio 40000 " not in ring.request.body
    assert b"m=audio 40000 " not in response.body
