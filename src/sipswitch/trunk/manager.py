"""The server's external lines and trunks: resolves their addresses, keeps lines registered and
trunks checked (OPTIONS), tells the call model which trunk a request came from and whether a trunk
can take a call, and writes their state to ``DATA/trunks.json`` for ``sipswitch trunk list``.

Recognising a trunk: a request from one of its resolved addresses — with the trunk's port over
UDP (a peer sends from its listening socket), any port over TCP/TLS (connections come from
ephemeral ports) — or from one of its ``sources`` networks.

Trunks with ``transport = "tls"`` are recognised by certificate instead (RFC 5922): a request
counts as the trunk's only when it arrived over TLS on a connection whose verified certificate
names the trunk's ``host`` — a SIP domain identity (subjectAltName ``sip:`` URI, else DNS name,
never a wildcard) for a host name, an iPAddress subjectAltName for an IP literal. That is the
client certificate of a connection the peer opened (the server asks for one with ``[tls]
verify_clients = "optional"``), or the server certificate of a connection this server opened to
the trunk (verified before anything was sent, so requests the peer sends back on it are the
trunk's). A TLS trunk without ``sources`` is recognised by its certificate alone, from any
address; one with ``sources`` needs the certificate *and* a source among its resolved address
and those networks. Such a trunk is never recognised by its address alone, nor over UDP or TCP.

Outgoing TLS: once the transports are up, the resolved address of each TLS trunk is bound to the
trunk's ``host`` (``TlsTransport.expect_domain``), so registrations, health checks and calls may
open a connection there, which is used only when the server's certificate verifies against
``[tls] ca_file`` (or the system's store) and names that host. Without a ``[tls]`` section such a
trunk cannot be used, and says so in its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..config.settings import Settings
from ..config.trunks import TrunkSettings
from ..pbx.b2bua import trunk_profile
from ..pbx.core import RateLimitedLog
from ..sip.clock import Clock
from ..sip.transport.base import Address
from ..sip.transport.manager import TransportManager
from ..sip.transport.tls import TlsTransport
from .health import Health, HealthMonitor
from .registration import RETRY_MAX, RETRY_MIN, LineRegistration, Sender

log = logging.getLogger("sipswitch.trunks")

STATUS_FILE = "trunks.json"
UNREGISTER_WAIT = 2.0  # seconds shutdown waits for the carriers to confirm unregistration
RESOLVE_RETRY = 30.0  # seconds between look-ups of a host name that did not resolve
STATUS_REFRESH = 5.0  # seconds between rewrites of the status file while call counts change


class Core(Protocol):
    """What the manager uses of ``pbx.core.PbxCore``."""

    @property
    def transactions(self) -> Sender: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def transports(self) -> object: ...  # TLS trunks need a TransportManager with TLS

    def local_address(self, destination: Address) -> tuple[str, int]: ...


class CallCounter(Protocol):
    def active(self, number: str) -> int: ...


class TrunkManager:
    """Implements ``pbx.b2bua.TrunkService``; ``resolve``, ``start`` and ``stop`` are called by
    the server (``pbx.server.SipServer``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        status_path: Path | None = None,
        retry_min: float = RETRY_MIN,
        retry_max: float = RETRY_MAX,
    ) -> None:
        self.settings = settings
        self.trunks: dict[str, TrunkSettings] = {t.name: t for t in settings.trunks}
        self.status_path = status_path or settings.data_dir / STATUS_FILE
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.addresses: dict[str, Address] = {}
        self.problems: dict[str, str] = {}  # name -> why it has no address
        self.registrations: dict[str, LineRegistration] = {}
        self.monitors: dict[str, HealthMonitor] = {}
        self._by_source: dict[tuple[str, int | None], TrunkSettings] = {}
        self._networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, TrunkSettings]]
        self._networks = [
            (ipaddress.ip_network(n), t)
            for t in settings.trunks
            if t.transport != "tls"
            for n in t.sources
        ]
        # TLS trunks, recognised by certificate; the addresses they are reached at.
        self._tls_trunks = [t for t in settings.trunks if t.transport == "tls"]
        self._tls_networks = {
            t.name: [ipaddress.ip_network(n) for n in t.sources] for t in self._tls_trunks
        }
        self._tls_hosts: dict[str, TrunkSettings] = {}
        self.tls: TlsTransport | None = None  # set by ``start`` when the server has TLS
        self._refusals = RateLimitedLog(log, burst=10, interval=60.0)
        self._core: Core | None = None
        self._counter: CallCounter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._written: str | None = None
        self._stopping = False
        self._stopped = False
        # A worker process of a server with [sip] workers > 1 registers nothing and checks
        # nothing: it sends calls where the primary's trunks can take them (``follow``).
        self._followed: dict[str, Address | None] | None = None
        self.on_change: Callable[[], None] | None = None  # the status changed (the primary)
        self._identities: Callable[[Address], frozenset[str]] | None = None

    # --- TrunkService ---
    def identify(self, source: Address) -> TrunkSettings | None:
        """The trunk a request from ``source`` comes from, if any."""
        if not self.trunks:
            return None
        found = self._identify_by_certificate(source) if self._tls_trunks else None
        if found is None:
            found = self._identify_by_address(source)
            if found is None and source.host in self._tls_hosts:
                self._refused(source, self._tls_hosts[source.host])
        return found

    def _identify_by_address(self, source: Address) -> TrunkSettings | None:
        port = source.port if source.transport == "udp" else None
        found = self._by_source.get((source.host, port))
        if found is not None or not self._networks:
            return found
        try:
            address = ipaddress.ip_address(source.host)
        except ValueError:
            return None
        for network, trunk in self._networks:
            if address in network:
                return trunk
        return None

    def _peer_identities(self, source: Address) -> frozenset[str]:
        if source.transport != "tls":
            return frozenset()
        if self._identities is not None:
            return self._identities(source)
        tls = self.tls
        return tls.peer_identities(source) if tls is not None else frozenset()

    def recognise_tls_by(self, identities: Callable[[Address], frozenset[str]]) -> None:
        """Where the certificate identities of a TLS peer come from when this process holds no
        TLS connection (a worker process: the primary tells them with each message)."""
        self._identities = identities

    def _identify_by_certificate(self, source: Address) -> TrunkSettings | None:
        """The first TLS trunk whose host the verified certificate of ``source``'s connection
        names (and whose addresses it comes from, when the trunk lists ``sources``)."""
        names = self._peer_identities(source)
        if not names:
            return None
        for trunk in self._tls_trunks:
            if trunk.host in names and (
                not trunk.sources or self._tls_address_of(trunk, source.host)
            ):
                return trunk
        return None

    def _refused(self, source: Address, trunk: TrunkSettings) -> None:
        """Say why a request over TLS from a TLS trunk's own address was not taken as the
        trunk's (over UDP or TCP it is a client like any other: phones behind the same NAT)."""
        if source.transport != "tls":
            return
        names = self._peer_identities(source)
        why = (
            f"its certificate names {', '.join(sorted(names))}, not {trunk.host}"
            if names
            else "no verified certificate on its connection (client certificates are asked "
            'for with [tls] verify_clients = "optional")'
        )
        self._refusals.warning("request from %s not taken as trunk %s: %s", source, trunk.name, why)

    def _tls_address_of(self, trunk: TrunkSettings, host: str) -> bool:
        address = self.addresses.get(trunk.name)
        if address is not None and address.host == host:
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in network for network in self._tls_networks[trunk.name])

    def lookup(self, name: str) -> TrunkSettings | None:
        return self.trunks.get(name)

    def destination(self, name: str) -> Address | None:
        """Where to send a call for trunk ``name``; None while it cannot take calls."""
        if self._followed is not None:
            return self._followed.get(name)
        return self.addresses.get(name) if self.available(name) else None

    def destinations(self) -> dict[str, Address | None]:
        """``destination`` of every trunk (what worker processes follow)."""
        return {name: self.destination(name) for name in self.trunks}

    def follow(self, destinations: dict[str, Address | None]) -> None:
        """Take the primary process's ``destinations`` as this one's (a worker process)."""
        self._followed = {name: destinations.get(name) for name in self.trunks}

    def available(self, name: str) -> bool:
        if name not in self.addresses or name in self.problems:
            return False
        monitor = self.monitors.get(name)
        if monitor is not None and monitor.health is Health.DOWN:
            return False
        registration = self.registrations.get(name)
        return registration is None or registration.registered

    # --- life cycle ---
    async def resolve(self) -> list[str]:
        """Look up every trunk's host; returns the addresses (and ``sources`` networks) that
        the security gate must never ban or rate limit."""
        for rule in self.settings.dialplan:
            name = rule.target.removeprefix("trunk:")
            if rule.target.startswith("trunk:") and name not in self.trunks:
                log.warning(
                    "dial plan prefix %r names trunk %s, which is not configured: such calls "
                    "get 503",
                    rule.prefix,
                    name,
                )
        for trunk in self.trunks.values():
            await self._resolve(trunk)
        allowed = {address.host for address in self.addresses.values()}
        allowed.update(n for t in self.trunks.values() for n in t.sources)
        return sorted(allowed)

    async def _resolve(self, trunk: TrunkSettings) -> bool:
        try:
            host = str(ipaddress.ip_address(trunk.host))
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    trunk.host, trunk.port, type=socket.SOCK_DGRAM
                )
            except (OSError, UnicodeError) as exc:
                self.problems[trunk.name] = f"cannot resolve {trunk.host}: {exc}"
                log.error("trunk %s: %s", trunk.name, self.problems[trunk.name])
                return False
            if not infos:
                self.problems[trunk.name] = f"cannot resolve {trunk.host}"
                return False
            host = str(infos[0][4][0])
        self.problems.pop(trunk.name, None)
        address = Address(trunk.transport, host, trunk.port)
        self.addresses[trunk.name] = address
        if trunk.transport == "tls":
            # Recognised by certificate, not by this address (see identify).
            self._tls_hosts.setdefault(host, trunk)
            return True
        key = (host, trunk.port if trunk.transport == "udp" else None)
        other = self._by_source.get(key)
        if other is not None and other.name != trunk.name:
            log.warning(
                "trunks %s and %s share the address %s: calls from it count as %s",
                other.name,
                trunk.name,
                address,
                other.name,
            )
        else:
            self._by_source[key] = trunk
        return True

    def start(self, core: Core, counter: CallCounter | None = None) -> None:
        """Start registrations and health checks (the transports are up)."""
        self._core = core
        self._counter = counter
        self._stopping = self._stopped = False
        transports = core.transports
        if self.tls is None and isinstance(transports, TransportManager):
            self.tls = transports.tls
        for name in self.trunks:
            if name in self.addresses:
                self._start_trunk(name)
            else:
                self._tasks.append(asyncio.create_task(self._resolve_later(name)))
        self._tasks.append(asyncio.create_task(self._refresh_status()))
        self.write_status()

    def _start_trunk(self, name: str) -> None:
        core = self._core
        assert core is not None
        trunk = self.trunks[name]
        address = self.addresses[name]
        agent = self.settings.sip.user_agent
        if trunk.transport == "tls" and not self._expect_tls(trunk, address):
            return
        if trunk.kind == "line":
            registration = LineRegistration(
                trunk,
                address,
                core.transactions,
                core.clock,
                core.local_address,
                self.write_status,
                user_agent=agent,
                retry_min=self.retry_min,
                retry_max=self.retry_max,
            )
            self.registrations[name] = registration
            registration.start()
        if trunk.options_interval > 0:
            monitor = HealthMonitor(
                name,
                trunk.host,
                address,
                core.transactions,
                core.clock,
                core.local_address,
                trunk.options_interval,
                trunk.options_failures,
                self.write_status,
                user_agent=agent,
            )
            self.monitors[name] = monitor
            monitor.start()

    def _expect_tls(self, trunk: TrunkSettings, address: Address) -> bool:
        """Let the TLS transport connect to ``address`` for ``trunk`` (its certificate must name
        the trunk's host); False, with the problem noted, when the server has no TLS."""
        tls = self.tls
        if tls is None or tls.client_context is None:
            self.problems[trunk.name] = 'transport "tls" needs the server\'s [tls] section'
            log.error("trunk %s: %s", trunk.name, self.problems[trunk.name])
            return False
        tls.expect_domain(address, trunk.host)
        return True

    async def _resolve_later(self, name: str) -> None:
        while not self._stopping:
            await asyncio.sleep(RESOLVE_RETRY)
            if await self._resolve(self.trunks[name]):
                log.info("trunk %s: %s resolved", name, self.trunks[name].host)
                self._start_trunk(name)
                self.write_status()
                return

    async def _refresh_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_REFRESH)
            self.write_status()

    async def stop(self) -> None:
        """Stop checks and refreshes; unregister the lines (waiting a little for the answers)."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for monitor in self.monitors.values():
            monitor.stop()
        waits: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        for registration in self.registrations.values():
            done: asyncio.Future[None] = loop.create_future()
            waits.append(done)
            registration.stop(_resolver(done))
        if waits:
            await asyncio.wait(waits, timeout=UNREGISTER_WAIT)
        self._stopped = True
        self.write_status()

    # --- status ---
    def status(self) -> list[dict[str, Any]]:
        """One entry per trunk, as written to the status file."""
        core = self._core
        now = core.clock.now() if core is not None else 0.0
        wall = core.clock.wall() if core is not None else 0.0
        entries: list[dict[str, Any]] = []
        for name, trunk in self.trunks.items():
            address = self.addresses.get(name)
            registration = self.registrations.get(name)
            monitor = self.monitors.get(name)
            entry: dict[str, Any] = {
                "name": name,
                "kind": trunk.kind,
                "host": trunk.host,
                "port": trunk.port,
                "transport": trunk.transport,
                "address": str(address) if address is not None else None,
                "available": self.available(name),
                "registration": registration.state.value if registration else None,
                "registration_detail": registration.reason if registration else "",
                "retry_at": None,
                "expires_at": None,
                "health": monitor.health.value if monitor else None,
                "health_detail": monitor.detail if monitor else "",
                "problem": self.problems.get(name, ""),
                "tls_detail": self._tls_detail(trunk, address),
                "calls_in": self._count(name, "in"),
                "calls_out": self._count(name, "out"),
                "max_incoming": trunk.max_incoming,
                "max_outgoing": trunk.max_outgoing,
            }
            if registration is not None:
                if registration.retry_at is not None:
                    entry["retry_at"] = round(wall + registration.retry_at - now, 3)
                if registration.registered:
                    entry["expires_at"] = round(wall + registration.expires_at - now, 3)
            entries.append(entry)
        return entries

    def _tls_detail(self, trunk: TrunkSettings, address: Address | None) -> str:
        if trunk.transport != "tls" or self.tls is None or address is None:
            return ""
        return self.tls.refusal(address) or ""

    def _count(self, name: str, direction: str) -> int:
        if self._counter is None:
            return 0
        return self._counter.active(trunk_profile(name, direction))

    def write_status(self) -> None:
        """Write the status file (atomically) when something in it changed."""
        trunks = self.status()
        text = json.dumps({"stopped": self._stopped, "trunks": trunks})
        if text == self._written:
            return
        if self.on_change is not None:
            self.on_change()
        core = self._core
        document = {
            "updated": core.clock.wall() if core is not None else None,
            "pid": os.getpid(),
            "stopped": self._stopped,
            "trunks": trunks,
        }
        path = self.status_path
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(document, indent=2) + "\n")
            os.replace(temporary, path)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)
            return
        self._written = text


def _resolver(future: asyncio.Future[None]) -> Callable[[], None]:
    def resolve() -> None:
        if not future.done():
            future.set_result(None)

    return resolve
