"""G.711 µ-law and A-law (ITU-T G.711) between 16-bit linear PCM and 8-bit codes, by lookup
tables built once at import, and the table of codecs the media layer can send and receive.

PCM is always signed 16-bit little-endian mono at 8 kHz (the WAV layout), as ``bytes``.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable
from dataclasses import dataclass

_ULAW_BIAS = 0x84 >> 2  # µ-law works on 14-bit samples
_ULAW_CLIP = 8159
_ULAW_SEG_END = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
_ALAW_SEG_END = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)
_BIG_ENDIAN = sys.byteorder == "big"


def _segment(value: int, ends: tuple[int, ...]) -> int:
    for seg, end in enumerate(ends):
        if value <= end:
            return seg
    return len(ends)


def _ulaw_from_14bit(sample: int) -> int:
    if sample < 0:
        sample = -sample
        mask = 0x7F
    else:
        mask = 0xFF
    sample = min(sample, _ULAW_CLIP) + _ULAW_BIAS
    seg = _segment(sample, _ULAW_SEG_END)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((sample >> (seg + 1)) & 0x0F)) ^ mask


def _alaw_from_13bit(sample: int) -> int:
    if sample >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        sample = -sample - 1
    seg = _segment(sample, _ALAW_SEG_END)
    if seg >= 8:
        return 0x7F ^ mask
    code = seg << 4
    code |= (sample >> 1) & 0x0F if seg < 2 else (sample >> seg) & 0x0F
    return code ^ mask


def ulaw_to_linear(code: int) -> int:
    code = ~code & 0xFF
    t = ((code & 0x0F) << 3) + 0x84
    t <<= (code & 0x70) >> 4
    return 0x84 - t if code & 0x80 else t - 0x84


def alaw_to_linear(code: int) -> int:
    code ^= 0x55
    t = (code & 0x0F) << 4
    seg = (code & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if code & 0x80 else -t


def _encode_table(encode_one: Callable[[int], int], shift: int) -> bytes:
    """A 65,536-entry table indexed by the unsigned view of a 16-bit sample."""
    step = 1 << shift
    top = 1 << (15 - shift)
    reduced = [encode_one(v) for v in range(top)] + [encode_one(v) for v in range(-top, 0)]
    return bytes(code for code in reduced for _ in range(step))


def _decode_table(decode_one: Callable[[int], int]) -> tuple[bytes, ...]:
    return tuple(decode_one(code).to_bytes(2, "little", signed=True) for code in range(256))


_ULAW_ENCODE = _encode_table(_ulaw_from_14bit, 2)
_ALAW_ENCODE = _encode_table(_alaw_from_13bit, 3)
_ULAW_DECODE = _decode_table(ulaw_to_linear)
_ALAW_DECODE = _decode_table(alaw_to_linear)


def _unsigned_samples(pcm: bytes) -> array[int]:
    samples = array("H")
    samples.frombytes(pcm[: len(pcm) & ~1])
    if _BIG_ENDIAN:
        samples.byteswap()
    return samples


def ulaw_encode(pcm: bytes) -> bytes:
    """16-bit little-endian PCM to µ-law, one byte per sample."""
    return bytes(map(_ULAW_ENCODE.__getitem__, _unsigned_samples(pcm)))


def alaw_encode(pcm: bytes) -> bytes:
    return bytes(map(_ALAW_ENCODE.__getitem__, _unsigned_samples(pcm)))


def ulaw_decode(data: bytes) -> bytes:
    """µ-law to 16-bit little-endian PCM."""
    return b"".join(map(_ULAW_DECODE.__getitem__, data))


def alaw_decode(data: bytes) -> bytes:
    return b"".join(map(_ALAW_DECODE.__getitem__, data))


@dataclass(frozen=True, slots=True)
class Codec:
    """An audio codec: SDP name, static RTP payload type, clock rate, the code of silence and
    the PCM <-> payload functions."""

    name: str
    payload_type: int
    clock_rate: int
    silence: int
    encode: Callable[[bytes], bytes]
    decode: Callable[[bytes], bytes]

    def silence_frame(self, samples: int) -> bytes:
        return bytes((self.silence,)) * samples


PCMU = Codec("PCMU", 0, 8000, _ULAW_ENCODE[0], ulaw_encode, ulaw_decode)
PCMA = Codec("PCMA", 8, 8000, _ALAW_ENCODE[0], alaw_encode, alaw_decode)

CODECS: dict[str, Codec] = {codec.name: codec for codec in (PCMU, PCMA)}


def codec_named(name: str) -> Codec:
    """The codec with this SDP encoding name (any case). Raises ``KeyError`` with the choices."""
    codec = CODECS.get(name.upper())
    if codec is None:
        raise KeyError(f"unsupported codec {name!r}; supported: {', '.join(CODECS)}")
    return codec
