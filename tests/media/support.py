"""Shared pieces of the media tests: PCM helpers, noise, a pcap reader for SIPp's RTP captures."""

from __future__ import annotations

import math
import random
import struct
import sys
from array import array
from pathlib import Path

import pytest

SIPP_SHARE = Path("/usr/share/sip-tester")
WAIT = 5.0  # seconds: bound for anything a loopback test waits for


def samples_of(pcm: bytes) -> array[int]:
    samples = array("h")
    samples.frombytes(pcm[: len(pcm) & ~1])
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def pcm_of(samples: list[int] | array[int]) -> bytes:
    out = array("h", (max(-32768, min(32767, int(s))) for s in samples))
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


def rms(pcm: bytes) -> float:
    samples = samples_of(pcm)
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples))


def mix(*parts: bytes) -> bytes:
    """Sample-wise sum of PCM buffers (the longest sets the length), clipped to 16 bits."""
    arrays = [samples_of(p) for p in parts]
    length = max(len(a) for a in arrays)
    return pcm_of(
        [sum(a[i] for a in arrays if i < len(a)) for i in range(length)]
    )


def white_noise(samples: int, level: float, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    return pcm_of([rnd.gauss(0.0, level) for _ in range(samples)])


def silence(ms: int) -> bytes:
    return bytes(ms * 16)


def sine(frequency: float, ms: int, amplitude: float) -> bytes:
    w = 2 * math.pi * frequency / 8000
    return pcm_of([amplitude * math.sin(w * n) for n in range(ms * 8)])


def pcap_udp_payloads(path: Path) -> list[bytes]:
    """The UDP payloads of an Ethernet (or raw IPv4) pcap file, in order."""
    data = path.read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    offset = 24
    payloads = []
    while offset + 16 <= len(data):
        _, _, included, _ = struct.unpack(endian + "IIII", data[offset : offset + 16])
        offset += 16
        frame = data[offset : offset + included]
        offset += included
        ip = frame[14:] if linktype == 1 else frame
        if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        header = (ip[0] & 0x0F) * 4
        length = struct.unpack("!H", ip[header + 4 : header + 6])[0]
        payloads.append(ip[header + 8 : header + length])
    return payloads


def needs_sipp_captures() -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not (SIPP_SHARE / "dtmf_2833_0.pcap").exists(),
        reason="SIPp's RTP captures (Debian sip-tester) are not installed",
    )
