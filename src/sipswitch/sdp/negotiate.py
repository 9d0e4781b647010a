"""Offer/answer for audio (RFC 3264): answering an offer with PCMU/PCMA and telephone-event,
making an offer, reading the answer to an offer, and rewriting the address and ports of a
description (for NAT handling and media relay).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .model import (
    Attribute,
    Connection,
    MediaDescription,
    Origin,
    RtpMap,
    SdpError,
    SessionDescription,
)

# Codecs this layer can negotiate: name -> (static payload type, clock rate).
AUDIO_CODECS: dict[str, tuple[int, int]] = {"PCMU": (0, 8000), "PCMA": (8, 8000)}
TELEPHONE_EVENT = "telephone-event"
DEFAULT_TELEPHONE_EVENT_PT = 101
DEFAULT_EVENTS = "0-16"
RTP_PROTOS = ("RTP/AVP", "RTP/AVPF")

_REVERSE = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}


class NoCommonCodec(SdpError):
    """No audio stream of the offer (or answer) uses a codec this side supports: SIP 488."""

    def __init__(self, reason: str = "no common audio codec") -> None:
        super().__init__(reason, 488)


@dataclass(frozen=True, slots=True)
class AudioChoice:
    """The outcome of a negotiation for the one audio stream a call uses.

    ``host``/``port`` are where the peer wants to receive RTP; ``direction`` is this side's
    direction (``sendonly`` means this side may send but should not expect audio).
    """

    host: str
    port: int
    payload_type: int
    codec: str
    clock_rate: int
    telephone_event_pt: int | None
    direction: str
    ptime: int
    index: int

    @property
    def on_hold(self) -> bool:
        """The peer asked for no media toward it (``0.0.0.0`` or a receive-less direction)."""
        return self.host in ("0.0.0.0", "::") or self.direction in ("recvonly", "inactive")


def _check_codecs(codecs: Sequence[str]) -> list[str]:
    names = [c.upper() for c in codecs]
    for name in names:
        if name not in AUDIO_CODECS:
            raise ValueError(f"unsupported codec {name!r}; known: {', '.join(AUDIO_CODECS)}")
    if not names:
        raise ValueError("at least one codec is needed")
    return names


def _addr_type(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def _new_session_id() -> str:
    return str(secrets.randbelow(2**62) + 1)


def _description(
    address: str, username: str, session_id: str | None, session_version: int
) -> SessionDescription:
    """A description with no media yet, received at ``address``."""
    addr_type = _addr_type(address)
    return SessionDescription(
        origin=Origin(
            username, session_id or _new_session_id(), session_version, "IN", addr_type, address
        ),
        name="-",
        connection=Connection(address, addr_type),
        extra=[("t", "0 0")],
    )


def _is_usable_audio(media: MediaDescription) -> bool:
    return media.media == "audio" and media.port != 0 and media.proto in RTP_PROTOS


def _find_codec(media: MediaDescription, names: Sequence[str]) -> RtpMap | None:
    """The first payload type of the m= line (the peer's preference) that has one of ``names``."""
    for mapping in media.codecs():
        for name in names:
            if mapping.matches(name, AUDIO_CODECS[name][1]) and mapping.channels in (None, 1):
                return mapping
    return None


def _find_events(media: MediaDescription) -> tuple[int, str | None] | None:
    for mapping in media.codecs():
        if mapping.matches(TELEPHONE_EVENT, 8000):
            return mapping.payload_type, media.fmtp(mapping.payload_type)
    return None


def _audio_section(
    port: int,
    codec: RtpMap,
    events: tuple[int, str | None] | None,
    direction: str,
    ptime: int,
    proto: str = "RTP/AVP",
) -> MediaDescription:
    formats = [str(codec.payload_type)]
    attributes = [Attribute("rtpmap", str(codec))]
    if events is not None:
        pt, fmtp = events
        formats.append(str(pt))
        attributes.append(Attribute("rtpmap", f"{pt} {TELEPHONE_EVENT}/8000"))
        attributes.append(Attribute("fmtp", f"{pt} {fmtp or DEFAULT_EVENTS}"))
    attributes.append(Attribute("ptime", str(ptime)))
    attributes.append(Attribute(direction))
    return MediaDescription("audio", port, proto, formats, attributes=attributes)


def answer(
    offer: SessionDescription,
    address: str,
    port: int,
    codecs: Sequence[str] = ("PCMU", "PCMA"),
    *,
    telephone_event: bool = True,
    direction: str = "sendrecv",
    ptime: int = 20,
    username: str = "sipswitch",
    session_id: str | None = None,
    session_version: int = 0,
) -> tuple[SessionDescription, AudioChoice]:
    """Answer ``offer`` with one audio stream received at (address, port).

    The first audio stream whose codec list holds one of ``codecs`` is accepted, using the
    offerer's first such codec (the offerer's preference order); every other stream is rejected
    with port 0, as RFC 3264 requires. ``telephone-event/8000`` is answered with the offerer's
    payload type. Raises ``NoCommonCodec`` (488) when no audio stream can be accepted.
    """
    names = _check_codecs(codecs)
    if direction not in _REVERSE:
        raise ValueError(f"not an SDP direction: {direction!r}")
    result = _description(address, username, session_id, session_version)
    choice: AudioChoice | None = None
    for index, media in enumerate(offer.media):
        codec = _find_codec(media, names) if _is_usable_audio(media) else None
        connection = offer.connection_of(media)
        if choice is not None or codec is None or connection is None:
            result.media.append(
                MediaDescription(media.media, 0, media.proto, list(media.formats))
            )
            continue
        events = _find_events(media) if telephone_event else None
        offered = offer.direction_of(media)
        ours = _combine(direction, _REVERSE[offered])
        result.media.append(_audio_section(port, codec, events, ours, ptime, media.proto))
        choice = AudioChoice(
            host=connection.address,
            port=media.port,
            payload_type=codec.payload_type,
            codec=codec.encoding.upper(),
            clock_rate=codec.clock_rate,
            telephone_event_pt=events[0] if events else None,
            direction=ours,
            ptime=ptime,
            index=index,
        )
    if choice is None:
        offered_audio = [m for m in offer.media if m.media == "audio"]
        if not offered_audio:
            raise NoCommonCodec("no audio stream offered")
        raise NoCommonCodec(f"no common audio codec (this side has {', '.join(names)})")
    return result, choice


def _combine(wanted: str, allowed: str) -> str:
    """The most this side may do: what it wants, limited by what the peer allows."""
    send = wanted in ("sendrecv", "sendonly") and allowed in ("sendrecv", "sendonly")
    recv = wanted in ("sendrecv", "recvonly") and allowed in ("sendrecv", "recvonly")
    if send and recv:
        return "sendrecv"
    if send:
        return "sendonly"
    if recv:
        return "recvonly"
    return "inactive"


def make_offer(
    address: str,
    port: int,
    codecs: Sequence[str] = ("PCMU", "PCMA"),
    *,
    telephone_event_pt: int | None = DEFAULT_TELEPHONE_EVENT_PT,
    direction: str = "sendrecv",
    ptime: int = 20,
    username: str = "sipswitch",
    session_id: str | None = None,
    session_version: int = 0,
) -> SessionDescription:
    """An offer of one audio stream received at (address, port) with ``codecs`` in order of
    preference and, unless ``telephone_event_pt`` is None, RFC 4733 events."""
    names = _check_codecs(codecs)
    if direction not in _REVERSE:
        raise ValueError(f"not an SDP direction: {direction!r}")
    if telephone_event_pt is not None and not 96 <= telephone_event_pt <= 127:
        raise ValueError("telephone-event needs a dynamic payload type (96-127)")
    formats = [str(AUDIO_CODECS[n][0]) for n in names]
    attributes = [
        Attribute("rtpmap", f"{AUDIO_CODECS[n][0]} {n}/{AUDIO_CODECS[n][1]}") for n in names
    ]
    if telephone_event_pt is not None:
        formats.append(str(telephone_event_pt))
        attributes.append(Attribute("rtpmap", f"{telephone_event_pt} {TELEPHONE_EVENT}/8000"))
        attributes.append(Attribute("fmtp", f"{telephone_event_pt} {DEFAULT_EVENTS}"))
    attributes.append(Attribute("ptime", str(ptime)))
    attributes.append(Attribute(direction))
    result = _description(address, username, session_id, session_version)
    result.media.append(MediaDescription("audio", port, "RTP/AVP", formats, attributes=attributes))
    return result


def accept_answer(offer: SessionDescription, answer_sdp: SessionDescription) -> AudioChoice:
    """Read the peer's answer to ``offer``: the audio stream it accepted and the codec it chose.

    Raises ``SdpError`` when the answer does not match the offer's media sections, and
    ``NoCommonCodec`` when it accepted no audio stream with a codec that was offered.
    """
    if len(answer_sdp.media) != len(offer.media):
        raise SdpError(
            f"answer has {len(answer_sdp.media)} media sections, the offer {len(offer.media)}"
        )
    for index, (ours, theirs) in enumerate(zip(offer.media, answer_sdp.media, strict=True)):
        if not _is_usable_audio(ours) or not _is_usable_audio(theirs):
            continue
        offered_names = [
            n for n in AUDIO_CODECS if any(m.matches(n, AUDIO_CODECS[n][1]) for m in ours.codecs())
        ]
        codec = _find_codec(theirs, offered_names) if offered_names else None
        connection = answer_sdp.connection_of(theirs)
        if codec is None or connection is None:
            continue
        events = _find_events(theirs) if _find_events(ours) is not None else None
        return AudioChoice(
            host=connection.address,
            port=theirs.port,
            payload_type=codec.payload_type,
            codec=codec.encoding.upper(),
            clock_rate=codec.clock_rate,
            telephone_event_pt=events[0] if events else None,
            direction=_combine(offer.direction_of(ours), _REVERSE[answer_sdp.direction_of(theirs)]),
            ptime=ours.ptime or 20,
            index=index,
        )
    raise NoCommonCodec("the answer accepted no offered audio codec")


def rewrite_address(
    sdp: SessionDescription,
    address: str,
    ports: Sequence[int | None] | None = None,
    *,
    drop_attributes: Iterable[str] = (),
) -> SessionDescription:
    """A copy of ``sdp`` whose media is received at ``address``: the o= and every c= address are
    replaced, and media section ``i`` gets port ``ports[i]`` (None or a missing entry keeps the
    port; a rejected stream keeps port 0). A section whose port changes loses its ``a=rtcp``
    (the RTCP port is then the RTP port + 1). ``drop_attributes`` names attributes to remove
    everywhere (for example ``candidate`` when ICE cannot survive the rewrite).
    """
    result = sdp.copy()
    addr_type = _addr_type(address)
    result.origin.address = address
    result.origin.addr_type = addr_type
    if result.connection is not None:
        result.connection = Connection(address, addr_type)
    dropped = set(drop_attributes)
    if dropped:
        result.attributes = [a for a in result.attributes if a.name not in dropped]
    for index, media in enumerate(result.media):
        if media.connection is not None:
            media.connection = Connection(address, addr_type)
        elif result.connection is None and media.port != 0:
            media.connection = Connection(address, addr_type)
        new_port = ports[index] if ports is not None and index < len(ports) else None
        if new_port is not None and media.port != 0 and new_port != media.port:
            if not 0 < new_port <= 65535:
                raise ValueError(f"port out of range: {new_port}")
            media.port = new_port
            media.remove_attributes("rtcp")
        if dropped:
            media.remove_attributes(*dropped)
    return result
