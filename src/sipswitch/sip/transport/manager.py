"""Every transport of the server in one place: binds UDP and TCP (and TLS when configured) on each
listen address, sends by the destination's transport and family, and says which local address to
put in Via and Contact.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections import OrderedDict
from collections.abc import Callable
from typing import SupportsIndex, overload

from ..clock import Clock, LoopClock
from .base import Address, MessageSink
from .tcp import TcpTransport, canonical_host
from .tls import TlsTransport
from .udp import UdpTransport, strip_brackets
from .udp import family_of as _family

log = logging.getLogger(__name__)

WILDCARDS = frozenset({"0.0.0.0", "::"})
# Documentation prefixes (RFC 5737, RFC 3849): a connect() to them asks the kernel for the
# default route's source address without sending anything.
_ROUTE_PROBES = {socket.AF_INET: "192.0.2.1", socket.AF_INET6: "2001:db8::1"}
_LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


class _PortTaken(Exception):
    """A port picked for one socket was already taken on another address: bind again."""


class BoundAddresses(list[Address]):
    """Every address the manager listens on, in bind order; ``bound["udp"]`` lists one
    transport's addresses."""

    @overload
    def __getitem__(self, key: SupportsIndex) -> Address: ...

    @overload
    def __getitem__(self, key: slice) -> list[Address]: ...

    @overload
    def __getitem__(self, key: str) -> list[Address]: ...

    def __getitem__(self, key: SupportsIndex | slice | str) -> Address | list[Address]:
        if isinstance(key, str):
            return [address for address in self if address.transport == key]
        return super().__getitem__(key)

    def port(self, transport: str) -> int:
        """The port of the first address bound for ``transport``."""
        for address in self:
            if address.transport == transport:
                return address.port
        raise LookupError(f"nothing bound for {transport}")


class TransportManager:
    """Owns the UDP sockets and the TCP transport; the sink receives what any of them reads."""

    def __init__(
        self,
        sink: MessageSink | None = None,
        clock: Clock | None = None,
        *,
        tcp_idle_timeout: float = 300.0,
        tcp_read_timeout: float = 32.0,
        tcp_connect_timeout: float = 10.0,
        max_connections: int = 10_000,
        port_attempts: int = 8,
        route_cache_ttl: float = 60.0,
        route_cache_size: int = 1024,
    ) -> None:
        self.sink = sink
        self.clock: Clock = clock if clock is not None else LoopClock()
        self.port_attempts = port_attempts
        self.udp: list[UdpTransport] = []
        self.tcp = TcpTransport(
            sink,
            self.clock,
            idle_timeout=tcp_idle_timeout,
            read_timeout=tcp_read_timeout,
            connect_timeout=tcp_connect_timeout,
            max_connections=max_connections,
        )
        self.tls: TlsTransport | None = None
        self.bound = BoundAddresses()
        self._udp_by_family: dict[socket.AddressFamily, UdpTransport] = {}
        # Several addresses of one family (several interfaces): pick by route per peer.
        self._udp_choices: dict[socket.AddressFamily, list[UdpTransport]] = {}
        self._routes: OrderedDict[tuple[socket.AddressFamily, str], tuple[float, str]] = (
            OrderedDict()
        )
        self._route_ttl = route_cache_ttl
        # local_address answers that depend on no route: (transport, destination) -> address.
        self._fixed_local: dict[tuple[str, str], tuple[str, int]] = {}
        self._route_cache_size = route_cache_size
        self._started = False

    def set_sink(self, sink: MessageSink) -> None:
        self.sink = sink
        for udp in self.udp:
            udp.sink = sink
        self.tcp.sink = sink
        if self.tls is not None:
            self.tls.sink = sink

    def set_unreachable_handler(self, handler: Callable[[Address], None] | None) -> None:
        """Who hears that a TCP or TLS connection we opened could not be set up (refused,
        timed out, its certificate refused): the transaction layer's ``peer_unreachable``."""
        self.tcp.on_unreachable = handler
        if self.tls is not None:
            self.tls.on_unreachable = handler

    async def start_tls(self, tls: TlsTransport, listen: list[str], port: int) -> None:
        """Listen for SIP over TLS with ``tls`` on every listen address (port 0: a free one,
        the same on every address)."""
        if self.tls is not None:
            raise RuntimeError("TLS already started")
        tls.sink = self.sink
        self.tls = tls
        tls.on_unreachable = self.tcp.on_unreachable
        try:
            for entry in listen or ["0.0.0.0"]:
                host = canonical_host(entry.strip())
                if host is None:
                    raise ValueError(f"listen address {entry!r} is not an IP address")
                if any(a.host == host for a in tls.listening):
                    continue
                local = await tls.listen(host, port)
                self.bound.append(local)
                port = local.port
        except BaseException:
            await tls.close()
            self.tls = None
            for address in [a for a in self.bound if a.transport == "tls"]:
                self.bound.remove(address)
            raise
        self._fixed_local.clear()
        log.info("listening for TLS on %s", ", ".join(str(a) for a in tls.listening))

    async def start(self, listen: list[str], udp_port: int, tcp_port: int) -> None:
        """Bind UDP and TCP on every listen address (IP literals; port 0 = any free port).

        With both ports 0 one free port is chosen for everything (UDP and TCP, every address),
        retrying with another port when it is taken on some address or for TCP.
        """
        if self._started:
            raise RuntimeError("transports already started")
        hosts: list[str] = []
        for entry in listen or ["0.0.0.0"]:
            host = canonical_host(entry.strip())
            if host is None:
                raise ValueError(f"listen address {entry!r} is not an IP address")
            if host not in hosts:
                hosts.append(host)
        attempts = max(1, self.port_attempts) if udp_port == 0 or tcp_port == 0 else 1
        for attempt in range(attempts):
            try:
                await self._bind(hosts, udp_port, tcp_port)
                break
            except _PortTaken as taken:
                await self._close_all()
                if attempt == attempts - 1:
                    raise OSError(errno.EADDRINUSE, "no free port for UDP and TCP") from taken
            except BaseException:
                await self._close_all()
                raise
        self._started = True
        self._index_udp()
        log.info("listening on %s", ", ".join(str(address) for address in self.bound))

    def _index_udp(self) -> None:
        """Which UDP socket sends toward each address family, once the sockets are there."""
        for udp in self.udp:
            self._udp_by_family.setdefault(udp.family, udp)
            self._udp_choices.setdefault(udp.family, []).append(udp)
        for family, choices in list(self._udp_choices.items()):
            if len(choices) < 2 or any(u.local.host in WILDCARDS for u in choices):
                del self._udp_choices[family]  # one socket (or a wildcard) serves every peer
        self._fixed_local.clear()  # answered while the sockets were being bound

    async def _bind(self, hosts: list[str], udp_port: int, tcp_port: int) -> None:
        port = udp_port
        for host in hosts:
            try:
                udp = await UdpTransport.open(host, port, self.sink)
            except OSError as exc:
                if port != udp_port and exc.errno == errno.EADDRINUSE:
                    raise _PortTaken(f"udp {host}:{port}") from exc
                raise
            self.udp.append(udp)
            self.bound.append(udp.local)
            port = udp.local.port
        wanted = tcp_port if tcp_port else (port if udp_port == 0 else 0)
        port = wanted
        for host in hosts:
            try:
                local = await self.tcp.listen(host, port)
            except OSError as exc:
                if port != tcp_port and exc.errno == errno.EADDRINUSE:
                    raise _PortTaken(f"tcp {host}:{port}") from exc
                raise
            self.bound.append(local)
            port = local.port

    # --- sending ---
    def send(self, data: bytes, destination: Address) -> bool:
        """Send by the destination's transport ("udp" or "tcp") and address family."""
        kind = destination.transport
        if kind == "udp":
            family = socket.AF_INET6 if ":" in destination.host else socket.AF_INET
            if family in self._udp_choices:
                udp: UdpTransport | None = self._udp_toward(family, destination.host)
            else:
                udp = self._udp_by_family.get(family)
            return udp is not None and udp.send(data, destination)
        if kind == "tcp":
            return self.tcp.send(data, destination)
        if kind == "tls" and self.tls is not None:
            return self.tls.send(data, destination)
        log.warning("no transport for %s", destination)
        return False

    def local_address(self, transport: str, family_of: str) -> tuple[str, int]:
        """The (host, port) to advertise in Via/Contact for a message to host ``family_of``: the
        listening address of that family, or when it is a wildcard the source address the
        kernel would use to reach that host. LookupError when ``transport`` is not served."""
        fixed = self._fixed_local.get((transport, family_of))
        if fixed is not None:
            return fixed
        if transport == "udp":
            addresses = [udp.local for udp in self.udp]
        elif transport == "tcp":
            # (a worker process holds no listener: the addresses bound by the primary)
            addresses = list(self.tcp.listening) or self.bound["tcp"]
        else:
            addresses = self.bound[transport]
        if not addresses:
            raise LookupError(f"not listening on {transport}")
        host = strip_brackets(family_of)
        family = _family(host)
        if transport == "udp" and family in self._udp_choices:
            local = self._udp_toward(family, host).local
            return local.host, local.port
        chosen = next((a for a in addresses if _family(a.host) == family), addresses[0])
        if chosen.host not in WILDCARDS:
            # Fixed while these sockets are bound (a wildcard's answer follows the routes):
            # the B2BUA asks about seven times per call.
            if len(self._fixed_local) >= self._route_cache_size:
                self._fixed_local.clear()
            self._fixed_local[(transport, family_of)] = (chosen.host, chosen.port)
            return chosen.host, chosen.port
        return self._route_source(_family(chosen.host), host), chosen.port

    def _udp_toward(self, family: socket.AddressFamily, host: str) -> UdpTransport:
        """Of several UDP sockets of ``family``, the one bound to the address the system
        routes to ``host`` from (each message leaves from the address its peer can reach)."""
        choices = self._udp_choices[family]
        source = self._route_source(family, strip_brackets(host))
        return next((u for u in choices if u.local.host == source), choices[0])

    def _route_source(self, family: socket.AddressFamily, host: str) -> str:
        key = (family, host)
        now = self.clock.now()
        cached = self._routes.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        if canonical_host(host) is None or _family(host) != family:
            target = _ROUTE_PROBES[family]  # a name: the default route's source will do
        else:
            target = host
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((target, 9))
                source = str(probe.getsockname()[0])
        except OSError as exc:
            log.debug("no route to %s: %s", target, exc)
            source = _LOOPBACK[family]
        self._routes[key] = (now + self._route_ttl, source)
        self._routes.move_to_end(key)
        while len(self._routes) > self._route_cache_size:
            self._routes.popitem(last=False)
        return source

    # --- shutting down ---
    async def stop(self) -> None:
        """Close every socket and connection; the ports are free when this returns."""
        await self._close_all()
        self._started = False

    async def _close_all(self) -> None:
        for udp in self.udp:
            udp.close()
        for udp in self.udp:
            try:
                await asyncio.wait_for(udp.wait_closed(), 2.0)
            except TimeoutError:
                log.warning("%s did not close in time", udp.local)
        await self.tcp.close()
        if self.tls is not None:
            await self.tls.close()
            self.tls = None
        self.udp.clear()
        self.bound.clear()
        self._udp_by_family.clear()
        self._udp_choices.clear()
        self._routes.clear()
        self._fixed_local.clear()
