"""Typed SIP header values: name-addr (From/To/Contact/Route), Via, CSeq, and list splitting.

Each ``parse_*`` function takes one header value as text and raises :class:`SipError` (400) when
it is malformed; each type serialises back with ``str()``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import SipError
from .uri import AbsoluteUri, SipUri, Uri, parse_hostport, parse_uri

MAX_CSEQ = 2**32 - 1
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_WS = " \t"


def is_token(text: str) -> bool:
    return _TOKEN.fullmatch(text) is not None


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value, respecting quotes and ``<...>``.

    Items are stripped; empty items are kept (as ``""``) so callers can reject them.
    """
    if "," not in value:
        return [value.strip()]
    items: list[str] = []
    start = 0
    in_quote = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if in_quote:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            items.append(value[start:i].strip())
            start = i + 1
        i += 1
    items.append(value[start:].strip())
    return items


def parse_params(text: str) -> dict[str, str | None]:
    """Parse ``;name[=value]`` pairs (the text starts after the first ``;``).

    Names are lower-cased; values are kept as written (quoted strings keep their quotes).
    """
    params: dict[str, str | None] = {}
    for item in _split_outside_quotes(text, ";"):
        item = item.strip(_WS)
        if not item:
            raise SipError("Empty header parameter")
        eq = item.find("=")
        if eq < 0:
            name, value = item, None
        else:
            name, value = item[:eq].strip(_WS), item[eq + 1 :].strip(_WS)
            if not value:
                raise SipError("Header parameter without a value")
            if value[0] == '"' and (len(value) < 2 or value[-1] != '"'):
                raise SipError("Unterminated quoted parameter")
        if name not in _COMMON_PARAMS and not is_token(name):
            raise SipError("Malformed header parameter")
        params[name.lower()] = value
    return params


_COMMON_PARAMS = frozenset(
    ("tag", "branch", "rport", "received", "transport", "lr", "expires", "q", "maddr", "user")
)


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    if '"' not in text:
        return text.split(sep)
    out: list[str] = []
    start = 0
    in_quote = False
    i = 0
    while i < len(text):
        ch = text[i]
        if in_quote:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quote = False
        elif ch == '"':
            in_quote = True
        elif ch == sep:
            out.append(text[start:i])
            start = i + 1
        i += 1
    if in_quote:
        raise SipError("Unterminated quoted string")
    out.append(text[start:])
    return out


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def unquote(text: str) -> str:
    """Remove surrounding quotes and quoted-pair escapes."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        inner = text[1:-1]
        if "\\" not in inner:
            return inner
        out: list[str] = []
        i = 0
        while i < len(inner):
            if inner[i] == "\\" and i + 1 < len(inner):
                i += 1
            out.append(inner[i])
            i += 1
        return "".join(out)
    return text


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(slots=True)
class NameAddr:
    """``"Display" <uri>;params`` as in From, To, Contact, Route and Record-Route.

    ``display`` is kept as written (quoted or a run of tokens); ``display_text`` unquotes it.
    """

    uri: Uri
    display: str = ""
    params: dict[str, str | None] = field(default_factory=dict)

    def __str__(self) -> str:
        head = f"{self.display} <{self.uri}>" if self.display else f"<{self.uri}>"
        return head + format_params(self.params)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @property
    def display_text(self) -> str:
        return unquote(self.display)

    @property
    def sip_uri(self) -> SipUri:
        if not isinstance(self.uri, SipUri):
            raise SipError("Not a SIP URI", 416)
        return self.uri


# From, To and Contact values repeat on every message of a dialog: value -> parsed. Bounded in
# entries and in the length of a value (the values are chosen by peers); callers get copies, so
# nobody can change a cached entry.
_NAME_ADDR_CACHE: dict[str, NameAddr] = {}
_NAME_ADDR_CACHE_SIZE = 4096
_NAME_ADDR_CACHED_LENGTH = 256


def parse_name_addr(value: str) -> NameAddr:
    """Parse name-addr or addr-spec with header parameters (RFC 3261 §20.10)."""
    cached = _NAME_ADDR_CACHE.get(value)
    if cached is None:
        cached = _parse_name_addr(value)
        if len(value) > _NAME_ADDR_CACHED_LENGTH:
            return cached  # parsed just now for this caller alone: no copy needed
        if len(_NAME_ADDR_CACHE) >= _NAME_ADDR_CACHE_SIZE:
            _NAME_ADDR_CACHE.clear()
        _NAME_ADDR_CACHE[value] = cached
    uri = cached.uri
    if isinstance(uri, SipUri):
        uri = SipUri(
            uri.scheme, uri.host, uri.user, uri.password, uri.port, dict(uri.params), uri.headers
        )
    else:
        uri = AbsoluteUri(uri.scheme, uri.text)
    return NameAddr(uri, cached.display, dict(cached.params))


def _parse_name_addr(value: str) -> NameAddr:
    text = value.strip(_WS)
    if not text:
        raise SipError("Empty address")
    display = ""
    if text[0] == '"':
        end = _closing_quote(text)
        display = text[: end + 1]
        text = text[end + 1 :].lstrip(_WS)
        if not text.startswith("<"):
            raise SipError("Display name without <URI>")
    lt = text.find("<")
    if lt >= 0:
        if lt > 0:
            if display:
                raise SipError("Malformed display name")
            display = text[:lt].strip(_WS)
            for word in display.split():
                if not is_token(word):
                    raise SipError("Display name must be quoted")
        gt = text.find(">", lt)
        if gt < 0:
            raise SipError("Unterminated <URI>")
        uri_text = text[lt + 1 : gt]
        if uri_text != uri_text.strip(_WS):
            raise SipError("Whitespace inside <URI>")
        uri = parse_uri(uri_text)
        rest = text[gt + 1 :].lstrip(_WS)
    else:
        # addr-spec: parameters after the URI belong to the header, not to the URI.
        semi = text.find(";")
        uri_text = text if semi < 0 else text[:semi]
        uri_text = uri_text.rstrip(_WS)
        if any(c in uri_text for c in " \t,?"):
            raise SipError("Address must be enclosed in <> ")
        uri = parse_uri(uri_text)
        rest = "" if semi < 0 else text[semi:]
    params: dict[str, str | None] = {}
    if rest:
        if rest[0] != ";":
            raise SipError("Unexpected text after address")
        params = parse_params(rest[1:])
    return NameAddr(uri, display, params)


def _closing_quote(text: str) -> int:
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            return i
        i += 1
    raise SipError("Unterminated quoted display name")


@dataclass(slots=True)
class Via:
    """One Via value: ``SIP/2.0/UDP host:port;params``."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "SIP/2.0"

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.transport} {self.host}{port}{format_params(self.params)}"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


_TRANSPORTS = frozenset(("UDP", "TCP", "TLS", "SCTP", "WS", "WSS", "udp", "tcp", "tls"))


def parse_via(value: str) -> Via:
    text = value.strip(_WS)
    semi = text.find(";")
    head = text if semi < 0 else text[:semi]
    parts = head.split("/", 2)
    if len(parts) != 3:
        raise SipError("Malformed Via")
    name, version = parts[0].strip(_WS), parts[1].strip(_WS)
    tail = parts[2].strip(_WS).split(None, 1)
    if len(tail) != 2 or not (
        (name == "SIP" or is_token(name))
        and (version == "2.0" or is_token(version))
        and (tail[0] in _TRANSPORTS or is_token(tail[0]))
    ):
        raise SipError("Malformed Via")
    transport = tail[0].upper()
    host, port = parse_hostport(tail[1].replace(" ", "").replace("\t", ""))
    params = parse_params(text[semi + 1 :]) if semi >= 0 else {}
    for key in ("received", "maddr"):
        raw = params.get(key)
        if raw is not None and raw.startswith("["):
            params[key] = raw  # RFC 5118 §4.5: both bracketed and bare forms are accepted
    return Via(transport, host, port, params, f"{name.upper()}/{version}")


@dataclass(slots=True, frozen=True)
class CSeq:
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(value: str) -> CSeq:
    parts = value.split()
    if len(parts) != 2:
        raise SipError("Malformed CSeq")
    number_text, method = parts
    if not number_text.isdigit() or not number_text.isascii() or len(number_text) > 10:
        raise SipError("CSeq number out of range")
    number = int(number_text)
    if number > MAX_CSEQ:
        raise SipError("CSeq number out of range")
    if not is_token(method):
        raise SipError("Malformed CSeq method")
    return CSeq(number, method)


def parse_uint(value: str, limit: int, what: str) -> int:
    """A non-negative decimal header value no larger than ``limit`` (bounded before ``int()``)."""
    text = value.strip(_WS)
    if not text or not text.isdigit() or not text.isascii():
        raise SipError(f"Malformed {what}")
    digits = text.lstrip("0") or "0"
    if len(digits) > 20:
        raise SipError(f"{what} out of range")
    number = int(digits)
    if number > limit:
        raise SipError(f"{what} out of range")
    return number
