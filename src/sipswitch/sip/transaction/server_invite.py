"""The INVITE server transaction (RFC 3261 §17.2.1 with RFC 6026): Proceeding → Completed →
Confirmed for 3xx–6xx (Timer G retransmissions until the ACK, Timer H, Timer I), and
Proceeding → Accepted for 2xx (the 2xx retransmitted until its ACK arrives, Timer L).
"""

from __future__ import annotations

from typing import Any

from ..message import Request, Response
from ..transport.base import Address
from .base import ServerTransaction, State, TransactionHost, guarded, ignore_state


class ServerInviteTransaction(ServerTransaction):
    """An INVITE we received. ``acked`` tells whether the ACK for our 2xx arrived."""

    __slots__ = ("acked", "ack_key")

    def __init__(
        self,
        host: TransactionHost,
        request: Request,
        source: Address,
        destination: Address,
        key: Any,
    ) -> None:
        super().__init__(host, request, source, destination, key, State.PROCEEDING)
        self.acked = False
        self.ack_key: Any = None  # set by the layer while Accepted

    def respond(self, response: Response) -> None:
        status = response.status
        state = self.state
        timers = self._host.timers
        if state is State.PROCEEDING:
            self._send_response(response)
            if status < 200:
                return
            if status < 300:
                # RFC 6026: keep the transaction, retransmit the 2xx until the ACK (T1 doubling,
                # capped at T2, as RFC 3261 §13.3.1.4 asks of the UAS core).
                self.state = State.ACCEPTED
                self._host.accepted(self, response)
                self._start_retransmit(timers.t1, timers.t2)
                self._set_timer(timers.timer_l, self._on_timer_l)
            else:
                self.state = State.COMPLETED
                self._start_retransmit(timers.timer_g, timers.t2)
                self._set_timer(timers.timer_h, self._on_timer_h)
        elif state is State.ACCEPTED and 200 <= status < 300:
            self._send_response(response)
        else:
            ignore_state(self, f"respond({status})")

    def receive_request(self, request: Request) -> None:
        if self.state is not State.CONFIRMED:
            self._resend_last()

    def receive_ack(self) -> bool:
        """An ACK with this transaction's branch. Returns True when it is absorbed here, False
        when it acknowledges our 2xx and must also reach the TU."""
        state = self.state
        if state is State.COMPLETED:
            self.state = State.CONFIRMED
            self._stop_retransmit()
            self._linger(self._host.timers.timer_i(self.reliable))
            return True
        if state is State.ACCEPTED:
            self.ack_for_2xx()
            return False
        return True

    def ack_for_2xx(self) -> None:
        """The ACK for our 2xx arrived: stop retransmitting; stay Accepted until Timer L so
        a late INVITE retransmission is still absorbed."""
        if self.state is State.ACCEPTED and not self.acked:
            self.acked = True
            self._stop_retransmit()

    def cancel_received(self) -> None:
        """A CANCEL matched this transaction (the layer answers the CANCEL itself)."""
        if self.state is State.PROCEEDING and not self.cancelled:
            self.cancelled = True
            if self.on_cancel is not None:
                guarded("on_cancel", self.on_cancel)

    def _on_timer_h(self) -> None:
        self._timer = None
        if self.state is State.COMPLETED:
            self._terminate()

    def _on_timer_l(self) -> None:
        self._timer = None
        if self.state is not State.ACCEPTED:
            return
        acked = self.acked
        self._terminate()
        if not acked and self.on_no_ack is not None:
            guarded("on_no_ack", self.on_no_ack)
