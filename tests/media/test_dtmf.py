"""DTMF: RFC 4733 payloads and de-duplication (on SIPp's captured key presses too), the sender's
packet train, SIP INFO bodies, and the in-band detector on generated tones with noise, through
G.711, and on speech and noise that hold no key."""

from __future__ import annotations

import pytest

from sipswitch.media.dtmf import (
    DIGITS,
    DtmfDetector,
    DtmfError,
    DtmfEvent,
    DtmfReceiver,
    build_info,
    digit_to_event,
    dtmf_tone,
    event_to_digit,
    event_train,
    parse_info,
)
from sipswitch.media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from sipswitch.media.prompts import SHIPPED_PROMPTS, voice_path
from sipswitch.media.rtp import RtpPacket
from sipswitch.media.wav import read_wav

from .support import (
    SIPP_SHARE,
    mix,
    needs_sipp_captures,
    pcap_udp_payloads,
    pcm_of,
    silence,
    sine,
    white_noise,
)

# --- RFC 4733 ---------------------------------------------------------------------------------


def test_event_payload_layout() -> None:
    assert DtmfEvent(5, False, 10, 160).build() == bytes.fromhex("050a00a0")
    assert DtmfEvent(11, True, 63, 800).build() == bytes.fromhex("0bbf0320")
    assert DtmfEvent.parse(bytes.fromhex("0bbf0320")) == DtmfEvent(11, True, 63, 800)
    assert DtmfEvent.parse(bytes.fromhex("0bbf0320 0a0a00a0")).event == 11  # redundant tail
    assert DtmfEvent(11).digit == "#"
    for bad in (b"", b"\x05\x0a\x00", b"\x05\x0a\x00\xa0\x00"):
        with pytest.raises(DtmfError):
            DtmfEvent.parse(bad)


def test_digit_codes() -> None:
    assert [digit_to_event(d) for d in "0123456789*#ABCD"] == list(range(16))
    assert digit_to_event("a") == 12
    assert event_to_digit(16) is None and event_to_digit(3) == "3"
    for bad in ("", "E", "12", " "):
        with pytest.raises(ValueError):
            digit_to_event(bad)


def test_receiver_reports_each_press_once() -> None:
    receiver = DtmfReceiver()
    train = event_train("7", 100)
    got = [receiver.feed(48000, e.build()) for e in train]
    assert got == ["7"] + [None] * (len(train) - 1)
    assert receiver.duplicates == len(train) - 1
    # A retransmitted end packet arriving late is still the same press.
    assert receiver.feed(48000, train[-1].build()) is None
    # The same key pressed again starts at a new timestamp.
    assert receiver.feed(48000 + 1600, DtmfEvent(7).build()) == "7"
    # A lost start: the first update or end packet counts.
    assert receiver.feed(60000, DtmfEvent(1, True, 10, 800).build()) == "1"
    # Events that are not keys (flash = 16) are not digits.
    assert receiver.feed(70000, DtmfEvent(16).build()) is None


def test_receiver_memory_is_bounded() -> None:
    receiver = DtmfReceiver(memory=4)
    for i in range(100):
        assert receiver.feed(i * 1000, DtmfEvent(1).build()) == "1"
    assert len(receiver._recent) == 4


def test_event_train_shape() -> None:
    train = event_train("5", duration_ms=100)
    assert [e.end for e in train] == [False] * 4 + [True] * 3
    assert [e.duration for e in train] == [160, 320, 480, 640, 800, 800, 800]
    assert {e.event for e in train} == {5}
    short = event_train("#", duration_ms=10)
    assert [(e.end, e.duration) for e in short] == [(False, 160)] + [(True, 160)] * 3


@needs_sipp_captures()
@pytest.mark.parametrize(
    "name, digit",
    [(str(d), str(d)) for d in range(10)] + [("pound", "#"), ("star", "*")],
)
def test_sipp_captures_give_one_digit_each(name: str, digit: str) -> None:
    receiver = DtmfReceiver()
    got = []
    for payload in pcap_udp_payloads(SIPP_SHARE / f"dtmf_2833_{name}.pcap"):
        packet = RtpPacket.parse(payload)
        key = receiver.feed(packet.timestamp, packet.payload)
        if key is not None:
            got.append(key)
    assert got == [digit]
    assert receiver.duplicates == 9


# --- SIP INFO ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type, body, digit",
    [
        ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n", "5"),
        ("Application/DTMF-Relay; charset=x", b"signal= #\nduration=250", "#"),
        ("application/dtmf-relay", b"Duration=160\r\nSignal=*\r\n", "*"),
        ("application/dtmf-relay", b"Signal=11\r\nDuration=160\r\n", "#"),
        ("application/dtmf-relay", b"Signal=10\r\n", "*"),
        ("application/dtmf-relay", b"Signal=a\r\n", "A"),
        ("application/dtmf", b"5", "5"),
        ("application/dtmf", b" 0\r\n", "0"),
        ("application/dtmf", b"#", "#"),
    ],
)
def test_info_bodies(content_type: str, body: bytes, digit: str) -> None:
    assert parse_info(content_type, body) == digit


@pytest.mark.parametrize(
    "content_type, body, status",
    [
        ("text/plain", b"Signal=5", 415),
        ("application/dtmf-relay", b"Duration=160\r\n", 400),
        ("application/dtmf-relay", b"Signal=55\r\n", 400),
        ("application/dtmf-relay", b"Signal=\r\n", 400),
        ("application/dtmf-relay", b"Signal=" + b"9" * 5000, 400),
        ("application/dtmf", b"", 400),
        ("application/dtmf", b"x", 400),
        ("application/dtmf", b"99999999999999999999999", 400),
    ],
)
def test_bad_info_bodies(content_type: str, body: bytes, status: int) -> None:
    with pytest.raises(DtmfError) as caught:
        parse_info(content_type, body)
    assert caught.value.status == status


def test_build_info() -> None:
    content_type, body = build_info("#", 250)
    assert content_type == "application/dtmf-relay"
    assert body == b"Signal=#\r\nDuration=250\r\n"
    assert parse_info(content_type, body) == "#"


# --- in-band ----------------------------------------------------------------------------------


def detect(pcm: bytes, chunk: int = 320) -> list[str]:
    detector = DtmfDetector()
    found: list[str] = []
    for i in range(0, len(pcm), chunk):
        found.extend(detector.feed(pcm[i : i + chunk]))
    return found


def keyed(keys: str, on_ms: int = 70, off_ms: int = 60, amplitude: int = 7000) -> bytes:
    return silence(40) + b"".join(
        dtmf_tone(k, on_ms, amplitude) + silence(off_ms) for k in keys
    )


def test_every_key_is_detected_once() -> None:
    assert detect(keyed(DIGITS)) == list(DIGITS)


@pytest.mark.parametrize("noise_level", [300.0, 1000.0, 2000.0])
@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_keys_with_noise_through_g711(noise_level: float, law: str) -> None:
    clean = keyed("0123456789*#")
    noisy = mix(clean, white_noise(len(clean) // 2, noise_level, seed=int(noise_level)))
    if law == "ulaw":
        coded = ulaw_decode(ulaw_encode(noisy))
    else:
        coded = alaw_decode(alaw_encode(noisy))
    assert "".join(detect(coded, chunk=160)) == "0123456789*#"


def test_quiet_keys_and_twist() -> None:
    # A quiet phone: about -30 dBFS per tone.
    assert detect(keyed("159", amplitude=1000)) == ["1", "5", "9"]
    # The column tone 4 dB louder than the row tone, then the row tone 6 dB louder.
    low, high = 852.0, 1477.0
    tw1 = mix(sine(low, 80, 3000), sine(high, 80, 4750))
    tw2 = mix(sine(low, 80, 6000), sine(high, 80, 3000))
    assert detect(silence(40) + tw1 + silence(60) + tw2 + silence(60)) == ["9", "9"]


def test_too_much_twist_is_not_a_key() -> None:
    # Row tone 12 dB above the column tone.
    pcm = mix(sine(852.0, 100, 8000), sine(1477.0, 100, 2000))
    assert detect(silence(40) + pcm + silence(60)) == []


def test_frequency_deviation_within_tolerance() -> None:
    # ITU-T Q.24: accept 1.5 % off the nominal frequencies, reject 3.5 %.
    for factor in (0.985, 1.015):
        pcm = mix(sine(770.0 * factor, 80, 6000), sine(1336.0 * factor, 80, 6000))
        assert detect(silence(40) + pcm + silence(60)) == ["5"]
    for factor in (0.965, 1.035):
        pcm = mix(sine(770.0 * factor, 80, 6000), sine(1336.0 * factor, 80, 6000))
        assert detect(silence(40) + pcm + silence(60)) == []


def test_minimum_duration() -> None:
    # 40 ms is caught at any alignment; 20 ms never.
    for offset in range(0, 160, 16):
        lead = bytes(offset * 2)
        assert detect(lead + dtmf_tone("3", 40) + silence(60)) == ["3"], offset
        assert detect(lead + dtmf_tone("3", 20) + silence(60)) == [], offset


def test_long_press_is_one_key_and_gaps_split_presses() -> None:
    assert detect(silence(20) + dtmf_tone("8", 2000) + silence(40)) == ["8"]
    assert detect(keyed("88", on_ms=60, off_ms=40)) == ["8", "8"]
    # Back-to-back different keys without a pause are two keys.
    assert detect(silence(20) + dtmf_tone("1", 80) + dtmf_tone("2", 80) + silence(40)) == [
        "1", "2"
    ]


def test_short_dropout_does_not_repeat_a_key() -> None:
    pcm = silence(20) + dtmf_tone("4", 80) + silence(5) + dtmf_tone("4", 80) + silence(40)
    assert detect(pcm) == ["4"]


def test_no_keys_in_silence_noise_and_single_tones() -> None:
    assert detect(silence(3000)) == []
    assert detect(white_noise(8000 * 5, 3000.0, seed=7)) == []
    assert detect(white_noise(8000 * 5, 200.0, seed=8)) == []
    assert detect(sine(1000.0, 2000, 10000)) == []
    assert detect(sine(697.0, 1000, 10000)) == []  # a row tone alone
    assert detect(sine(1336.0, 1000, 10000)) == []  # a column tone alone
    assert detect(mix(sine(697.0, 1000, 8000), sine(770.0, 1000, 8000))) == []  # two rows


def vowels(seed: int, formant_width: float) -> bytes:
    """Voiced speech, crudely: glottal pulse trains (harmonics of 90-220 Hz, falling 3 dB per
    octave) shaped by three formants, 80-300 ms per vowel, with breath noise. The harmonics
    land on the key frequencies all the time."""
    import math
    import random

    rnd = random.Random(seed)
    samples: list[float] = []
    for _ in range(25):
        f0 = rnd.uniform(90.0, 220.0)
        formants = (rnd.uniform(300, 900), rnd.uniform(900, 2500), rnd.uniform(2500, 3300))
        harmonics = []
        for k in range(1, int(3400 / f0)):
            f = k * f0
            gain = sum(1.0 / (1.0 + ((f - fm) / formant_width) ** 2) for fm in formants)
            harmonics.append((2 * math.pi * f / 8000, gain / math.sqrt(k)))
        start = len(samples)
        for n in range(start, start + int(8000 * rnd.uniform(0.08, 0.3))):
            value = sum(g * math.sin(w * n) for w, g in harmonics)
            samples.append(4000.0 * value + rnd.gauss(0, 300))
    return pcm_of(samples)


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("formant_width", [60.0, 100.0, 150.0])
def test_no_keys_in_speech_like_signals(seed: int, formant_width: float) -> None:
    assert detect(ulaw_decode(ulaw_encode(vowels(seed, formant_width)))) == []


def test_no_keys_in_the_shipped_prompts() -> None:
    speech = b"".join(read_wav(voice_path(name, None)) for name in SHIPPED_PROMPTS)
    assert len(speech) > 8000 * 2 * 10
    assert detect(ulaw_decode(ulaw_encode(speech))) == []
    assert detect(alaw_decode(alaw_encode(speech))) == []


def test_keys_over_speech_are_found() -> None:
    speech = read_wav(voice_path("welcome", None))
    keys = keyed("123", on_ms=100, off_ms=400, amplitude=9000)
    assert detect(mix(keys, speech[: len(keys)] if len(speech) >= len(keys) else speech)) == [
        "1", "2", "3"
    ]


@needs_sipp_captures()
def test_no_keys_in_sipps_recorded_audio() -> None:
    audio = [RtpPacket.parse(p) for p in pcap_udp_payloads(SIPP_SHARE / "g711a.pcap")]
    pcm = alaw_decode(b"".join(p.payload for p in audio))
    assert detect(pcm) == []


def test_detector_reset_and_odd_chunks() -> None:
    detector = DtmfDetector()
    pcm = keyed("5")
    found = []
    for i in range(0, len(pcm), 37):  # chunk edges inside samples
        found.extend(detector.feed(pcm[i : i + 37]))
    assert found == ["5"]
    detector.reset()
    assert detector.feed(keyed("6")) == ["6"]
