"""The SDP model (RFC 4566/8866): a session description with its media sections, bounded parsing
from bytes and serialisation back to bytes.

Lines the model does not interpret (``a=crypto``, ``b=``, ``k=``, ``r=``, ``z=``, unknown
attributes) are kept verbatim and in order, so a description passes through unchanged.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from dataclasses import dataclass, field

from ..sip.errors import SipError

MAX_SDP_SIZE = 64 * 1024
MAX_LINES = 512
MAX_MEDIA = 64
MAX_LINE_LENGTH = 4096
MAX_FORMATS = 64

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")

# Payload types fixed by RFC 3551 (the audio ones a telephone system may meet).
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int | None]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, None),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
}


class SdpError(SipError):
    """A session description that cannot be accepted; ``status`` is the SIP answer (400)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason, status)


_TOKEN = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"
_TOKEN_RE = re.compile(_TOKEN)
_UINT_RE = re.compile(r"[0-9]{1,20}")
_PORT_RE = re.compile(r"([0-9]{1,5})(?:/([0-9]{1,5}))?")
_RTPMAP_RE = re.compile(r"([0-9]{1,3}) +([^/ ]+)/([0-9]{1,10})(?:/([0-9]{1,3}))?\s*")
_HOST_RE = re.compile(r"[A-Za-z0-9.\-:_]+")


def _first_value(attributes: list[Attribute], name: str) -> str | None:
    for attr in attributes:
        if attr.name == name:
            return "" if attr.value is None else attr.value
    return None


def _direction(attributes: list[Attribute]) -> str | None:
    for attr in attributes:
        if attr.name in DIRECTIONS and attr.value is None:
            return attr.name
    return None


@dataclass(slots=True)
class Connection:
    """A ``c=`` line: ``IN IP4 192.0.2.1`` (a multicast ``/ttl/count`` suffix is kept in
    ``suffix``)."""

    address: str
    addr_type: str = "IP4"
    net_type: str = "IN"
    suffix: str = ""

    def __str__(self) -> str:
        return f"{self.net_type} {self.addr_type} {self.address}{self.suffix}"


@dataclass(slots=True)
class Origin:
    """The ``o=`` line: who made the description, its session id and version."""

    username: str = "-"
    session_id: str = "0"
    session_version: int = 0
    net_type: str = "IN"
    addr_type: str = "IP4"
    address: str = "0.0.0.0"

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"{self.net_type} {self.addr_type} {self.address}"
        )


@dataclass(slots=True)
class Attribute:
    """An ``a=`` line, ``name:value`` or a bare flag ``name`` (value None)."""

    name: str
    value: str | None = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"


@dataclass(frozen=True, slots=True)
class RtpMap:
    """A payload type's encoding, from ``a=rtpmap`` or the static table of RFC 3551."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int | None = None

    def __str__(self) -> str:
        tail = f"/{self.channels}" if self.channels not in (None, 1) else ""
        return f"{self.payload_type} {self.encoding}/{self.clock_rate}{tail}"

    def matches(self, encoding: str, clock_rate: int) -> bool:
        return self.encoding.lower() == encoding.lower() and self.clock_rate == clock_rate


@dataclass(slots=True)
class MediaDescription:
    """One ``m=`` section: media type, port, transport protocol, formats and its own lines.

    ``extra`` holds the section's ``i=``, ``b=`` and ``k=`` lines as (type, value) pairs, in order.
    """

    media: str
    port: int
    proto: str
    formats: list[str]
    port_count: int | None = None
    connection: Connection | None = None
    attributes: list[Attribute] = field(default_factory=list)
    extra: list[tuple[str, str]] = field(default_factory=list)

    # --- attributes -------------------------------------------------------------------------

    def attribute(self, name: str) -> str | None:
        """The value of the first attribute with this name ('' for a flag), or None."""
        return _first_value(self.attributes, name)

    def attributes_named(self, name: str) -> list[str]:
        return [a.value or "" for a in self.attributes if a.name == name]

    def remove_attributes(self, *names: str) -> None:
        self.attributes = [a for a in self.attributes if a.name not in names]

    @property
    def direction(self) -> str | None:
        """The section's own direction attribute, or None (then the session's applies)."""
        return _direction(self.attributes)

    def set_direction(self, direction: str) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"not an SDP direction: {direction!r}")
        self.attributes = [a for a in self.attributes if a.name not in DIRECTIONS]
        self.attributes.append(Attribute(direction))

    @property
    def ptime(self) -> int | None:
        value = self.attribute("ptime")
        if value is None or not value.strip().isdigit() or len(value.strip()) > 5:
            return None
        return int(value.strip())

    # --- payload types ----------------------------------------------------------------------

    def payload_types(self) -> list[int]:
        """The formats as RTP payload types (formats that are not numbers are skipped)."""
        return [int(f) for f in self.formats if f.isdigit() and len(f) <= 3]

    def rtpmap(self, payload_type: int) -> RtpMap | None:
        """The encoding of a payload type: its ``a=rtpmap``, else the static assignment."""
        prefix = f"{payload_type} "
        for value in self.attributes_named("rtpmap"):
            if value.startswith(prefix):
                try:
                    return parse_rtpmap(value)
                except SdpError:
                    return None
        static = STATIC_PAYLOAD_TYPES.get(payload_type)
        if static is not None:
            return RtpMap(payload_type, static[0], static[1], static[2])
        return None

    def codecs(self) -> list[RtpMap]:
        """Every payload type whose encoding is known, in the order of the m= line."""
        found = []
        for pt in self.payload_types():
            mapping = self.rtpmap(pt)
            if mapping is not None:
                found.append(mapping)
        return found

    def fmtp(self, payload_type: int) -> str | None:
        prefix = f"{payload_type} "
        for value in self.attributes_named("fmtp"):
            if value.startswith(prefix):
                return value[len(prefix):].strip()
        return None

    def __str__(self) -> str:
        count = f"/{self.port_count}" if self.port_count is not None else ""
        return f"{self.media} {self.port}{count} {self.proto} {' '.join(self.formats)}"


# Order of the lines that the model keeps verbatim (RFC 8866 §5); t= and r= share a rank so
# that each r= stays after its t=.
_SESSION_ORDER = {"i": 0, "u": 1, "e": 2, "p": 3, "b": 4, "t": 5, "r": 5, "z": 6, "k": 7}
_SESSION_BEFORE_C = ("i", "u", "e", "p")
_MEDIA_ORDER = {"i": 0, "b": 1, "k": 2}


def _in_order(lines: list[tuple[str, str]], order: dict[str, int]) -> list[tuple[str, str]]:
    return sorted(lines, key=lambda line: order.get(line[0], 99))


@dataclass(slots=True)
class SessionDescription:
    """A whole SDP body.

    ``extra`` keeps the session's ``i= u= e= p= b= t= r= z= k=`` lines as (type, value) pairs in
    the order received; serialisation writes them where RFC 8866 puts them.
    """

    origin: Origin = field(default_factory=Origin)
    name: str = "-"
    connection: Connection | None = None
    attributes: list[Attribute] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)
    extra: list[tuple[str, str]] = field(default_factory=lambda: [("t", "0 0")])
    version: int = 0

    def attribute(self, name: str) -> str | None:
        return _first_value(self.attributes, name)

    @property
    def direction(self) -> str | None:
        return _direction(self.attributes)

    def direction_of(self, media: MediaDescription) -> str:
        """The effective direction of a media section (its own, else the session's, else
        sendrecv)."""
        return media.direction or self.direction or "sendrecv"

    def connection_of(self, media: MediaDescription) -> Connection | None:
        """The connection that applies to a media section (its own c=, else the session's)."""
        return media.connection or self.connection

    def copy(self) -> SessionDescription:
        return copy.deepcopy(self)

    def serialize(self) -> bytes:
        return self.to_text().encode("utf-8", "surrogateescape")

    def to_text(self) -> str:
        extra = _in_order(self.extra, _SESSION_ORDER)
        if not any(t == "t" for t, _ in extra):
            extra = _in_order([*extra, ("t", "0 0")], _SESSION_ORDER)
        lines = [f"v={self.version}", f"o={self.origin}", f"s={self.name}"]
        lines.extend(f"{t}={v}" for t, v in extra if t in _SESSION_BEFORE_C)
        if self.connection is not None:
            lines.append(f"c={self.connection}")
        lines.extend(f"{t}={v}" for t, v in extra if t not in _SESSION_BEFORE_C)
        lines.extend(f"a={a}" for a in self.attributes)
        for media in self.media:
            lines.append(f"m={media}")
            media_extra = _in_order(media.extra, _MEDIA_ORDER)
            lines.extend(f"{t}={v}" for t, v in media_extra if t == "i")
            if media.connection is not None:
                lines.append(f"c={media.connection}")
            lines.extend(f"{t}={v}" for t, v in media_extra if t != "i")
            lines.extend(f"a={a}" for a in media.attributes)
        return "\r\n".join(lines) + "\r\n"

    def __bytes__(self) -> bytes:
        return self.serialize()


# --- parsing ----------------------------------------------------------------------------------


def parse_rtpmap(value: str) -> RtpMap:
    match = _RTPMAP_RE.fullmatch(value)
    if match is None:
        raise SdpError(f"malformed a=rtpmap: {value[:60]!r}")
    pt = int(match.group(1))
    if pt > 127:
        raise SdpError(f"a=rtpmap payload type out of range: {pt}")
    channels = int(match.group(4)) if match.group(4) else None
    return RtpMap(pt, match.group(2), int(match.group(3)), channels)


def parse_connection(value: str) -> Connection:
    parts = value.split(" ")
    if len(parts) != 3 or parts[0] != "IN":
        raise SdpError(f"malformed c= line: {value[:60]!r}")
    addr_type, raw = parts[1], parts[2]
    if addr_type not in ("IP4", "IP6"):
        raise SdpError(f"unknown address type in c= line: {addr_type[:10]!r}")
    address, slash, suffix = raw.partition("/")
    _check_address(addr_type, address, "c=")
    return Connection(address, addr_type, "IN", slash + suffix)


def parse_origin(value: str) -> Origin:
    parts = value.split(" ")
    if len(parts) != 6:
        raise SdpError(f"malformed o= line: {value[:60]!r}")
    username, session_id, version, net_type, addr_type, address = parts
    if not _UINT_RE.fullmatch(session_id) or not _UINT_RE.fullmatch(version):
        raise SdpError("o= session id and version must be numbers")
    if net_type != "IN" or addr_type not in ("IP4", "IP6"):
        raise SdpError(f"unknown network or address type in o= line: {value[:60]!r}")
    _check_address(addr_type, address, "o=")
    return Origin(username, session_id, int(version), net_type, addr_type, address)


def _check_address(addr_type: str, address: str, where: str) -> None:
    if not address or not _HOST_RE.fullmatch(address):
        raise SdpError(f"malformed address in {where} line: {address[:60]!r}")
    if addr_type == "IP6":
        if ":" in address:
            try:
                ipaddress.IPv6Address(address)
            except ValueError:
                reason = f"malformed IPv6 address in {where} line: {address[:60]!r}"
                raise SdpError(reason) from None
        return
    if ":" in address:
        raise SdpError(f"IPv6 address with IP4 address type in {where} line")
    if address.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise SdpError(f"malformed IPv4 address in {where} line: {address[:60]!r}") from None


def _parse_media(value: str) -> MediaDescription:
    parts = value.split(" ")
    if len(parts) < 4:
        raise SdpError(f"malformed m= line: {value[:60]!r}")
    media, port_text, proto = parts[0], parts[1], parts[2]
    formats = [f for f in parts[3:] if f]
    if not _TOKEN_RE.fullmatch(media) or not _TOKEN_RE.fullmatch(proto.replace("/", "")):
        raise SdpError(f"malformed m= line: {value[:60]!r}")
    match = _PORT_RE.fullmatch(port_text)
    if match is None or int(match.group(1)) > 65535:
        raise SdpError(f"malformed port in m= line: {port_text[:20]!r}")
    port_count = int(match.group(2)) if match.group(2) else None
    if port_count is not None and port_count < 1:
        raise SdpError("m= port count must be at least 1")
    if not formats:
        raise SdpError("m= line without formats")
    if len(formats) > MAX_FORMATS:
        raise SdpError(f"more than {MAX_FORMATS} formats in an m= line")
    if "RTP/" in proto:
        for fmt in formats:
            if not fmt.isdigit() or len(fmt) > 3 or int(fmt) > 127:
                raise SdpError(f"RTP payload type out of range in m= line: {fmt[:10]!r}")
    for fmt in formats:
        if not _TOKEN_RE.fullmatch(fmt):
            raise SdpError(f"malformed format in m= line: {fmt[:10]!r}")
    return MediaDescription(media, int(match.group(1)), proto, formats, port_count)


def _parse_attribute(value: str) -> Attribute:
    name, colon, rest = value.partition(":")
    if not _TOKEN_RE.fullmatch(name):
        raise SdpError(f"malformed attribute name: {name[:40]!r}")
    # A malformed a=rtpmap or a=fmtp (RFC 4475's "a=rtpmap:31 LPC") is kept as written; it
    # only makes that payload type unknown to offer/answer.
    return Attribute(name, rest if colon else None)


def parse(data: bytes | str) -> SessionDescription:
    """Parse an SDP body. Raises ``SdpError`` (status 400) for anything malformed or beyond the
    bounds (64 KiB, 512 lines, 64 media sections)."""
    if isinstance(data, str):
        text = data
        if len(text) > MAX_SDP_SIZE:
            raise SdpError(f"SDP body larger than {MAX_SDP_SIZE} bytes")
    else:
        if len(data) > MAX_SDP_SIZE:
            raise SdpError(f"SDP body larger than {MAX_SDP_SIZE} bytes")
        text = data.decode("utf-8", "surrogateescape")
    if "\x00" in text:
        raise SdpError("NUL character in SDP body")
    lines = text.split("\n")
    if len(lines) > MAX_LINES + 1:
        raise SdpError(f"more than {MAX_LINES} lines in SDP body")
    sdp: SessionDescription | None = None
    seen_origin = False
    current: MediaDescription | None = None
    for number, raw in enumerate(lines, 1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line.strip():
            continue
        if len(line) > MAX_LINE_LENGTH:
            raise SdpError(f"line {number} of SDP body too long")
        if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z"):
            raise SdpError(f"line {number} of SDP body is not type=value: {line[:40]!r}")
        kind, value = line[0], line[2:]
        if sdp is None:
            if kind != "v":
                raise SdpError("SDP body does not start with v=")
            if value.strip() != "0":
                raise SdpError(f"unsupported SDP version: {value[:10]!r}")
            sdp = SessionDescription(extra=[])
            continue
        if kind == "v":
            raise SdpError("second v= line in SDP body")
        if kind == "m":
            if len(sdp.media) >= MAX_MEDIA:
                raise SdpError(f"more than {MAX_MEDIA} media sections in SDP body", 400)
            current = _parse_media(value)
            sdp.media.append(current)
        elif kind == "a":
            attr = _parse_attribute(value)
            (current.attributes if current is not None else sdp.attributes).append(attr)
        elif kind == "c":
            conn = parse_connection(value)
            if current is not None:
                if current.connection is not None:
                    raise SdpError("two c= lines in one media section")
                current.connection = conn
            else:
                if sdp.connection is not None:
                    raise SdpError("two session-level c= lines")
                sdp.connection = conn
        elif current is not None:
            if kind in _MEDIA_ORDER:
                current.extra.append((kind, value))
            else:
                raise SdpError(f"{kind}= line not allowed in a media section")
        elif kind == "o":
            if seen_origin:
                raise SdpError("second o= line in SDP body")
            sdp.origin = parse_origin(value)
            seen_origin = True
        elif kind == "s":
            sdp.name = value
        elif kind in _SESSION_ORDER:
            sdp.extra.append((kind, value))
        else:
            raise SdpError(f"unknown SDP line type {kind}=")
    if sdp is None:
        raise SdpError("empty SDP body")
    if not seen_origin:
        raise SdpError("SDP body without o= line")
    if not any(kind == "t" for kind, _ in sdp.extra):
        sdp.extra.append(("t", "0 0"))  # t= is required; a missing one means "unbounded"
    sdp.extra = _in_order(sdp.extra, _SESSION_ORDER)
    for media in sdp.media:
        media.extra = _in_order(media.extra, _MEDIA_ORDER)
    for media in sdp.media:
        if media.port != 0 and sdp.connection_of(media) is None:
            raise SdpError(f"no c= line for the {media.media[:20]} stream")
    return sdp
