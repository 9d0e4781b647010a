"""Audio offer/answer (RFC 3264): codec choice, telephone-event, directions, rejected streams,
488 when nothing matches, and address rewriting."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipswitch.sdp import (
    NoCommonCodec,
    SdpError,
    accept_answer,
    answer,
    make_offer,
    parse,
    rewrite_address,
)

WIRE = Path(__file__).parent.parent / "fixtures" / "conformance" / "rfc5118" / "wire"


def offer_body(media: str, extra: str = "", connection: str = "IN IP4 198.51.100.7") -> bytes:
    return (
        "v=0\r\no=alice 1 1 IN IP4 198.51.100.7\r\ns=-\r\n"
        f"c={connection}\r\nt=0 0\r\n{media}\r\n{extra}"
    ).encode()


def body_of(name: str) -> bytes:
    data = (WIRE / name).read_bytes()
    return data[data.index(b"\r\n\r\n") + 4 :]


def test_answer_uses_the_offerers_preferred_codec_and_echoes_its_event_type() -> None:
    offer = parse(
        offer_body(
            "m=audio 49170 RTP/AVP 8 0 96",
            "a=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-15\r\n",
        )
    )
    result, choice = answer(offer, "192.0.2.1", 20000)
    assert (choice.codec, choice.payload_type, choice.telephone_event_pt) == ("PCMA", 8, 96)
    assert (choice.host, choice.port, choice.direction, choice.index) == (
        "198.51.100.7", 49170, "sendrecv", 0
    )
    text = result.serialize().decode()
    assert "m=audio 20000 RTP/AVP 8 96\r\n" in text
    assert "a=rtpmap:96 telephone-event/8000\r\n" in text
    assert "a=fmtp:96 0-15\r\n" in text
    assert "c=IN IP4 192.0.2.1\r\n" in text
    assert "a=sendrecv\r\n" in text
    assert result.origin.address == "192.0.2.1"
    # What we produce is itself a valid description.
    assert parse(result.serialize()) == result


def test_answer_honours_this_sides_codec_list() -> None:
    offer = parse(offer_body("m=audio 49170 RTP/AVP 8 0"))
    _, choice = answer(offer, "192.0.2.1", 20000, codecs=("PCMU",))
    assert choice.codec == "PCMU" and choice.payload_type == 0
    assert choice.telephone_event_pt is None


def test_dynamic_payload_type_for_pcmu_is_echoed() -> None:
    offer = parse(offer_body("m=audio 5004 RTP/AVP 112 101", "a=rtpmap:112 pcmu/8000\r\n"
                             "a=rtpmap:101 telephone-event/8000\r\n"))
    result, choice = answer(offer, "192.0.2.1", 20000)
    assert (choice.payload_type, choice.codec, choice.telephone_event_pt) == (112, "PCMU", 101)
    assert result.media[0].formats == ["112", "101"]
    assert result.media[0].fmtp(101) == "0-16"


def test_no_common_codec_is_488() -> None:
    offer = parse(offer_body("m=audio 49170 RTP/AVP 18 96", "a=rtpmap:96 opus/48000/2\r\n"))
    with pytest.raises(NoCommonCodec) as caught:
        answer(offer, "192.0.2.1", 20000)
    assert caught.value.status == 488
    assert isinstance(caught.value, SdpError)


def test_stereo_or_wideband_pcmu_is_not_a_match() -> None:
    offer = parse(offer_body("m=audio 49170 RTP/AVP 96 97",
                             "a=rtpmap:96 PCMU/16000\r\na=rtpmap:97 PCMA/8000/2\r\n"))
    with pytest.raises(NoCommonCodec):
        answer(offer, "192.0.2.1", 20000)


def test_offer_without_audio_is_488() -> None:
    offer = parse(offer_body("m=video 5000 RTP/AVP 31"))
    with pytest.raises(NoCommonCodec, match="no audio"):
        answer(offer, "192.0.2.1", 20000)


def test_ipv6_in_sdp_offer_with_only_g726_is_488() -> None:
    offer = parse(body_of("ipv6-in-sdp.dat"))
    with pytest.raises(NoCommonCodec) as caught:
        answer(offer, "2001:db8::10", 20000)
    assert caught.value.status == 488


def test_mult_ip_in_sdp_accepts_audio_and_rejects_video() -> None:
    offer = parse(body_of("mult-ip-in-sdp.dat"))
    result, choice = answer(offer, "2001:db8::10", 30000)
    assert (choice.host, choice.port, choice.codec) == ("192.0.2.1", 22334, "PCMU")
    assert len(result.media) == 2
    audio, video = result.media
    assert audio.port == 30000 and video.port == 0
    assert video.media == "video" and video.formats == ["107"]
    assert result.connection is not None and result.connection.addr_type == "IP6"
    assert result.origin.addr_type == "IP6"
    assert b"c=IN IP6 2001:db8::10\r\n" in result.serialize()


def test_ipv6_offer_answered_on_ipv6() -> None:
    offer = parse(offer_body("m=audio 6000 RTP/AVP 0", connection="IN IP6 2001:db8::20"))
    result, choice = answer(offer, "2001:db8::10", 20000)
    assert choice.host == "2001:db8::20"
    assert parse(result.serialize()).connection.address == "2001:db8::10"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "offered, ours",
    [("sendrecv", "sendrecv"), ("sendonly", "recvonly"), ("recvonly", "sendonly"),
     ("inactive", "inactive")],
)
def test_direction_of_the_answer(offered: str, ours: str) -> None:
    offer = parse(offer_body("m=audio 49170 RTP/AVP 0", f"a={offered}\r\n"))
    result, choice = answer(offer, "192.0.2.1", 20000)
    assert choice.direction == ours
    assert result.media[0].direction == ours
    assert choice.on_hold == (ours in ("recvonly", "inactive"))


def test_hold_address_is_reported() -> None:
    offer = parse(offer_body("m=audio 49170 RTP/AVP 0", connection="IN IP4 0.0.0.0"))
    _, choice = answer(offer, "192.0.2.1", 20000)
    assert choice.on_hold


def test_only_the_first_usable_audio_stream_is_accepted() -> None:
    offer = parse(
        b"v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n"
        b"m=audio 0 RTP/AVP 0\r\n"
        b"m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:x\r\n"
        b"m=audio 5000 RTP/AVP 18\r\n"
        b"m=audio 6000 RTP/AVP 0\r\n"
        b"m=audio 7000 RTP/AVP 0\r\n"
    )
    result, choice = answer(offer, "192.0.2.1", 20000)
    assert choice.index == 3 and choice.port == 6000
    assert [m.port for m in result.media] == [0, 0, 0, 20000, 0]
    assert [m.proto for m in result.media][1] == "RTP/SAVP"


def test_make_offer_and_accept_answer() -> None:
    offer = make_offer("192.0.2.1", 20000, ("PCMA", "PCMU"), telephone_event_pt=101)
    text = offer.serialize().decode()
    assert "m=audio 20000 RTP/AVP 8 0 101\r\n" in text
    assert "a=rtpmap:101 telephone-event/8000\r\n" in text
    assert "a=ptime:20\r\n" in text
    reply, theirs = answer(parse(offer.serialize()), "198.51.100.9", 40000, codecs=("PCMU",))
    assert theirs.codec == "PCMU"
    choice = accept_answer(offer, parse(reply.serialize()))
    assert (choice.host, choice.port, choice.codec, choice.telephone_event_pt) == (
        "198.51.100.9", 40000, "PCMU", 101
    )
    assert choice.direction == "sendrecv"


def test_accept_answer_without_events_or_with_rejection() -> None:
    offer = make_offer("192.0.2.1", 20000)
    no_events = parse(offer_body("m=audio 30000 RTP/AVP 0"))
    assert accept_answer(offer, no_events).telephone_event_pt is None
    rejected = parse(offer_body("m=audio 0 RTP/AVP 0"))
    with pytest.raises(NoCommonCodec):
        accept_answer(offer, rejected)
    other_codec = parse(offer_body("m=audio 30000 RTP/AVP 18"))
    with pytest.raises(NoCommonCodec):
        accept_answer(offer, other_codec)
    two = parse(offer_body("m=audio 30000 RTP/AVP 0\r\nm=video 0 RTP/AVP 31"))
    with pytest.raises(SdpError, match="media sections"):
        accept_answer(offer, two)


def test_make_offer_checks_its_arguments() -> None:
    with pytest.raises(ValueError):
        make_offer("192.0.2.1", 20000, ("G729",))
    with pytest.raises(ValueError):
        make_offer("192.0.2.1", 20000, telephone_event_pt=13)
    with pytest.raises(ValueError):
        make_offer("192.0.2.1", 20000, direction="both")
    assert make_offer("2001:db8::1", 20000, telephone_event_pt=None).media[0].formats == ["0", "8"]


def test_rewrite_address() -> None:
    sdp = parse(
        b"v=0\r\no=bob 5 6 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n"
        b"m=audio 4000 RTP/AVP 0\r\na=rtcp:4001\r\na=candidate:1 1 UDP 1 10.0.0.5 4000 typ host\r\n"
        b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:x\r\n"
        b"m=video 0 RTP/AVP 31\r\n"
        b"m=audio 5000 RTP/AVP 8\r\nc=IN IP4 10.0.0.6\r\n"
    )
    out = rewrite_address(sdp, "203.0.113.4", [30000, 31000, None], drop_attributes=["candidate"])
    text = out.serialize().decode()
    assert "o=bob 5 6 IN IP4 203.0.113.4\r\n" in text
    assert "10.0.0." not in text
    assert [m.port for m in out.media] == [30000, 0, 5000]
    assert out.media[0].attribute("rtcp") is None
    assert out.media[0].attribute("candidate") is None
    assert out.media[0].attribute("crypto") == "1 AES_CM_128_HMAC_SHA1_80 inline:x"
    # The original is untouched.
    assert sdp.media[0].port == 4000 and sdp.origin.address == "10.0.0.5"
    v6 = rewrite_address(sdp, "2001:db8::7")
    assert v6.connection is not None and v6.connection.addr_type == "IP6"
    assert v6.origin.addr_type == "IP6"
    assert [m.port for m in v6.media] == [4000, 0, 5000]
    assert parse(v6.serialize()) == v6
    with pytest.raises(ValueError):
        rewrite_address(sdp, "203.0.113.4", [70000])


def test_rewrite_adds_connection_to_media_without_one() -> None:
    sdp = parse(body_of("mult-ip-in-sdp.dat"))
    out = rewrite_address(sdp, "203.0.113.4", [40000, 40002])
    assert all(m.connection is not None and m.connection.address == "203.0.113.4"
               for m in out.media)
    assert parse(out.serialize()) == out
