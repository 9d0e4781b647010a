"""A scriptable SIP phone for in-process tests: registers with digest auth, places and answers
calls, over whatever transport it is given (the loop transport in tests)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sipswitch.sip.auth import build_authorization, choose_challenge
from sipswitch.sip.clock import Clock
from sipswitch.sip.dialog import Dialog, new_call_id
from sipswitch.sip.message import Headers, Request, Response, make_response
from sipswitch.sip.transaction import (
    ClientTransaction,
    ServerTransaction,
    TransactionLayer,
    new_branch,
    new_tag,
)
from sipswitch.sip.transport.base import Address, Transport
from sipswitch.sip.uri import parse_uri

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


class _Collector:
    def __init__(self) -> None:
        self.responses: asyncio.Queue[Response] = asyncio.Queue()
        self.timed_out = False

    def on_response(self, response: Response, txn: ClientTransaction) -> None:
        self.responses.put_nowait(response)

    def on_timeout(self, txn: ClientTransaction) -> None:
        self.timed_out = True

    def on_transport_error(self, txn: ClientTransaction) -> None:
        self.timed_out = True


@dataclass
class IncomingCall:
    request: Request
    txn: ServerTransaction
    tag: str = field(default_factory=new_tag)
    dialog: Dialog | None = None
    cancelled: bool = False


class Phone:
    """``answer`` decides what an incoming INVITE gets: a status code, or None to keep ringing."""

    def __init__(
        self,
        transport: Transport,
        clock: Clock,
        address: Address,
        number: str,
        password: str,
        server: Address,
        realm: str = "sipswitch",
    ) -> None:
        self.address = address
        self.number = number
        self.password = password
        self.server = server
        self.layer = TransactionLayer(transport, clock, self._on_request)
        self.answer: int | None = 200
        self.incoming: asyncio.Queue[IncomingCall] = asyncio.Queue()
        self.in_dialog: asyncio.Queue[Request] = asyncio.Queue()
        self.calls: dict[str, IncomingCall] = {}
        self._cseq = 1
        self.sent: list[ClientTransaction] = []
        self.statuses: list[int] = []  # every response status received, in order
        self.sdp = SDP  # the session description this phone offers and answers with
        self._call_id = new_call_id(address.host)
        self._tag = new_tag()

    @property
    def contact(self) -> str:
        return f"<sip:{self.number}@{self.address.host}:{self.address.port}>"

    def _base(self, method: str, uri: str, to: str, call_id: str, from_tag: str) -> Request:
        headers = Headers()
        headers.add(
            "Via",
            f"SIP/2.0/{self.address.transport.upper()} {self.address.host}:{self.address.port}"
            f";branch={new_branch()};rport",
        )
        headers.add("Max-Forwards", "70")
        headers.add("From", f"<sip:{self.number}@{self.server.host}>;tag={from_tag}")
        headers.add("To", to)
        headers.add("Call-ID", call_id)
        self._cseq += 1
        headers.add("CSeq", f"{self._cseq} {method}")
        headers.add("Contact", self.contact)
        return Request(method, parse_uri(uri), headers)

    def layer_client_invites(self) -> list[ClientTransaction]:
        return [t for t in self.sent if not t.terminated]

    async def _send(self, request: Request, timeout: float = 5.0) -> Response:
        collector = _Collector()
        self.sent.append(self.layer.send_request(request, self.server, collector))
        while True:
            response = await asyncio.wait_for(collector.responses.get(), timeout)
            self.statuses.append(response.status)
            if response.status >= 200:
                return response

    async def request_with_auth(self, request: Request, proxy: bool) -> Response:
        return (await self.send_with_auth(request, proxy))[0]

    async def send_with_auth(self, request: Request, proxy: bool) -> tuple[Response, Request]:
        """Send, answer a challenge once; returns the final response and the request it answers."""
        response = await self._send(request)
        if response.status not in (401, 407):
            return response, request
        header = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        challenge = choose_challenge(response.headers.get_all(header))
        assert challenge is not None, response.headers.get_all(header)
        retry = Request(request.method, request.uri, request.headers.copy(), request.body)
        self._cseq += 1
        retry.headers.set("CSeq", f"{self._cseq} {request.method}")
        retry.headers.set(
            "Via",
            f"SIP/2.0/{self.address.transport.upper()} {self.address.host}:{self.address.port}"
            f";branch={new_branch()};rport",
        )
        retry.headers.set(
            "Proxy-Authorization" if proxy else "Authorization",
            build_authorization(
                challenge, request.method, str(request.uri), self.number, self.password
            ),
        )
        return await self._send(retry), retry

    async def register(self, expires: int = 600, contact: str | None = None) -> Response:
        request = self._base(
            "REGISTER",
            f"sip:{self.server.host}",
            f"<sip:{self.number}@{self.server.host}>",
            self._call_id,
            self._tag,
        )
        if contact is not None:
            request.headers.set("Contact", contact)
        request.headers.add("Expires", str(expires))
        return await self.request_with_auth(request, proxy=False)

    def invite(self, number: str, body: bytes = SDP) -> Request:
        request = self._base(
            "INVITE",
            f"sip:{number}@{self.server.host}",
            f"<sip:{number}@{self.server.host}>",
            new_call_id(self.address.host),
            new_tag(),
        )
        if body:
            request.headers.add("Content-Type", "application/sdp")
            request.body = body
        return request

    async def call(self, number: str, body: bytes = SDP) -> tuple[Response, Dialog | None]:
        """Place a call; on 2xx send the ACK and return the dialog."""
        response, request = await self.send_with_auth(self.invite(number, body), proxy=True)
        dialog = None
        if 200 <= response.status < 300:
            dialog = Dialog.as_uac(request, response, self.server)
            self.ack(dialog, response)
        return response, dialog

    def ack(self, dialog: Dialog, response: Response) -> None:
        ack = dialog.create_request(
            "ACK", self.address.host, self.address.port, cseq=response.cseq.number
        )
        self.layer.send_stateless(ack, self.server)

    async def send_in_dialog(
        self,
        dialog: Dialog,
        method: str,
        body: bytes = b"",
        content_type: str = "application/sdp",
    ) -> Response:
        request = dialog.create_request(
            method,
            self.address.host,
            self.address.port,
            body=body,
            content_type=content_type if body else None,
        )
        request.headers.add("Contact", self.contact)
        return await self._send(request)

    # --- incoming ---
    def _on_request(self, request: Request, txn: ServerTransaction | None, source: Address) -> None:
        if txn is None:
            self.in_dialog.put_nowait(request)
            return
        if request.method == "INVITE" and request.to.tag is None:
            call = IncomingCall(request, txn)
            self.calls[request.call_id] = call
            txn.on_cancel = lambda: self._cancelled(call)
            txn.respond(make_response(request, 180, to_tag=call.tag))
            if self.answer is not None:
                self.respond_call(call, self.answer)
            self.incoming.put_nowait(call)
            return
        self.in_dialog.put_nowait(request)
        response = make_response(request, 200)
        if request.method == "INVITE":  # a re-INVITE: answer its offer with our media
            response.headers.add("Contact", self.contact)
            response.headers.add("Content-Type", "application/sdp")
            response.body = self.sdp
        txn.respond(response)

    def _cancelled(self, call: IncomingCall) -> None:
        call.cancelled = True
        call.txn.respond(make_response(call.request, 487, to_tag=call.tag))

    def respond_call(self, call: IncomingCall, status: int) -> None:
        response = make_response(call.request, status, to_tag=call.tag)
        if 200 <= status < 300:
            response.headers.add("Contact", self.contact)
            response.headers.add("Content-Type", "application/sdp")
            response.body = self.sdp
            call.dialog = Dialog.as_uas(call.request, call.tag, self.server)
        call.txn.respond(response)
