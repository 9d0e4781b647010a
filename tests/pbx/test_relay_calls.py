"""Calls whose media the server relays ("forward media stream"): when the relay is used (an
extension asks for it, a phone is behind NAT, the phones are in different address realms), what
each phone's SDP names, real RTP through the in-process relay both ways, re-INVITEs, the relay
ports freed when the call ends, and calls whose media stopped being hung up."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sipswitch.media.relay_backend import RelayBackend
from sipswitch.media.rtpengine import RtpEngineDaemon
from sipswitch.sdp.model import parse as parse_sdp
from sipswitch.sip.dialog import Dialog
from sipswitch.sip.message import Request
from sipswitch.sip.transport.base import Address
from sipswitch.sip.transport.loop import LoopTransport
from tests.blackbox.ports import free_port_block

from .conftest import PASSWORD, SERVER, Lab
from .phone import Phone

RECEIVE_TIMEOUT = 3.0


def sdp(host: str, port: int, direction: str = "sendrecv") -> bytes:
    return (
        f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na={direction}\r\n"
    ).encode()


def media_of(body: bytes) -> tuple[str, int]:
    description = parse_sdp(body)
    media = description.media[0]
    connection = description.connection_of(media)
    assert connection is not None
    return connection.address, media.port


def rtp(seq: int, ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + bytes(160)


class RtpSocket:
    """A phone's RTP socket on 127.0.0.1."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        self.sock.sendto(data, to)

    async def receive(self, timeout: float = RECEIVE_TIMEOUT) -> tuple[bytes, tuple[str, int]]:
        loop = asyncio.get_running_loop()
        data, source = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 4096), timeout)
        return data, (source[0], source[1])

    async def silent(self, timeout: float = 0.5) -> bool:
        try:
            await self.receive(timeout)
        except TimeoutError:
            return True
        return False


@pytest.fixture
def sockets() -> Iterator[list[RtpSocket]]:
    made: list[RtpSocket] = []
    yield made
    for item in made:
        item.sock.close()


def rtp_socket(sockets: list[RtpSocket]) -> RtpSocket:
    made = RtpSocket()
    sockets.append(made)
    return made


def phone_at(lab: Lab, number: str, host: str) -> Phone:
    """A phone signalling from ``host`` (Lab.phone always uses 127.0.0.2)."""
    lab._next_port += 1
    address = Address("udp", host, lab._next_port)
    transport = LoopTransport(lab.network, address)
    phone = Phone(transport, lab.clock, address, number, PASSWORD, SERVER)
    transport.attach(phone.layer)
    return phone


async def registered(phone: Phone) -> Phone:
    assert (await phone.register()).status == 200
    return phone


async def next_request(phone: Phone, timeout: float = 2.0) -> Request:
    """The phone's next in-dialog request other than an ACK."""
    while True:
        request = await asyncio.wait_for(phone.in_dialog.get(), timeout)
        if request.method != "ACK":
            return request


async def set_extension(lab: Lab, number: str, **changes: object) -> None:
    server = lab.server
    assert server is not None and server.directory is not None
    await server.database.extensions.set(number, **changes)
    await server.directory.load()


async def exchange(
    a: RtpSocket, a_target: tuple[str, int], b: RtpSocket, b_target: tuple[str, int]
) -> None:
    """RTP from a to its relay port reaches b, and back."""
    a.send(rtp(1), a_target)
    data, source = await b.receive()
    assert data == rtp(1)
    assert source[1] == b_target[1]  # b hears the relay from the port it sends to
    b.send(rtp(1, ssrc=0x5678), b_target)
    data, source = await a.receive()
    assert data == rtp(1, ssrc=0x5678)
    assert source[1] == a_target[1]


@dataclass
class RelayedCall:
    """200 calls 201 (which has forward_media on); each side's RTP socket and what it was told."""

    alice: Phone
    dialog: Dialog
    a_rtp: RtpSocket
    b_rtp: RtpSocket
    toward_alice: tuple[str, int]
    toward_bob: tuple[str, int]

    async def hang_up(self, relay: RelayBackend | None) -> None:
        """BYE from the caller; the relay forgets the call."""
        assert (await self.alice.send_in_dialog(self.dialog, "BYE")).status == 200
        assert relay is not None
        for _ in range(50):
            if self.dialog.call_id not in relay:
                break
            await asyncio.sleep(0.05)
        assert self.dialog.call_id not in relay


async def relayed_call(lab: Lab, sockets: list[RtpSocket]) -> RelayedCall:
    await set_extension(lab, "201", forward_media=True)
    alice = await registered(lab.phone("200"))
    bob = await registered(lab.phone("201"))
    a_rtp, b_rtp = rtp_socket(sockets), rtp_socket(sockets)
    bob.sdp = sdp("127.0.0.1", b_rtp.port)
    response, dialog = await alice.call("201", sdp("127.0.0.1", a_rtp.port))
    assert response.status == 200 and dialog is not None
    incoming = await asyncio.wait_for(bob.incoming.get(), 2)
    toward_bob, toward_alice = media_of(incoming.request.body), media_of(response.body)
    return RelayedCall(alice, dialog, a_rtp, b_rtp, toward_alice, toward_bob)


async def test_forward_media_relays_both_ways_and_frees_the_ports(
    lab: Lab, sockets: list[RtpSocket]
) -> None:
    server = await lab.start_server()
    call = await relayed_call(lab, sockets)
    a_rtp, b_rtp = call.a_rtp, call.b_rtp
    toward_alice, toward_bob = call.toward_alice, call.toward_bob
    # Each phone is told the relay's address and ports, never the other phone's.
    assert toward_bob[0] == toward_alice[0] == "127.0.0.1"
    assert toward_bob[1] not in (a_rtp.port, b_rtp.port)
    assert toward_alice[1] not in (a_rtp.port, b_rtp.port, toward_bob[1])
    assert server.relay is not None and call.dialog.call_id in server.relay
    await exchange(a_rtp, toward_alice, b_rtp, toward_bob)
    await call.hang_up(server.relay)
    # The relay's port is closed: nothing reaches bob any more.
    a_rtp.send(rtp(2), toward_alice)
    assert await b_rtp.silent()


async def test_direct_media_when_nothing_asks_for_the_relay(lab: Lab) -> None:
    server = await lab.start_server()
    alice = await registered(lab.phone("200"))
    bob = await registered(lab.phone("201"))
    bob.sdp = sdp("127.0.0.1", 41000)
    response, dialog = await alice.call("201", sdp("127.0.0.1", 40000))
    assert response.status == 200 and dialog is not None
    incoming = await asyncio.wait_for(bob.incoming.get(), 2)
    assert media_of(incoming.request.body) == ("127.0.0.1", 40000)
    assert media_of(response.body) == ("127.0.0.1", 41000)
    assert server.relay is not None and dialog.call_id not in server.relay


async def test_caller_behind_nat_is_relayed_and_latched(
    lab: Lab, sockets: list[RtpSocket]
) -> None:
    await lab.start_server()
    alice = await registered(lab.phone("200"))
    bob = await registered(lab.phone("201"))
    a_rtp, b_rtp = rtp_socket(sockets), rtp_socket(sockets)
    bob.sdp = sdp("127.0.0.1", b_rtp.port)
    # The caller's SDP names its private LAN address; its packets come from elsewhere (the NAT).
    response, dialog = await alice.call("201", sdp("10.0.0.5", 30000))
    assert response.status == 200 and dialog is not None
    incoming = await asyncio.wait_for(bob.incoming.get(), 2)
    toward_bob, toward_alice = media_of(incoming.request.body), media_of(response.body)
    assert toward_bob[0] == "127.0.0.1" and toward_alice[0] == "127.0.0.1"
    # The relay learns the caller's real address from its first packet and answers there.
    await exchange(a_rtp, toward_alice, b_rtp, toward_bob)
    assert (await alice.send_in_dialog(dialog, "BYE")).status == 200


async def test_reinvite_updates_the_relay(lab: Lab, sockets: list[RtpSocket]) -> None:
    await lab.start_server()
    await set_extension(lab, "200", forward_media=True)
    alice = await registered(lab.phone("200"))
    bob = await registered(lab.phone("201"))
    a_rtp, b_rtp, a_new = rtp_socket(sockets), rtp_socket(sockets), rtp_socket(sockets)
    bob.sdp = sdp("127.0.0.1", b_rtp.port)
    response, dialog = await alice.call("201", sdp("127.0.0.1", a_rtp.port))
    assert response.status == 200 and dialog is not None
    incoming = await asyncio.wait_for(bob.incoming.get(), 2)
    toward_bob = media_of(incoming.request.body)
    # Alice moves her media to another port with a re-INVITE.
    answer = await alice.send_in_dialog(dialog, "INVITE", sdp("127.0.0.1", a_new.port))
    assert answer.status == 200
    alice.ack(dialog, answer)
    reinvite = await next_request(bob)
    assert reinvite.method == "INVITE"
    assert media_of(reinvite.body) == toward_bob  # bob keeps talking to the same relay port
    toward_alice = media_of(answer.body)
    assert toward_alice[0] == "127.0.0.1" and toward_alice[1] != b_rtp.port
    await exchange(a_new, toward_alice, b_rtp, toward_bob)
    assert (await alice.send_in_dialog(dialog, "BYE")).status == 200


async def test_external_address_toward_the_other_realm(
    lab: Lab, sockets: list[RtpSocket]
) -> None:
    # 127.0.0.2 is "the LAN"; 127.0.0.3 stands for the Internet, which is told 127.0.0.9.
    lab.extra_config = (
        '[nat]\nlocal_networks = ["127.0.0.2/32"]\nexternal_address = "127.0.0.9"\n'
    )
    await lab.start_server()
    alice = await registered(lab.phone("200"))
    bob = await registered(phone_at(lab, "201", "127.0.0.3"))
    a_rtp, b_rtp = rtp_socket(sockets), rtp_socket(sockets)
    bob.sdp = sdp("127.0.0.1", b_rtp.port)
    response, dialog = await alice.call("201", sdp("127.0.0.1", a_rtp.port))
    assert response.status == 200 and dialog is not None
    incoming = await asyncio.wait_for(bob.incoming.get(), 2)
    invite = incoming.request
    assert "127.0.0.9" in invite.headers.get("Via", "")
    assert "127.0.0.9" in invite.headers.get("Contact", "")
    toward_bob, toward_alice = media_of(invite.body), media_of(response.body)
    assert toward_bob[0] == "127.0.0.9"  # the external address, for the outside
    assert toward_alice[0] == "127.0.0.1"  # the local one, for the LAN
    assert "127.0.0.9" not in response.headers.get("Contact", "")
    await exchange(a_rtp, toward_alice, b_rtp, ("127.0.0.9", toward_bob[1]))
    assert (await alice.send_in_dialog(dialog, "BYE")).status == 200


async def test_call_without_media_is_hung_up(lab: Lab, sockets: list[RtpSocket]) -> None:
    lab.extra_config = "[relay]\ntimeout = 1.0\n"
    server = await lab.start_server()
    await set_extension(lab, "201", forward_media=True)
    alice = await registered(lab.phone("200"))
    bob = await registered(lab.phone("201"))
    response, dialog = await alice.call("201", sdp("127.0.0.1", rtp_socket(sockets).port))
    assert response.status == 200 and dialog is not None
    # Nobody sends RTP: both phones get a BYE once the relay's timeout has passed.
    for phone in (alice, bob):
        assert (await next_request(phone, 10)).method == "BYE"
    assert server.relay is not None
    for _ in range(50):
        if dialog.call_id not in server.relay:
            break
        await asyncio.sleep(0.05)
    assert dialog.call_id not in server.relay


async def test_call_to_a_phone_that_stopped_answering_keepalives_fails_at_once(lab: Lab) -> None:
    lab.extra_config = (
        "[nat]\nkeepalive_interval = 0.3\nkeepalive_timeout = 0.2\nkeepalive_failures = 1\n"
    )
    server = await lab.start_server()
    alice = await registered(lab.phone("200"))
    bob = lab.phone("201")
    # Registered from behind a NAT: the Contact names the phone's LAN address.
    assert (await bob.register(contact="<sip:201@10.1.2.3:5060>")).status == 200
    lab.network.detach(bob.address)  # the NAT mapping is gone: nothing reaches the phone
    keepalive = server.keepalive
    assert keepalive is not None
    for _ in range(100):
        if keepalive.unreachable_count() == 1:
            break
        await asyncio.sleep(0.05)
    assert keepalive.unreachable_count() == 1
    response, _ = await alice.call("201")
    assert response.status == 480
    assert bob.incoming.empty()


@pytest.mark.skipif(
    RtpEngineDaemon.available() is None,
    reason="rtpengine is not installed (scripts/install-test-deps.sh installs rtpengine-daemon)",
)
async def test_rtpengine_relays_a_call(lab: Lab, sockets: list[RtpSocket]) -> None:
    base = free_port_block(40, "127.0.0.1")
    daemon = RtpEngineDaemon(interfaces=("127.0.0.1",), port_min=base, port_max=base + 39)
    await daemon.start()
    try:
        host, port = daemon.ng_address
        lab.extra_config = f'[relay]\nengine = "rtpengine"\nrtpengine = "{host}:{port}"\n'
        server = await lab.start_server()
        call = await relayed_call(lab, sockets)
        for _, relay_port in (call.toward_bob, call.toward_alice):
            assert base <= relay_port <= base + 39  # rtpengine's ports
        await exchange(call.a_rtp, call.toward_alice, call.b_rtp, call.toward_bob)
        await call.hang_up(server.relay)
        await lab.stop_server()
    finally:
        await daemon.stop()


async def test_relay_without_ports_refuses_the_call_cleanly(lab: Lab) -> None:
    # Two port pairs in all: the relay carries one call (two pairs a call), not a second.
    lab.extra_config = "[media]\nrtp_port_min = 30000\nrtp_port_max = 30002\n"
    server = await lab.start_server()
    await set_extension(lab, "201", forward_media=True)
    alice = await registered(lab.phone("200"))
    bob = await registered(lab.phone("201"))
    carol = await registered(lab.phone("202"))
    first, dialog = await alice.call("201")
    assert first.status == 200 and dialog is not None
    await asyncio.wait_for(bob.incoming.get(), 2)
    second, _ = await carol.call("201")
    assert second.status == 503
    assert "relay" in second.reason.lower()
    assert bob.incoming.empty()  # never rung: the offer could not be relayed
    assert server.calls is not None
    limits = server.calls.limits
    assert limits.active("202") == 0 and limits.active("201") == 1
    assert (await alice.send_in_dialog(dialog, "BYE")).status == 200
    assert limits.active("200") == 0 and limits.active("201") == 0
    assert not server.calls.relayed and not server.calls.calls
