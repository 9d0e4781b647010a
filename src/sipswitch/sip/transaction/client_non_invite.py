"""The non-INVITE client transaction (RFC 3261 §17.1.2): Trying → Proceeding → Completed →
Terminated, Timer E retransmissions (doubling, capped at T2), Timer F timeout, Timer K linger.
"""

from __future__ import annotations

from ..message import Request, Response
from ..transport.base import Address
from .base import ClientListener, ClientTransaction, State, TransactionHost


class ClientNonInviteTransaction(ClientTransaction):
    """Every request but INVITE and ACK: REGISTER, BYE, OPTIONS, CANCEL, INFO, ..."""

    __slots__ = ()

    def __init__(
        self,
        host: TransactionHost,
        request: Request,
        destination: Address,
        listener: ClientListener,
        branch: str,
    ) -> None:
        super().__init__(host, request, destination, listener, branch, State.TRYING)

    def start(self) -> None:
        if not self._send_request():
            return
        timers = self._host.timers
        self._start_retransmit(timers.timer_e, timers.t2)
        self._set_timer(timers.timer_f, self._on_timer_f)

    def _next_interval(self) -> float:
        if self.state is State.PROCEEDING:
            return self._host.timers.t2  # RFC 3261 §17.1.2.2: Timer E resets to T2
        return super()._next_interval()

    def _on_timer_f(self) -> None:
        self._timer = None
        if self.state is State.TRYING or self.state is State.PROCEEDING:
            self._terminate()
            self._report_timeout()

    def receive_response(self, response: Response) -> None:
        state = self.state
        if state is not State.TRYING and state is not State.PROCEEDING:
            return  # Completed absorbs retransmitted finals
        self.last_response = response
        if response.status < 200:
            self.state = State.PROCEEDING
        else:
            self.state = State.COMPLETED
            self._stop_retransmit()
            self._linger(self._host.timers.timer_k(self.reliable))
        self._report_response(response)
