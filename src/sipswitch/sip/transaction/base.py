"""What every transaction shares: states, timers through the injected clock, retransmission,
the interface to the layer that owns the tables, and the client/server base classes the TU sees.
"""

from __future__ import annotations

import enum
import logging
import secrets
from collections.abc import Callable
from typing import Any, Protocol

from ..clock import Clock, TimerHandle
from ..message import Request, Response
from ..transport.base import Address
from ..uri import format_host
from .timers import TimerSettings

logger = logging.getLogger("sipswitch.sip.transaction")

MAGIC_COOKIE = "z9hG4bK"


def new_branch() -> str:
    """A fresh RFC 3261 branch: the magic cookie and 80 random bits (unguessable, so a third
    party cannot forge responses to our transactions)."""
    return MAGIC_COOKIE + secrets.token_hex(10)


def new_via(transport: str, host: str, port: int) -> str:
    """The Via value of a request we originate: sent-by ``host:port`` over ``transport``, a
    fresh branch, and ``rport`` so answers come back to the port we sent from."""
    return f"SIP/2.0/{transport.upper()} {format_host(host)}:{port};branch={new_branch()};rport"


class State(enum.Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class ClientListener(Protocol):
    """What the TU implements to follow a client transaction."""

    def on_response(self, response: Response, txn: ClientTransaction) -> None: ...

    def on_timeout(self, txn: ClientTransaction) -> None:
        """Timer B or F fired (or a CANCELled INVITE got no final response in 64*T1)."""
        ...

    def on_transport_error(self, txn: ClientTransaction) -> None:
        """The transport could not send the request (no connection, no route)."""
        ...


class TransactionHost(Protocol):
    """The services a transaction needs from the layer that owns it."""

    @property
    def clock(self) -> Clock: ...

    @property
    def timers(self) -> TimerSettings: ...

    def transmit(self, data: bytes, destination: Address) -> bool: ...

    def forget(self, txn: Transaction) -> None:
        """Remove a terminated transaction from every table."""
        ...

    def start_client(
        self, request: Request, destination: Address, listener: ClientListener
    ) -> ClientTransaction: ...

    def accepted(self, txn: ServerTransaction, response: Response) -> None:
        """A server INVITE transaction sent a 2xx: index it so the ACK (new branch) finds it."""
        ...


def guarded(what: str, callback: Callable[..., Any], *args: Any) -> None:
    """Run a TU callback; a failing TU must not break the state machine."""
    try:
        callback(*args)
    except Exception:
        logger.exception("TU callback %s failed", what)


class Transaction:
    """State, destination and timers common to the four state machines.

    Two timer slots are enough for every machine: ``_retx`` (A, E, G and the 2xx retransmission)
    and ``_timer`` (B, D, F, H, I, J, K, L, M, whichever the state needs).
    """

    __slots__ = (
        "_host",
        "request",
        "destination",
        "state",
        "key",
        "_retx",
        "_retx_interval",
        "_retx_cap",
        "_timer",
    )

    def __init__(
        self,
        host: TransactionHost,
        request: Request,
        destination: Address,
        key: Any,
        state: State,
    ) -> None:
        self._host = host
        self.request = request
        self.destination = destination
        self.key = key
        self.state = state
        self._retx: TimerHandle | None = None
        self._retx_interval = 0.0
        self._retx_cap: float | None = None
        self._timer: TimerHandle | None = None

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    @property
    def reliable(self) -> bool:
        return self.destination.reliable

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.request.method} {self.key} {self.state.value}>"

    # --- timers ---
    def _set_timer(self, delay: float, callback: Callable[[], None]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._host.clock.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _start_retransmit(self, interval: float, cap: float | None) -> None:
        """Retransmit ``_retransmit_data()`` after ``interval``, doubling up to ``cap``.
        Does nothing over reliable transports."""
        self._stop_retransmit()
        if self.reliable:
            return
        self._retx_interval = interval
        self._retx_cap = cap
        self._retx = self._host.clock.call_later(interval, self._on_retransmit_timer)

    def _stop_retransmit(self) -> None:
        if self._retx is not None:
            self._retx.cancel()
            self._retx = None

    def _on_retransmit_timer(self) -> None:
        self._retx = None
        if self.terminated:
            return
        data = self._retransmit_data()
        if data is None:
            return
        if not self._host.transmit(data, self.destination):
            self._send_failed()
            if self.terminated:
                return
        interval = self._next_interval()
        self._retx_interval = interval
        self._retx = self._host.clock.call_later(interval, self._on_retransmit_timer)

    def _next_interval(self) -> float:
        interval = self._retx_interval * 2
        if self._retx_cap is not None and interval > self._retx_cap:
            interval = self._retx_cap
        return interval

    def _retransmit_data(self) -> bytes | None:
        raise NotImplementedError

    def _send_failed(self) -> None:
        """A send returned False; clients report it, servers carry on."""

    def _linger(self, delay: float) -> None:
        """Stay in the current state for ``delay`` (absorbing retransmissions), then end;
        zero (reliable transports) ends the transaction at once."""
        if delay <= 0:
            self._terminate()
        else:
            self._set_timer(delay, self._terminate)

    def terminate(self) -> None:
        """End now: stop every timer and leave the tables, telling nobody (shutdown)."""
        self._terminate()

    def _terminate(self) -> None:
        if self.state is State.TERMINATED:
            return
        self.state = State.TERMINATED
        self._stop_retransmit()
        self._cancel_timer()
        self._host.forget(self)


class ClientTransaction(Transaction):
    """A request we sent and the responses that come back for it."""

    __slots__ = ("listener", "branch", "last_response", "_data")

    def __init__(
        self,
        host: TransactionHost,
        request: Request,
        destination: Address,
        listener: ClientListener,
        branch: str,
        state: State,
    ) -> None:
        super().__init__(host, request, destination, (branch, request.method), state)
        self.listener = listener
        self.branch = branch
        self.last_response: Response | None = None
        self._data = b""

    def start(self) -> None:
        """Send the request for the first time and arm the state's timers."""
        raise NotImplementedError

    def receive_response(self, response: Response) -> None:
        raise NotImplementedError

    def cancel(self, reason: str | None = None) -> None:
        """Only INVITE transactions can be cancelled (RFC 3261 §9.1); this does nothing."""

    def transport_failed(self) -> None:
        """The transport could not deliver the request after all (a TCP/TLS connection that
        failed to come up, a certificate refused): a transport error, unless an answer came."""
        if self.last_response is None:
            self._send_failed()

    def _send_request(self) -> bool:
        if not self._data:
            self._data = self.request.to_bytes()
        if self._host.transmit(self._data, self.destination):
            return True
        self._send_failed()
        return False

    def _retransmit_data(self) -> bytes | None:
        return self._data

    def _send_failed(self) -> None:
        # End now; tell the TU from a fresh call stack so it has the transaction object even
        # when the very first send fails inside send_request().
        if self.terminated:
            return
        self._terminate()
        self._host.clock.call_later(0.0, self._report_transport_error)

    def _report_transport_error(self) -> None:
        guarded("on_transport_error", self.listener.on_transport_error, self)

    def _report_timeout(self) -> None:
        guarded("on_timeout", self.listener.on_timeout, self)

    def _report_response(self, response: Response) -> None:
        guarded("on_response", self.listener.on_response, response, self)


class ServerTransaction(Transaction):
    """A request we received; the TU answers it with ``respond``.

    ``on_cancel`` (INVITE only) is called when a CANCEL arrives before a final response;
    ``on_no_ack`` (INVITE only) when a 2xx was never acknowledged within 64*T1.
    """

    __slots__ = ("source", "last_response", "cancelled", "on_cancel", "on_no_ack", "_last_data")

    def __init__(
        self,
        host: TransactionHost,
        request: Request,
        source: Address,
        destination: Address,
        key: Any,
        state: State,
    ) -> None:
        super().__init__(host, request, destination, key, state)
        self.source = source
        self.last_response: Response | None = None
        self.cancelled = False
        self.on_cancel: Callable[[], None] | None = None
        self.on_no_ack: Callable[[], None] | None = None
        self._last_data = b""

    @property
    def final_sent(self) -> bool:
        return self.last_response is not None and self.last_response.status >= 200

    def respond(self, response: Response) -> None:
        raise NotImplementedError

    def receive_request(self, request: Request) -> None:
        """A retransmission of the request that created the transaction."""
        raise NotImplementedError

    def _send_response(self, response: Response) -> None:
        self.last_response = response
        self._last_data = response.to_bytes()
        if not self._host.transmit(self._last_data, self.destination):
            logger.info("Could not send %s to %s", response, self.destination)

    def _release(self) -> None:
        """Completed: only the wire bytes of the final response are needed to answer
        retransmissions for the rest of Timer J, so drop the parsed request and response
        (a REGISTER flood keeps tens of thousands of transactions in this state)."""
        last = self.last_response
        if last is not None:
            self.last_response = Response(last.status, last.reason)
        self.request = Request(self.request.method, self.request.uri)

    def _resend_last(self) -> None:
        if self._last_data:
            self._host.transmit(self._last_data, self.destination)

    def _retransmit_data(self) -> bytes | None:
        return self._last_data or None


def ignore_state(txn: Transaction, action: str) -> None:
    logger.debug("%s ignored in state %s of %r", action, txn.state.value, txn)


def new_tag() -> str:
    """A fresh From/To tag (RFC 3261 §19.3 asks for at least 32 random bits)."""
    return secrets.token_hex(6)
