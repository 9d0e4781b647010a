"""G.711 tables: known codes, every 16-bit sample against the reference implementation the
standard library shipped (audioop, while it exists), round-trip error bounds."""

from __future__ import annotations

import struct
import warnings

import pytest

from sipswitch.media.g711 import (
    CODECS,
    PCMA,
    PCMU,
    alaw_decode,
    alaw_encode,
    alaw_to_linear,
    codec_named,
    ulaw_decode,
    ulaw_encode,
    ulaw_to_linear,
)

from .support import pcm_of, samples_of

EVERY_SAMPLE = struct.pack("<65536h", *range(-32768, 32768))
EVERY_CODE = bytes(range(256))


def test_known_codes() -> None:
    assert ulaw_encode(pcm_of([0, 32767, -32768, 1, -1])) == bytes([0xFF, 0x80, 0x00, 0xFF, 0x7E])
    assert alaw_encode(pcm_of([0, 32767, -32768])) == bytes([0xD5, 0xAA, 0x2A])
    assert ulaw_to_linear(0xFF) == 0 and ulaw_to_linear(0x7F) == 0
    assert ulaw_to_linear(0x80) == 32124 and ulaw_to_linear(0x00) == -32124
    assert alaw_to_linear(0xD5) == 8 and alaw_to_linear(0x55) == -8
    assert alaw_to_linear(0xAA) == 32256 and alaw_to_linear(0x2A) == -32256
    assert PCMU.silence == 0xFF and PCMA.silence == 0xD5


def test_against_audioop() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    assert ulaw_encode(EVERY_SAMPLE) == audioop.lin2ulaw(EVERY_SAMPLE, 2)
    assert alaw_encode(EVERY_SAMPLE) == audioop.lin2alaw(EVERY_SAMPLE, 2)
    assert ulaw_decode(EVERY_CODE) == audioop.ulaw2lin(EVERY_CODE, 2)
    assert alaw_decode(EVERY_CODE) == audioop.alaw2lin(EVERY_CODE, 2)


@pytest.mark.parametrize("encode, decode", [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)])
def test_round_trip_error_is_within_one_step(encode, decode) -> None:  # type: ignore[no-untyped-def]
    decoded = samples_of(decode(encode(EVERY_SAMPLE)))
    original = samples_of(EVERY_SAMPLE)
    assert len(decoded) == 65536
    for value, back in zip(original, decoded, strict=True):
        # Logarithmic steps: the error grows with the magnitude, about 1/16 of it at most.
        assert abs(value - back) <= max(16, abs(value) // 15), (value, back)
    # Decoding then encoding any code gives the code back (up to the two zeros of µ-law).
    assert encode(decode(EVERY_CODE)).replace(b"\x7f", b"\xff") == EVERY_CODE.replace(
        b"\x7f", b"\xff"
    )


def test_monotonic_encoding() -> None:
    ramp = struct.pack("<1024h", *range(-32768, 32768, 64))
    levels = [ulaw_to_linear(c) for c in ulaw_encode(ramp)]
    assert levels == sorted(levels)
    levels = [alaw_to_linear(c) for c in alaw_encode(ramp)]
    assert levels == sorted(levels)


def test_odd_byte_is_ignored_and_empty_is_empty() -> None:
    assert ulaw_encode(b"\x00\x00\x01") == b"\xff"
    assert alaw_encode(b"") == b"" and ulaw_decode(b"") == b""


def test_codec_table() -> None:
    assert set(CODECS) == {"PCMU", "PCMA"}
    assert codec_named("pcmu") is PCMU and codec_named("PCMA") is PCMA
    assert (PCMU.payload_type, PCMA.payload_type) == (0, 8)
    assert PCMU.clock_rate == PCMA.clock_rate == 8000
    assert PCMA.silence_frame(160) == b"\xd5" * 160
    with pytest.raises(KeyError, match="supported: PCMU, PCMA"):
        codec_named("G729")
