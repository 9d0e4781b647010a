"""A real softphone at the auto attendant: baresip calls 800, types the extension as RFC 4733
events (``sndcode``) and is joined to a second baresip that answers by itself; both record
what they hear, which proves the audio flows between the two phones after the join."""

from __future__ import annotations

import time
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from .baresip import Baresip, baresip_available, write_tone_wav
from .conftest import ServerFactory
from .harness import server_missing
from .rtp_probe import tone_level

pytestmark = [
    pytest.mark.blackbox,
    pytest.mark.skipif(server_missing(), reason="sipswitch.pbx.server does not exist yet"),
]

CALLER_TONE = 440.0
CALLEE_TONE = 1000.0
WELCOME_S = 4.0  # the welcome prompt is not interruptible: type after it


@pytest.fixture
def phones() -> Iterator[list[Baresip]]:
    if not baresip_available():
        pytest.fail("baresip (baresip-core) is not installed: run `make test-deps`")
    started: list[Baresip] = []
    yield started
    for phone in started:
        phone.stop()


def _heard(folder: Path, seconds: float = 0.5) -> list[int]:
    """The last ``seconds`` of what a phone heard in its last call (sndfile's ``*-dec.wav``)."""
    files = sorted(folder.glob("*-dec.wav"))
    assert files, f"no recording in {folder}"
    with wave.open(str(files[-1])) as recording:
        assert recording.getsampwidth() == 2 and recording.getnchannels() == 1
        rate = recording.getframerate()
        total = recording.getnframes()
        keep = min(total, int(rate * seconds))
        recording.setpos(total - keep)
        data = recording.readframes(keep)
    return [int.from_bytes(data[i : i + 2], "little", signed=True) for i in range(0, len(data), 2)]


def test_baresip_dials_an_extension_at_the_attendant(
    sipswitch_server: ServerFactory, phones: list[Baresip], tmp_path: Path
) -> None:
    # baresip 1.0 gives up on REGISTER when a challenge offers SHA-256: MD5 only here.
    server = sipswitch_server(auth_algorithms=["MD5"])

    def phone(user: str, frequency: float) -> Baresip:
        tone = write_tone_wav(tmp_path / f"tone-{user}.wav", seconds=60, freq=frequency)
        heard = tmp_path / f"heard-{user}"
        heard.mkdir()
        started = Baresip(
            tmp_path,
            user,
            server.users[user],
            server.host,
            server.port,
            audio_file=tone,
            extra_config=["module sndfile.so", f"snd_path {heard}"],
        ).start()
        phones.append(started)
        return started

    caller = phone("200", CALLER_TONE)
    callee = phone("201", CALLEE_TONE)
    for each in (caller, callee):
        each.wait_registered()

    reply = caller.command("dial", f"sip:800@{server.host}")
    assert reply.get("ok"), reply
    caller.wait_event("CALL_ESTABLISHED", timeout_s=15)  # the attendant answered
    time.sleep(WELCOME_S)
    for key in "201#":
        reply = caller.command("sndcode", key)
        assert reply.get("ok"), reply
        time.sleep(0.3)
    established = callee.wait_event("CALL_ESTABLISHED", timeout_s=20)
    assert established.get("direction") == "incoming", established
    assert established.get("peeruri", "").startswith("sip:200@"), established
    callee.wait_event("CALL_RTPESTAB", timeout_s=10)  # the caller's audio reached the callee
    time.sleep(2.0)  # let each phone hear the other for a while

    # After the join, the caller's session describes the callee's media, not the server's.
    status = str(caller.command("callstat").get("data", ""))
    assert "cname:sip:201@" in status, status

    reply = caller.command("hangup")
    assert reply.get("ok"), reply
    caller.wait_event("CALL_CLOSED", timeout_s=10)
    callee.wait_event("CALL_CLOSED", timeout_s=10)

    # Two-way audio between the phones: each heard the other's tone at the end of the call.
    by_caller = _heard(tmp_path / "heard-200")
    by_callee = _heard(tmp_path / "heard-201")
    assert tone_level(by_caller, CALLEE_TONE) > 4 * tone_level(by_caller, CALLER_TONE) + 100
    assert tone_level(by_callee, CALLER_TONE) > 4 * tone_level(by_callee, CALLEE_TONE) + 100
