"""The INVITE client transaction (RFC 3261 §17.1.1 with the RFC 6026 Accepted state), the ACK
it sends for non-2xx final responses, and CANCEL (RFC 3261 §9.1).
"""

from __future__ import annotations

from ..message import Headers, Request, Response
from ..transport.base import Address
from .base import (
    ClientListener,
    ClientTransaction,
    State,
    TransactionHost,
    ignore_state,
)

MAX_FORWARDS = "70"


def _copy_common(invite: Request, method: str, to_value: str) -> Headers:
    """Via (the INVITE's top one only), Max-Forwards, Route, From, To, Call-ID and CSeq for an
    ACK or CANCEL that belongs to ``invite`` (RFC 3261 §9.1 and §17.1.1.3)."""
    source = invite.headers
    headers = Headers()
    headers.add("Via", source.values("Via")[0])
    headers.add("Max-Forwards", MAX_FORWARDS)
    for route in source.get_all("Route"):
        headers.add("Route", route)
    headers.add("From", source.get("From") or "")
    headers.add("To", to_value)
    headers.add("Call-ID", source.get("Call-ID") or "")
    headers.add("CSeq", f"{invite.cseq.number} {method}")
    return headers


def build_ack(invite: Request, response: Response) -> Request:
    """The ACK for a 3xx–6xx response: same branch and Request-URI, the response's To (with its
    tag), the INVITE's Route set."""
    headers = _copy_common(invite, "ACK", response.headers.get("To") or "")
    return Request("ACK", invite.uri, headers)


def build_cancel(invite: Request, reason: str | None = None) -> Request:
    """The CANCEL for ``invite``: same branch, Request-URI, Call-ID, From, To and CSeq number;
    ``reason`` becomes a Reason header (RFC 3326), e.g. ``SIP;cause=200;text="Call completed
    elsewhere"``."""
    headers = _copy_common(invite, "CANCEL", invite.headers.get("To") or "")
    if reason:
        headers.add("Reason", reason)
    return Request("CANCEL", invite.uri, headers)


class _IgnoreCancelOutcome:
    """The CANCEL's own result does not matter: the INVITE's final response (or the guard timer
    started when the CANCEL is sent) decides what happens to the call."""

    def on_response(self, response: Response, txn: ClientTransaction) -> None:
        pass

    def on_timeout(self, txn: ClientTransaction) -> None:
        pass

    def on_transport_error(self, txn: ClientTransaction) -> None:
        pass


_IGNORE = _IgnoreCancelOutcome()


class ClientInviteTransaction(ClientTransaction):
    """Calling → Proceeding → Accepted (2xx) or Completed (3xx–6xx) → Terminated.

    1xx and every 2xx (retransmissions and other forks too, while Accepted) go to the TU, which
    sends the ACK for a 2xx itself; a 3xx–6xx is acknowledged here and reported once.
    """

    __slots__ = ("cancel_requested", "cancel_transaction", "_cancel_reason", "_ack_data")

    def __init__(
        self,
        host: TransactionHost,
        request: Request,
        destination: Address,
        listener: ClientListener,
        branch: str,
    ) -> None:
        super().__init__(host, request, destination, listener, branch, State.CALLING)
        self.cancel_requested = False
        self.cancel_transaction: ClientTransaction | None = None
        self._cancel_reason: str | None = None
        self._ack_data = b""

    def start(self) -> None:
        if not self._send_request():
            return
        timers = self._host.timers
        self._start_retransmit(timers.timer_a, None)  # Timer A: doubles without a cap
        self._set_timer(timers.timer_b, self._on_timer_b)

    def _on_timer_b(self) -> None:
        self._timer = None
        if self.state is State.CALLING:
            self._terminate()
            self._report_timeout()

    def receive_response(self, response: Response) -> None:
        status = response.status
        state = self.state
        if state is State.CALLING or state is State.PROCEEDING:
            self.last_response = response
            if status < 200:
                if state is State.CALLING:
                    self.state = State.PROCEEDING
                    self._stop_retransmit()
                    self._cancel_timer()  # Timer B only applies while Calling
                if self.cancel_requested and self.cancel_transaction is None:
                    self._send_cancel()
            elif status < 300:
                self.state = State.ACCEPTED
                self._stop_retransmit()
                self._set_timer(self._host.timers.timer_m, self._terminate)
            else:
                self.state = State.COMPLETED
                self._stop_retransmit()
                self._ack_data = build_ack(self.request, response).to_bytes()
                self._host.transmit(self._ack_data, self.destination)
                self._linger(self._host.timers.timer_d(self.reliable))
            self._report_response(response)
        elif state is State.ACCEPTED:
            if 200 <= status < 300:
                self._report_response(response)
        elif state is State.COMPLETED:
            if status >= 300:
                # The ACK got lost; the server retransmits its final response.
                self._host.transmit(self._ack_data, self.destination)

    def cancel(self, reason: str | None = None) -> None:
        """Send a CANCEL now if a provisional response has arrived, else as soon as one does;
        do nothing once a final response is in (RFC 3261 §9.1)."""
        if self.state is State.CALLING:
            if not self.cancel_requested:
                self.cancel_requested = True
                self._cancel_reason = reason
        elif self.state is State.PROCEEDING:
            if self.cancel_transaction is None:
                self.cancel_requested = True
                self._cancel_reason = reason
                self._send_cancel()
        else:
            ignore_state(self, "cancel()")

    def _send_cancel(self) -> None:
        request = build_cancel(self.request, self._cancel_reason)
        self.cancel_transaction = self._host.start_client(request, self.destination, _IGNORE)
        # RFC 3261 §9.1: without a final response 64*T1 after the CANCEL, give up on the INVITE.
        self._set_timer(self._host.timers.timer_b, self._on_cancel_expired)

    def _on_cancel_expired(self) -> None:
        self._timer = None
        if self.state is State.PROCEEDING:
            self._terminate()
            self._report_timeout()
