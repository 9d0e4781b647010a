"""IVR flows on real calls: the server answers with RTP, digits arrive as SIP INFO, and callto
joins the caller to an extension (busy goes on to the next one), over the loop transport for SIP
and real UDP on loopback for the media."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from sipswitch.app import IvrApplication
from sipswitch.media.rtp import RtpPacket
from sipswitch.pbx.server import SipServer
from sipswitch.sdp.model import parse as parse_sdp
from sipswitch.sip.dialog import Dialog
from tests.pbx.conftest import Lab
from tests.pbx.phone import Phone

SCRIPT = """<?xml version="1.0" encoding="utf-8"?>
<mssxml version="1">
  <action name="menu" method="getdtmf">
    <voice>welcome</voice>
    <maxdigits>3</maxdigits>
    <timeout>5</timeout>
    <retries>0</retries>
    <match-digits>
      <match pattern="2XX" nextaction="dial"/>
    </match-digits>
  </action>
  <action name="dial" method="callto">
    <destination>${dtmf}</destination>
    <monitor-events>
      <monitor-event detection="busy" nextaction="second"/>
    </monitor-events>
  </action>
  <action name="second" method="callto">
    <destination>202</destination>
  </action>
</mssxml>
"""


def _sdp_for(port: int) -> bytes:
    return (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"
    ).encode()


async def _registered(lab: Lab, number: str) -> Phone:
    phone = lab.phone(number)
    assert (await phone.register()).status == 200
    return phone


@contextlib.asynccontextmanager
async def _ivr_server(lab: Lab, name: str, script: str) -> AsyncIterator[SipServer]:
    """The lab's server running the IVR with ``script`` saved as ``name`` (settings loaded
    once first, to build the application with them)."""
    (lab.tmp_path / "data" / "xml").mkdir(parents=True)
    (lab.tmp_path / "data" / "xml" / name).write_text(script)
    await lab.start_server(applications={})
    await lab.stop_server()
    ivr = IvrApplication(lab.settings)
    ivr.start()
    try:
        yield await lab.start_server(applications={"ivr": ivr})
    finally:
        ivr.stop()


@pytest.fixture
def rtp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


async def test_menu_callto_busy_then_next(lab: Lab, rtp_socket: socket.socket) -> None:
    lab.extra_config = '[ivr.numbers]\n"801" = "menu.xml"\n'
    lab.ring_timeout = 5
    async with _ivr_server(lab, "menu.xml", SCRIPT):
        alice = await _registered(lab, "200")
        bob = await _registered(lab, "201")
        carol = await _registered(lab, "202")
        bob.answer = 486
        port = rtp_socket.getsockname()[1]
        alice.sdp = _sdp_for(port)
        response, dialog = await alice.call("801", body=alice.sdp)
        assert response.status == 200 and dialog is not None
        answer = parse_sdp(response.body)
        assert answer.media[0].port > 0
        # The welcome prompt arrives as paced PCMU packets.
        loop = asyncio.get_running_loop()
        packets = []
        for _ in range(10):
            data = await asyncio.wait_for(loop.sock_recv(rtp_socket, 2048), 2)
            packets.append(RtpPacket.parse(data))
        assert {p.payload_type for p in packets} == {0}
        assert [b.sequence - a.sequence for a, b in zip(packets, packets[1:], strict=False)] == [
            1
        ] * 9
        await _dial(alice, dialog, "201")
        # 201 is busy, so the flow calls 202, which answers: the caller is re-INVITEd with
        # 202's media and the two are joined.
        reinvite = await asyncio.wait_for(_next_method(alice, "INVITE"), 5)
        assert reinvite.body  # carol's offer
        assert bob.calls and carol.calls
        carol_call = next(iter(carol.calls.values()))
        assert carol_call.request.body == b""  # invited without an offer
        ack = await asyncio.wait_for(_next_method(carol, "ACK"), 5)
        assert ack.body == alice.sdp  # the caller's answer reaches the callee
        bye = await alice.send_in_dialog(dialog, "BYE")
        assert bye.status == 200
        assert (await asyncio.wait_for(_next_method(carol, "BYE"), 5)).method == "BYE"


async def _dial(phone: Phone, dialog: Dialog, digits: str) -> None:
    """Send ``digits`` as SIP INFO (application/dtmf-relay) in the call's dialog."""
    for digit in digits:
        info = await phone.send_in_dialog(
            dialog,
            "INFO",
            f"Signal={digit}\r\nDuration=160\r\n".encode(),
            content_type="application/dtmf-relay",
        )
        assert info.status == 200


async def _next_method(phone: Phone, method: str) -> object:
    while True:
        request = await phone.in_dialog.get()
        if request.method == method:  # type: ignore[attr-defined]
            return request


DIRECT = """<?xml version="1.0" encoding="utf-8"?>
<mssxml version="1">
  <action name="sales" method="callto">
    <destination>201</destination>
  </action>
</mssxml>
"""


async def test_callto_before_answering_passes_the_callers_offer_on(lab: Lab) -> None:
    """A script whose first action is callto: nothing was answered yet, so the call is put
    through as a plain B2BUA call (the caller's offer to the callee, its answer back)."""
    lab.extra_config = '[ivr.numbers]\n"802" = "direct.xml"\n'
    async with _ivr_server(lab, "direct.xml", DIRECT):
        alice = await _registered(lab, "200")
        bob = await _registered(lab, "201")
        response, dialog = await alice.call("802")
        assert response.status == 200 and dialog is not None
        incoming = next(iter(bob.calls.values()))
        assert incoming.request.body == alice.sdp  # the caller's offer went to the callee
        assert response.body == bob.sdp  # and the callee's answer came back
        ack = await asyncio.wait_for(_next_method(bob, "ACK"), 5)
        assert ack is not None
        assert (await alice.send_in_dialog(dialog, "BYE")).status == 200
        assert (await asyncio.wait_for(_next_method(bob, "BYE"), 5)).method == "BYE"


async def test_joined_call_is_relayed_when_asked(lab: Lab, rtp_socket: socket.socket) -> None:
    """With ``[relay] always`` the join of caller and callee goes through the relay: each side
    gets the relay's address and ports, never the other phone's."""
    lab.extra_config = '[relay]\nalways = true\n[ivr.numbers]\n"801" = "menu.xml"\n'
    async with _ivr_server(lab, "menu.xml", SCRIPT) as server:
        alice = await _registered(lab, "200")
        bob = await _registered(lab, "201")
        bob.sdp = _sdp_for(42000)
        alice.sdp = _sdp_for(rtp_socket.getsockname()[1])
        response, dialog = await alice.call("801", body=alice.sdp)
        assert response.status == 200 and dialog is not None
        await _dial(alice, dialog, "201")
        reinvite = await asyncio.wait_for(_next_method(bob, "ACK"), 5)
        toward_bob = parse_sdp(reinvite.body)  # type: ignore[attr-defined]
        assert toward_bob.media[0].port not in (42000, rtp_socket.getsockname()[1])
        offer = await asyncio.wait_for(_next_method(alice, "INVITE"), 5)
        toward_alice = parse_sdp(offer.body)  # type: ignore[attr-defined]
        assert toward_alice.media[0].port not in (42000, toward_bob.media[0].port)
        assert server.relay is not None and dialog.call_id in server.relay
        assert (await alice.send_in_dialog(dialog, "BYE")).status == 200
