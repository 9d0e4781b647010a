"""Registration of an external line at its carrier: REGISTER with digest answers to 401/407,
refresh at 80 % of the granted period, exponential back-off after failures (capped), and
unregistration on shutdown. Timers run on the injected clock, so all of it runs in virtual time.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Protocol

from ..config.trunks import TrunkSettings
from ..sip.auth import build_authorization, choose_challenge
from ..sip.clock import Clock, TimerHandle
from ..sip.dialog import new_call_id
from ..sip.errors import SipError
from ..sip.headers import parse_name_addr
from ..sip.message import Request, Response
from ..sip.probe import new_request
from ..sip.transaction import ClientListener, ClientTransaction, new_tag
from ..sip.transport.base import Address
from ..sip.uri import SipUri, format_host, parse_uri

log = logging.getLogger("sipswitch.trunks")

REFRESH_FRACTION = 0.8
RETRY_MIN = 5.0  # seconds before the first retry after a failure
RETRY_MAX = 300.0  # back-off cap
MAX_CHALLENGES = 3  # challenges answered in one registration exchange (stale nonces, 423)
MAX_EXPIRES = 86_400


class Sender(Protocol):
    """Sends a request in a new client transaction (a ``TransactionLayer``)."""

    def send_request(
        self, request: Request, destination: Address, listener: ClientListener
    ) -> ClientTransaction: ...


class RegistrationState(enum.Enum):
    IDLE = "idle"
    REGISTERING = "registering"
    REGISTERED = "registered"
    FAILED = "failed"  # backing off: ``retry_at`` says when the next try goes out
    UNREGISTERED = "unregistered"


class _Exchange:
    """One REGISTER and the requests that answer its challenges; stale ones are ignored."""

    def __init__(self, registration: LineRegistration, expires: int) -> None:
        self.registration = registration
        self.expires = expires
        self.challenges = 0
        self.authenticated = False
        self.done = False

    def on_response(self, response: Response, txn: ClientTransaction) -> None:
        if response.status >= 200 and not self.done:
            self.registration._on_response(self, response)

    def on_timeout(self, txn: ClientTransaction) -> None:
        if not self.done:
            self.registration._finish(self, "no answer from the registrar")

    def on_transport_error(self, txn: ClientTransaction) -> None:
        if not self.done:
            self.registration._finish(self, "the registrar cannot be reached")


class LineRegistration:
    """Keeps one line registered. ``on_change`` is called after every state change."""

    def __init__(
        self,
        trunk: TrunkSettings,
        destination: Address,
        sender: Sender,
        clock: Clock,
        local_address: Callable[[Address], tuple[str, int]],
        on_change: Callable[[], None] = lambda: None,
        *,
        user_agent: str = "sipswitch",
        retry_min: float = RETRY_MIN,
        retry_max: float = RETRY_MAX,
    ) -> None:
        self.trunk = trunk
        self.destination = destination
        self.sender = sender
        self.clock = clock
        self.local_address = local_address
        self.on_change = on_change
        self.user_agent = user_agent
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.state = RegistrationState.IDLE
        self.reason = ""
        self.failures = 0  # in a row
        self.expires = trunk.expires  # asked for (raised by a 423's Min-Expires)
        self.granted = 0
        self.expires_at = 0.0  # clock time the carrier's binding lapses
        self.retry_at: float | None = None
        self.refresh_at: float | None = None
        self.call_id = new_call_id(destination.host)
        self.tag = new_tag()
        self.cseq = 0
        self._timer: TimerHandle | None = None
        self._exchange: _Exchange | None = None
        self._stopped = False
        self._on_unregistered: Callable[[], None] | None = None

    # --- what the manager asks ---
    @property
    def registered(self) -> bool:
        """Whether the carrier holds a binding (a failed refresh leaves the rest of the period)."""
        return self.expires_at > self.clock.now()

    def start(self) -> None:
        self._stopped = False
        self._send(self.expires)

    def stop(self, done: Callable[[], None] | None = None) -> None:
        """Stop refreshing; when registered, unregister (Expires: 0) and call ``done`` when the
        carrier answered or gave up; otherwise call it at once."""
        self._stopped = True
        self._cancel_timer()
        if self.registered:
            self._on_unregistered = done
            self._send(0)
            return
        if self._exchange is not None:
            self._exchange.done = True
            self._exchange = None
        self._set(RegistrationState.UNREGISTERED, "stopped")
        if done is not None:
            done()

    # --- sending ---
    def _send(
        self,
        expires: int,
        exchange: _Exchange | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        if exchange is None:
            if self._exchange is not None:
                self._exchange.done = True
            exchange = self._exchange = _Exchange(self, expires)
            if expires:
                self._set(
                    RegistrationState.REGISTERING if not self.registered else self.state,
                    self.reason,
                )
        try:
            request = self._request(expires)
        except (SipError, LookupError) as exc:
            self._finish(exchange, f"cannot build REGISTER: {exc}")
            return
        if credentials is not None:
            request.headers.add(*credentials)
        self.sender.send_request(request, self.destination, exchange)

    def _request(self, expires: int) -> Request:
        host, port = self.local_address(self.destination)
        aor = f"<sip:{self.trunk.username}@{format_host(self.trunk.sip_domain)}>"
        self.cseq += 1
        request = new_request(
            "REGISTER",
            self._request_uri(),
            self.destination,
            (host, port),
            f"{aor};tag={self.tag}",
            aor,
            self.call_id,
            self.cseq,
            self.user_agent,
        )
        request.headers.add("Contact", f"<{self.contact_uri(host, port)}>")
        request.headers.add("Expires", str(expires))
        return request

    def contact_uri(self, host: str, port: int) -> str:
        transport = self.destination.transport
        suffix = "" if transport == "udp" else f";transport={transport}"
        return f"sip:{self.trunk.username}@{format_host(host)}:{port}{suffix}"

    # --- answers ---
    def _on_response(self, exchange: _Exchange, response: Response) -> None:
        status = response.status
        if status in (401, 407):
            self._on_challenge(exchange, response)
            return
        if status == 423 and exchange.challenges < MAX_CHALLENGES:
            wanted = response.header_uint("Min-Expires", MAX_EXPIRES)
            if wanted is not None and exchange.expires < wanted <= MAX_EXPIRES:
                exchange.challenges += 1
                exchange.authenticated = False  # the new request is challenged afresh
                exchange.expires = self.expires = wanted
                self._send(wanted, exchange)
                return
        exchange.done = True
        if exchange is self._exchange:
            self._exchange = None
        if status >= 300:
            self._fail(f"{status} {response.reason}".strip())
            return
        if exchange.expires == 0:
            self._unregistered("unregistered")
            return
        granted = self._granted(response, exchange.expires)
        if granted <= 0:
            self._fail("the registrar kept no binding")
            return
        now = self.clock.now()
        self.failures = 0
        self.granted = granted
        self.expires_at = now + granted
        self.retry_at = None
        delay = max(1.0, granted * REFRESH_FRACTION)
        self.refresh_at = now + delay
        self._cancel_timer()
        self._timer = self.clock.call_later(delay, self._refresh)
        if self.state is not RegistrationState.REGISTERED:
            log.info("line %s registered for %d s", self.trunk.name, granted)
        self._set(RegistrationState.REGISTERED, f"expires in {granted} s")

    def _on_challenge(self, exchange: _Exchange, response: Response) -> None:
        proxy = response.status == 407
        values = response.headers.get_all("Proxy-Authenticate" if proxy else "WWW-Authenticate")
        challenge = choose_challenge(values)
        trunk = self.trunk
        if challenge is None:
            self._finish(exchange, f"{response.status}: no usable digest challenge")
            return
        if trunk.realm and challenge.realm != trunk.realm:
            self._finish(exchange, f"{response.status}: challenge for realm {challenge.realm!r}")
            return
        # A second challenge after our answer means the password was wrong, unless the nonce
        # only went stale.
        if exchange.authenticated and not challenge.stale:
            self._finish(exchange, f"{response.status} authentication refused")
            return
        if exchange.challenges >= MAX_CHALLENGES:
            self._finish(exchange, f"{response.status} too many challenges")
            return
        exchange.challenges += 1
        exchange.authenticated = True
        try:
            value = build_authorization(
                challenge, "REGISTER", self._request_uri(), trunk.login, trunk.password
            )
        except ValueError as exc:
            self._finish(exchange, f"{response.status}: {exc}")
            return
        header = "Proxy-Authorization" if proxy else "Authorization"
        self._send(exchange.expires, exchange, (header, value))

    def _request_uri(self) -> str:
        trunk = self.trunk
        transport = self.destination.transport
        suffix = "" if transport == "udp" else f";transport={transport}"
        domain = format_host(trunk.sip_domain)
        return f"sip:{domain}{suffix}" if trunk.domain else f"sip:{domain}:{trunk.port}{suffix}"

    def _granted(self, response: Response, asked: int) -> int:
        """The period the registrar granted our contact: its ``expires`` parameter in the
        answer, else the Expires header, else what we asked for."""
        try:
            ours = parse_uri(self.contact_uri(*self.local_address(self.destination)))
        except (SipError, LookupError):
            ours = None
        for value in response.headers.values("Contact"):
            try:
                contact = parse_name_addr(value)
            except SipError:
                continue
            uri = contact.uri
            if (
                isinstance(uri, SipUri)
                and isinstance(ours, SipUri)
                and uri.user == ours.user
                and uri.host_address == ours.host_address
                and (uri.port or 5060) == (ours.port or 5060)
            ):
                raw = contact.params.get("expires")
                if raw is not None and raw.isdigit() and len(raw) <= 10:
                    return min(int(raw), MAX_EXPIRES)
        header = response.header_uint("Expires", MAX_EXPIRES)
        return min(header, MAX_EXPIRES) if header is not None else asked

    def _finish(self, exchange: _Exchange, reason: str) -> None:
        exchange.done = True
        if exchange is self._exchange:
            self._exchange = None
        if exchange.expires == 0:
            self._unregistered(f"unregistration failed: {reason}")
            return
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        if self._stopped:
            return
        self.failures += 1
        delay = min(self.retry_min * 2 ** min(self.failures - 1, 30), self.retry_max)
        self.retry_at = self.clock.now() + delay
        self.refresh_at = None
        self._cancel_timer()
        self._timer = self.clock.call_later(delay, self._retry)
        log.warning(
            "line %s: registration failed (%s); retry in %d s", self.trunk.name, reason, delay
        )
        self._set(RegistrationState.FAILED, reason)

    def _unregistered(self, reason: str) -> None:
        self.expires_at = 0.0
        self.refresh_at = None
        self._set(RegistrationState.UNREGISTERED, reason)
        done, self._on_unregistered = self._on_unregistered, None
        if done is not None:
            done()

    # --- timers ---
    def _refresh(self) -> None:
        self._timer = None
        if not self._stopped:
            self._send(self.expires)

    def _retry(self) -> None:
        self._timer = None
        self.retry_at = None
        if not self._stopped:
            self._send(self.expires)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _set(self, state: RegistrationState, reason: str) -> None:
        changed = (state, reason) != (self.state, self.reason)
        self.state, self.reason = state, reason
        if changed:
            self.on_change()
