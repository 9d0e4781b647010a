"""SDP parsing and serialisation: the conformance corpus, verbatim pass-through, IPv6, bounds."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipswitch.sdp import (
    MAX_LINES,
    MAX_MEDIA,
    MAX_SDP_SIZE,
    RtpMap,
    SdpError,
    SessionDescription,
    parse,
)
from sipswitch.sip.errors import SipError

CONFORMANCE = Path(__file__).parent.parent / "fixtures" / "conformance"


def body_of(path: Path) -> bytes:
    data = path.read_bytes()
    end = data.find(b"\r\n\r\n")
    return data[end + 4 :] if end >= 0 else b""


def sdp_corpus() -> list[Path]:
    return sorted(
        p for p in CONFORMANCE.rglob("*.dat") if body_of(p).startswith(b"v=0\r\no=")
    )


BASIC = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 198.51.100.7\r\n"
    b"s=call\r\n"
    b"c=IN IP4 198.51.100.7\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 8 0 96\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:96 telephone-event/8000\r\n"
    b"a=fmtp:96 0-15\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)


def test_corpus_is_not_empty() -> None:
    assert len(sdp_corpus()) >= 20


@pytest.mark.parametrize("path", sdp_corpus(), ids=lambda p: p.name)
def test_corpus_bodies_parse_and_round_trip(path: Path) -> None:
    body = body_of(path)
    sdp = parse(body)
    assert sdp.media
    again = parse(sdp.serialize())
    assert again == sdp
    # Bodies that are complete (s= and t= present, CRLF ends) come back byte for byte.
    if b"\r\ns=" in body and b"\r\nt=" in body and body.endswith(b"\r\n") and not body.endswith(
        b"\r\n\r\n"
    ):
        assert sdp.serialize() == body


def test_rfc4475_bad_rtpmap_is_kept_but_unknown() -> None:
    sdp = parse(body_of(CONFORMANCE / "sdp01.dat"))
    video = sdp.media[-1]
    assert video.attribute("rtpmap") == "31 LPC"
    assert video.rtpmap(31) is None
    assert sdp.media[0].rtpmap(0) == RtpMap(0, "PCMU", 8000, 1)


def test_test_dat_body_is_rejected_with_400() -> None:
    with pytest.raises(SdpError) as caught:
        parse(body_of(CONFORMANCE / "test.dat"))
    assert caught.value.status == 400
    assert isinstance(caught.value, SipError)


def test_ipv6_in_sdp() -> None:
    sdp = parse(body_of(CONFORMANCE / "rfc5118" / "wire" / "ipv6-in-sdp.dat"))
    assert sdp.origin.addr_type == "IP6"
    assert sdp.origin.address == "2001:db8::20"
    assert sdp.connection is not None
    assert (sdp.connection.addr_type, sdp.connection.address) == ("IP6", "2001:db8::20")
    audio, video = sdp.media
    assert (audio.media, audio.port, audio.formats) == ("audio", 6000, ["2"])
    assert audio.rtpmap(2) == RtpMap(2, "G726-32", 8000, None)
    assert video.rtpmap(107) == RtpMap(107, "H263-1998", 90000, None)
    assert sdp.connection_of(video) is sdp.connection


def test_mult_ip_in_sdp() -> None:
    sdp = parse(body_of(CONFORMANCE / "rfc5118" / "wire" / "mult-ip-in-sdp.dat"))
    assert sdp.origin.address == "host.example.com"
    assert sdp.connection is None
    audio, video = sdp.media
    assert audio.connection is not None and audio.connection.address == "192.0.2.1"
    assert video.connection is not None and video.connection.addr_type == "IP6"
    assert video.connection.address == "2001:db8::1"


def test_basic_model_views() -> None:
    sdp = parse(BASIC)
    audio = sdp.media[0]
    assert audio.payload_types() == [8, 0, 96]
    assert [c.encoding for c in audio.codecs()] == ["PCMA", "PCMU", "telephone-event"]
    assert audio.fmtp(96) == "0-15"
    assert audio.ptime == 20
    assert audio.direction == "sendrecv"
    assert sdp.direction_of(audio) == "sendrecv"
    assert sdp.serialize() == BASIC
    audio.set_direction("sendonly")
    assert parse(sdp.serialize()).media[0].direction == "sendonly"


def test_session_level_direction_applies_to_media() -> None:
    body = BASIC.replace(b"a=sendrecv\r\n", b"")
    sdp = parse(body.replace(b"t=0 0\r\n", b"t=0 0\r\na=recvonly\r\n"))
    assert sdp.media[0].direction is None
    assert sdp.direction_of(sdp.media[0]) == "recvonly"


def test_unknown_lines_pass_through_verbatim() -> None:
    body = (
        b"v=0\r\n"
        b"o=- 1 2 IN IP4 192.0.2.10\r\n"
        b"s=-\r\n"
        b"i=a session\r\n"
        b"u=http://example.com/x\r\n"
        b"e=ops@example.com\r\n"
        b"c=IN IP4 224.2.17.12/127\r\n"
        b"b=AS:64\r\n"
        b"t=2873397496 2873404696\r\n"
        b"r=7d 1h 0 25h\r\n"
        b"a=group:BUNDLE audio\r\n"
        b"a=x-custom:weird : value\r\n"
        b"m=audio 49170 RTP/SAVP 0\r\n"
        b"i=voice\r\n"
        b"b=TIAS:64000\r\n"
        b"a=crypto:1 AES_CM_128_HMAC_SHA1_80"
        b" inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32\r\n"
        b"a=rtcp:49171 IN IP4 192.0.2.10\r\n"
        b"a=ice-ufrag:8hhY\r\n"
        b"a=rtcp-mux\r\n"
    )
    sdp = parse(body)
    assert sdp.serialize() == body
    assert sdp.connection is not None and sdp.connection.suffix == "/127"
    crypto = sdp.media[0].attribute("crypto")
    assert crypto is not None and crypto.startswith("1 AES_CM_128_HMAC_SHA1_80 inline:PS1u")
    assert sdp.media[0].attribute("rtcp-mux") == ""


def test_lf_only_and_missing_optional_lines_are_accepted() -> None:
    sdp = parse(b"v=0\no=- 1 1 IN IP4 192.0.2.1\nc=IN IP4 192.0.2.1\nm=audio 4000 RTP/AVP 0\n")
    assert sdp.name == "-"
    text = sdp.serialize()
    assert b"\r\ns=-\r\n" in text and b"\r\nt=0 0\r\n" in text
    assert parse(text) == sdp


def test_non_utf8_bytes_survive_a_round_trip() -> None:
    body = BASIC.replace(b"s=call", b"s=caf\xe9")
    assert parse(body).serialize() == body


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"", "empty"),
        (b"o=- 1 1 IN IP4 192.0.2.1\r\n", "v="),
        (b"v=1\r\no=- 1 1 IN IP4 192.0.2.1\r\n", "version"),
        (b"v=0\r\n", "o= line"),
        (b"v=0\r\no=- 1 IN IP4 192.0.2.1\r\n", "o= line"),
        (b"v=0\r\no=- x 1 IN IP4 192.0.2.1\r\n", "numbers"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nv=0\r\n", "second v="),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\no=- 1 1 IN IP4 192.0.2.1\r\n", "second o="),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nhello\r\n", "type=value"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nQ=1\r\n", "type=value"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nx=1\r\n", "unknown SDP line"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4\r\n", "c= line"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP5 1.2.3.4\r\n", "address type"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4 300.1.1.1\r\n", "IPv4"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP6 2001:db8:::1\r\n", "IPv6"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4 2001:db8::1\r\n", "IPv6 address"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4 a b\r\n", "c= line"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4 x<y\r\n", "malformed address"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP\r\n", "m= line"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nm=audio 70000 RTP/AVP 0\r\n", "port"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nm=audio " + b"9" * 5000 + b" RTP/AVP 0\r\n",
         "too long"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nm=audio " + b"9" * 400 + b" RTP/AVP 0\r\n",
         "port"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nm=audio 4000/0 RTP/AVP 0\r\n", "port count"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 128\r\n", "payload type"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP abc\r\n", "payload type"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\n", "no c= line"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 192.0.2.1\r\n"
         b"c=IN IP4 192.0.2.2\r\n", "two c="),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\nt=0 0\r\n",
         "not allowed in a media section"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\na=b@d\r\n", "attribute name"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=\x00\r\n", "NUL"),
        (b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP " + b"0 " * 65 + b"\r\n",
         "formats"),
    ],
)
def test_malformed_bodies_get_400(body: bytes, reason: str) -> None:
    with pytest.raises(SdpError) as caught:
        parse(body)
    assert caught.value.status == 400
    assert reason in str(caught.value)


def media_lines(count: int) -> bytes:
    head = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    return head + b"".join(b"m=audio %d RTP/AVP 0\r\n" % (4000 + 2 * i) for i in range(count))


def test_media_section_limit() -> None:
    assert len(parse(media_lines(MAX_MEDIA)).media) == MAX_MEDIA
    with pytest.raises(SdpError, match="media sections"):
        parse(media_lines(MAX_MEDIA + 1))


def test_hundreds_of_media_lines_are_rejected() -> None:
    with pytest.raises(SdpError) as caught:
        parse(media_lines(400))
    assert caught.value.status == 400


def test_line_and_size_limits() -> None:
    head = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n"
    ok = head + b"a=x\r\n" * (MAX_LINES - 4)
    assert len(parse(ok).attributes) == MAX_LINES - 4
    with pytest.raises(SdpError, match="lines"):
        parse(ok + b"a=x\r\n")
    with pytest.raises(SdpError, match="larger"):
        parse(head + b"a=" + b"x" * MAX_SDP_SIZE + b"\r\n")


def test_copy_is_deep() -> None:
    sdp = parse(BASIC)
    other = sdp.copy()
    other.media[0].port = 1
    other.origin.address = "203.0.113.1"
    assert sdp.media[0].port == 49170 and sdp.origin.address == "198.51.100.7"
    assert isinstance(other, SessionDescription)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_sdp_error(data: bytes) -> None:
    try:
        parse(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n" + data)
    except SdpError:
        pass


_line = st.sampled_from(
    [
        b"m=audio 4000 RTP/AVP 0 8 101\r\n",
        b"m=video 0 RTP/AVP 31\r\n",
        b"c=IN IP6 2001:db8::5\r\n",
        b"c=IN IP4 192.0.2.9\r\n",
        b"a=rtpmap:101 telephone-event/8000\r\n",
        b"a=sendonly\r\n",
        b"a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:abc\r\n",
        b"b=AS:80\r\n",
        b"i=info\r\n",
        b"k=prompt\r\n",
        b"t=0 0\r\n",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_line, max_size=30))
def test_generated_bodies_round_trip(lines: list[bytes]) -> None:
    body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nc=IN IP4 192.0.2.1\r\n" + b"".join(lines)
    try:
        sdp = parse(body)
    except SdpError:
        return
    assert parse(sdp.serialize()) == sdp
