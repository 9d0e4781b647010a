"""SIP requests and responses: an ordered header list with lazily parsed typed views.

Headers are stored as written (name, raw value) in arrival order; typed values (Via, CSeq,
From/To, Contact) are parsed on first access and cached until the header is changed, so a message
that is only relayed or answered is never fully parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from .errors import SipError
from .headers import (
    CSeq,
    NameAddr,
    Via,
    parse_cseq,
    parse_name_addr,
    parse_uint,
    parse_via,
    split_list,
)
from .uri import Uri

T = TypeVar("T")

_MISSING: Any = object()

# Compact forms (RFC 3261 §7.3.3 and later RFCs) and canonical spellings of known headers.
COMPACT_FORMS = {
    "v": "Via", "f": "From", "t": "To", "i": "Call-ID", "m": "Contact", "l": "Content-Length",
    "c": "Content-Type", "e": "Content-Encoding", "s": "Subject", "k": "Supported",
    "o": "Event", "r": "Refer-To", "b": "Referred-By", "u": "Allow-Events",
    "x": "Session-Expires", "a": "Accept-Contact", "j": "Reject-Contact",
    "d": "Request-Disposition", "y": "Identity", "n": "Identity-Info",
}
_CANONICAL_NAMES = [
    "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Content-Length", "Content-Type",
    "Content-Encoding", "Content-Disposition", "Content-Language", "Max-Forwards", "Route",
    "Record-Route", "Expires", "Min-Expires", "WWW-Authenticate", "Authorization",
    "Proxy-Authenticate", "Proxy-Authorization", "Authentication-Info", "User-Agent", "Server",
    "Allow", "Supported", "Require", "Proxy-Require", "Unsupported", "Accept",
    "Accept-Encoding", "Accept-Language", "Subject", "Event", "Refer-To", "Referred-By",
    "Allow-Events", "Session-Expires", "Min-SE", "Reason", "Warning", "Date", "Timestamp",
    "Retry-After", "Path", "RSeq", "RAck", "Organization", "Priority", "In-Reply-To",
    "Reply-To", "MIME-Version", "Alert-Info", "Call-Info", "Error-Info", "P-Asserted-Identity",
    "P-Preferred-Identity", "Privacy", "Service-Route", "Subscription-State", "Identity",
    "Identity-Info", "Accept-Contact", "Reject-Contact", "Request-Disposition", "Replaces",
    "Diversion", "History-Info",
]
CANONICAL = {name.lower(): name for name in _CANONICAL_NAMES}
for _short, _long in COMPACT_FORMS.items():
    CANONICAL[_short] = _long

# Headers whose values form comma-separated lists (and may be split or combined freely).
LIST_HEADERS = frozenset(
    name.lower() for name in (
        "Via", "Contact", "Route", "Record-Route", "Allow", "Supported", "Require",
        "Proxy-Require", "Unsupported", "Accept", "Accept-Encoding", "Accept-Language",
        "Allow-Events", "Content-Encoding", "Content-Language", "In-Reply-To", "Path",
        "Service-Route", "Alert-Info", "Call-Info", "Error-Info", "Warning",
    )
)


# Every spelling seen so far (bounded: names are chosen by peers) -> (key, spelling to write).
_KEYS: dict[str, tuple[str, str]] = {}
_MAX_KEYS = 4096


def header_key(name: str) -> tuple[str, str]:
    """Return (lookup key, spelling to write) for a header name as found on the wire."""
    known = _KEYS.get(name)
    if known is not None:
        return known
    lowered = name.lower()
    canonical = CANONICAL.get(lowered)
    result = (lowered, name) if canonical is None else (canonical.lower(), canonical)
    if len(_KEYS) < _MAX_KEYS:
        _KEYS[name] = result
    return result


def known_header_name(name: str) -> bool:
    """True for a name already seen and validated as a token (skips the check on hot paths)."""
    return name in _KEYS


class Headers:
    """Ordered multi-map of headers; lookups are case-insensitive and accept compact forms."""

    __slots__ = ("_items", "_cache")

    def __init__(self, items: list[tuple[str, str, str]] | None = None) -> None:
        # Each item: (lookup key, name as written out, raw value).
        self._items: list[tuple[str, str, str]] = items if items is not None else []
        self._cache: dict[str, Any] = {}

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for _key, name, value in self._items:
            yield name, value

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: str) -> bool:
        key = header_key(name)[0]
        return any(item[0] == key for item in self._items)

    def get(self, name: str, default: str | None = None) -> str | None:
        key = header_key(name)[0]
        for item in self._items:
            if item[0] == key:
                return item[2]
        return default

    def get_all(self, name: str) -> list[str]:
        """Every header line of this name, unsplit."""
        key = header_key(name)[0]
        return [item[2] for item in self._items if item[0] == key]

    def values(self, name: str) -> list[str]:
        """Every value of a list header, split at commas across all its lines."""
        out: list[str] = []
        for line in self.get_all(name):
            out.extend(split_list(line))
        return out

    def count(self, name: str) -> int:
        key = header_key(name)[0]
        return sum(1 for item in self._items if item[0] == key)

    def add(self, name: str, value: str) -> None:
        key, spelled = header_key(name)
        self._items.append((key, spelled, value))
        self._cache.pop(key, None)

    def prepend(self, name: str, value: str) -> None:
        """Insert before the first header of that name (or at the top if there is none)."""
        key, spelled = header_key(name)
        for index, item in enumerate(self._items):
            if item[0] == key:
                self._items.insert(index, (key, spelled, value))
                break
        else:
            self._items.insert(0, (key, spelled, value))
        self._cache.pop(key, None)

    def set(self, name: str, value: str) -> None:
        """Replace every header of that name by one value, kept at the first one's place."""
        key, spelled = header_key(name)
        for index, item in enumerate(self._items):
            if item[0] == key:
                self._items[index] = (key, spelled, value)
                self._items[index + 1 :] = [i for i in self._items[index + 1 :] if i[0] != key]
                break
        else:
            self._items.append((key, spelled, value))
        self._cache.pop(key, None)

    def remove(self, name: str) -> None:
        key = header_key(name)[0]
        self._items = [item for item in self._items if item[0] != key]
        self._cache.pop(key, None)

    def remove_first_value(self, name: str) -> None:
        """Drop the first value of a list header (e.g. the top Via, the top Route)."""
        key = header_key(name)[0]
        for index, item in enumerate(self._items):
            if item[0] == key:
                values = split_list(item[2])
                if len(values) > 1:
                    self._items[index] = (key, item[1], ", ".join(values[1:]))
                else:
                    del self._items[index]
                break
        self._cache.pop(key, None)

    def parsed(self, name: str, parse: Callable[[Headers], T]) -> T:
        """Cache ``parse(self)`` under the header's key until that header changes."""
        return self.parsed_key(header_key(name)[0], parse)

    def parsed_key(self, key: str, parse: Callable[[Headers], T]) -> T:
        """``parsed`` for a lookup key (lower-case, compact forms expanded) known in advance."""
        cache = self._cache
        value = cache.get(key, _MISSING)
        if value is _MISSING:
            value = cache[key] = parse(self)
        return value  # type: ignore[no-any-return]

    def all_of_key(self, key: str) -> list[str]:
        """``get_all`` for a lookup key known in advance."""
        return [item[2] for item in self._items if item[0] == key]

    def copy(self) -> Headers:
        return Headers(list(self._items))

    def encode_into(self, out: list[str]) -> None:
        for _key, name, value in self._items:
            out.append(f"{name}: {value}\r\n")


def _single(headers: Headers, name: str) -> str:
    values = headers.all_of_key(header_key(name)[0])
    if not values:
        raise SipError(f"Missing {name} header")
    if len(values) > 1:
        raise SipError(f"Multiple {name} headers")
    return values[0]


def _vias(headers: Headers) -> list[Via]:
    lines = headers.all_of_key("via")
    if len(lines) == 1 and "," not in lines[0]:
        values = [lines[0].strip()]
    else:
        values = []
        for line in lines:
            values.extend(split_list(line))
    if not values:
        raise SipError("Missing Via header")
    out = []
    for value in values:
        if not value:
            raise SipError("Empty Via value")
        out.append(parse_via(value))
    return out


def _call_id(headers: Headers) -> str:
    return _single(headers, "Call-ID").strip()


def _cseq(headers: Headers) -> CSeq:
    return parse_cseq(_single(headers, "CSeq"))


def _from(headers: Headers) -> NameAddr:
    return parse_name_addr(_single(headers, "From"))


def _to(headers: Headers) -> NameAddr:
    return parse_name_addr(_single(headers, "To"))


def _max_forwards(headers: Headers) -> int | None:
    values = headers.all_of_key("max-forwards")
    if not values:
        return None
    if len(values) > 1:
        raise SipError("Multiple Max-Forwards headers")
    try:
        return parse_uint(values[0], 255, "Max-Forwards")
    except SipError:
        # RFC 4475 §3.1.2.4: an overlarge value may be treated as absent.
        if values[0].strip().isdigit():
            return None
        raise


def _contacts(headers: Headers) -> list[NameAddr] | None:
    """``None`` stands for the wildcard ``Contact: *``."""
    values = headers.values("Contact")
    if values == ["*"]:
        return None
    out = []
    for value in values:
        if not value or value == "*":
            raise SipError("Malformed Contact")
        out.append(parse_name_addr(value))
    return out


class Message:
    """Common part of requests and responses."""

    __slots__ = ("headers", "body")

    def __init__(self, headers: Headers | None = None, body: bytes = b"") -> None:
        self.headers = headers if headers is not None else Headers()
        self.body = body

    # --- typed views (parsed lazily, cached) ---
    # These are read many times per message: the cache is looked up here first (none of these
    # views is ever None), the parse goes through ``parsed_key`` only the first time.
    @property
    def call_id(self) -> str:
        value: str | None = self.headers._cache.get("call-id")
        return value if value is not None else self.headers.parsed_key("call-id", _call_id)

    @property
    def cseq(self) -> CSeq:
        value: CSeq | None = self.headers._cache.get("cseq")
        return value if value is not None else self.headers.parsed_key("cseq", _cseq)

    @property
    def from_(self) -> NameAddr:
        value: NameAddr | None = self.headers._cache.get("from")
        return value if value is not None else self.headers.parsed_key("from", _from)

    @property
    def to(self) -> NameAddr:
        value: NameAddr | None = self.headers._cache.get("to")
        return value if value is not None else self.headers.parsed_key("to", _to)

    @property
    def vias(self) -> list[Via]:
        value: list[Via] | None = self.headers._cache.get("via")
        return value if value is not None else self.headers.parsed_key("via", _vias)

    @property
    def top_via(self) -> Via:
        value: list[Via] | None = self.headers._cache.get("via")
        return (value if value is not None else self.headers.parsed_key("via", _vias))[0]

    @property
    def contacts(self) -> list[NameAddr] | None:
        """Parsed Contact values; ``None`` for ``Contact: *``; ``[]`` when absent."""
        return self.headers.parsed_key("contact", _contacts)

    @property
    def max_forwards(self) -> int | None:
        return self.headers.parsed_key("max-forwards", _max_forwards)

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("Content-Type")
        if value is None:
            return None
        return value.split(";", 1)[0].strip().lower()

    def header_uint(self, name: str, limit: int = 2**32 - 1) -> int | None:
        value = self.headers.get(name)
        if value is None:
            return None
        return parse_uint(value, limit, name)

    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialise; Content-Length is always written from the real body length."""
        lines = "".join(
            [f"{name}: {value}\r\n" for key, name, value in self.headers._items
             if key != "content-length"]
        )
        body = self.body
        head = f"{self.start_line()}\r\n{lines}Content-Length: {len(body)}\r\n\r\n".encode(
            "utf-8", "surrogateescape"
        )
        return head + body if body else head

    def __bytes__(self) -> bytes:
        return self.to_bytes()


class Request(Message):
    __slots__ = ("method", "uri", "version")

    def __init__(
        self,
        method: str,
        uri: Uri,
        headers: Headers | None = None,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri = uri
        self.version = version

    is_request = True

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    __slots__ = ("status", "reason", "version")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: Headers | None = None,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason
        self.version = version

    is_request = False

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


REASON_PHRASES = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 301: "Moved Permanently",
    302: "Moved Temporarily", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    413: "Request Entity Too Large", 414: "Request-URI Too Long",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    421: "Extension Required", 423: "Interval Too Brief", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 500: "Server Internal Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Server Time-out", 505: "Version Not Supported", 513: "Message Too Large",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

# Headers a response copies from its request (RFC 3261 §8.2.6.2).
_ECHOED = ("via", "from", "to", "call-id", "cseq")


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    to_tag: str | None = None,
) -> Response:
    """Build a response to ``request``: Via, From, To, Call-ID and CSeq are copied as written.

    A To tag is added when given and the To header has none. Works on requests whose other
    headers are malformed (the copied headers are not parsed unless a tag must be added).
    """
    items = [item for item in request.headers._items if item[0] in _ECHOED]
    if to_tag is not None:
        for index, item in enumerate(items):
            if item[0] == "to":
                if ";tag=" not in item[2].replace(" ", "").lower():
                    items[index] = (item[0], item[1], f"{item[2]};tag={to_tag}")
                break
    if reason is None:
        reason = REASON_PHRASES.get(status, "Unknown")
    return Response(status, reason, Headers(items))
