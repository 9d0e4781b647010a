"""A pcap file of one G.711 µ-law RTP stream (a tone, 20 ms packets, a chosen SSRC) for SIPp's
``play_pcap_audio``, which sends each packet's UDP payload from the call's media port to the
media address the other side's SDP gave, at the pace of the capture's timestamps."""

from __future__ import annotations

import math
import struct
from pathlib import Path

from sipswitch.media.g711 import ulaw_encode

SAMPLES = 160  # 20 ms at 8 kHz
PTIME_US = 20_000
_ETHERNET = bytes(6) + bytes.fromhex("020000000001") + b"\x08\x00"


def tone(index: int, hz: float = 440.0, level: int = 8000) -> bytes:
    """The µ-law payload of packet ``index`` of a continuous sine tone."""
    start = index * SAMPLES
    pcm = b"".join(
        struct.pack("<h", int(level * math.sin(2 * math.pi * hz * (start + n) / 8000)))
        for n in range(SAMPLES)
    )
    return ulaw_encode(pcm)


def write_rtp_pcap(path: Path, packets: int, ssrc: int, payload_type: int = 0) -> Path:
    """Writes ``packets`` RTP packets (UDP 10.0.0.1:6000 -> 10.0.0.2:6000 in an Ethernet
    capture; SIPp replaces addresses and ports) to ``path``."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    # 440 Hz repeats itself after a second (50 packets): the payloads are made once.
    payloads = [tone(index) for index in range(min(packets, 50))]
    for index in range(packets):
        marker = 0x80 if index == 0 else 0
        rtp = (
            struct.pack(
                "!BBHII", 0x80, payload_type | marker, index & 0xFFFF, index * SAMPLES, ssrc
            )
            + payloads[index % 50]
        )
        udp = struct.pack("!HHHH", 6000, 6000, 8 + len(rtp), 0) + rtp
        ip = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(udp),
            index & 0xFFFF,
            0,
            64,
            17,
            0,
            bytes([10, 0, 0, 1]),
            bytes([10, 0, 0, 2]),
        )
        checksum = _ip_checksum(ip)
        ip = ip[:10] + struct.pack("!H", checksum) + ip[12:]
        frame = _ETHERNET + ip + udp
        when = index * PTIME_US
        out.append(
            struct.pack("<IIII", when // 1_000_000, when % 1_000_000, len(frame), len(frame))
        )
        out.append(frame)
    path.write_bytes(b"".join(out))
    return path


def _ip_checksum(header: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
