"""NAT handling of registered phones: which bindings are behind NAT, keeping their NAT mappings
open (an OPTIONS over UDP, a CRLF ping on the TCP/TLS connection, every ``keepalive_interval``)
and which of them stopped answering, so that calls to an unreachable phone fail at once.

Requests to a binding always go to the address its REGISTER came from (the B2BUA builds the
destination from the binding's source), so behind NAT they reach the phone as long as the NAT
keeps the mapping open; this service keeps it open and notices when it is gone.
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..config.settings import NatSettings
from ..sip.clock import Clock, TimerHandle
from ..sip.dialog import new_call_id
from ..sip.errors import SipError
from ..sip.message import Request
from ..sip.probe import Probe, new_request
from ..sip.transaction import TransactionLayer, new_tag
from ..sip.transport.base import RELIABLE, Address
from ..sip.transport.manager import TransportManager
from ..sip.transport.tcp import PING
from ..sip.uri import format_host, parse_sip_uri
from ..store import Binding
from .location import LocationService

log = logging.getLogger("sipswitch.nat")

MAX_TICK = 1.0  # seconds between two rounds of pings at most
MIN_TICK = 0.05
MIN_BATCH = 50  # pings a round may always send, however few phones are behind NAT
_GOLDEN = (math.sqrt(5) - 1) / 2

PINGABLE = frozenset({"udp", "tcp", "tls"})  # transports this service knows how to ping
BindingKey = tuple[str, str]  # (aor, contact_uri), as the location store keys bindings


class StreamConnection(Protocol):
    """What a keepalive needs of a TCP/TLS connection (``transport.tcp.TcpConnection``)."""

    @property
    def connected(self) -> bool: ...

    def write(self, data: bytes) -> bool: ...


ConnectionLookup = Callable[[Address], StreamConnection | None]
"""The open connection with a peer address, or None (the phone's connection is gone)."""


def stream_connections(manager: TransportManager) -> ConnectionLookup:
    """Look connections up in the TCP and TLS tables of ``manager``, without opening any."""

    def lookup(peer: Address) -> StreamConnection | None:
        if peer.transport == "tcp":
            return manager.tcp.connection(peer)
        if peer.transport == "tls" and manager.tls is not None:
            return manager.tls.connection(peer)
        return None

    return lookup


def behind_nat(binding: Binding) -> bool:
    """Whether a phone registered as ``binding`` is behind NAT: its Contact names another host
    than the one its REGISTER came from (a private Contact address seen from a public source is
    the common case; a host name that cannot be compared counts as different too), or, over
    UDP, another port (the NAT rewrote the source port). Over TCP and TLS the port says
    nothing: a phone connects from an ephemeral port whatever its Contact says, and requests
    to it use that connection. A Contact that does not parse counts as behind NAT."""
    try:
        contact = parse_sip_uri(binding.contact_uri)
    except SipError:
        return True
    if _ip(contact.host_address) != _ip(binding.source_host):
        return True
    if binding.transport in RELIABLE:
        return False
    port = contact.port
    if port is None:
        port = 5061 if contact.scheme == "sips" else 5060
    return port != binding.source_port


def _ip(host: str) -> str:
    """One spelling per address (IPv6 compressed, IPv4-mapped as IPv4); names lower-cased."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host.lower()
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _same_registration(a: Binding, b: Binding) -> bool:
    """Whether ``b`` is the binding ``a`` as the same REGISTER left it (no refresh since)."""
    return a.call_id == b.call_id and a.cseq == b.cseq


@dataclass(slots=True, eq=False)
class _Peer:
    """A binding behind NAT and its keepalive state."""

    binding: Binding
    destination: Address
    due: float  # when the next ping goes out
    failures: int = 0  # pings in a row without an answer
    unreachable: bool = False
    probe: Probe | None = None

    def describe(self) -> str:
        return f"{self.binding.aor} ({self.binding.contact_uri} at {self.destination})"


class NatKeepalive:
    """Keeps the NAT mappings of phones behind NAT open and tells who stopped answering.

    Each binding behind NAT gets a phase within the interval when it is first seen (spread
    evenly by a golden-ratio sequence, so phones that registered together are not pinged
    together); every ``tick`` the pings that are due go out, at most ``MIN_BATCH`` or twice the
    even share per tick. The B2BUA asks ``unreachable(binding)`` or ``reachable_bindings(aor)``.
    """

    def __init__(
        self,
        transactions: TransactionLayer,
        location: LocationService,
        clock: Clock,
        settings: NatSettings,
        local_address: Callable[[Address], tuple[str, int]],
        *,
        user_agent: str = "sipswitch",
        connections: ConnectionLookup | None = None,
    ) -> None:
        self.transactions = transactions
        self.location = location
        self.clock = clock
        self.local_address = local_address
        self.user_agent = user_agent
        self.connections = connections
        self.interval = settings.keepalive_interval
        self.failures_to_unreachable = settings.keepalive_failures
        self.wait = min(settings.keepalive_timeout, self.interval or settings.keepalive_timeout)
        self.tick = max(MIN_TICK, min(MAX_TICK, self.interval / 10))
        self.options_sent = 0
        self.pings_sent = 0
        self.failed = 0
        self._peers: dict[BindingKey, _Peer] = {}
        self._by_aor: dict[str, set[str]] = {}
        self._queue: list[tuple[float, int, BindingKey, _Peer]] = []
        self._seq = 0
        self._phase = 0.0
        self._timer: TimerHandle | None = None
        self._watching = False
        # Told (binding, reachable) whenever a phone becomes unreachable or reachable again
        # (worker processes keep a copy: ``pbx.workers``).
        self.on_reachability: Callable[[Binding, bool], None] | None = None

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    # --- life cycle ---
    def start(self) -> None:
        """Follow the location service and start pinging (nothing when the interval is 0)."""
        if not self.enabled or self._timer is not None:
            return
        if not self._watching:
            self.location.watch(self._on_change)
            self._watching = True
        for binding in self.location.all_bindings():
            self._track(binding)
        self._timer = self.clock.call_later(self.tick, self._round)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for peer in self._peers.values():
            if peer.probe is not None:
                peer.probe.end(False, "stopped", report=False)
        self._peers.clear()
        self._by_aor.clear()
        self._queue.clear()

    # --- what the B2BUA asks ---
    def unreachable(self, binding: Binding) -> bool:
        """Whether the phone registered as ``binding`` stopped answering its keepalives (and has
        not registered again since)."""
        peer = self._peers.get((binding.aor, binding.contact_uri))
        return peer is not None and peer.unreachable and _same_registration(peer.binding, binding)

    def reachable_bindings(self, aor: str) -> list[Binding]:
        """``location.lookup(aor)`` without the unreachable phones (highest q first)."""
        return [b for b in self.location.lookup(aor) if not self.unreachable(b)]

    @property
    def nat_bindings(self) -> int:
        """How many bindings are behind NAT (and pinged)."""
        return len(self._peers)

    def unreachable_bindings(self) -> list[Binding]:
        """The bindings of the phones unreachable now."""
        return [peer.binding for peer in self._peers.values() if peer.unreachable]

    def unreachable_count(self) -> int:
        return sum(1 for peer in self._peers.values() if peer.unreachable)

    # --- following the bindings ---
    def _on_change(self, aor: str, bindings: list[Binding]) -> None:
        tracked = self._by_aor.get(aor)
        if tracked:
            current = {b.contact_uri for b in bindings}
            for contact in [c for c in tracked if c not in current]:
                self._forget((aor, contact))
        for binding in bindings:
            self._track(binding)

    def _track(self, binding: Binding) -> None:
        key = (binding.aor, binding.contact_uri)
        peer = self._peers.get(key)
        if peer is not None and peer.binding is binding:
            return
        if binding.transport not in PINGABLE or not behind_nat(binding):
            if peer is not None:
                self._forget(key)
            return
        destination = Address(binding.transport, binding.source_host, binding.source_port)
        if peer is None:
            self._phase = (self._phase + _GOLDEN) % 1.0
            peer = _Peer(binding, destination, self.clock.now() + self._phase * self.interval)
            self._peers[key] = peer
            self._by_aor.setdefault(binding.aor, set()).add(binding.contact_uri)
            self._push(peer)
            return
        refreshed = not _same_registration(peer.binding, binding)
        peer.binding = binding
        peer.destination = destination
        if refreshed:
            # The REGISTER itself shows the phone alive; a ping still out no longer counts.
            if peer.probe is not None:
                peer.probe.end(False, "registered", report=False)
            peer.failures = 0
            if peer.unreachable:
                peer.unreachable = False
                log.info("phone %s is reachable again: it registered", peer.describe())
                self._report(peer)

    def _forget(self, key: BindingKey) -> None:
        peer = self._peers.pop(key, None)
        if peer is None:
            return
        if peer.probe is not None:
            peer.probe.end(False, "binding gone", report=False)
        contacts = self._by_aor.get(key[0])
        if contacts is not None:
            contacts.discard(key[1])
            if not contacts:
                del self._by_aor[key[0]]

    def _push(self, peer: _Peer) -> None:
        self._seq += 1
        key = (peer.binding.aor, peer.binding.contact_uri)
        heapq.heappush(self._queue, (peer.due, self._seq, key, peer))

    # --- pinging ---
    def _round(self) -> None:
        self._timer = self.clock.call_later(self.tick, self._round)
        now = self.clock.now()
        budget = max(MIN_BATCH, math.ceil(2 * len(self._peers) * self.tick / self.interval))
        queue = self._queue
        wall = self.clock.wall()
        while queue and queue[0][0] <= now and budget > 0:
            due, _, key, peer = heapq.heappop(queue)
            if self._peers.get(key) is not peer or peer.due != due:
                continue  # forgotten or rescheduled since
            if peer.binding.expires_at <= wall:
                self._forget(key)
                continue
            budget -= 1
            self._ping(peer)
            # Keep the phase; a round that fell behind sends the late ones one interval on.
            peer.due = due + self.interval if due + self.interval > now else now + self.interval
            self._push(peer)

    def _ping(self, peer: _Peer) -> None:
        if peer.probe is not None:
            peer.probe.end(False, "no answer")  # overdue: the interval is shorter than the wait
        destination = peer.destination
        if destination.reliable:
            self._ping_connection(peer)
            return
        # Any answer shows the mapping is open and the phone alive: 404, 405 or 481 too.
        probe = Probe(lambda done, alive, detail: self._probe_ended(peer, done, alive, detail))
        peer.probe = probe
        try:
            request = self._options(peer)
        except (SipError, LookupError) as exc:
            probe.end(False, str(exc))
            return
        self.options_sent += 1
        probe.send(self.transactions.send_request, request, destination, self.clock, self.wait)

    def _probe_ended(self, peer: _Peer, probe: Probe, answered: bool, detail: str) -> None:
        if peer.probe is probe:
            peer.probe = None
        self._outcome(peer, answered, detail)

    def _ping_connection(self, peer: _Peer) -> None:
        """RFC 5626 double-CRLF on the phone's own connection. The transport answers pongs but
        does not report them, so the failure seen is the connection being gone."""
        destination = peer.destination
        if self.connections is None:
            sent = self.transactions.transmit(PING, destination)
        else:
            connection = self.connections(destination)
            sent = connection is not None and connection.connected and connection.write(PING)
        if sent:
            self.pings_sent += 1
        self._outcome(peer, sent, "connection open" if sent else "connection closed")

    def _options(self, peer: _Peer) -> Request:
        binding, destination = peer.binding, peer.destination
        host, port = self.local_address(destination)
        return new_request(
            "OPTIONS",
            binding.contact_uri,
            destination,
            (host, port),
            f"<sip:keepalive@{format_host(host)}>;tag={new_tag()}",
            f"<{binding.contact_uri}>",
            new_call_id(host),
            1,
            self.user_agent,
        )

    def _outcome(self, peer: _Peer, answered: bool, detail: str) -> None:
        key = (peer.binding.aor, peer.binding.contact_uri)
        if self._peers.get(key) is not peer:
            return
        if answered:
            peer.failures = 0
            if peer.unreachable:
                peer.unreachable = False
                log.info("phone %s is reachable again (%s)", peer.describe(), detail)
                self._report(peer)
            return
        self.failed += 1
        peer.failures += 1
        if not peer.unreachable and peer.failures >= self.failures_to_unreachable:
            peer.unreachable = True
            log.warning(
                "phone %s is unreachable: %d keepalives in a row failed (%s)",
                peer.describe(),
                peer.failures,
                detail,
            )
            self._report(peer)

    def _report(self, peer: _Peer) -> None:
        if self.on_reachability is not None:
            self.on_reachability(peer.binding, not peer.unreachable)
