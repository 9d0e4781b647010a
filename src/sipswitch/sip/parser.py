"""Bytes to SIP messages: datagram parsing and stream (TCP/TLS) framing, both bounded.

``parse_datagram`` turns one UDP payload into a :class:`Request` or :class:`Response`;
``StreamFramer`` cuts a byte stream into messages by Content-Length (RFC 3261 §18.3) and
answers RFC 5626 keepalives. Errors are :class:`MessageError`, carrying the SIP status to answer
with and, when the header section could be read, the partial request to build that answer from.
"""

from __future__ import annotations

from .errors import SipError
from .headers import is_token
from .message import _KEYS, Headers, Message, Request, Response, header_key
from .uri import parse_uri

MAX_MESSAGE_SIZE = 65535
MAX_HEADER_SECTION = 32 * 1024
MAX_HEADERS = 200
MAX_LINE = 8192
SIP_VERSION = "SIP/2.0"


class MessageError(SipError):
    """A message that could not be parsed. ``partial`` is the request as far as it was read, so
    a 400 can echo its Via, From, To, Call-ID and CSeq; ``None`` when nothing usable was read or
    the message was a response (responses are never answered)."""

    def __init__(self, reason: str, status: int = 400, partial: Message | None = None) -> None:
        super().__init__(reason, status)
        self.partial = partial


def _find_header_end(data: bytes | bytearray, start: int = 0) -> tuple[int, int]:
    """Return (end of header section, start of body), or (-1, -1). Accepts bare-LF framing."""
    crlf = data.find(b"\r\n\r\n", start)
    lf = data.find(b"\n\n", start)
    if crlf >= 0 and (lf < 0 or crlf + 1 <= lf):
        return crlf, crlf + 4
    if lf >= 0:
        return lf, lf + 2
    return -1, -1


def _parse_head(head: bytes) -> Message:
    """Parse the start line and header lines (no body)."""
    text = head.decode("utf-8", "surrogateescape")
    lines = text.replace("\r\n", "\n").split("\n")
    if len(lines) > MAX_HEADERS + 1:
        raise MessageError("Too many header lines", 400)
    start = lines[0]
    if len(start) > MAX_LINE:
        raise MessageError("Start line too long", 414 if not start.startswith("SIP/") else 400)
    items: list[tuple[str, str, str]] = []
    append = items.append
    known_key = _KEYS.get  # names seen before were checked as tokens then
    for index in range(1, len(lines)):
        line = lines[index]
        if not line:
            continue
        if line[0] in " \t":
            if not items:
                raise MessageError("Continuation line before the first header")
            key, name, value = items[-1]
            items[-1] = (key, name, (value + " " if value else "") + line.strip(" \t"))
            continue
        colon = line.find(":")
        if colon <= 0:
            raise MessageError("Malformed header line", 400, _partial(start, items))
        name = line[:colon].rstrip(" \t")
        known = known_key(name)
        if known is None:
            if not is_token(name):
                raise MessageError("Malformed header name", 400, _partial(start, items))
            known = header_key(name)
        append((known[0], known[1], line[colon + 1 :].strip(" \t")))
    headers = Headers(items)
    if start.startswith("SIP/"):
        return _parse_status_line(start, headers)
    return _parse_request_line(start, headers)


def _partial(start: str, items: list[tuple[str, str, str]]) -> Message | None:
    if start.startswith("SIP/"):
        return None
    parts = start.split(" ")
    method = parts[0] if parts and is_token(parts[0]) else "UNKNOWN"
    return Request(method, parse_uri("sip:invalid"), Headers(list(items)))


def _parse_status_line(line: str, headers: Headers) -> Response:
    parts = line.split(" ", 2)
    if len(parts) < 3:
        raise MessageError("Malformed status line")
    version, code, reason = parts
    if version.upper() != SIP_VERSION:
        raise MessageError("Unsupported SIP version", 505)
    if len(code) != 3 or not code.isdigit() or not code.isascii() or code[0] not in "123456":
        raise MessageError("Malformed status code")
    return Response(int(code), reason, headers, version=SIP_VERSION)


# Methods already seen to be tokens (bounded: methods are chosen by peers).
_TOKEN_METHODS: set[str] = {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER"}
_MAX_TOKEN_METHODS = 256


def _placeholder(method: str, headers: Headers) -> Request:
    """The partial request a MessageError carries when the Request-Line is unusable."""
    return Request(method, parse_uri("sip:invalid"), headers)


def _parse_request_line(line: str, headers: Headers) -> Request:
    line = line.rstrip(" \t")  # RFC 4475 §3.1.2.10: tolerate trailing spaces
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        partial = _placeholder("UNKNOWN", headers)
        if parts and is_token(parts[0]):
            partial.method = parts[0]
        raise MessageError("Malformed Request-Line", 400, partial)
    method, uri_text, version = parts
    if method not in _TOKEN_METHODS:
        if not is_token(method):
            raise MessageError("Malformed method", 400, _placeholder("UNKNOWN", headers))
        if len(_TOKEN_METHODS) < _MAX_TOKEN_METHODS:
            _TOKEN_METHODS.add(method)
    if version != SIP_VERSION and version.upper() != SIP_VERSION:
        partial = _placeholder(method, headers)
        if version[:4].upper() == "SIP/":
            raise MessageError("Unsupported SIP version", 505, partial)
        raise MessageError("Malformed SIP version", 400, partial)
    try:
        uri = parse_uri(uri_text)
    except SipError as exc:
        raise MessageError(
            f"Malformed Request-URI: {exc.reason}", 400, _placeholder(method, headers)
        ) from None
    return Request(method, uri, headers, version=SIP_VERSION)


def _content_length(message: Message) -> int | None:
    values = message.headers.all_of_key("content-length")
    if not values:
        return None
    if len(values) == 1:
        text = values[0].strip()
    else:
        distinct = {v.strip() for v in values}
        if len(distinct) > 1:
            raise MessageError("Conflicting Content-Length headers", 400, _answerable(message))
        text = distinct.pop()
    if not text.isdigit() or not text.isascii() or len(text) > 10:
        raise MessageError("Malformed Content-Length", 400, _answerable(message))
    return int(text)


def _answerable(message: Message) -> Message | None:
    return message if isinstance(message, Request) else None


def parse_datagram(data: bytes) -> Message:
    """Parse one UDP datagram. Octets after Content-Length are ignored (RFC 3261 §18.3)."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise MessageError("Message too large", 513)
    head_end, body_start = _find_header_end(data)
    if head_end < 0:
        if len(data) > MAX_HEADER_SECTION:
            raise MessageError("Header section too large", 513)
        # No blank line: the header section runs to the end of the datagram.
        head_end = body_start = len(data)
    elif head_end > MAX_HEADER_SECTION:
        raise MessageError("Header section too large", 513)
    message = _parse_head(data[:head_end])
    length = _content_length(message)
    available = len(data) - body_start
    if length is None:
        message.body = data[body_start:]
    elif length > available:
        raise MessageError("Content-Length larger than the message", 400, _answerable(message))
    else:
        message.body = data[body_start : body_start + length]
    return message


class StreamFramer:
    """Cut a TCP/TLS byte stream into messages.

    ``feed`` returns complete messages (and ``b"pong"`` markers for RFC 5626 double-CRLF pings).
    A framing error raises :class:`MessageError`; the connection cannot be resynchronised after
    one and must be closed (after sending a 400 when ``partial`` is set).
    """

    PING = b"\r\n\r\n"

    def __init__(self, max_message: int = MAX_MESSAGE_SIZE) -> None:
        self._buffer = bytearray()
        self._max = max_message
        self.pings = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        out: list[Message] = []
        buffer = self._buffer
        while buffer:
            # Leading CRLFs are keepalives; a double CRLF asks for a single CRLF pong.
            skip = 0
            while skip < len(buffer) and buffer[skip] in (13, 10):
                skip += 1
            if skip:
                self.pings += bytes(buffer[:skip]).count(self.PING)
                del buffer[:skip]
                continue
            head_end, body_start = _find_header_end(buffer)
            if head_end < 0:
                if len(buffer) > MAX_HEADER_SECTION:
                    raise MessageError("Header section too large", 513)
                break
            if head_end > MAX_HEADER_SECTION:
                raise MessageError("Header section too large", 513)
            message = _parse_head(bytes(buffer[:head_end]))
            length = _content_length(message)
            if length is None:
                length = 0  # RFC 3261 §18.3 requires it on streams; treat absence as empty
            if body_start + length > self._max:
                raise MessageError("Message too large", 513, _answerable(message))
            if len(buffer) < body_start + length:
                break  # wait for the body; the transport's read timeout bounds the wait
            message.body = bytes(buffer[body_start : body_start + length])
            del buffer[: body_start + length]
            out.append(message)
        return out

    def take_pings(self) -> int:
        pings, self.pings = self.pings, 0
        return pings
