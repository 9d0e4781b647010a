"""Virtual-time test bench for registrations and health checks: our side is a transaction
layer on a loop network driven by a ``VirtualClock``; the far side is a scriptable registrar."""

from __future__ import annotations

from collections.abc import Callable

from sipswitch.sip.auth import AuthResult, DigestChallenger, compute_ha1, parse_credentials
from sipswitch.sip.clock import VirtualClock
from sipswitch.sip.message import Request, make_response
from sipswitch.sip.transaction import ServerTransaction, TransactionLayer
from sipswitch.sip.transport.base import Address
from sipswitch.sip.transport.loop import LoopNetwork, LoopTransport

LOCAL = Address("udp", "10.0.0.1", 5060)
CARRIER = Address("udp", "10.0.0.9", 5060)
REALM = "carrier.example"


class Registrar:
    """The carrier: challenges each REGISTER once per nonce (401), then grants ``granted``
    seconds (in the Contact's ``expires`` parameter when ``in_contact``). ``status`` forces an
    answer; ``silent`` drops every request."""

    def __init__(self, clock: VirtualClock, network: LoopNetwork, password: str) -> None:
        self.clock = clock
        self.transport = LoopTransport(network, CARRIER)
        self.layer = TransactionLayer(self.transport, clock, self.on_request)
        self.transport.attach(self.layer)
        self.challenger = DigestChallenger(b"k" * 32, REALM, clock.wall, nonce_ttl=3600)
        self.password = password
        self.granted = 120
        self.in_contact = True
        self.status: int | None = None
        self.min_expires: int | None = None
        self.silent = False
        self.stale_once = False
        self.received: list[tuple[float, Request]] = []
        self.bindings: dict[str, float] = {}  # contact -> expiry

    def on_request(self, request: Request, txn: ServerTransaction | None, source: Address) -> None:
        if txn is None:
            return
        self.received.append((self.clock.now(), request))
        if self.silent:
            return
        if request.method == "OPTIONS":
            txn.respond(make_response(request, 200))
            return
        if self.status is not None:
            txn.respond(make_response(request, self.status))
            return
        result = AuthResult.FAILED
        for value in request.headers.get_all("Authorization"):
            creds = parse_credentials(value)
            if creds is not None and creds.username == "5551000":
                ha1 = compute_ha1("5551000", REALM, self.password, creds.algorithm)
                result = self.challenger.verify(creds, "REGISTER", ha1)
        stale = result is AuthResult.OK and self.stale_once
        if result is not AuthResult.OK or stale:
            self.stale_once = self.stale_once and not stale
            response = make_response(request, 401)
            for challenge in self.challenger.challenge_values(stale=stale):
                response.headers.add("WWW-Authenticate", challenge)
            txn.respond(response)
            return
        expires = int(request.headers.get("Expires") or "3600")
        if self.min_expires is not None and 0 < expires < self.min_expires:
            response = make_response(request, 423)
            response.headers.add("Min-Expires", str(self.min_expires))
            txn.respond(response)
            return
        contact = request.headers.get("Contact") or ""
        response = make_response(request, 200)
        if expires == 0:
            self.bindings.pop(contact, None)
        else:
            granted = min(expires, self.granted)
            self.bindings[contact] = self.clock.now() + granted
            if self.in_contact:
                response.headers.add("Contact", f"{contact};expires={granted}")
            else:
                response.headers.add("Contact", contact)
                response.headers.add("Expires", str(granted))
        txn.respond(response)

    def registers(self) -> list[tuple[float, Request]]:
        return [(at, r) for at, r in self.received if r.method == "REGISTER"]

    def authorized(self) -> list[tuple[float, Request]]:
        return [(at, r) for at, r in self.registers() if "Authorization" in r.headers]


class Bench:
    def __init__(self) -> None:
        self.clock = VirtualClock()
        self.network = LoopNetwork(self.clock, latency=0.01)
        self.transport = LoopTransport(self.network, LOCAL)
        self.layer = TransactionLayer(self.transport, self.clock, self._ignore)
        self.transport.attach(self.layer)
        self.changes = 0

    def _ignore(self, request: Request, txn: ServerTransaction | None, source: Address) -> None:
        pass

    def local_address(self, destination: Address) -> tuple[str, int]:
        return LOCAL.host, LOCAL.port

    def changed(self) -> None:
        self.changes += 1

    def run(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def until(
        self, predicate: Callable[[], bool], limit: float = 600.0, step: float = 0.05
    ) -> float:
        """Advance until ``predicate`` holds; returns the virtual time it took."""
        start = self.clock.now()
        while not predicate():
            assert self.clock.now() - start < limit, "condition not met in virtual time"
            self.clock.advance(step)
        return self.clock.now() - start
