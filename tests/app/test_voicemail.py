"""Voicemail on real calls: a busy extension's caller leaves a message (a WAV file appears and
the extension's phone gets a message-waiting NOTIFY), and the owner listens with *97."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from sipswitch.app import VoicemailAccess, VoicemailApplication
from sipswitch.ivr.prompts import PromptFolders, voice_dirs
from tests.pbx.conftest import Lab
from tests.pbx.phone import Phone


def _sdp_for(port: int) -> bytes:
    return (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
    ).encode()


@pytest.fixture
def rtp_ports() -> Iterator[list[int]]:
    socks = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        socks.append(sock)
    yield [s.getsockname()[1] for s in socks]
    for sock in socks:
        sock.close()


async def _registered(lab: Lab, number: str) -> Phone:
    phone = lab.phone(number)
    assert (await phone.register()).status == 200
    return phone


async def _until(phone: Phone, *methods: str, timeout: float = 15) -> dict[str, object]:
    """Wait until a request of every method given has arrived (in any order)."""
    seen: dict[str, object] = {}

    async def wait() -> None:
        while not set(methods) <= set(seen):
            request = await phone.in_dialog.get()
            seen.setdefault(request.method, request)  # type: ignore[attr-defined]

    await asyncio.wait_for(wait(), timeout)
    return seen


async def test_leave_and_listen_to_a_message(lab: Lab, rtp_ports: list[int]) -> None:
    data = lab.tmp_path / "data"
    prompts = PromptFolders(voice_dirs(data))
    apps = {
        "voicemail": VoicemailApplication(data, prompts),
        "voicemail-access": VoicemailAccess(data, prompts),
    }
    server = await lab.start_server(applications=apps)  # type: ignore[arg-type]
    alice = await _registered(lab, "200")
    bob = await _registered(lab, "201")
    bob.answer = 486
    await server.database.extensions.set("201", voicemail=True)
    assert server.directory is not None
    await server.directory.load()
    alice.sdp = _sdp_for(rtp_ports[0])
    response, dialog = await alice.call("201", body=alice.sdp)
    assert response.status == 200 and dialog is not None  # the mailbox answered
    await asyncio.sleep(4)  # the greeting and the beep, then recording
    info = await alice.send_in_dialog(
        dialog, "INFO", b"Signal=#\r\nDuration=160\r\n", content_type="application/dtmf-relay"
    )
    assert info.status == 200
    await _until(alice, "BYE")  # goodbye, then the mailbox hangs up
    messages = list((data / "voicemail" / "201").glob("msg-*.wav"))
    assert len(messages) == 1
    notify = (await _until(bob, "NOTIFY"))["NOTIFY"]
    assert b"Messages-Waiting: yes" in notify.body  # type: ignore[attr-defined]
    assert b"Voice-Message: 1/0" in notify.body  # type: ignore[attr-defined]

    bob.sdp = _sdp_for(rtp_ports[1])
    response, dialog = await bob.call("*97", body=bob.sdp)
    assert response.status == 200 and dialog is not None
    await asyncio.sleep(2)  # "one", then the message plays
    for digit in "7":
        await bob.send_in_dialog(
            dialog, "INFO", f"Signal={digit}\r\n".encode(), content_type="application/dtmf-relay"
        )
    notify = (await _until(bob, "BYE", "NOTIFY"))["NOTIFY"]
    assert list((data / "voicemail" / "201").glob("*.wav")) == []
    assert b"Messages-Waiting: no" in notify.body  # type: ignore[attr-defined]
