"""Two real softphones (baresip) register with sipswitch and call each other through it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .baresip import Baresip, baresip_available, write_tone_wav
from .conftest import ServerFactory
from .harness import server_missing

pytestmark = [
    pytest.mark.blackbox,
    pytest.mark.skipif(server_missing(), reason="sipswitch.pbx.server does not exist yet"),
]


@pytest.fixture
def phones() -> Iterator[list[Baresip]]:
    if not baresip_available():
        pytest.fail("baresip (baresip-core) is not installed: run `make test-deps`")
    started: list[Baresip] = []
    yield started
    for phone in started:
        phone.stop()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_two_baresip_phones_call_each_other(
    sipswitch_server: ServerFactory, phones: list[Baresip], tmp_path: Path, transport: str
) -> None:
    # baresip 1.0 (libre) gives up on REGISTER when any challenge offers SHA-256, so this
    # server is set up as a site with such phones would be: MD5 challenges only.
    server = sipswitch_server(auth_algorithms=["MD5"])
    tone = write_tone_wav(tmp_path / "tone.wav", seconds=60)
    caller = Baresip(
        tmp_path,
        "200",
        server.users["200"],
        server.host,
        server.port,
        transport=transport,
        audio_file=tone,
    )
    callee = Baresip(
        tmp_path,
        "201",
        server.users["201"],
        server.host,
        server.port,
        transport=transport,
        audio_file=tone,
    )
    for phone in (caller, callee):
        phones.append(phone.start())
    for phone in (caller, callee):
        phone.wait_registered()

    reply = caller.command("dial", f"sip:201@{server.host}")
    assert reply.get("ok"), reply
    caller.wait_event("CALL_ESTABLISHED", timeout_s=20)
    established = callee.wait_event("CALL_ESTABLISHED", timeout_s=20)
    assert established.get("direction") == "incoming", established

    reply = caller.command("hangup")
    assert reply.get("ok"), reply
    caller.wait_event("CALL_CLOSED", timeout_s=10)
    callee.wait_event("CALL_CLOSED", timeout_s=10)
