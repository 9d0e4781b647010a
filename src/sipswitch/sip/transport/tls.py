"""SIP over TLS (RFC 3261 §26.2, RFC 5922): the TCP transport with a TLS layer on each connection.

Everything SIP (framing, keepalives, the connection table keyed by peer address, timeouts, write
limits) is the TCP transport's; this module adds the handshake. An accepted socket is admitted
(connection limits, the per-source cap counting handshakes in progress, bans) before any
cryptography is done, then handed to ``loop.connect_accepted_socket`` with a handshake timeout;
only then does it read SIP. Each handshake takes the certificate context current at that moment,
so a certificate reload leaves established connections as they are.

Outgoing connections verify the peer: the chain against the configured CA file (or the system
store) and the SIP domain against the certificate (RFC 5922). A destination is only connected to
when the domain it stands for is known (``expect_domain``); without a name there is nothing to
verify, so nothing is sent. A destination known by an IP address only (no name) must present a
certificate carrying that address as an iPAddress subjectAltName.

Incoming connections ask for a client certificate only when ``verify_clients`` is set (``[tls]
verify_clients = "optional"``): a client may still connect without one (phones do), but one that
presents a certificate must present one that verifies against the CA file (or the system store),
or the handshake fails. What a connection's verified certificate names — the server's for a
connection we opened, the client's for one we accepted — is kept with the connection
(``peer_identities``), so the layers above can tell which server a request came from (trunks).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from ..clock import Clock
from .base import Address, MessageSink
from .certs import CertificateError, ServerCertificates, sip_identities
from .tcp import TcpConnection, TcpTransport, canonical_host
from .udp import bind_socket

log = logging.getLogger(__name__)

MAX_EXPECTED_DOMAINS = 4096
_LINGER_RESET = struct.pack("ii", 1, 0)


def certificate_identities(peercert: Mapping[str, Any] | None) -> frozenset[str]:
    """The names a verified certificate (``getpeercert()`` form) proves: its SIP domain
    identities by RFC 5922 §7.1 (wildcards never count, §7.2) and its iPAddress subjectAltName
    entries, in the canonical form of ``canonical_host``. Empty for no or an unverified
    certificate."""
    if not peercert:
        return frozenset()
    # An address written as a DNS name or Common Name proves nothing (RFC 6125 §6.2.1).
    names = {
        name.rstrip(".")
        for name in sip_identities(peercert)
        if "*" not in name and canonical_host(name) is None
    }
    for kind, value in peercert.get("subjectAltName", ()) or ():
        if kind == "IP Address":
            host = canonical_host(str(value).strip())
            if host is not None:
                names.add(host)
    names.discard("")
    return frozenset(names)


def certificate_names(peercert: Mapping[str, Any] | None, host: str) -> bool:
    """Whether the certificate proves ``host``: a SIP domain matched exactly (RFC 5922), or an
    IP literal found among its iPAddress subjectAltName entries (never in a DNS name or the
    Common Name)."""
    wanted = canonical_host(host)
    if wanted is None:
        wanted = host.strip().rstrip(".").lower()
    return bool(wanted) and wanted in certificate_identities(peercert)


class TlsConnection(TcpConnection):
    """One TLS connection; ``domain`` is the SIP domain an outgoing one must prove, ``peercert``
    the peer's verified certificate (None when there is none)."""

    __slots__ = ("domain", "peercert")

    def __init__(
        self,
        owner: TlsTransport,
        local: Address,
        peer: Address | None,
        outgoing: bool,
        domain: str | None = None,
    ) -> None:
        super().__init__(owner, local, peer, outgoing)
        self.owner: TlsTransport = owner
        self.domain = domain
        self.peercert: dict[str, Any] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called after the handshake, for both directions. The chain of a certificate the peer
        # presented is verified by then (always for outgoing connections, for incoming ones
        # when client certificates are asked for); an unverified one reads as empty.
        peercert = transport.get_extra_info("peercert")
        self.peercert = peercert or None
        if self.outgoing:
            # The name is ours to check.
            if self.domain is None or not certificate_names(peercert, self.domain):
                named = ", ".join(sorted(certificate_identities(peercert))) or "nothing usable"
                log.warning(
                    "TLS connection to %s refused: the certificate does not name %s (it names "
                    "%s)",
                    self.peer,
                    self.domain,
                    named,
                )
                self.owner._refused(self.peer, f"the certificate names {named}, not {self.domain}")
                self._lost = asyncio.get_running_loop().create_future()
                self.abort()
                cast(asyncio.Transport, transport).abort()
                if self.peer is not None:
                    self.owner.unreachable(self.peer)
                return
            self.owner._refused(self.peer, None)
        super().connection_made(transport)

    def _admit(self, transport: asyncio.Transport) -> bool:
        # The limits were applied when the socket was accepted, before the handshake.
        owner = self.owner
        if owner.closed:
            self.closing = True
            transport.abort()
            return False
        peername = transport.get_extra_info("peername")
        self.peer = Address(owner.name, peername[0], peername[1])
        owner._register(self)
        return True


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return str(exc) or type(exc).__name__


class TlsTransport(TcpTransport):
    """SIP over TLS: listening sockets with the server certificate and one connection table.

    ``certificates`` supplies the server context (reloadable); ``client_context`` (see
    ``certs.build_client_context``) enables outgoing connections.
    """

    name = "tls"

    def __init__(
        self,
        certificates: ServerCertificates,
        sink: MessageSink | None = None,
        clock: Clock | None = None,
        *,
        client_context: ssl.SSLContext | None = None,
        handshake_timeout: float = 10.0,
        max_connections_per_host: int | None = 32,
        verify_clients: bool = False,
        client_ca: Path | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            sink, clock, max_connections_per_host=max_connections_per_host, **options
        )
        self.certificates = certificates
        self.client_context = client_context
        self.handshake_timeout = handshake_timeout
        self.verify_clients = verify_clients
        self._client_cadata: str | None = None
        if verify_clients and client_ca is not None:
            try:
                self._client_cadata = client_ca.read_text(encoding="ascii", errors="replace")
            except OSError as exc:
                raise CertificateError(f"{client_ca}: {exc.strerror}") from None
        self._prepared: ssl.SSLContext | None = None
        if verify_clients:
            self._server_context()  # a CA file that cannot be used stops the start here
        self.handshakes = 0  # completed incoming handshakes
        self.failed_handshakes = 0
        self._domains: OrderedDict[Address, str] = OrderedDict()
        self._refusals: OrderedDict[Address, str] = OrderedDict()  # destination -> why
        self._handshaking: dict[str, int] = {}  # source host -> handshakes in progress
        self._accepting: list[tuple[socket.socket, asyncio.Task[None]]] = []
        self._handshake_tasks: set[asyncio.Task[None]] = set()

    # --- incoming ---
    async def listen(self, host: str, port: int = 0) -> Address:
        """Listen on (host, port); port 0 picks a free port. Returns the bound address.

        Sockets are accepted here rather than by ``create_server`` so that the limits and the
        ``admit`` hook are applied before any TLS work, and each handshake gets the certificate
        context current at that moment."""
        sock = bind_socket(host, port, socket.SOCK_STREAM, reuse_address=True)
        try:
            sock.listen(self.backlog)
            sockname = sock.getsockname()
        except BaseException:
            sock.close()
            raise
        local = Address(self.name, sockname[0], sockname[1])
        self.closed = False
        task = asyncio.get_running_loop().create_task(self._accept_loop(sock, local))
        self._accepting.append((sock, task))
        self.listening.append(local)
        return local

    def _refusal(self, host: str) -> str | None:
        if self.closed or len(self._connections) + len(self._handshake_tasks) >= (
            self.max_connections
        ):
            return "limit reached"
        limit = self.max_connections_per_host
        if limit is not None and (
            self._per_host.get(host, 0) + self._handshaking.get(host, 0) >= limit
        ):
            return f"{limit} connections from that address already"
        if self.admit is not None and not self.admit(host):
            return ""
        return None

    async def _accept_loop(self, sock: socket.socket, local: Address) -> None:
        loop = asyncio.get_running_loop()
        while not self.closed:
            try:
                accepted, addr = await loop.sock_accept(sock)
            except OSError as exc:
                if self.closed:
                    return
                log.warning("accepting a TLS connection on %s failed: %s", local, exc)
                await asyncio.sleep(0.1)  # out of descriptors: do not spin
                continue
            host = canonical_host(str(addr[0])) or str(addr[0])
            refusal = self._refusal(host)
            if refusal is not None:
                if refusal:
                    log.warning("refusing TLS connection from %s: %s", addr, refusal)
                # Reset rather than close: no TIME-WAIT left behind for a refused peer.
                accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                accepted.close()
                continue
            self._handshaking[host] = self._handshaking.get(host, 0) + 1
            task = loop.create_task(self._handshake(accepted, host, local))
            self._handshake_tasks.add(task)
            task.add_done_callback(self._handshake_tasks.discard)

    async def _handshake(self, sock: socket.socket, host: str, local: Address) -> None:
        connection = TlsConnection(self, local, None, False)
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: connection,
                sock,
                ssl=self._server_context(),
                ssl_handshake_timeout=self.handshake_timeout,
            )
        except (Exception, asyncio.CancelledError) as exc:
            self.failed_handshakes += 1
            if not self.closed:
                log.info("TLS handshake with %s failed: %s", host, _reason(exc))
            connection.abort()
            sock.close()
        else:
            self.handshakes += 1
        finally:
            left = self._handshaking.get(host, 0) - 1
            if left > 0:
                self._handshaking[host] = left
            else:
                self._handshaking.pop(host, None)

    def _server_context(self) -> ssl.SSLContext:
        """The certificates' current context; with ``verify_clients`` it asks for a client
        certificate (optional) and verifies it. A reloaded context is prepared so on its
        first use (it belongs to this transport alone)."""
        context = self.certificates.current
        if not self.verify_clients or context is self._prepared:
            return context
        try:
            if self._client_cadata is not None:
                context.load_verify_locations(cadata=self._client_cadata)
            else:
                context.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        except (ssl.SSLError, ValueError) as exc:
            raise CertificateError(f"cannot load the CA certificates for clients ({exc})") from None
        context.verify_mode = ssl.CERT_OPTIONAL
        self._prepared = context
        return context

    def connections_from(self, host: str) -> int:
        return super().connections_from(host) + self._handshaking.get(host, 0)

    def peer_identities(self, peer: Address) -> frozenset[str]:
        """What the verified certificate of the connection ``peer`` names (see
        ``certificate_identities``); empty without such a connection or certificate."""
        connection = self.connection(peer)
        if not isinstance(connection, TlsConnection) or connection.closing:
            return frozenset()
        return certificate_identities(connection.peercert)

    async def close(self) -> None:
        """Stop accepting, abandon handshakes in progress, close every connection."""
        self.closed = True
        accepting, self._accepting = self._accepting, []
        for _, task in accepting:
            task.cancel()
        for task in list(self._handshake_tasks):
            task.cancel()
        waiting = [task for _, task in accepting] + list(self._handshake_tasks)
        if waiting:
            await asyncio.wait(waiting, timeout=2.0)
        for sock, _ in accepting:
            sock.close()
        await super().close()

    def _new_connection(
        self, local: Address, peer: Address | None, outgoing: bool
    ) -> TcpConnection:
        domain = self._domains.get(peer) if peer is not None else None
        return TlsConnection(self, local, peer, outgoing, domain)

    # --- outgoing ---
    def expect_domain(self, destination: Address, domain: str) -> None:
        """Connections opened to ``destination`` must present a certificate for ``domain``
        (the SIP domain that resolved to it, RFC 5922 §4)."""
        host = canonical_host(destination.host)
        if host is None:
            raise ValueError(f"{destination.host!r} is not an IP address")
        key = Address(self.name, host, destination.port)
        self._domains[key] = domain
        self._domains.move_to_end(key)
        while len(self._domains) > MAX_EXPECTED_DOMAINS:
            self._domains.popitem(last=False)

    def refusal(self, destination: Address) -> str | None:
        """Why the last connection opened to ``destination`` was refused after its handshake
        (the certificate does not name the expected domain); None once one was accepted."""
        host = canonical_host(destination.host)
        if host is None:
            return None
        return self._refusals.get(Address(self.name, host, destination.port))

    def _refused(self, peer: Address | None, reason: str | None) -> None:
        if peer is None:
            return
        if reason is None:
            self._refusals.pop(peer, None)
            return
        self._refusals[peer] = reason
        self._refusals.move_to_end(peer)
        while len(self._refusals) > MAX_EXPECTED_DOMAINS:
            self._refusals.popitem(last=False)

    def send(self, data: bytes, destination: Address) -> bool:
        if self.connection(destination) is None:
            host = canonical_host(destination.host)
            key = Address(self.name, host, destination.port) if host is not None else None
            if self.client_context is None or key is None or key not in self._domains:
                log.warning("no TLS connection to %s and no verified way to open one", destination)
                return False
        return super().send(data, destination)

    def _connect_options(self, connection: TcpConnection) -> dict[str, Any]:
        domain = connection.domain if isinstance(connection, TlsConnection) else None
        return {
            "ssl": self.client_context,
            "server_hostname": domain or "",
            "ssl_handshake_timeout": self.handshake_timeout,
        }
