"""SIP over TCP: listening sockets, outgoing connections and the one table of connections keyed
by the peer's address, so whatever is sent to a peer that connected to us reuses its connection.

Each connection cuts its byte stream into messages with a ``StreamFramer``, answers RFC 5626
double-CRLF pings, and is closed when idle, when a started message does not complete in time,
on a framing error (after answering 400 when the broken message was a request), or when the
peer stops reading what is written to it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

from ..clock import Clock, LoopClock, TimerHandle
from ..message import Request, make_response
from ..parser import MessageError, StreamFramer
from .base import Address, MessageSink
from .udp import bind_socket, family_of, strip_brackets

log = logging.getLogger(__name__)

PING = b"\r\n\r\n"
PONG = b"\r\n"


def canonical_host(host: str) -> str | None:
    """The form the kernel reports for an IP literal (so table keys match), or None for a
    name or garbage."""
    host = strip_brackets(host)
    family = family_of(host)
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, host))
    except (OSError, ValueError):
        return None


class TcpConnection(asyncio.Protocol):
    """One TCP connection, incoming or outgoing."""

    __slots__ = (
        "owner", "local", "peer", "outgoing", "transport", "framer", "last_activity",
        "closing", "_pending", "_pending_size", "_idle_timer", "_read_timer", "_crlf",
        "_connect_task", "_lost",
    )

    def __init__(
        self, owner: TcpTransport, local: Address, peer: Address | None, outgoing: bool
    ) -> None:
        self.owner = owner
        self.local = local
        self.peer = peer
        self.outgoing = outgoing
        self.transport: asyncio.Transport | None = None
        self.framer = StreamFramer()
        self.last_activity = owner.clock.now()
        self.closing = False
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._idle_timer: TimerHandle | None = None
        self._read_timer: TimerHandle | None = None
        self._crlf = b""  # CR/LF bytes of a keepalive that may continue in the next segment
        self._connect_task: asyncio.Task[None] | None = None
        self._lost: asyncio.Future[None] | None = None

    @property
    def buffered(self) -> int:
        """Bytes of a message that has started but not completed."""
        return self.framer.buffered

    @property
    def connected(self) -> bool:
        return self.transport is not None and not self.closing

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._lost = asyncio.get_running_loop().create_future()
        if not self.outgoing and not self._admit(transport):
            return
        self._up(transport)

    def _admit(self, transport: asyncio.Transport) -> bool:
        """Enter an incoming connection in the table, or refuse it (transport closed, connection
        limits, or the owner's ``admit`` hook, which bans use)."""
        owner = self.owner
        peername = transport.get_extra_info("peername")
        refusal = owner._refusal(str(peername[0]))
        if refusal is not None:
            if refusal:
                log.warning("refusing %s connection from %s: %s", owner.name, peername, refusal)
            self.closing = True
            transport.abort()
            return False
        self.peer = Address(owner.name, peername[0], peername[1])
        owner._register(self)
        return True

    def _up(self, transport: asyncio.Transport) -> None:
        """The connection carries SIP from now on (for TLS: after the handshake)."""
        self.transport = transport
        owner = self.owner
        if self.closing or owner.closed:
            transport.abort()
            return
        pending, self._pending, self._pending_size = self._pending, [], 0
        if pending:
            transport.write(b"".join(pending))
        self.last_activity = owner.clock.now()
        self._idle_timer = owner.clock.call_later(owner.idle_timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        owner = self.owner
        clock = owner.clock
        self.last_activity = clock.now()
        framer = self.framer
        pings = 0
        if not framer.buffered and data[0] in (13, 10):
            # Keepalive CRLFs between messages; a ping may be split over two segments.
            rest = data.lstrip(b"\r\n")
            run = self._crlf + data[: len(data) - len(rest)]
            pings = run.count(PING)
            cut = run.rfind(PING)
            self._crlf = (run[cut + 4 :] if cut >= 0 else run)[-3:]
            data = rest
        if data:
            self._crlf = b""
            try:
                messages = framer.feed(data)
            except MessageError as error:
                self._framing_error(error)
                return
            pings += framer.take_pings()
        else:
            messages = []
        transport = self.transport
        if pings and transport is not None:
            transport.write(PONG * pings)
        if framer.buffered:
            # The read timeout runs from the start of the incomplete message.
            if messages or self._read_timer is None:
                if self._read_timer is not None:
                    self._read_timer.cancel()
                self._read_timer = clock.call_later(owner.read_timeout, self._read_timed_out)
        elif self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        if not messages:
            return
        sink = owner.sink
        peer = self.peer
        if sink is None or peer is None:
            return
        for message in messages:
            if self.closing:
                break
            try:
                sink.on_message(message, peer, self.local)
            except Exception:
                log.exception("message handler failed for a message from %s", peer)

    def eof_received(self) -> bool | None:
        return None  # close our side too: SIP has no use for half-open connections

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            log.debug("TCP connection %s lost: %s", self.peer, exc)
        self.closing = True
        self._forget()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    # --- writing ---
    def write(self, data: bytes) -> bool:
        if self.closing:
            return False
        owner = self.owner
        transport = self.transport
        if transport is None:
            if self._pending_size + len(data) > owner.max_write_buffer:
                log.warning("dropping data for %s: connection not up yet", self.peer)
                return False
            self._pending.append(data)
            self._pending_size += len(data)
            return True
        if transport.is_closing():  # the peer went away; connection_lost is on its way
            return False
        transport.write(data)
        self.last_activity = owner.clock.now()
        if transport.get_write_buffer_size() > owner.max_write_buffer:
            log.warning("closing TCP connection %s: the peer does not read", self.peer)
            self.abort()
        return True

    # --- closing ---
    def close(self) -> None:
        """Close after writing what is buffered (or at once if that cannot drain)."""
        if self.closing:
            return
        self.closing = True
        self._forget()
        transport = self.transport
        if transport is None:
            if self._connect_task is not None:
                self._connect_task.cancel()
        elif transport.get_write_buffer_size() > self.owner.max_write_buffer:
            transport.abort()
        else:
            transport.close()

    def abort(self) -> None:
        self.closing = True
        self._forget()
        if self.transport is not None:
            self.transport.abort()
        elif self._connect_task is not None:
            self._connect_task.cancel()

    async def wait_closed(self) -> None:
        if self._lost is not None:
            await asyncio.shield(self._lost)

    def _forget(self) -> None:
        for timer in (self._idle_timer, self._read_timer):
            if timer is not None:
                timer.cancel()
        self._idle_timer = self._read_timer = None
        self._pending.clear()
        self._pending_size = 0
        self.owner._unregister(self)

    # --- timers and errors ---
    def _check_idle(self) -> None:
        if self.closing:
            return
        owner = self.owner
        left = self.last_activity + owner.idle_timeout - owner.clock.now()
        if left > 0:
            self._idle_timer = owner.clock.call_later(left, self._check_idle)
            return
        log.debug("closing idle TCP connection %s", self.peer)
        self.close()

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.closing:
            return
        log.info("closing TCP connection %s: message incomplete after %.0f s",
                 self.peer, self.owner.read_timeout)
        self.close()

    def _framing_error(self, error: MessageError) -> None:
        log.info("closing TCP connection %s: %s", self.peer, error.reason)
        partial = error.partial
        transport = self.transport
        if isinstance(partial, Request) and transport is not None:
            try:
                response = make_response(partial, error.status, error.reason)
                transport.write(response.to_bytes())
            except Exception:
                log.exception("could not answer a malformed request from %s", self.peer)
        self.close()


class TcpTransport:
    """SIP over TCP: any number of listening sockets and one connection table.

    ``send`` to the address of a connected peer writes on that connection; to any other address it
    opens a connection (data is queued until it is up) registered under that address.

    ``max_connections_per_host`` caps the connections of one peer address; ``admit`` (a source
    host in, False out) refuses incoming connections before anything is read from them.
    """

    name = "tcp"  # the Address transport of this transport's connections

    def __init__(
        self,
        sink: MessageSink | None = None,
        clock: Clock | None = None,
        *,
        idle_timeout: float = 300.0,
        read_timeout: float = 32.0,
        connect_timeout: float = 10.0,
        max_connections: int = 10_000,
        max_write_buffer: int = 1024 * 1024,
        backlog: int = 1024,
        max_connections_per_host: int | None = None,
    ) -> None:
        self.sink = sink
        self.clock: Clock = clock if clock is not None else LoopClock()
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.max_write_buffer = max_write_buffer
        self.backlog = backlog
        self.max_connections_per_host = max_connections_per_host
        self.admit: Callable[[str], bool] | None = None
        # Told the peer address when a connection we opened could not be set up.
        self.on_unreachable: Callable[[Address], None] | None = None
        self.closed = False
        self.listening: list[Address] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._table: dict[Address, TcpConnection] = {}
        self._connections: set[TcpConnection] = set()
        self._per_host: dict[str, int] = {}

    def _new_connection(
        self, local: Address, peer: Address | None, outgoing: bool
    ) -> TcpConnection:
        return TcpConnection(self, local, peer, outgoing)

    async def listen(self, host: str, port: int = 0) -> Address:
        """Listen on (host, port); port 0 picks a free port. Returns the bound address."""
        sock = bind_socket(host, port, socket.SOCK_STREAM, reuse_address=True)
        try:
            sock.listen(self.backlog)
            sockname = sock.getsockname()
            local = Address(self.name, sockname[0], sockname[1])
            loop = asyncio.get_running_loop()
            server = await loop.create_server(
                lambda: self._new_connection(local, None, False), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        self.closed = False
        self._servers.append(server)
        self.listening.append(local)
        return local

    # --- the connection table ---
    def connection(self, peer: Address) -> TcpConnection | None:
        connection = self._table.get(peer)
        if connection is None:
            host = canonical_host(peer.host)
            if host is not None and host != peer.host:
                connection = self._table.get(Address(self.name, host, peer.port))
        return connection

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def _refusal(self, host: str) -> str | None:
        """Why an incoming connection from ``host`` is refused ("" when silently), or None."""
        if self.closed or len(self._connections) >= self.max_connections:
            return "limit reached"
        limit = self.max_connections_per_host
        if limit is not None and self._per_host.get(host, 0) >= limit:
            return f"{limit} connections from that address already"
        if self.admit is not None and not self.admit(host):
            return ""
        return None

    def _register(self, connection: TcpConnection) -> None:
        if connection in self._connections:
            return
        self._connections.add(connection)
        if connection.peer is not None:
            # A newer connection from the same ip:port replaces the older one in the table.
            self._table[connection.peer] = connection
            host = connection.peer.host
            self._per_host[host] = self._per_host.get(host, 0) + 1

    def _unregister(self, connection: TcpConnection) -> None:
        if connection not in self._connections:
            return
        self._connections.discard(connection)
        peer = connection.peer
        if peer is not None:
            if self._table.get(peer) is connection:
                del self._table[peer]
            left = self._per_host.get(peer.host, 0) - 1
            if left > 0:
                self._per_host[peer.host] = left
            else:
                self._per_host.pop(peer.host, None)

    def connections_from(self, host: str) -> int:
        """Connections open (or opening) with ``host``."""
        return self._per_host.get(host, 0)

    # --- sending ---
    def send(self, data: bytes, destination: Address) -> bool:
        """Write on the peer's connection, opening one if there is none. False when no
        connection can be opened (not an IP literal, connection limit, transport closed)."""
        connection = self._table.get(destination)
        if connection is None:
            connection = self.connection(destination)
            if connection is None:
                connection = self._open(destination)
                if connection is None:
                    return False
        return connection.write(data)

    def _open(self, destination: Address) -> TcpConnection | None:
        host = canonical_host(destination.host)
        if host is None or self.closed or not 0 < destination.port < 65536:
            log.warning("cannot open a TCP connection to %s", destination)
            return None
        if len(self._connections) >= self.max_connections:
            log.warning("cannot open a TCP connection to %s: limit reached", destination)
            return None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        peer = Address(self.name, host, destination.port)
        local = self._listener_for(host)
        connection = self._new_connection(local, peer, True)
        self._register(connection)
        connection._connect_task = loop.create_task(self._connect(connection))
        return connection

    def _listener_for(self, host: str) -> Address:
        family = family_of(host)
        for address in self.listening:
            if family_of(address.host) == family:
                return address
        return Address(self.name, "::" if family == socket.AF_INET6 else "0.0.0.0", 0)

    async def _connect(self, connection: TcpConnection) -> None:
        peer = connection.peer
        assert peer is not None
        loop = asyncio.get_running_loop()
        local = connection.local
        # Leave from the listening address when it is a specific one, so Via and source agree.
        local_addr = None if local.port == 0 or local.host in ("0.0.0.0", "::") else (
            local.host, 0)
        task = asyncio.current_task()
        timer = self.clock.call_later(
            self.connect_timeout, task.cancel) if task is not None else None
        try:
            await loop.create_connection(
                lambda: connection,
                peer.host,
                peer.port,
                local_addr=local_addr,
                **self._connect_options(connection),
            )
        except (Exception, asyncio.CancelledError) as exc:
            # Cancelled by the connect timer or by close(); either way nothing awaits this task.
            failed = not connection.closing
            if failed:
                log.info("TCP connection to %s failed: %s", peer, exc or "timed out")
            connection.abort()
            if failed:
                self.unreachable(peer)
        finally:
            if timer is not None:
                timer.cancel()
            connection._connect_task = None

    def unreachable(self, peer: Address) -> None:
        """Report that no connection to ``peer`` could be set up (``on_unreachable``)."""
        handler = self.on_unreachable
        if handler is not None:
            try:
                handler(peer)
            except Exception:
                log.exception("unreachable handler failed for %s", peer)

    def _connect_options(self, connection: TcpConnection) -> dict[str, Any]:
        """Extra ``create_connection`` arguments for an outgoing connection (TLS adds its)."""
        return {}

    # --- shutting down ---
    async def close(self) -> None:
        """Stop listening and close every connection."""
        self.closed = True
        for server in self._servers:
            server.close()
        waiting: list[asyncio.Future[None]] = []
        for connection in list(self._connections):
            task = connection._connect_task
            connection.close()
            if task is not None:
                waiting.append(task)
            if connection._lost is not None:
                waiting.append(connection._lost)
        for connection in list(self._table.values()):
            connection.close()
        if waiting:
            await asyncio.wait(waiting, timeout=2.0)
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 2.0)
            except TimeoutError:
                log.warning("TCP server did not close in time")
        self._servers.clear()
        self.listening.clear()
