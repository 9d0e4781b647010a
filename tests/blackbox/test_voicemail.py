"""Voicemail on the running server with SIPp as the phones: a caller to a busy extension with
a mailbox leaves a message (SIPp streams a tone; a WAV file with that tone appears in the data
folder) and the extension's phone is told by a message-summary NOTIFY (RFC 3842); the owner
dials *97 and hears the message, which is then kept as listened to."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from . import sip_trace
from .baresip import write_tone_wav
from .conftest import ServerFactory, UasFactory
from .harness import SipswitchServer, server_missing
from .rtp_probe import RtpProbe, decode_pcmu, tone_level
from .sipp import Sipp, SippResult

pytestmark = [
    pytest.mark.blackbox,
    pytest.mark.skipif(server_missing(), reason="sipswitch.pbx.server does not exist yet"),
]

CALLER, OWNER = "200", "201"
MESSAGE_TONE = 440.0  # what the caller says
STORED_TONE = 600.0  # a message already in the mailbox
STREAM_S = 6  # the caller's audio; the greeting and the beep take the first 2.7 s of it


def _mailbox_server(factory: ServerFactory) -> SipswitchServer:
    server = factory(start=False)
    done = server.cli("ext", "set", OWNER, "--voicemail")
    assert done.returncode == 0, done.stdout + done.stderr
    return server


def _sox_stat(path: Path) -> dict[str, float]:
    """``sox FILE -n stat`` as numbers ("Length (seconds)", "RMS amplitude", ...)."""
    done = subprocess.run(
        ["sox", str(path), "-n", "stat"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    values = {}
    for line in done.stderr.splitlines():
        name, colon, value = line.partition(":")
        if colon:
            try:
                values[re.sub(r"\s+", " ", name.strip())] = float(value)
            except ValueError:
                continue
    return values


def _notifications(phone: SippResult) -> list[sip_trace.TracedMessage]:
    return sip_trace.find(phone, "received", method="NOTIFY")


def test_busy_extension_takes_a_message_and_lights_the_lamp(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    server = _mailbox_server(sipswitch_server).start()
    phone = sipp_uas(server, OWNER, "vm_uas_busy_mwi", calls=2, timeout_s=60)
    caller = Sipp(
        "vm_uac_deposit",
        server.remote,
        tmp_path,
        service=OWNER,
        users=[(CALLER, server.users[CALLER])],
        timeout_s=60,
    )
    # SIPp sends the file's bytes as they are: raw mu-law, no WAV header.
    subprocess.run(
        ["sox", "-n", "-r", "8000", "-c", "1", "-e", "u-law", "-t", "ul",
         str(caller.workdir / "message.ul"), "synth", str(STREAM_S), "sine",
         str(MESSAGE_TONE), "vol", "0.5"],
        check=True, timeout=30,
    )  # fmt: skip
    left = caller.start().wait()
    assert left.ok, left.describe()
    told = phone.wait(timeout_s=30)
    assert told.ok and told.successful == 2, told.describe()  # the 486, then the NOTIFY

    messages = sorted((server.data_dir / "voicemail" / OWNER).glob("msg-*.wav"))
    assert len(messages) == 1, messages
    stat = _sox_stat(messages[0])
    assert 2.0 <= stat["Length (seconds)"] <= STREAM_S, stat
    assert stat["RMS amplitude"] > 0.2, stat  # the tone, not silence (vol 0.5: RMS 0.35)
    assert abs(stat["Rough frequency"] - MESSAGE_TONE) < 0.1 * MESSAGE_TONE, stat

    (notify,) = _notifications(told)
    assert notify.header("Event") == "message-summary", notify
    assert notify.start_line.startswith(f"NOTIFY sip:{OWNER}@"), notify.start_line
    assert re.search(r"^Messages-Waiting: yes$", notify.body, re.M), notify.body
    assert re.search(r"^Voice-Message: 1/0\b", notify.body, re.M), notify.body


def test_owner_listens_with_star_97(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    """A message waits; the owner dials *97 (no PIN), hears the count and the message, presses
    nothing; the message is kept as listened to and the lamp goes out."""
    server = _mailbox_server(sipswitch_server)
    box = server.data_dir / "voicemail" / OWNER
    box.mkdir(parents=True)
    write_tone_wav(box / "msg-20260105-100000-000001.wav", seconds=3, freq=STORED_TONE)
    server.start()
    phone = sipp_uas(server, OWNER, "vm_uas_busy_mwi", calls=1, timeout_s=60)
    with RtpProbe() as probe:
        listener = Sipp(
            "vm_uac_listen",
            server.remote,
            tmp_path,
            service="*97",
            users=[(OWNER, server.users[OWNER])],
            timeout_s=60,
            extra=["-key", "rtpport", str(probe.port)],
        ).start()
        listened = listener.wait()
    assert listened.ok, listened.describe()

    # A second or more of the stored message's tone came down the line.
    audio = [s for p in probe.packets if p.payload_type == 0 for s in decode_pcmu(p.payload)]
    seconds = [audio[i : i + 8000] for i in range(0, len(audio) - 7999, 8000)]
    loud = [chunk for chunk in seconds if tone_level(chunk, STORED_TONE) > 2000]
    assert loud, [round(tone_level(chunk, STORED_TONE)) for chunk in seconds]

    assert not list(box.glob("msg-*.wav"))
    assert [p.name for p in box.glob("old-*.wav")] == ["old-20260105-100000-000001.wav"]
    told = phone.wait(timeout_s=30)
    assert told.ok, told.describe()
    (notify,) = _notifications(told)
    assert re.search(r"^Messages-Waiting: no$", notify.body, re.M), notify.body
    assert re.search(r"^Voice-Message: 0/1\b", notify.body, re.M), notify.body
