"""Requests the server sends outside any dialog, and OPTIONS probes.

``new_request`` builds the skeleton every such request shares (Via with a fresh branch and
rport, Max-Forwards, From, To, Call-ID, CSeq, User-Agent). ``Probe`` is one OPTIONS that asks
"are you there?" with a deadline of its own (not the 32 s of Timer F): the first of answer,
deadline or transport error decides, once, and a late answer no longer counts. Trunk health
checks and the NAT keepalives of phones are both built on it.
"""

from __future__ import annotations

from collections.abc import Callable

from .clock import Clock, TimerHandle
from .message import Headers, Request, Response
from .transaction import ClientListener, ClientTransaction, new_via
from .transport.base import Address
from .uri import parse_uri


def new_request(
    method: str,
    uri: str,
    destination: Address,
    local: tuple[str, int],
    from_: str,
    to: str,
    call_id: str,
    cseq: int,
    user_agent: str,
) -> Request:
    """A request outside any dialog toward ``destination``, sent from ``local``."""
    host, port = local
    headers = Headers()
    headers.add("Via", new_via(destination.transport, host, port))
    headers.add("Max-Forwards", "70")
    headers.add("From", from_)
    headers.add("To", to)
    headers.add("Call-ID", call_id)
    headers.add("CSeq", f"{cseq} {method}")
    headers.add("User-Agent", user_agent)
    return Request(method, parse_uri(uri), headers)


class Probe:
    """One OPTIONS (a ``ClientListener``). ``on_end(probe, answered, detail)`` is called once:
    ``answered`` is ``alive(response)`` for the first final response, False when ``wait``
    seconds pass, the transaction times out or the request cannot be sent."""

    __slots__ = ("on_end", "alive", "over", "timer", "txn")

    def __init__(
        self,
        on_end: Callable[[Probe, bool, str], None],
        alive: Callable[[Response], bool] = lambda response: True,
    ) -> None:
        self.on_end = on_end
        self.alive = alive
        self.over = False
        self.timer: TimerHandle | None = None
        self.txn: ClientTransaction | None = None

    def send(
        self,
        transactions: Callable[[Request, Address, ClientListener], ClientTransaction],
        request: Request,
        destination: Address,
        clock: Clock,
        wait: float,
    ) -> None:
        """Send ``request`` with ``transactions`` (``TransactionLayer.send_request``)."""
        self.timer = clock.call_later(wait, self.end, False, "no answer")
        txn = transactions(request, destination, self)
        if not self.over:
            self.txn = txn

    def end(self, answered: bool, detail: str, report: bool = True) -> None:
        """Decide the probe (only the first call counts); ``report`` False ends it quietly."""
        if self.over:
            return
        self.over = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        # Stop retransmitting: an answer would no longer count.
        if self.txn is not None and not self.txn.terminated:
            self.txn.terminate()
        self.txn = None
        if report:
            self.on_end(self, answered, detail)

    def on_response(self, response: Response, txn: ClientTransaction) -> None:
        if response.status >= 200:
            self.end(self.alive(response), f"{response.status} {response.reason}".strip())

    def on_timeout(self, txn: ClientTransaction) -> None:
        self.end(False, "no answer")

    def on_transport_error(self, txn: ClientTransaction) -> None:
        self.end(False, "cannot be reached")
