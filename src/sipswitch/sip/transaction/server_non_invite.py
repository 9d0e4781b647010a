"""The non-INVITE server transaction (RFC 3261 §17.2.2): Trying → Proceeding → Completed →
Terminated; request retransmissions get the last response again, Timer J lingers after the final.
"""

from __future__ import annotations

from typing import Any

from ..message import Request, Response
from ..transport.base import Address
from .base import ServerTransaction, State, TransactionHost, ignore_state


class ServerNonInviteTransaction(ServerTransaction):
    """Every request but INVITE and ACK. If the TU never answers, the transaction is dropped
    after 64*T1 (the client's Timer F has fired by then), so the tables stay bounded."""

    __slots__ = ()

    def __init__(
        self,
        host: TransactionHost,
        request: Request,
        source: Address,
        destination: Address,
        key: Any,
    ) -> None:
        super().__init__(host, request, source, destination, key, State.TRYING)
        self._set_timer(host.timers.server_non_invite_limit, self._on_unanswered)

    def respond(self, response: Response) -> None:
        state = self.state
        if state is not State.TRYING and state is not State.PROCEEDING:
            ignore_state(self, f"respond({response.status})")
            return
        self._send_response(response)
        if response.status < 200:
            self.state = State.PROCEEDING
        else:
            self.state = State.COMPLETED
            self._cancel_timer()
            self._linger(self._host.timers.timer_j(self.reliable))
            self._release()

    def receive_request(self, request: Request) -> None:
        # Trying has nothing to resend yet; Proceeding and Completed resend the last response.
        self._resend_last()

    def _on_unanswered(self) -> None:
        self._timer = None
        if self.state is State.TRYING or self.state is State.PROCEEDING:
            self._terminate()
