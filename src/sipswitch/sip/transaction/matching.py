"""Server transaction matching keys (RFC 3261 §17.2.3 with the RFC 2543 fallback), the
received/rport stamping of an incoming request's top Via (RFC 3261 §18.2.1, RFC 3581) and the
address a response goes to (RFC 3261 §18.2.2, RFC 3581 §4).
"""

from __future__ import annotations

import ipaddress

from ..errors import SipError
from ..headers import Via
from ..message import Headers, Request
from ..transport.base import Address
from .base import MAGIC_COOKIE, ServerTransaction

ServerKey = tuple[str, ...]
DEFAULT_PORT = 5060


def is_rfc3261_branch(branch: str | None) -> bool:
    return (
        branch is not None and len(branch) > len(MAGIC_COOKIE) and branch.startswith(MAGIC_COOKIE)
    )


def server_key(request: Request, via: Via, method: str) -> ServerKey:
    """The key of the server transaction ``request`` belongs to; ``method`` is the transaction's
    method (INVITE for an ACK, and for a CANCEL looking for its INVITE).

    RFC 3261 requests: (branch, sent-by, method). RFC 2543 requests (no magic cookie): the
    Request-URI, From tag, Call-ID, CSeq number, method and top Via; the To tag is checked
    separately by :func:`to_tag_matches` because an ACK carries the tag of our response.
    Raises :class:`SipError` when a header the key needs does not parse.
    """
    branch = via.branch
    if branch is not None and is_rfc3261_branch(branch):
        return (branch, via.sent_by, method)
    return (
        "",
        str(request.uri),
        request.from_.tag or "",
        request.call_id,
        str(request.cseq.number),
        method,
        via.sent_by,
        branch or "",
    )


def is_rfc2543_key(key: ServerKey) -> bool:
    return key[0] == ""


def to_tag_matches(txn: ServerTransaction, request: Request) -> bool:
    """RFC 2543 matching: an ACK carries the To tag of the response it acknowledges; any other
    request the To tag of the request that created the transaction."""
    try:
        tag = request.to.tag
        if request.method == "ACK":
            response = txn.last_response
            expected = response.to.tag if response is not None else None
        else:
            expected = txn.request.to.tag
    except SipError:
        return False
    return (tag or None) == (expected or None)


def _bare(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def same_host(via_host: str, source_host: str) -> bool:
    a = _bare(via_host).lower()
    b = source_host.lower()
    if a == b:
        return True
    if ":" in a and ":" in b:
        try:
            return ipaddress.ip_address(a) == ipaddress.ip_address(b)
        except ValueError:
            return False
    return False


def replace_top_via(headers: Headers, via: Via, parsed: list[Via] | None = None) -> None:
    """Write ``via`` in place of the top Via value, keeping the other Via values in order.
    ``parsed`` (the Via values as parsed before) keeps the parsed view cached, so the new text
    is not parsed again."""
    headers.remove_first_value("Via")
    headers.prepend("Via", str(via))
    if parsed:
        vias = [via, *parsed[1:]]
        headers.parsed_key("via", lambda _headers: vias)


def stamp_via(request: Request, via: Via, source: Address, force_rport: bool = False) -> Via:
    """Add ``received`` when the sent-by host is not where the request came from, and fill an
    empty ``rport`` with the source port (RFC 3581 then requires ``received`` too). The header
    text is rewritten so responses, which copy the Via, echo both.

    ``force_rport`` treats every UDP request as if it asked for rport, so responses go back to
    the port the request came from (what phones behind NAT need even when they do not ask)."""
    params = via.params
    wants_rport = "rport" in params and params["rport"] is None
    if force_rport and not source.reliable and "rport" not in params:
        wants_rport = True
    if not wants_rport and same_host(via.host, source.host):
        return via
    new_params = dict(params)
    if wants_rport:
        new_params["rport"] = str(source.port)
    new_params["received"] = source.host
    stamped = Via(via.transport, via.host, via.port, new_params, via.protocol)
    replace_top_via(request.headers, stamped, request.vias)
    return stamped


def response_destination(request: Request, source: Address, force_rport: bool = False) -> Address:
    """Where responses to ``request`` go: back over the same connection on reliable transports;
    over UDP to ``received`` (or the source host) and ``rport`` (or the Via port, or 5060).
    A missing or broken Via falls back to the source address; ``force_rport`` always answers
    the source address."""
    if source.reliable or force_rport:
        return source
    try:
        via = request.top_via
    except SipError:
        return source
    received = via.params.get("received")
    host = _bare(received) if received else source.host
    rport = via.params.get("rport")
    if (
        rport
        and rport.isdigit()
        and rport.isascii()
        and len(rport) <= 5
        and 0 < int(rport) <= 65535
    ):
        port = int(rport)
    else:
        port = via.port if via.port is not None else DEFAULT_PORT
    if host == source.host and port == source.port:
        return source  # the usual case (rport, or no NAT): the same frozen value
    return Address(source.transport, host, port)
