"""Structural checks a request or response must pass before the transaction layer sees it.

``check_request`` raises :class:`SipError` with the status to answer (400 for a missing or
malformed mandatory header, 416 for an unsupported URI scheme, 501 for an unknown method,
420 for an unsupported extension); ``check_response`` says whether a response is well formed
enough to be matched to a transaction (malformed responses are dropped, never answered).
"""

from __future__ import annotations

from collections.abc import Collection

from .errors import SipError
from .message import Request, Response
from .uri import SipUri

_SINGLE = ("From", "To", "Call-ID", "CSeq")
_SINGLE_KEYS = ("from", "to", "call-id", "cseq")
_COUNTED = (*_SINGLE_KEYS, "require")


def check_request(
    request: Request,
    known_methods: Collection[str],
    supported_extensions: Collection[str] = (),
) -> None:
    """Validate ``request``; raise :class:`SipError` carrying the status to answer with."""
    if request.method not in known_methods:
        raise SipError("Method not supported", 501)
    headers = request.headers
    counts = dict.fromkeys(_COUNTED, 0)
    for item in headers._items:
        key = item[0]
        if key in counts:
            counts[key] += 1
    for name, key in zip(_SINGLE, _SINGLE_KEYS, strict=True):
        count = counts[key]
        if count == 0:
            raise SipError(f"Missing {name} header")
        if count > 1:
            raise SipError(f"Multiple {name} headers")
    _ = request.vias  # parsing is the check
    cseq = request.cseq
    if cseq.method != request.method:
        raise SipError("CSeq method does not match the request method")
    _ = (request.from_, request.to, request.max_forwards)
    if not request.call_id:
        raise SipError("Empty Call-ID")
    if not isinstance(request.uri, SipUri):
        raise SipError("Unsupported URI scheme", 416)
    if request.uri.headers is not None:
        raise SipError("Headers are not allowed in the Request-URI")
    if counts["require"] and request.method not in ("ACK", "CANCEL"):
        required = [v for v in headers.values("Require") if v]
        unsupported = [v for v in required if v.lower() not in supported_extensions]
        if unsupported:
            raise UnsupportedExtension(unsupported)


class UnsupportedExtension(SipError):
    """420 Bad Extension; ``extensions`` go into the ``Unsupported`` header."""

    def __init__(self, extensions: list[str]) -> None:
        super().__init__("Bad Extension", 420)
        self.extensions = extensions


def check_response(response: Response) -> bool:
    """True when the response can be matched to a transaction; False means drop it."""
    try:
        _ = (response.vias, response.cseq, response.call_id, response.from_, response.to)
    except SipError:
        return False
    return True
