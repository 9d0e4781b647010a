"""The transaction layer: owns the client and server transaction tables, matches every message
the transports deliver to its transaction (absorbing retransmissions), answers CANCEL, and hands
new requests to the TU.

All state is in dicts keyed by branch (RFC 3261) or by the RFC 2543 fields; timers run on the
injected clock; terminated transactions leave the tables at once, and the number of live
transactions is bounded (overload is answered 503 with Retry-After, statelessly).
"""

from __future__ import annotations

from collections.abc import Callable

from ..clock import Clock
from ..errors import SipError
from ..headers import Via
from ..message import Message, Request, Response, make_response
from ..parser import MessageError
from ..transport.base import Address, MessageSink, Transport
from ..validate import check_response
from .base import (
    ClientListener,
    ClientTransaction,
    ServerTransaction,
    Transaction,
    guarded,
    logger,
    new_branch,
    new_tag,
)
from .client_invite import ClientInviteTransaction
from .client_non_invite import ClientNonInviteTransaction
from .matching import (
    ServerKey,
    is_rfc2543_key,
    is_rfc3261_branch,
    replace_top_via,
    server_key,
    stamp_via,
    to_tag_matches,
)
from .matching import response_destination as _response_destination
from .server_invite import ServerInviteTransaction
from .server_non_invite import ServerNonInviteTransaction
from .timers import DEFAULT_TIMERS, TimerSettings

RequestHandler = Callable[[Request, ServerTransaction | None, Address], None]
"""(request, its server transaction, source). The transaction is None for an ACK of a 2xx and
for a request that cannot be matched (no Via, broken CSeq): answer those with send_stateless."""

ParseErrorHandler = Callable[[MessageError, Address, Address], None]
ClientKey = tuple[str, str]
AckKey = tuple[str, int, str]

OVERLOAD_RETRY_AFTER = "5"


class TransactionLayer(MessageSink):
    """Between the transports (which call ``on_message``) and the TU (``on_request`` for new
    requests, a ``ClientListener`` per request it sends)."""

    def __init__(
        self,
        transport: Transport,
        clock: Clock,
        on_request: RequestHandler,
        timers: TimerSettings = DEFAULT_TIMERS,
        max_transactions: int = 200_000,
        on_parse_error: ParseErrorHandler | None = None,
        force_rport: bool = False,
    ) -> None:
        self.force_rport = force_rport
        self._transport = transport
        self._clock = clock
        self._timers = timers
        self._on_request = on_request
        self._on_parse_error = on_parse_error
        self.max_transactions = max_transactions
        self._server: dict[ServerKey, ServerTransaction] = {}
        self._client: dict[ClientKey, ClientTransaction] = {}
        # Server INVITE transactions that sent a 2xx, by (Call-ID, CSeq number, To tag): the ACK
        # of a 2xx has a new branch and is found here (RFC 6026).
        self._accepted: dict[AckKey, ServerInviteTransaction] = {}

    # --- what transactions use (TransactionHost) ---
    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def timers(self) -> TimerSettings:
        return self._timers

    def transmit(self, data: bytes, destination: Address) -> bool:
        return self._transport.send(data, destination)

    def forget(self, txn: Transaction) -> None:
        if isinstance(txn, ClientTransaction):
            if self._client.get(txn.key) is txn:
                del self._client[txn.key]
            return
        if self._server.get(txn.key) is txn:
            del self._server[txn.key]
        if isinstance(txn, ServerInviteTransaction) and txn.ack_key is not None:
            if self._accepted.get(txn.ack_key) is txn:
                del self._accepted[txn.ack_key]
            txn.ack_key = None

    def start_client(
        self, request: Request, destination: Address, listener: ClientListener
    ) -> ClientTransaction:
        return self.send_request(request, destination, listener)

    def accepted(self, txn: ServerTransaction, response: Response) -> None:
        if not isinstance(txn, ServerInviteTransaction):
            return
        try:
            key = (txn.request.call_id, txn.request.cseq.number, response.to.tag or "")
        except SipError:
            return  # the ACK cannot be matched; Timer L will report the missing ACK
        txn.ack_key = key
        self._accepted[key] = txn

    # --- inspection ---
    @property
    def transaction_count(self) -> int:
        return len(self._server) + len(self._client)

    def peer_unreachable(self, destination: Address) -> None:
        """The transport gave up on ``destination`` (its connection could not be set up): the
        client transactions toward it that have no answer yet end with a transport error now,
        not when their timers run out."""
        for txn in [t for t in self._client.values() if t.destination == destination]:
            txn.transport_failed()

    def find_client(self, branch: str, method: str) -> ClientTransaction | None:
        return self._client.get((branch, method))

    def close(self) -> None:
        """End every transaction (stopping its timers) without notifying anyone."""
        for txn in [*self._server.values(), *self._client.values()]:
            txn.terminate()
        self._accepted.clear()

    # --- MessageSink ---
    def on_message(self, message: Message, source: Address, local: Address) -> None:
        if isinstance(message, Request):
            self._receive_request(message, source)
        elif isinstance(message, Response):
            self._receive_response(message)

    def on_parse_error(self, error: MessageError, source: Address, local: Address) -> None:
        if self._on_parse_error is not None:
            guarded("on_parse_error", self._on_parse_error, error, source, local)

    # --- sending ---
    def send_request(
        self, request: Request, destination: Address, listener: ClientListener
    ) -> ClientTransaction:
        """Start a client transaction. The request must carry our top Via; a branch is added
        when it has none. ACK is not a transaction: send it with ``send_stateless``."""
        method = request.method
        if method == "ACK":
            raise ValueError("ACK has no client transaction; use send_stateless")
        try:
            via = request.top_via
            cseq_method = request.cseq.method
        except SipError as exc:
            raise ValueError(f"Cannot send a request without a valid Via and CSeq: {exc}") from exc
        if cseq_method != method:
            raise ValueError("CSeq method does not match the request method")
        branch = via.branch
        if branch is None or not is_rfc3261_branch(branch):
            branch = new_branch()
            params = dict(via.params)
            params["branch"] = branch
            replace_top_via(
                request.headers,
                Via(via.transport, via.host, via.port, params, via.protocol),
                request.vias,
            )
        key = (branch, method)
        if key in self._client:
            raise ValueError(f"A {method} transaction with branch {branch} exists already")
        txn: ClientTransaction
        if method == "INVITE":
            txn = ClientInviteTransaction(self, request, destination, listener, branch)
        else:
            txn = ClientNonInviteTransaction(self, request, destination, listener, branch)
        self._client[key] = txn
        txn.start()
        return txn

    def send_stateless(self, message: Request | Response, destination: Address) -> None:
        """Send without a transaction: the ACK for a 2xx, a 400 for a request that could not be
        matched, a proxied response."""
        if not self._transport.send(message.to_bytes(), destination):
            logger.info("Could not send %r to %s", message, destination)

    def response_destination(self, request: Request, source: Address) -> Address:
        return _response_destination(request, source, self.force_rport)

    # --- receiving ---
    def _receive_request(self, request: Request, source: Address) -> None:
        method = request.method
        try:
            via = stamp_via(request, request.top_via, source, self.force_rport)
            _ = request.cseq  # a broken CSeq means no transaction can be formed
            key = server_key(request, via, "INVITE" if method == "ACK" else method)
        except SipError:
            self._deliver(request, None, source)
            return
        if method == "ACK":
            self._receive_ack(request, key, source)
            return
        txn = self._server.get(key)
        if txn is not None and (not is_rfc2543_key(key) or to_tag_matches(txn, request)):
            txn.receive_request(request)
            return
        if method == "CANCEL":
            self._receive_cancel(request, via, key, source)
            return
        if self.transaction_count >= self.max_transactions:
            self._reject_overload(request, source)
            return
        destination = _response_destination(request, source, self.force_rport)
        if method == "INVITE":
            invite = ServerInviteTransaction(self, request, source, destination, key)
            self._server[key] = invite
            self._deliver(request, invite, source)
            if invite.last_response is None and not invite.terminated:
                invite.respond(make_response(request, 100))
        else:
            server = ServerNonInviteTransaction(self, request, source, destination, key)
            self._server[key] = server
            self._deliver(request, server, source)

    def _receive_ack(self, ack: Request, key: ServerKey, source: Address) -> None:
        txn = self._server.get(key)
        if isinstance(txn, ServerInviteTransaction) and (
            not is_rfc2543_key(key) or to_tag_matches(txn, ack)
        ):
            if txn.receive_ack():
                return  # the ACK of a non-2xx final response ends here
        else:
            try:
                ack_key = (ack.call_id, ack.cseq.number, ack.to.tag or "")
            except SipError:
                ack_key = None
            if ack_key is not None:
                accepted = self._accepted.get(ack_key)
                if accepted is not None:
                    accepted.ack_for_2xx()
        self._deliver(ack, None, source)

    def _receive_cancel(self, cancel: Request, via: Via, key: ServerKey, source: Address) -> None:
        invite: ServerInviteTransaction | None = None
        try:
            invite_key = server_key(cancel, via, "INVITE")
        except SipError:
            invite_key = None
        if invite_key is not None:
            found = self._server.get(invite_key)
            if isinstance(found, ServerInviteTransaction) and (
                not is_rfc2543_key(invite_key) or to_tag_matches(found, cancel)
            ):
                invite = found
        destination = _response_destination(cancel, source, self.force_rport)
        if invite is None:
            # Answered statelessly: a retransmitted CANCEL simply gets another 481, and a flood
            # of unmatched CANCELs does not fill the tables.
            self.send_stateless(make_response(cancel, 481, to_tag=new_tag()), destination)
            return
        txn = ServerNonInviteTransaction(self, cancel, source, destination, key)
        self._server[key] = txn
        txn.respond(make_response(cancel, 200, to_tag=_invite_to_tag(invite)))
        invite.cancel_received()

    def _reject_overload(self, request: Request, source: Address) -> None:
        response = make_response(request, 503, to_tag=new_tag())
        response.headers.add("Retry-After", OVERLOAD_RETRY_AFTER)
        self.send_stateless(response, _response_destination(request, source, self.force_rport))

    def _deliver(self, request: Request, txn: ServerTransaction | None, source: Address) -> None:
        try:
            self._on_request(request, txn, source)
        except Exception:
            logger.exception("Request handler failed on %r", request)
            if txn is not None and not txn.final_sent and not txn.terminated:
                txn.respond(make_response(request, 500, to_tag=new_tag()))

    def _receive_response(self, response: Response) -> None:
        if not check_response(response):
            return
        branch = response.top_via.branch
        if branch is None:
            return
        txn = self._client.get((branch, response.cseq.method))
        if txn is not None:
            txn.receive_response(response)


def _invite_to_tag(invite: ServerInviteTransaction) -> str:
    """RFC 3261 §9.2: the 200 to a CANCEL should carry the To tag of the INVITE's responses."""
    response = invite.last_response
    if response is not None:
        try:
            tag = response.to.tag
        except SipError:
            tag = None
        if tag:
            return tag
    return new_tag()
