"""Dialog state (RFC 3261 §12) and building requests inside a dialog.

A ``Dialog`` is one side's view: its own tag and URI, the peer's tag, URI and target, the route
set, and the CSeq counters. ``peer`` is the transport address requests are sent to (for a phone,
the address it registered or called from, which keeps NAT bindings and TCP connections in use).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from .headers import NameAddr
from .message import Headers, Request, Response
from .transaction.base import new_via
from .transport.base import Address
from .uri import SipUri, Uri, format_host

_call_id_prefix = ""


def set_call_id_prefix(prefix: str) -> None:
    """Start every Call-ID this process makes with ``prefix`` (a worker process's number, so
    the dialogs it originates come back to it: ``transport.steering``)."""
    global _call_id_prefix
    _call_id_prefix = prefix


def new_call_id(host: str) -> str:
    return f"{_call_id_prefix}{secrets.token_hex(10)}@{format_host(host)}"


@dataclass(slots=True)
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str  # From/To value for our side, without tag (e.g. "<sip:100@host>")
    remote_uri: str
    remote_target: Uri
    peer: Address
    local_cseq: int
    remote_cseq: int = -1
    route_set: list[str] = field(default_factory=list)

    @classmethod
    def as_uas(cls, request: Request, local_tag: str, source: Address) -> Dialog:
        """The dialog a UAS creates when it answers ``request`` with ``local_tag``."""
        contacts = request.contacts or []
        target: Uri = contacts[0].uri if contacts else request.from_.uri
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_.tag or "",
            local_uri=_without_tag(request.to),
            remote_uri=_without_tag(request.from_),
            remote_target=target,
            peer=source,
            local_cseq=secrets.randbelow(10_000) + 1,
            remote_cseq=request.cseq.number,
            route_set=request.headers.values("Record-Route"),
        )

    @classmethod
    def as_uac(cls, request: Request, response: Response, peer: Address) -> Dialog:
        """The dialog a UAC holds after ``response`` (1xx with tag or 2xx) to ``request``."""
        contacts = response.contacts or []
        target: Uri = contacts[0].uri if contacts else request.uri
        return cls(
            call_id=request.call_id,
            local_tag=request.from_.tag or "",
            remote_tag=response.to.tag or "",
            local_uri=_without_tag(request.from_),
            remote_uri=_without_tag(response.to),
            remote_target=target,
            peer=peer,
            local_cseq=request.cseq.number,
            route_set=list(reversed(response.headers.values("Record-Route"))),
        )

    def create_request(
        self,
        method: str,
        via_host: str,
        via_port: int,
        cseq: int | None = None,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """A new request in this dialog; the CSeq advances unless ``cseq`` is given (ACK)."""
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        target: Uri = self.remote_target
        headers = Headers()
        headers.add("Via", new_via(self.peer.transport, via_host, via_port))
        headers.add("Max-Forwards", "70")
        headers.add("From", f"{self.local_uri};tag={self.local_tag}")
        headers.add("To", f"{self.remote_uri};tag={self.remote_tag}")
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{cseq} {method}")
        for route in self.route_set:
            headers.add("Route", route)
        if content_type and body:
            headers.add("Content-Type", content_type)
        return Request(method, target, headers, body)

    def accept_remote_cseq(self, number: int) -> bool:
        """RFC 3261 §12.2.2: a lower CSeq than the last one seen is out of order (500)."""
        if number < self.remote_cseq:
            return False
        self.remote_cseq = number
        return True

    def update_target(self, request_or_response: Request | Response) -> None:
        """A re-INVITE or its 2xx may carry a new Contact (target refresh)."""
        try:
            contacts = request_or_response.contacts
        except ValueError:
            return
        if contacts and isinstance(contacts[0].uri, SipUri):
            self.remote_target = contacts[0].uri


def _without_tag(address: NameAddr) -> str:
    params = {k: v for k, v in address.params.items() if k != "tag"}
    return str(NameAddr(address.uri, address.display, params))
