"""RTP packets (RFC 3550 §5) and RTCP sender/receiver reports, SDES and BYE (§6): pure parse and
build, no I/O. Every length read from the wire is checked against the datagram.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

RTP_VERSION = 2
RTP_HEADER_SIZE = 12
MAX_PACKET_SIZE = 1500  # larger datagrams are not RTP this server sends or accepts

_RTP_HEADER = struct.Struct("!BBHII")
_RTCP_HEADER = struct.Struct("!BBH")
_SR_INFO = struct.Struct("!IIIII")  # ssrc, ntp msw, ntp lsw, rtp timestamp, packets; + octets
_REPORT_BLOCK = struct.Struct("!IIIIII")

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_APP = 204

SDES_CNAME = 1

# Seconds between the NTP epoch (1900) and the Unix epoch (1970).
NTP_UNIX_OFFSET = 2_208_988_800


class RtpError(ValueError):
    """A datagram that is not a well-formed RTP or RTCP packet."""


class RtcpError(RtpError):
    """A datagram that is not a well-formed (compound) RTCP packet."""


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet. ``padding`` is the number of padding bytes (0: none); ``extension`` is
    the header extension as (profile id, data) with data a multiple of 4 bytes."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension: tuple[int, bytes] | None = None
    padding: int = 0

    def build(self) -> bytes:
        if not 0 <= self.payload_type <= 127:
            raise ValueError(f"payload type out of range: {self.payload_type}")
        if len(self.csrcs) > 15:
            raise ValueError("at most 15 CSRCs")
        first = RTP_VERSION << 6 | len(self.csrcs)
        if self.padding:
            if not 1 <= self.padding <= 255:
                raise ValueError("padding must be 1-255 bytes")
            first |= 0x20
        if self.extension is not None:
            first |= 0x10
        head = _RTP_HEADER.pack(
            first,
            (0x80 if self.marker else 0) | self.payload_type,
            self.sequence & 0xFFFF,
            self.timestamp & 0xFFFFFFFF,
            self.ssrc & 0xFFFFFFFF,
        )
        parts = [head]
        if self.csrcs:
            parts.append(struct.pack(f"!{len(self.csrcs)}I", *self.csrcs))
        if self.extension is not None:
            profile, data = self.extension
            if len(data) % 4:
                raise ValueError("header extension data must be a multiple of 4 bytes")
            parts.append(struct.pack("!HH", profile, len(data) // 4))
            parts.append(data)
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        return b"".join(parts)

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        size = len(data)
        if size < RTP_HEADER_SIZE:
            raise RtpError(f"RTP packet too short ({size} bytes)")
        if size > MAX_PACKET_SIZE:
            raise RtpError(f"RTP packet too long ({size} bytes)")
        first, second, sequence, timestamp, ssrc = _RTP_HEADER.unpack_from(data)
        if first >> 6 != RTP_VERSION:
            raise RtpError(f"RTP version {first >> 6}")
        offset = RTP_HEADER_SIZE
        csrc_count = first & 0x0F
        if offset + 4 * csrc_count > size:
            raise RtpError("RTP CSRC list runs past the packet")
        csrcs = struct.unpack_from(f"!{csrc_count}I", data, offset) if csrc_count else ()
        offset += 4 * csrc_count
        extension = None
        if first & 0x10:
            if offset + 4 > size:
                raise RtpError("RTP header extension runs past the packet")
            profile, words = struct.unpack_from("!HH", data, offset)
            offset += 4
            if offset + 4 * words > size:
                raise RtpError("RTP header extension runs past the packet")
            extension = (profile, bytes(data[offset : offset + 4 * words]))
            offset += 4 * words
        end = size
        padding = 0
        if first & 0x20:
            padding = data[-1]
            if padding == 0 or offset + padding > size:
                raise RtpError("RTP padding length invalid")
            end -= padding
        return cls(
            payload_type=second & 0x7F,
            sequence=sequence,
            timestamp=timestamp,
            ssrc=ssrc,
            payload=bytes(data[offset:end]),
            marker=bool(second & 0x80),
            csrcs=tuple(csrcs),
            extension=extension,
            padding=padding,
        )


def build_rtp(
    payload_type: int, sequence: int, timestamp: int, ssrc: int, payload: bytes,
    marker: bool = False,
) -> bytes:
    """The common case of ``RtpPacket(...).build()``: no CSRC, extension or padding."""
    return _RTP_HEADER.pack(
        0x80,
        (0x80 if marker else 0) | payload_type,
        sequence & 0xFFFF,
        timestamp & 0xFFFFFFFF,
        ssrc & 0xFFFFFFFF,
    ) + payload


def seq_distance(newer: int, older: int) -> int:
    """How far sequence number ``newer`` is ahead of ``older`` (negative when behind), modulo
    2**16."""
    diff = (newer - older) & 0xFFFF
    return diff - 0x10000 if diff >= 0x8000 else diff


def ts_distance(newer: int, older: int) -> int:
    """The same for 32-bit RTP timestamps."""
    diff = (newer - older) & 0xFFFFFFFF
    return diff - 0x1_0000_0000 if diff >= 0x8000_0000 else diff


# --- RTCP -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportBlock:
    ssrc: int
    fraction_lost: int = 0
    cumulative_lost: int = 0  # signed 24-bit
    highest_sequence: int = 0
    jitter: int = 0
    last_sr: int = 0
    delay_since_last_sr: int = 0

    def build(self) -> bytes:
        lost = self.cumulative_lost & 0xFFFFFF
        return _REPORT_BLOCK.pack(
            self.ssrc,
            (self.fraction_lost & 0xFF) << 24 | lost,
            self.highest_sequence,
            self.jitter,
            self.last_sr,
            self.delay_since_last_sr,
        )

    @classmethod
    def parse(cls, data: bytes, offset: int) -> ReportBlock:
        ssrc, lost_word, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, offset)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        return cls(ssrc, lost_word >> 24, lost, highest, jitter, lsr, dlsr)


@dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    ntp_timestamp: int  # 64-bit NTP time
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    ssrc: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class SourceDescription:
    """SDES: per source, a list of (item type, value) pairs (type 1 is CNAME)."""

    chunks: tuple[tuple[int, tuple[tuple[int, bytes], ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class Bye:
    ssrcs: tuple[int, ...] = ()
    reason: bytes = b""


@dataclass(frozen=True, slots=True)
class UnknownRtcp:
    """An RTCP packet of a type not interpreted here (APP, feedback, XR), kept as received."""

    packet_type: int
    count: int
    body: bytes = field(default=b"", repr=False)


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Bye | UnknownRtcp


def ntp_from_unix(seconds: float) -> int:
    """A Unix time as a 64-bit NTP timestamp."""
    value = int((seconds + NTP_UNIX_OFFSET) * (1 << 32))
    return value & 0xFFFF_FFFF_FFFF_FFFF


def _rtcp_header(packet_type: int, count: int, body: bytes) -> bytes:
    if len(body) % 4:
        raise ValueError("RTCP body must be a multiple of 4 bytes")
    if count > 31:
        raise ValueError("at most 31 items in one RTCP packet")
    return _RTCP_HEADER.pack(0x80 | count, packet_type, len(body) // 4) + body


def _build_one(packet: RtcpPacket) -> bytes:
    if isinstance(packet, SenderReport):
        body = struct.pack(
            "!IIIIII",
            packet.ssrc,
            packet.ntp_timestamp >> 32,
            packet.ntp_timestamp & 0xFFFFFFFF,
            packet.rtp_timestamp & 0xFFFFFFFF,
            packet.packet_count & 0xFFFFFFFF,
            packet.octet_count & 0xFFFFFFFF,
        ) + b"".join(r.build() for r in packet.reports)
        return _rtcp_header(RTCP_SR, len(packet.reports), body)
    if isinstance(packet, ReceiverReport):
        body = struct.pack("!I", packet.ssrc) + b"".join(r.build() for r in packet.reports)
        return _rtcp_header(RTCP_RR, len(packet.reports), body)
    if isinstance(packet, SourceDescription):
        parts = []
        for ssrc, items in packet.chunks:
            chunk = struct.pack("!I", ssrc)
            for item_type, value in items:
                if not 1 <= item_type <= 255 or len(value) > 255:
                    raise ValueError("SDES item type 1-255 and value up to 255 bytes")
                chunk += bytes((item_type, len(value))) + value
            chunk += b"\x00"  # end of the item list, then pad to 32 bits
            chunk += bytes(-len(chunk) % 4)
            parts.append(chunk)
        return _rtcp_header(RTCP_SDES, len(packet.chunks), b"".join(parts))
    if isinstance(packet, Bye):
        body = struct.pack(f"!{len(packet.ssrcs)}I", *packet.ssrcs)
        if packet.reason:
            if len(packet.reason) > 255:
                raise ValueError("BYE reason up to 255 bytes")
            reason = bytes((len(packet.reason),)) + packet.reason
            body += reason + bytes(-len(reason) % 4)
        return _rtcp_header(RTCP_BYE, len(packet.ssrcs), body)
    return _rtcp_header(packet.packet_type, packet.count, packet.body)


def build_rtcp(packets: list[RtcpPacket] | tuple[RtcpPacket, ...]) -> bytes:
    """A compound RTCP packet (RFC 3550 wants it to start with an SR or RR)."""
    return b"".join(_build_one(p) for p in packets)


def _parse_blocks(data: bytes, offset: int, count: int, end: int) -> tuple[ReportBlock, ...]:
    if offset + count * _REPORT_BLOCK.size > end:
        raise RtcpError("RTCP report blocks run past the packet")
    return tuple(ReportBlock.parse(data, offset + i * _REPORT_BLOCK.size) for i in range(count))


def _parse_sdes(data: bytes, offset: int, count: int, end: int) -> SourceDescription:
    chunks = []
    for _ in range(count):
        if offset + 4 > end:
            raise RtcpError("SDES chunk runs past the packet")
        (ssrc,) = struct.unpack_from("!I", data, offset)
        offset += 4
        items = []
        while True:
            if offset >= end:
                raise RtcpError("SDES item list not terminated")
            item_type = data[offset]
            if item_type == 0:
                offset += 1
                offset += -offset % 4
                break
            if offset + 2 > end or offset + 2 + data[offset + 1] > end:
                raise RtcpError("SDES item runs past the packet")
            length = data[offset + 1]
            items.append((item_type, bytes(data[offset + 2 : offset + 2 + length])))
            offset += 2 + length
        chunks.append((ssrc, tuple(items)))
    return SourceDescription(tuple(chunks))


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Every packet of a compound RTCP datagram."""
    size = len(data)
    if size < 4:
        raise RtcpError(f"RTCP packet too short ({size} bytes)")
    if size > MAX_PACKET_SIZE:
        raise RtcpError(f"RTCP packet too long ({size} bytes)")
    packets: list[RtcpPacket] = []
    offset = 0
    while offset < size:
        if offset + 4 > size:
            raise RtcpError("RTCP header runs past the datagram")
        first, packet_type, words = _RTCP_HEADER.unpack_from(data, offset)
        if first >> 6 != RTP_VERSION:
            raise RtcpError(f"RTCP version {first >> 6}")
        count = first & 0x1F
        end = offset + 4 + 4 * words
        if end > size:
            raise RtcpError("RTCP length runs past the datagram")
        if first & 0x20:
            pad = data[end - 1]
            if pad == 0 or end - pad < offset + 4:
                raise RtcpError("RTCP padding length invalid")
            body_end = end - pad
        else:
            body_end = end
        body = offset + 4
        if packet_type == RTCP_SR:
            if body + 24 > body_end:
                raise RtcpError("RTCP SR too short")
            ssrc, msw, lsw, rtp_ts, packet_count = _SR_INFO.unpack_from(data, body)
            (octets,) = struct.unpack_from("!I", data, body + 20)
            blocks = _parse_blocks(data, body + 24, count, body_end)
            packets.append(
                SenderReport(ssrc, msw << 32 | lsw, rtp_ts, packet_count, octets, blocks)
            )
        elif packet_type == RTCP_RR:
            if body + 4 > body_end:
                raise RtcpError("RTCP RR too short")
            (ssrc,) = struct.unpack_from("!I", data, body)
            packets.append(ReceiverReport(ssrc, _parse_blocks(data, body + 4, count, body_end)))
        elif packet_type == RTCP_SDES:
            packets.append(_parse_sdes(data, body, count, body_end))
        elif packet_type == RTCP_BYE:
            if body + 4 * count > body_end:
                raise RtcpError("RTCP BYE source list runs past the packet")
            ssrcs = struct.unpack_from(f"!{count}I", data, body)
            reason = b""
            at = body + 4 * count
            if at < body_end:
                length = data[at]
                if at + 1 + length > body_end:
                    raise RtcpError("RTCP BYE reason runs past the packet")
                reason = bytes(data[at + 1 : at + 1 + length])
            packets.append(Bye(tuple(ssrcs), reason))
        else:
            packets.append(UnknownRtcp(packet_type, count, bytes(data[body:body_end])))
        offset = end
    return packets


def looks_like_rtcp(data: bytes) -> bool:
    """RFC 5761 demultiplexing: RTCP packet types 192-223 sit where RTP has marker+PT 64-95."""
    return len(data) >= 2 and 192 <= data[1] <= 223
