"""SIP and SIPS URIs (RFC 3261 §19.1, RFC 5118 IPv6 references) and opaque absolute URIs.

Parsing keeps the user part and parameter values as written (still %-escaped), so a URI
serialises back byte for byte; ``user_unescaped`` gives the user as a string that may contain
NULs (``%00``) without being cut short.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from .errors import SipError

MAX_URI_LENGTH = 4096
_ILLEGAL = re.compile(r'[\x00-\x20<>"\x7f]')
_HOST = re.compile(r"[A-Za-z0-9.\-_]+")
_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:.")
_SIP_SCHEMES = frozenset(("sip", "sips", "SIP", "SIPS"))
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.")


def unescape(text: str) -> str:
    """Decode %HH escapes once (never recursively); a stray '%' stays as it is."""
    if "%" not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "%" and _is_hex(text[i + 1 : i + 3]):
            out.append(chr(int(text[i + 1 : i + 3], 16)))
            i += 3
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _is_hex(pair: str) -> bool:
    return len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair)


@dataclass(slots=True)
class SipUri:
    """A ``sip:`` or ``sips:`` URI. ``host`` keeps IPv6 brackets; ``params`` keys are lower-case."""

    scheme: str
    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str | None = None

    def __str__(self) -> str:
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts.append(":" + self.password)
            parts.append("@")
        parts.append(self.host)
        if self.port is not None:
            parts.append(f":{self.port}")
        for name, value in self.params.items():
            parts.append(f";{name}" if value is None else f";{name}={value}")
        if self.headers is not None:
            parts.append("?" + self.headers)
        return "".join(parts)

    @property
    def user_unescaped(self) -> str:
        return unescape(self.user) if self.user is not None else ""

    @property
    def host_address(self) -> str:
        """The host without IPv6 brackets, as a socket address wants it."""
        return self.host[1:-1] if self.host.startswith("[") else self.host

    @property
    def transport(self) -> str | None:
        value = self.params.get("transport")
        return value.lower() if value else None

    def copy(self) -> SipUri:
        return SipUri(
            self.scheme, self.host, self.user, self.password, self.port,
            dict(self.params), self.headers,
        )


@dataclass(slots=True)
class AbsoluteUri:
    """A URI of any other scheme (tel:, http:, urn:, ...), kept opaque."""

    scheme: str
    text: str

    def __str__(self) -> str:
        return self.text


Uri = SipUri | AbsoluteUri


def parse_uri(text: str) -> Uri:
    """Parse a URI as written in a Request-Line or inside ``<...>``. Raises :class:`SipError`."""
    if len(text) > MAX_URI_LENGTH:
        raise SipError("URI too long")
    if not text:
        raise SipError("Empty URI")
    colon = text.find(":")
    if colon <= 0:
        raise SipError("URI without a scheme")
    scheme = text[:colon]
    if scheme not in _SIP_SCHEMES and (
        not (scheme[0].isascii() and scheme[0].isalpha())
        or any(c not in _SCHEME_CHARS for c in scheme)
    ):
        raise SipError("Malformed URI scheme")
    if _ILLEGAL.search(text) is not None:
        raise SipError("Illegal character in URI")
    lowered = scheme.lower()
    if lowered not in ("sip", "sips"):
        return AbsoluteUri(lowered, text)
    return _parse_sip(lowered, text[colon + 1 :])


def parse_sip_uri(text: str) -> SipUri:
    """Like :func:`parse_uri` but only accepts ``sip:``/``sips:`` URIs."""
    uri = parse_uri(text)
    if not isinstance(uri, SipUri):
        raise SipError("Not a SIP URI", 416)
    return uri


def _parse_sip(scheme: str, rest: str) -> SipUri:
    headers: str | None = None
    at = rest.find("@")
    user: str | None = None
    password: str | None = None
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1 :]
        if not userinfo:
            raise SipError("Empty user part in URI")
        pw = userinfo.find(":")
        if pw >= 0:
            user, password = userinfo[:pw], userinfo[pw + 1 :]
        else:
            user = userinfo
    q = rest.find("?")
    if q >= 0:
        headers = rest[q + 1 :]
        rest = rest[:q]
    semi = rest.find(";")
    hostport = rest if semi < 0 else rest[:semi]
    host, port = parse_hostport(hostport)
    params: dict[str, str | None] = {}
    if semi >= 0:
        for item in rest[semi + 1 :].split(";"):
            if not item:
                raise SipError("Empty URI parameter")
            eq = item.find("=")
            if eq == 0:
                raise SipError("URI parameter without a name")
            if eq < 0:
                params[item.lower()] = None
            else:
                params[item[:eq].lower()] = item[eq + 1 :]
    return SipUri(scheme, host, user, password, port, params, headers)


def parse_hostport(text: str) -> tuple[str, int | None]:
    """Split ``host[:port]``; IPv6 references must be bracketed (RFC 5118 §4.2).

    Hostnames are lower-cased. A port outside 0..65535 or a non-numeric port is an error.
    """
    if not text:
        raise SipError("Missing host")
    if text[0] == "[":
        end = text.find("]")
        if end < 0:
            raise SipError("Unterminated IPv6 reference")
        inner = text[1:end]
        _check_ipv6(inner)
        host = "[" + inner.lower() + "]"
        tail = text[end + 1 :]
        if not tail:
            return host, None
        if tail[0] != ":":
            raise SipError("Malformed host")
        return host, _parse_port(tail[1:])
    colon = text.find(":")
    if colon >= 0:
        host, port = text[:colon], _parse_port(text[colon + 1 :])
    else:
        host, port = text, None
    if _HOST.fullmatch(host) is None:
        raise SipError("Malformed host")
    return host.lower(), port


def _check_ipv6(inner: str) -> None:
    if not inner or any(c not in _IPV6_CHARS for c in inner):
        raise SipError("Malformed IPv6 reference")
    try:
        ipaddress.IPv6Address(inner)
    except ValueError:
        # RFC 5118 §4.10: tolerate the 3-colon form the RFC 3261 ABNF allowed by mistake.
        if ":::" not in inner:
            raise SipError("Malformed IPv6 reference") from None


def _parse_port(text: str) -> int:
    if not text or len(text) > 5 or not text.isdigit() or not text.isascii():
        raise SipError("Malformed port")
    port = int(text)
    if port > 65535:
        raise SipError("Port out of range")
    return port


def format_host(host: str) -> str:
    """Bracket an IPv6 address for use in a URI or Via; leave names and IPv4 as they are."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host
