"""SIP over UDP: one bound datagram socket (IPv4 or IPv6) that parses what it receives and sends
what the layers above hand it.

The receive path runs in ``datagram_received`` itself, with no task per datagram: datagrams that
cannot be SIP are dropped before parsing, each parsed message goes straight to the sink.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Callable
from typing import cast

from ..parser import MAX_MESSAGE_SIZE, MessageError, parse_datagram
from .base import Address, MessageSink

log = logging.getLogger(__name__)

SOCKET_BUFFER = 4 * 1024 * 1024
MAX_SOURCES = 4096  # peer addresses remembered (they are chosen by peers: bounded)

# A request starts with a method token and a space, a response with "SIP/". Anything else
# (STUN, RTP sent to the wrong port, scanners' junk) is not worth a parse or an answer.
_LOOKS_LIKE_SIP = re.compile(rb"SIP/|[A-Za-z0-9.!%*_+`'~-]+ ")


def family_of(host: str) -> socket.AddressFamily:
    """The address family of an IP literal (a host with a colon is IPv6)."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def bind_socket(
    host: str, port: int, kind: socket.SocketKind, reuse_address: bool = False
) -> socket.socket:
    """A non-blocking socket bound to (host, port). IPv6 sockets are IPv6-only, so ``0.0.0.0``
    and ``::`` can be bound on the same port by two sockets."""
    host = strip_brackets(host)
    family = family_of(host)
    socket.inet_pton(family, host)  # an IP literal, never a name to resolve here
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setblocking(False)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class UdpTransport(asyncio.DatagramProtocol):
    """A UDP socket serving SIP. Create with ``await UdpTransport.open(host, port, sink)``."""

    def __init__(self, sink: MessageSink | None = None) -> None:
        self.sink = sink
        self.local = Address("udp", "", 0)
        self.family = socket.AF_INET
        self._transport: asyncio.DatagramTransport | None = None
        self._lost: asyncio.Future[None] | None = None
        self.dropped = 0  # datagrams dropped before parsing (empty, oversize, not SIP)
        # The Address of each recent peer (socket address -> Address): most datagrams come
        # from a peer seen a moment ago, and building a frozen dataclass costs more than a get.
        self._sources: dict[tuple[str | int, ...], Address] = {}
        # With worker processes the primary hands most datagrams on unparsed: ``steer`` returns
        # True for a datagram it took (``transport.steering``).
        self.steer: Callable[[bytes, tuple[str | int, ...]], bool] | None = None

    @classmethod
    async def open(cls, host: str, port: int = 0, sink: MessageSink | None = None) -> UdpTransport:
        """Bind (host, port); port 0 picks a free port (read it from ``.local``)."""
        sock = bind_socket(host, port, socket.SOCK_DGRAM)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            except OSError:  # capped or refused by the kernel: keep its default
                pass
        transport = cls(sink)
        loop = asyncio.get_running_loop()
        transport._lost = loop.create_future()
        try:
            await loop.create_datagram_endpoint(lambda: transport, sock=sock)
        except BaseException:
            sock.close()
            raise
        return transport

    # --- asyncio.DatagramProtocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not a subclass of asyncio.DatagramTransport: no isinstance.
        self._transport = cast(asyncio.DatagramTransport, transport)
        sockname = transport.get_extra_info("sockname")
        self.family = family_of(sockname[0])
        self.local = Address("udp", sockname[0], sockname[1])

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if not data or len(data) > MAX_MESSAGE_SIZE:
            self.dropped += 1
            return
        if data[0] in (13, 10):
            data = data.lstrip(b"\r\n")
            if not data:
                return  # a CRLF keepalive
        if _LOOKS_LIKE_SIP.match(data) is None:
            self.dropped += 1
            return
        steer = self.steer
        if steer is not None and steer(data, addr):
            return
        sink = self.sink
        if sink is None:
            return
        source = self._sources.get(addr)
        if source is None:
            source = Address("udp", str(addr[0]), int(addr[1]))
            if len(self._sources) >= MAX_SOURCES:
                self._sources.clear()
            self._sources[addr] = source
        try:
            message = parse_datagram(data)
        except MessageError as error:
            try:
                sink.on_parse_error(error, source, self.local)
            except Exception:
                log.exception("parse error handler failed for a datagram from %s", source)
            return
        try:
            sink.on_message(message, source, self.local)
        except Exception:
            log.exception("message handler failed for a datagram from %s", source)

    def error_received(self, exc: Exception) -> None:
        log.debug("%s: %s", self.local, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    # --- sending ---
    def send(self, data: bytes, destination: Address) -> bool:
        """Send one datagram. False when closed or when the destination is not an IP literal of
        this socket's family (names are resolved above the transport, never here)."""
        transport = self._transport
        if transport is None or transport.is_closing() or not self._sendable(destination):
            return False
        transport.sendto(data, (destination.host, destination.port))
        return True

    def _sendable(self, destination: Address) -> bool:
        """Whether ``destination`` is an IP literal of this socket's family."""
        try:
            socket.inet_pton(self.family, destination.host)
        except OSError:
            log.warning("%s: cannot send to %s", self.local, destination)
            return False
        return True

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def wait_closed(self) -> None:
        if self._lost is not None:
            await asyncio.shield(self._lost)

    @property
    def closed(self) -> bool:
        return self._transport is None


class SendOnlyUdp(UdpTransport):
    """A UDP socket another process reads (a worker's copy of the primary's socket): this one
    only sends on it, so replies leave from the server's usual address and port; what it
    receives is handed to ``datagram_received`` by whoever reads."""

    def __init__(self, sock: socket.socket, sink: MessageSink | None = None) -> None:
        super().__init__(sink)
        sock.setblocking(False)
        self._sock: socket.socket | None = sock
        host, port = sock.getsockname()[:2]
        self.family = family_of(host)
        self.local = Address("udp", host, port)

    def send(self, data: bytes, destination: Address) -> bool:
        sock = self._sock
        if sock is None or not self._sendable(destination):
            return False
        try:
            sock.sendto(data, (destination.host, destination.port))
        except BlockingIOError:
            self.dropped += 1  # the socket buffer is full: lost like any datagram
            return True
        except OSError as exc:
            log.debug("%s: %s", self.local, exc)
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def wait_closed(self) -> None:
        return None

    @property
    def closed(self) -> bool:
        return self._sock is None
