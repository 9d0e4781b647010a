"""The PBX's shared services and its request chain.

``PbxCore`` holds what every handler needs (settings, clock, transactions, transports, the
extension directory, digest challenges) and dispatches each new request through a fixed order:
validation → in-dialog routing → overload check → OPTIONS / REGISTER / INVITE handlers (bans,
rate limits and scanner drops happen before, in ``security.SecurityGate``). Handlers answer through
``respond`` so every response carries the same Server header and To-tag rules.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from ..config.settings import Settings
from ..sip.auth import AuthResult, DigestChallenger, parse_credentials
from ..sip.clock import Clock
from ..sip.errors import SipError
from ..sip.message import Request, Response, make_response
from ..sip.parser import MessageError
from ..sip.transaction import ServerTransaction, TransactionLayer, new_tag
from ..sip.transport.base import Address
from ..sip.uri import SipUri, format_host
from ..sip.validate import UnsupportedExtension, check_request
from ..store import Extension
from .addresses import AddressPlan
from .directory import ExtensionDirectory
from .security import SecurityGate

log = logging.getLogger("sipswitch")

ALLOWED_METHODS = (
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "INFO",
    "MESSAGE",
    "UPDATE",
    "NOTIFY",
    "REFER",
    "PRACK",
    "SUBSCRIBE",
)
ALLOW_HEADER = "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, INFO, MESSAGE, UPDATE"
SUPPORTED_EXTENSIONS = frozenset({"path", "outbound", "gruu", "replaces", "timer"})


class RateLimitedLog:
    """At most ``burst`` warnings per ``interval`` seconds; the rest are counted and summarised,
    so a flood of bad packets cannot fill the disk."""

    def __init__(self, logger: logging.Logger, burst: int = 20, interval: float = 10.0) -> None:
        self._log = logger
        self._burst = burst
        self._interval = interval
        self._window = 0.0
        self._count = 0
        self._suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._window >= self._interval:
            if self._suppressed:
                self._log.warning("%d similar warnings suppressed", self._suppressed)
            self._window, self._count, self._suppressed = now, 0, 0
        if self._count < self._burst:
            self._count += 1
            self._log.warning(message, *args)
        else:
            self._suppressed += 1


class Transports(Protocol):
    """What the PBX needs from the transports (a ``TransportManager``, or a loop transport in
    tests): sending, and the local address to advertise toward a destination."""

    def send(self, data: bytes, destination: Address) -> bool: ...

    def local_address(self, transport: str, destination_host: str) -> tuple[str, int]: ...


class DialogRouter(Protocol):
    def route_in_dialog(
        self, request: Request, txn: ServerTransaction | None, source: Address
    ) -> bool: ...


class PbxCore:
    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        transports: Transports,
        directory: ExtensionDirectory,
        secret: bytes | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.transports = transports
        self.directory = directory
        self.transactions = TransactionLayer(
            transports,
            clock,
            self.on_request,
            on_parse_error=self.on_parse_error,
            force_rport=settings.sip.force_rport,
        )
        self.challenger = DigestChallenger(
            secret or secrets.token_bytes(32),
            settings.sip.realm,
            clock.wall,
            algorithms=settings.sip.auth_algorithms,
        )
        self.protocol_log = RateLimitedLog(log)
        self.addresses = AddressPlan(settings.nat)
        self.handlers: dict[str, Callable[[Request, ServerTransaction, Address], None]] = {}
        self.dialogs: DialogRouter | None = None
        self.accepting_calls = True
        self.security: SecurityGate | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- dispatch ---
    def on_request(self, request: Request, txn: ServerTransaction | None, source: Address) -> None:
        try:
            check_request(request, ALLOWED_METHODS, SUPPORTED_EXTENSIONS)
        except UnsupportedExtension as exc:
            self.respond_to(
                request, txn, source, 420, headers={"Unsupported": ", ".join(exc.extensions)}
            )
            return
        except SipError as exc:
            self.protocol_log.warning("%s from %s: %s", request.method, source, exc.reason)
            extra = {"Allow": ALLOW_HEADER} if exc.status in (405, 501) else None
            self.respond_to(request, txn, source, exc.status, exc.reason, headers=extra)
            return
        if request.to.tag is not None:
            if self.dialogs is not None and self.dialogs.route_in_dialog(request, txn, source):
                return
            if request.method != "ACK" and txn is not None:
                self.respond(txn, 481)
            return
        if request.method == "ACK" or txn is None:
            return  # a stray ACK (or a request the transaction layer could not take)
        security = self.security
        if security is not None and security.overloaded(len(self._tasks)):
            self.respond(txn, 503, headers={"Retry-After": security.retry_after})
            return
        handler = self.handlers.get(request.method)
        if handler is None:
            self.respond(txn, 405, headers={"Allow": ALLOW_HEADER})
            return
        handler(request, txn, source)

    def on_parse_error(self, error: MessageError, source: Address, local: Address) -> None:
        self.protocol_log.warning("unparsable message from %s: %s", source, error.reason)
        request = error.partial
        # Without Via and Call-ID it is not recognisably SIP: drop it silently.
        if (
            isinstance(request, Request)
            and request.method != "ACK"
            and "Via" in request.headers
            and "Call-ID" in request.headers
        ):
            try:
                response = make_response(request, error.status, error.reason)
                response.headers.add("Server", self.settings.sip.user_agent)
                self.transactions.send_stateless(
                    response, self.transactions.response_destination(request, source)
                )
            except SipError:
                pass

    # --- answering ---
    def build_response(
        self,
        request: Request,
        status: int,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
        to_tag: str | None = None,
        body: bytes = b"",
    ) -> Response:
        if to_tag is None and status > 100:
            to_tag = new_tag()
        response = make_response(request, status, reason, to_tag if status > 100 else None)
        if headers:
            for name, value in headers.items():
                response.headers.add(name, value)
        response.headers.add("Server", self.settings.sip.user_agent)
        response.body = body
        return response

    def respond(
        self,
        txn: ServerTransaction,
        status: int,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
        to_tag: str | None = None,
        body: bytes = b"",
    ) -> Response:
        last = txn.last_response
        if status == 100 and last is not None:
            # The transaction layer already sent a 100 Trying (or something better) for this
            # INVITE; a second one tells the caller nothing and costs a datagram.
            return last
        response = self.build_response(txn.request, status, reason, headers, to_tag, body)
        txn.respond(response)
        return response

    def respond_to(
        self,
        request: Request,
        txn: ServerTransaction | None,
        source: Address,
        status: int,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer a request that may have no transaction (then statelessly)."""
        if request.method == "ACK":
            return
        if txn is not None:
            self.respond(txn, status, reason, headers)
            return
        try:
            response = self.build_response(request, status, reason, headers)
            destination = self.transactions.response_destination(request, source)
        except SipError:
            return
        self.transactions.send_stateless(response, destination)

    # --- authentication ---
    async def authenticate(
        self, txn: ServerTransaction, user: str, proxy: bool
    ) -> Extension | None:
        """Check digest credentials for ``user``; on failure send the challenge and return None.

        An unknown user and a wrong password get the same answer, so extensions cannot be
        enumerated. Valid credentials of another extension than ``user`` (the From user of an
        INVITE, the To user of a REGISTER) get 403. A wrong answer to one of our nonces counts
        as a failed authentication of the source address (for bans).
        """
        request = txn.request
        header = "Proxy-Authorization" if proxy else "Authorization"
        stale = False
        failed = False
        for value in request.headers.get_all(header):
            creds = parse_credentials(value)
            if creds is None or creds.realm != self.challenger.realm:
                continue
            extension = self.directory.lookup(creds.username)
            if extension is not None and not extension.enabled:
                extension = None
            ha1 = None
            if extension is not None:
                ha1 = (
                    extension.ha1_sha256
                    if creds.algorithm.upper().startswith("SHA-256")
                    else extension.ha1_md5
                )
            result = self.challenger.verify(creds, request.method, ha1, request.body)
            if result is AuthResult.OK and extension is not None and ha1 is not None:
                if creds.username != user:
                    log.info(
                        "%s from %s: authenticated as %s for %r: refused",
                        request.method,
                        txn.source,
                        creds.username,
                        user,
                    )
                    self.respond(txn, 403, "Authenticated User Mismatch")
                    return None
                return extension
            if result is AuthResult.STALE:
                stale = True
            # Only an answer to a nonce we signed tests a password: a stale nonce from before
            # a restart is no guess.
            elif self.challenger._nonce_issued(creds.nonce) is not None:
                failed = True
        if failed and self.security is not None:
            self.security.auth_failed(txn.source.host)
        status = 407 if proxy else 401
        challenge_header = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        response = self.build_response(request, status)
        for challenge in self.challenger.challenge_values(stale=stale):
            response.headers.add(challenge_header, challenge)
        txn.respond(response)
        return None

    # --- addresses ---
    def local_address(self, destination: Address) -> tuple[str, int]:
        """The (host, port) to name in Via/Contact toward ``destination``: the local or the
        external address by the peer's realm (``[nat]``), the listening port."""
        host, port = self.transports.local_address(destination.transport, destination.host)
        return self.addresses.advertised(destination.host, host), port

    def media_addresses(self, destination: Address) -> tuple[str, str]:
        """(bind, advertise) for media toward ``destination``: the address to open RTP sockets
        on, and the one to write in SDP (they differ when the server is behind a NAT)."""
        host, _ = self.transports.local_address(destination.transport, destination.host)
        return host, self.addresses.advertised(destination.host, host)

    def contact_uri(self, user: str, destination: Address) -> str:
        host, port = self.local_address(destination)
        transport = "" if destination.transport == "udp" else f";transport={destination.transport}"
        return f"sip:{user}@{format_host(host)}:{port}{transport}"

    def domain_for(self, uri: SipUri) -> str:
        return self.settings.sip.domain or uri.host

    # --- background work ---
    def spawn(
        self, coroutine: Coroutine[Any, Any, Any], txn: ServerTransaction | None = None
    ) -> None:
        """Run a request handler in the background. If it fails, ``txn`` (when given and still
        unanswered) gets a 500, so no transaction is left waiting for a final response."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._task_done(done, txn))

    def _task_done(self, task: asyncio.Task[Any], txn: ServerTransaction | None) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        log.error("request handler failed", exc_info=task.exception())
        if txn is not None and not txn.terminated:
            last = txn.last_response
            if last is None or last.status < 200:
                self.respond(txn, 500)

    async def drain(self, timeout: float) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)


AsyncHandler = Callable[[Request, ServerTransaction, Address], Awaitable[None]]
