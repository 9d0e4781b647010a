"""Star codes confirmed by voice: the setting is stored, the server answers with its own media,
says what was set (the prompt's and the target's digits' audio arrives as RTP on a real
socket) and hangs up with a BYE; a caller it cannot answer gets 480 with the words instead."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from sipswitch.app import FeatureConfirmation
from sipswitch.ivr.prompts import PromptFolders, voice_dirs
from sipswitch.media.g711 import ulaw_encode
from sipswitch.media.prompts import voice_path
from sipswitch.media.rtp import RtpPacket
from sipswitch.media.wav import read_wav
from sipswitch.pbx.b2bua import FEATURE_CONFIRM
from sipswitch.pbx.server import SipServer
from sipswitch.sip.dialog import Dialog
from tests.pbx.conftest import Lab
from tests.pbx.phone import Phone

SILENCE = 0xFF  # PCMU silence


def _sdp_for(port: int, payload_types: str = "0 101") -> bytes:
    return (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP {payload_types}\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:18 G729/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    ).encode()


@pytest.fixture
def rtp_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


async def _server(lab: Lab) -> SipServer:
    data = lab.tmp_path / "data"
    confirm = FeatureConfirmation(PromptFolders(voice_dirs(data)), data)
    return await lab.start_server(applications={FEATURE_CONFIRM: confirm})


async def _phone(lab: Lab, number: str, rtp: socket.socket) -> Phone:
    phone = lab.phone(number)
    phone.sdp = _sdp_for(rtp.getsockname()[1])
    assert (await phone.register()).status == 200
    return phone


def _spoken(*names: str) -> bytes:
    """What the server sends for these prompts, one after the other, in PCMU."""
    return ulaw_encode(b"".join(read_wav(voice_path(name, None)) for name in names))


async def _listen_until_bye(phone: Phone, rtp: socket.socket) -> list[RtpPacket]:
    """The RTP packets that arrive until the server's BYE (answered by the phone)."""
    loop = asyncio.get_running_loop()
    packets: list[RtpPacket] = []

    async def receive() -> None:
        while True:
            packets.append(RtpPacket.parse(await loop.sock_recv(rtp, 2048)))

    receiver = asyncio.ensure_future(receive())
    try:
        bye = await asyncio.wait_for(phone.in_dialog.get(), 20)
        assert bye.method == "BYE"
        await asyncio.sleep(0.2)  # a packet sent just before the BYE
    finally:
        receiver.cancel()
    return packets


async def _forward_busy(server: SipServer, number: str) -> str | None:
    assert server.directory is not None
    extension = server.directory.lookup(number)
    stored = await server.database.extensions.get(number)
    assert extension is not None and stored is not None
    assert extension.forward_busy == stored.forward_busy
    return extension.forward_busy


async def test_setting_is_confirmed_with_the_target_digits_then_bye(
    lab: Lab, rtp_socket: socket.socket
) -> None:
    server = await _server(lab)
    alice = await _phone(lab, "200", rtp_socket)
    response, dialog = await alice.call("*90*202#", body=alice.sdp)
    assert response.status == 200 and dialog is not None
    assert response.body and b"m=audio " in response.body  # the server's own media
    assert await _forward_busy(server, "200") == "202"
    packets = await _listen_until_bye(alice, rtp_socket)

    assert {p.payload_type for p in packets} == {0}
    assert [b.sequence - a.sequence for a, b in zip(packets, packets[1:], strict=False)] == [1] * (
        len(packets) - 1
    )
    heard = b"".join(p.payload for p in packets)
    expected = _spoken("forwarding-set", "digit-2", "digit-0", "digit-2")
    assert heard[: len(expected)] == expected
    # Then only silence (the last packet's padding, a packet or two before the BYE).
    assert set(heard[len(expected) :]) <= {SILENCE} and len(heard) - len(expected) < 480


async def test_clearing_is_confirmed(lab: Lab, rtp_socket: socket.socket) -> None:
    server = await _server(lab)
    alice = await _phone(lab, "200", rtp_socket)
    assert server.database.extensions is not None
    await server.database.extensions.set("200", forward_busy="201")
    response, dialog = await alice.call("*90#", body=alice.sdp)
    assert response.status == 200 and dialog is not None
    assert await _forward_busy(server, "200") is None
    heard = b"".join(p.payload for p in await _listen_until_bye(alice, rtp_socket))
    expected = _spoken("forwarding-cleared")
    assert heard[: len(expected)] == expected and len(heard) - len(expected) < 480


@pytest.mark.parametrize(
    ("body", "why"), [(b"", "no offer"), (_sdp_for(4000, "18"), "no common codec")]
)
async def test_a_call_the_server_cannot_answer_gets_480_with_the_words(
    lab: Lab, rtp_socket: socket.socket, body: bytes, why: str
) -> None:
    server = await _server(lab)
    alice = await _phone(lab, "200", rtp_socket)
    response, dialog = await alice.call("*93*201#", body=body)
    assert (response.status, response.reason) == (480, "Forwarding always to 201"), why
    assert dialog is None
    assert server.directory is not None
    extension = server.directory.lookup("200")
    assert extension is not None and extension.forward_always == "201"
    assert server.calls is not None and not server.calls.calls


async def test_no_free_media_port_gets_480_with_the_words(
    lab: Lab, rtp_socket: socket.socket
) -> None:
    server = await _server(lab)
    alice = await _phone(lab, "200", rtp_socket)
    assert server.calls is not None
    ports = server.calls.ports
    for _ in range(ports.capacity):
        ports.allocate()
    response, _ = await alice.call("*91*202#", body=alice.sdp)
    assert (response.status, response.reason) == (480, "Forwarding unreachable to 202")


async def test_caller_hanging_up_during_the_prompt_keeps_the_setting(
    lab: Lab, rtp_socket: socket.socket
) -> None:
    server = await _server(lab)
    alice = await _phone(lab, "200", rtp_socket)
    response, dialog = await alice.call("*92*201#", body=alice.sdp)
    assert response.status == 200 and isinstance(dialog, Dialog)
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(loop.sock_recv(rtp_socket, 2048), 5)  # the prompt has begun
    assert (await alice.send_in_dialog(dialog, "BYE")).status == 200
    assert server.calls is not None
    for _ in range(50):
        if not server.calls.calls:
            break
        await asyncio.sleep(0.02)
    assert not server.calls.calls
    with pytest.raises(TimeoutError):  # the call is over: no BYE from the server
        await asyncio.wait_for(alice.in_dialog.get(), 1)
    assert server.directory is not None
    extension = server.directory.lookup("200")
    assert extension is not None and extension.forward_no_answer == "201"


async def test_star_codes_count_against_the_callers_limits(
    lab: Lab, rtp_socket: socket.socket
) -> None:
    server = await _server(lab)
    alice = await _phone(lab, "200", rtp_socket)
    await server.database.extensions.set("200", max_calls=0)  # no calls at all
    assert server.directory is not None
    await server.directory.load()
    response, _ = await alice.call("*90*202#", body=alice.sdp)
    assert response.status == 403 and "Max concurrent calls" in response.reason
    assert await _forward_busy(server, "200") is None  # nothing was set
    await server.database.extensions.set("200", max_calls=1)
    await server.directory.load()
    response, dialog = await alice.call("*90*202#", body=alice.sdp)
    assert response.status == 200 and dialog is not None
    assert server.calls is not None and server.calls.limits.active("200") == 1
    await _listen_until_bye(alice, rtp_socket)
    assert server.calls.limits.active("200") == 0
