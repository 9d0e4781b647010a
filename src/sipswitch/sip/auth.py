"""SIP digest authentication (RFC 3261 §22, RFC 2617, RFC 7616, RFC 8760): server challenges with
signed expiring nonces and their verification, and the client side that answers a challenge.

Header values come in and go out as ``str``; looking up credentials and choosing which requests
to challenge are the caller's business.

Decisions worth knowing:

* Nonces are stateless: ``base64url(issue time | 16 random bytes | HMAC-SHA256(secret, time |
  random) truncated to 16 bytes)``. Any server holding the secret accepts them; a forged or
  altered nonce fails. Only nonce-counts already used are remembered, and only for nonces that
  were answered correctly, so a peer without valid credentials cannot grow that table.
* Challenges always offer ``qop="auth"`` (plus ``auth-int`` when enabled). A response without
  ``qop`` (RFC 2069) is refused unless the challenger is built with ``allow_rfc2069=True``; such a
  response has no nonce-count, so each nonce is then good for one request and a second use gets
  STALE (the client silently re-authenticates with a fresh nonce).
* STALE is returned only when the digest is correct but the nonce is too old (RFC 2617 §3.2.1),
  so ``stale=true`` never tells a guesser anything.
* Retransmissions must be absorbed by the transaction layer before verification: a request seen
  again with the same nonce-count is a replay and fails.
* The ``uri`` parameter is returned as sent; comparing it with the Request-URI is left to the
  caller. ``userhash`` and ``username*`` (RFC 7616) are not supported.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import os
import re
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "MAX_HEADER_LENGTH",
    "MAX_PARAMS",
    "SUPPORTED_ALGORITHMS",
    "AuthResult",
    "DigestChallenge",
    "DigestChallenger",
    "DigestCredentials",
    "build_authorization",
    "choose_challenge",
    "compute_ha1",
    "compute_response",
    "parse_challenge",
    "parse_credentials",
]

MAX_HEADER_LENGTH = 8192
MAX_PARAMS = 32

_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
_LWS = " \t\r\n"
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_NC = re.compile(r"[0-9a-fA-F]{8}")
_HEX = re.compile(r"[0-9a-fA-F]+")
_MAX_NC = 0xFFFFFFFF

_NONCE_TIME = struct.Struct(">q")
_NONCE_RANDOM_BYTES = 16
_NONCE_MAC_BYTES = 16
_NONCE_BYTES = _NONCE_TIME.size + _NONCE_RANDOM_BYTES + _NONCE_MAC_BYTES
_NONCE_CHARS = (_NONCE_BYTES * 8 + 5) // 6
_NONCE_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class _Algorithm:
    name: str
    hash_name: str
    session: bool
    preference: int

    def digest(self, data: str | bytes) -> str:
        raw = data if isinstance(data, bytes) else _encode(data)
        return hashlib.new(self.hash_name, raw).hexdigest()


_ALGORITHMS: dict[str, _Algorithm] = {
    a.name.upper(): a
    for a in (
        _Algorithm("SHA-256", "sha256", False, 0),
        _Algorithm("SHA-256-sess", "sha256", True, 1),
        _Algorithm("MD5", "md5", False, 2),
        _Algorithm("MD5-sess", "md5", True, 3),
    )
}
SUPPORTED_ALGORITHMS: tuple[str, ...] = tuple(a.name for a in _ALGORITHMS.values())


def _algorithm(name: str) -> _Algorithm | None:
    return _ALGORITHMS.get(name.upper())


def _require_algorithm(name: str) -> _Algorithm:
    spec = _algorithm(name)
    if spec is None:
        raise ValueError(f"unsupported digest algorithm {name!r}")
    return spec


def _encode(text: str) -> bytes:
    # Header text decoded with surrogateescape turns back into the bytes the peer hashed.
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


_FUTURE_SLACK = 1.0  # seconds


class AuthResult(enum.Enum):
    """The outcome of checking credentials against a challenge."""

    OK = "ok"
    STALE = "stale"  # correct digest over an expired nonce: re-challenge with stale=true
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class DigestCredentials:
    """The parameters of a ``Digest`` Authorization or Proxy-Authorization value, as sent."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    cnonce: str | None = None
    nc: str | None = None
    qop: str | None = None
    opaque: str | None = None


@dataclass(frozen=True, slots=True)
class DigestChallenge:
    """The parameters of a ``Digest`` WWW-Authenticate or Proxy-Authenticate value."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False

    @property
    def supported(self) -> bool:
        """Whether :func:`build_authorization` can answer this challenge."""
        spec = _algorithm(self.algorithm)
        if spec is None:
            return False
        if self.qop:
            return any(q.lower() in ("auth", "auth-int") for q in self.qop)
        return not spec.session


def compute_ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """``H(username:realm:password)`` in lowercase hex: the value a credential store keeps.

    For the ``-sess`` algorithms this is the stored part as well; the per-nonce step happens in
    :func:`compute_response`. Raises ``ValueError`` for an unsupported algorithm.
    """
    return _require_algorithm(algorithm).digest(f"{username}:{realm}:{password}")


def compute_response(
    ha1: str,
    algorithm: str,
    method: str,
    uri: str,
    nonce: str,
    *,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The ``response`` value in lowercase hex for the given parameters (all as sent on the wire).

    Raises ``ValueError`` for an unsupported algorithm or qop, or when ``qop`` or a ``-sess``
    algorithm is used without ``nc``/``cnonce``.
    """
    spec = _require_algorithm(algorithm)
    if spec.session:
        if cnonce is None:
            raise ValueError(f"{spec.name} needs a cnonce")
        ha1 = spec.digest(f"{ha1}:{nonce}:{cnonce}")
    a2 = f"{method}:{uri}"
    if qop is not None and qop.lower() == "auth-int":
        a2 = f"{a2}:{spec.digest(body)}"
    elif qop is not None and qop.lower() != "auth":
        raise ValueError(f"unsupported qop {qop!r}")
    ha2 = spec.digest(a2)
    if qop is None:
        return spec.digest(f"{ha1}:{nonce}:{ha2}")
    if nc is None or cnonce is None:
        raise ValueError("qop needs nc and cnonce")
    return spec.digest(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


# --- header parsing -------------------------------------------------------------------------


_AUTH_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
# One auth-param and the comma after it (or the end): a quoted string may hold any character
# but controls (tab excepted) and DEL, escaped by a backslash or not.
_AUTH_PARAM = re.compile(
    rf"[ \t\r\n]*({_AUTH_TOKEN})[ \t\r\n]*=[ \t\r\n]*"
    r'(?:"([^"\\\x00-\x08\x0a-\x1f\x7f]*(?:\\[^\x00-\x08\x0a-\x1f\x7f][^"\\\x00-\x08\x0a-\x1f\x7f]*)*)"'
    rf"|({_AUTH_TOKEN}))"
    r"[ \t\r\n]*(,|\Z)"
)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


def _parse_digest_params(value: str) -> dict[str, str] | None:
    """The auth-params of a ``Digest`` header value (names lowercased), or None if malformed."""
    if len(value) > MAX_HEADER_LENGTH:
        return None
    text = _FOLD.sub(" ", value).strip(_LWS) if "\n" in value else value.strip(_LWS)
    if text[:6].lower() != "digest" or len(text) < 7 or text[6] not in _LWS:
        return None
    params: dict[str, str] = {}
    position = 6
    n = len(text)
    match = _AUTH_PARAM.match
    while True:
        found = match(text, position)
        if found is None:
            return None
        name, quoted, token, comma = found.groups()
        name = name.lower()
        if name in params or len(params) >= MAX_PARAMS:
            return None
        if quoted is None:
            params[name] = token
        elif "\\" in quoted:
            params[name] = _QUOTED_PAIR.sub(r"\1", quoted)
        else:
            params[name] = quoted
        position = found.end()
        if not comma:
            return params if position >= n else None


def parse_credentials(value: str) -> DigestCredentials | None:
    """Parse an Authorization / Proxy-Authorization value; None for another scheme or bad input.

    Unknown parameters are ignored. ``username``, ``realm``, ``nonce``, ``uri`` and ``response``
    are required.
    """
    params = _parse_digest_params(value)
    if params is None:
        return None
    try:
        username = params["username"]
        realm = params["realm"]
        nonce = params["nonce"]
        uri = params["uri"]
        response = params["response"]
    except KeyError:
        return None
    if not nonce or not response:
        return None
    return DigestCredentials(
        username=username,
        realm=realm,
        nonce=nonce,
        uri=uri,
        response=response,
        algorithm=params.get("algorithm", "MD5"),
        cnonce=params.get("cnonce"),
        nc=params.get("nc"),
        qop=params.get("qop"),
        opaque=params.get("opaque"),
    )


def parse_challenge(value: str) -> DigestChallenge | None:
    """Parse a WWW-Authenticate / Proxy-Authenticate value; None for another scheme or bad input.

    The challenge is returned even if its algorithm is unsupported (see
    :attr:`DigestChallenge.supported`).
    """
    params = _parse_digest_params(value)
    if params is None or "realm" not in params or not params.get("nonce"):
        return None
    qop = tuple(q for q in (p.strip(_LWS) for p in params.get("qop", "").split(",")) if q)
    return DigestChallenge(
        realm=params["realm"],
        nonce=params["nonce"],
        algorithm=params.get("algorithm", "MD5"),
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "").lower() == "true",
    )


def choose_challenge(values: Iterable[str]) -> DigestChallenge | None:
    """Of several challenge values (one per algorithm, RFC 8760), the strongest one supported."""
    best: DigestChallenge | None = None
    best_rank = len(_ALGORITHMS)
    for value in values:
        challenge = parse_challenge(value)
        if challenge is None or not challenge.supported:
            continue
        rank = _require_algorithm(challenge.algorithm).preference
        if rank < best_rank:
            best, best_rank = challenge, rank
    return best


def _quote(text: str) -> str:
    if any((c < " " and c != "\t") or c == "\x7f" for c in text):
        raise ValueError("control characters cannot appear in a header parameter")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- client side ----------------------------------------------------------------------------


def build_authorization(
    challenge: DigestChallenge,
    method: str,
    uri: str,
    username: str,
    password: str,
    cnonce: str | None = None,
    nc: int = 1,
    *,
    body: bytes = b"",
) -> str:
    """An Authorization / Proxy-Authorization value answering ``challenge``.

    Uses ``qop=auth`` when offered (``auth-int`` over ``body`` when only that is offered), and
    the RFC 2069 form when the challenge has no qop. ``cnonce`` defaults to a random value; ``nc``
    is the number of requests sent with this nonce so far, this one included. Raises
    ``ValueError`` for an unsupported challenge or out-of-range ``nc``.
    """
    spec = _require_algorithm(challenge.algorithm)
    offered = [q.lower() for q in challenge.qop]
    qop: str | None
    if not offered:
        qop = None
    elif "auth" in offered:
        qop = "auth"
    elif "auth-int" in offered:
        qop = "auth-int"
    else:
        raise ValueError(f"no supported qop in {challenge.qop!r}")
    if qop is None and spec.session:
        raise ValueError(f"{spec.name} without qop is not supported")
    if not 1 <= nc <= _MAX_NC:
        raise ValueError(f"nonce-count {nc} out of range")
    parts = [
        f"username={_quote(username)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
    ]
    ha1 = compute_ha1(username, challenge.realm, password, spec.name)
    nc_text = f"{nc:08x}"
    if cnonce is None:
        cnonce = secrets.token_hex(8)
    if qop is None:
        response = compute_response(ha1, spec.name, method, uri, challenge.nonce)
    else:
        response = compute_response(
            ha1,
            spec.name,
            method,
            uri,
            challenge.nonce,
            qop=qop,
            nc=nc_text,
            cnonce=cnonce,
            body=body,
        )
    parts.append(f"response={_quote(response)}")
    parts.append(f"algorithm={challenge.algorithm}")
    if qop is not None:
        parts += [f"cnonce={_quote(cnonce)}", f"qop={qop}", f"nc={nc_text}"]
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    return "Digest " + ", ".join(parts)


# --- server side ----------------------------------------------------------------------------


@dataclass(slots=True)
class _NonceUse:
    last_nc: int
    expires: float
    issued: float


class DigestChallenger:
    """Issues digest challenges for one realm and verifies the answers.

    ``clock`` returns seconds; with a wall clock (``time.time``) nonces stay valid across
    restarts and across servers sharing ``secret``. ``max_tracked_nonces`` bounds the memory of
    nonce-counts; when a nonce still in use must be forgotten, every nonce issued no later than
    it becomes STALE, so forgetting never lets a replay through.
    """

    def __init__(
        self,
        secret: bytes,
        realm: str,
        clock: Callable[[], float],
        nonce_ttl: float = 300.0,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        max_tracked_nonces: int = 100_000,
        *,
        allow_rfc2069: bool = False,
        offer_auth_int: bool = False,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the nonce secret must be at least 16 bytes")
        if not nonce_ttl > 0:
            raise ValueError("nonce_ttl must be positive")
        if max_tracked_nonces < 1:
            raise ValueError("max_tracked_nonces must be at least 1")
        _quote(realm)
        specs = {_require_algorithm(a).name: _require_algorithm(a) for a in algorithms}
        if not specs:
            raise ValueError("at least one algorithm is needed")
        self.realm = realm
        self.nonce_ttl = nonce_ttl
        self.allow_rfc2069 = allow_rfc2069
        self.offer_auth_int = offer_auth_int
        # RFC 8760 §2.4: challenges go out in order of preference, which is the order given.
        # (Many deployed phones, and SIPp, answer only the first challenge and know only MD5,
        # so a PBX may have to put MD5 first.)
        self.algorithms: tuple[str, ...] = tuple(specs)
        self._secret = secret
        self._clock = clock
        self._max_tracked = max_tracked_nonces
        self._used: OrderedDict[str, _NonceUse] = OrderedDict()
        self._forgotten_until = float("-inf")
        opaque_mac = hmac.new(secret, b"opaque\x00" + _encode(realm), hashlib.sha256).digest()
        self.opaque = base64.urlsafe_b64encode(opaque_mac[:16]).rstrip(b"=").decode("ascii")
        # An unknown user is checked against a hash nobody knows the preimage of, so the
        # answer and the work done are those of a wrong password.
        self._dummy_ha1 = {name: spec.digest(os.urandom(32)) for name, spec in specs.items()}

    # -- challenges

    def new_nonce(self) -> str:
        """A fresh signed nonce stamped with the current time."""
        # Truncate: a rounded stamp could lie up to 0.5 ms in the future.
        stamp = _NONCE_TIME.pack(int(self._clock() * 1000))
        payload = stamp + secrets.token_bytes(_NONCE_RANDOM_BYTES)
        raw = payload + self._mac(payload)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def challenge_values(self, stale: bool = False) -> list[str]:
        """WWW-Authenticate / Proxy-Authenticate values, one per algorithm, sharing one nonce."""
        nonce = self.new_nonce()
        qop = "auth,auth-int" if self.offer_auth_int else "auth"
        tail = ", stale=true" if stale else ""
        return [
            f'Digest realm={_quote(self.realm)}, nonce="{nonce}", opaque="{self.opaque}", '
            f'algorithm={name}, qop="{qop}"{tail}'
            for name in self.algorithms
        ]

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:_NONCE_MAC_BYTES]

    def _nonce_issued(self, nonce: str) -> float | None:
        """The issue time of a nonce this challenger signed, or None."""
        if len(nonce) != _NONCE_CHARS or not _NONCE_ALPHABET.fullmatch(nonce):
            return None
        try:
            raw = base64.b64decode(nonce + "=" * (-len(nonce) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            return None
        # Several spellings decode to the same bytes (unused trailing bits); accept one only,
        # since used nonce-counts are remembered by the nonce's text.
        if len(raw) != _NONCE_BYTES or base64.urlsafe_b64encode(raw).rstrip(b"=") != nonce.encode():
            return None
        payload, mac = raw[:-_NONCE_MAC_BYTES], raw[-_NONCE_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        (millis,) = _NONCE_TIME.unpack_from(payload)
        return float(millis) / 1000.0

    # -- verification

    def verify(
        self, creds: DigestCredentials, method: str, ha1: str | None, body: bytes = b""
    ) -> AuthResult:
        """Check ``creds`` for a request with ``method`` (and ``body``, for ``auth-int``).

        ``ha1`` is the stored ``H(username:realm:password)`` for the algorithm of ``creds``
        (see :func:`compute_ha1`), or None when the user is unknown. On OK the nonce-count is
        recorded, so the same credentials are refused the next time.
        """
        spec = _algorithm(creds.algorithm)
        if spec is None or spec.name not in self.algorithms or creds.realm != self.realm:
            return AuthResult.FAILED
        issued = self._nonce_issued(creds.nonce)
        if issued is None:
            return AuthResult.FAILED
        if creds.opaque is not None and not hmac.compare_digest(
            _encode(creds.opaque), self.opaque.encode("ascii")
        ):
            return AuthResult.FAILED
        nc: int
        if creds.qop is None:
            if not self.allow_rfc2069 or spec.session:
                return AuthResult.FAILED
            nc = _MAX_NC  # one use per nonce: nothing can follow it
        else:
            qop = creds.qop.lower()
            if not (qop == "auth" or (qop == "auth-int" and self.offer_auth_int)):
                return AuthResult.FAILED
            if not creds.cnonce or creds.nc is None or not _NC.fullmatch(creds.nc):
                return AuthResult.FAILED
            nc = int(creds.nc, 16)
            if nc == 0:
                return AuthResult.FAILED
        if not _HEX.fullmatch(creds.response):
            return AuthResult.FAILED

        expected = compute_response(
            (self._dummy_ha1[spec.name] if ha1 is None else ha1).lower(),
            spec.name,
            method,
            creds.uri,
            creds.nonce,
            qop=creds.qop,
            nc=creds.nc,
            cnonce=creds.cnonce,
            body=body,
        )
        matched = hmac.compare_digest(expected.encode("ascii"), creds.response.lower().encode())
        if not matched or ha1 is None:
            return AuthResult.FAILED

        now = self._clock()
        age = now - issued
        # A little slack for a wall clock stepped back between issue and answer.
        if age < -_FUTURE_SLACK or age > self.nonce_ttl:
            return AuthResult.STALE
        use = self._used.get(creds.nonce)
        if use is None:
            if issued <= self._forgotten_until:
                return AuthResult.STALE
            self._remember(creds.nonce, nc, issued, now)
        elif nc <= use.last_nc:
            return AuthResult.STALE if creds.qop is None else AuthResult.FAILED
        else:
            use.last_nc = nc
        return AuthResult.OK

    def _remember(self, nonce: str, nc: int, issued: float, now: float) -> None:
        used = self._used
        while used:
            oldest = next(iter(used.values()))
            if oldest.expires >= now and len(used) < self._max_tracked:
                break
            used.popitem(last=False)
            if oldest.expires >= now:
                self._forgotten_until = max(self._forgotten_until, oldest.issued)
        used[nonce] = _NonceUse(nc, issued + self.nonce_ttl, issued)

    @property
    def tracked_nonces(self) -> int:
        """How many nonces have their nonce-count remembered."""
        return len(self._used)
