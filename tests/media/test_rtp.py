"""RTP and RTCP packets against binary fixtures: field layout, every bound on lengths read from
the wire, compound RTCP, and SIPp's captured RTP."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipswitch.media.rtp import (
    MAX_PACKET_SIZE,
    Bye,
    ReceiverReport,
    ReportBlock,
    RtcpError,
    RtpError,
    RtpPacket,
    SenderReport,
    SourceDescription,
    UnknownRtcp,
    build_rtcp,
    build_rtp,
    looks_like_rtcp,
    ntp_from_unix,
    parse_rtcp,
    seq_distance,
    ts_distance,
)

from .support import SIPP_SHARE, needs_sipp_captures, pcap_udp_payloads

# V=2, no padding/extension/CSRC, M=1, PT=0, seq=0x1234, ts=0xDEADBEEF, SSRC=0x01020304, "abc".
SIMPLE = bytes.fromhex("8080 1234 deadbeef 01020304") + b"abc"


def test_parse_simple_packet() -> None:
    packet = RtpPacket.parse(SIMPLE)
    assert packet == RtpPacket(0, 0x1234, 0xDEADBEEF, 0x01020304, b"abc", marker=True)
    assert packet.build() == SIMPLE
    assert build_rtp(0, 0x1234, 0xDEADBEEF, 0x01020304, b"abc", marker=True) == SIMPLE


def test_build_wraps_sequence_and_timestamp() -> None:
    data = build_rtp(8, 0x10000 + 5, 0x1_0000_0000 + 7, 9, b"")
    assert data == bytes.fromhex("8008 0005 00000007 00000009")


def test_csrc_extension_and_padding() -> None:
    # V=2 P=1 X=1 CC=2, PT=96, seq 1, ts 2, ssrc 3, CSRCs 10 and 11,
    # extension profile 0xBEDE with one word, payload "hi", 3 bytes of padding.
    data = (
        bytes.fromhex("b260 0001 00000002 00000003")
        + bytes.fromhex("0000000a 0000000b")
        + bytes.fromhex("bede 0001 11223344")
        + b"hi"
        + bytes.fromhex("000003")
    )
    packet = RtpPacket.parse(data)
    assert packet.payload_type == 96 and not packet.marker
    assert packet.csrcs == (10, 11)
    assert packet.extension == (0xBEDE, bytes.fromhex("11223344"))
    assert packet.payload == b"hi"
    assert packet.padding == 3
    assert packet.build() == data


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "too short"),
        (SIMPLE[:11], "too short"),
        (b"\x40" + SIMPLE[1:], "version 1"),
        (b"\x00" + SIMPLE[1:], "version 0"),
        (b"\xc0" + SIMPLE[1:], "version 3"),
        (bytes.fromhex("8f00 0001 00000002 00000003") + bytes(56), "CSRC"),
        (bytes.fromhex("9000 0001 00000002 00000003") + b"\xbe", "extension"),
        (bytes.fromhex("9000 0001 00000002 00000003 bede 0009") + bytes(8), "extension"),
        (bytes.fromhex("a000 0001 00000002 00000003") + b"ab\x00", "padding"),
        (bytes.fromhex("a000 0001 00000002 00000003") + b"ab\x09", "padding"),
        (bytes.fromhex("8000 0001 00000002 00000003") + bytes(MAX_PACKET_SIZE), "too long"),
    ],
)
def test_malformed_rtp_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(RtpError) as caught:
        RtpPacket.parse(data)
    assert reason in str(caught.value)


def test_build_checks_its_fields() -> None:
    with pytest.raises(ValueError):
        RtpPacket(128, 0, 0, 0).build()
    with pytest.raises(ValueError):
        RtpPacket(0, 0, 0, 0, csrcs=tuple(range(16))).build()
    with pytest.raises(ValueError):
        RtpPacket(0, 0, 0, 0, extension=(1, b"abc")).build()
    with pytest.raises(ValueError):
        RtpPacket(0, 0, 0, 0, padding=256).build()


def test_sequence_and_timestamp_arithmetic() -> None:
    assert seq_distance(1, 0xFFFF) == 2
    assert seq_distance(0xFFFF, 1) == -2
    assert seq_distance(100, 100) == 0
    assert ts_distance(80, 0xFFFF_FFB0) == 160
    assert ts_distance(0xFFFF_FFB0, 80) == -160


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_rtp_error(data: bytes) -> None:
    for parser in (RtpPacket.parse, parse_rtcp):
        try:
            parser(data)
        except RtpError:
            pass


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 127), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF), st.binary(max_size=200), st.booleans(),
    st.lists(st.integers(0, 0xFFFFFFFF), max_size=15), st.integers(0, 20),
)
def test_build_parse_round_trip(
    pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool, csrcs: list[int],
    padding: int,
) -> None:
    packet = RtpPacket(pt, seq, ts, ssrc, payload, marker, tuple(csrcs), None, padding)
    assert RtpPacket.parse(packet.build()) == packet


# --- RTCP -------------------------------------------------------------------------------------

SR_WITH_BLOCK = bytes.fromhex(
    "81c8000c"  # V=2 RC=1 SR, length 12 words
    "11111111"  # sender SSRC
    "e1234567 89abcdef"  # NTP timestamp
    "00001000"  # RTP timestamp
    "00000064"  # packets
    "00003e80"  # octets
    "22222222"  # report block: SSRC
    "19fffffe"  # fraction lost 25, cumulative lost -2
    "00010005"  # highest sequence (1 cycle, seq 5)
    "00000020"  # jitter
    "4567 89ab"  # last SR
    "00008000"  # delay since last SR
)
SDES_CNAME = bytes.fromhex("81ca0003 11111111 0105616c69636500")  # CNAME "alice" + end
BYE_WITH_REASON = bytes.fromhex("81cb0003 11111111 04646f6e 65000000")  # reason "done"


def test_sender_report_fixture() -> None:
    (sr,) = parse_rtcp(SR_WITH_BLOCK)
    assert sr == SenderReport(
        0x11111111, 0xE123456789ABCDEF, 0x1000, 100, 16000,
        (ReportBlock(0x22222222, 25, -2, 0x10005, 0x20, 0x456789AB, 0x8000),),
    )
    assert build_rtcp([sr]) == SR_WITH_BLOCK


def test_compound_rtcp_fixture() -> None:
    rr = build_rtcp([ReceiverReport(0x11111111)])
    assert rr == bytes.fromhex("80c90001 11111111")
    compound = rr + SDES_CNAME + BYE_WITH_REASON
    packets = parse_rtcp(compound)
    assert packets == [
        ReceiverReport(0x11111111),
        SourceDescription(((0x11111111, ((1, b"alice"),)),)),
        Bye((0x11111111,), b"done"),
    ]
    assert build_rtcp(packets) == compound


def test_unknown_rtcp_is_kept() -> None:
    app = bytes.fromhex("80cc0002 11111111 6e616d65")  # APP "name"
    (packet,) = parse_rtcp(app)
    assert packet == UnknownRtcp(204, 0, bytes.fromhex("11111111 6e616d65"))
    assert build_rtcp([packet]) == app


def test_rtcp_with_padding() -> None:
    data = bytes.fromhex("a0c90002 11111111 00000004")
    assert parse_rtcp(data) == [ReceiverReport(0x11111111)]


@pytest.mark.parametrize(
    "data",
    [
        b"\x81\xc8",
        bytes.fromhex("41c80000"),  # version 1
        bytes.fromhex("81c8000c 11111111"),  # length past the datagram
        bytes.fromhex("80c80001 11111111"),  # SR without sender info
        bytes.fromhex("81c90001 11111111"),  # RR announcing a block it lacks
        bytes.fromhex("80c90000"),  # RR without SSRC
        bytes.fromhex("81ca0001 11111111"),  # SDES not terminated
        bytes.fromhex("81ca0002 11111111 01090000"),  # SDES item longer than the packet
        bytes.fromhex("82cb0001 11111111"),  # BYE with 2 sources, room for 1
        bytes.fromhex("81cb0002 11111111 09000000"),  # BYE reason too long
        bytes.fromhex("a0c90001 11111100"),  # padding count 0
        bytes.fromhex("a0c90001 111111ff"),  # padding past the header
        bytes.fromhex("80c90001 11111111") + bytes(MAX_PACKET_SIZE),
    ],
)
def test_malformed_rtcp_is_refused(data: bytes) -> None:
    with pytest.raises(RtcpError):
        parse_rtcp(data)


def test_rtcp_build_limits() -> None:
    with pytest.raises(ValueError):
        build_rtcp([ReceiverReport(1, tuple(ReportBlock(i) for i in range(32)))])
    with pytest.raises(ValueError):
        build_rtcp([Bye((1,), b"x" * 256)])
    with pytest.raises(ValueError):
        build_rtcp([SourceDescription(((1, ((1, b"x" * 256),)),))])


def test_ntp_time_and_demultiplexing() -> None:
    assert ntp_from_unix(0.0) == 2_208_988_800 << 32
    assert ntp_from_unix(0.5) & 0xFFFFFFFF == 1 << 31
    assert looks_like_rtcp(SR_WITH_BLOCK)
    assert not looks_like_rtcp(SIMPLE)


@needs_sipp_captures()
def test_sipp_captures_parse_as_rtp() -> None:
    payloads = pcap_udp_payloads(SIPP_SHARE / "dtmf_2833_5.pcap")
    packets = [RtpPacket.parse(p) for p in payloads]
    assert len(packets) == 10
    assert {p.payload_type for p in packets} == {101}
    assert packets[0].marker and not any(p.marker for p in packets[1:])
    assert len({p.timestamp for p in packets}) == 1  # one event: one timestamp
    audio = [RtpPacket.parse(p) for p in pcap_udp_payloads(SIPP_SHARE / "g711a.pcap")]
    assert len(audio) > 200
    assert {p.payload_type for p in audio} == {8}
    assert {len(p.payload) for p in audio} == {240}  # 30 ms packets
    steps = {(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in zip(audio[:-1], audio[1:],
                                                                       strict=True)}
    assert steps == {240}
    for packet in audio[:50]:
        assert RtpPacket.parse(packet.build()) == packet
