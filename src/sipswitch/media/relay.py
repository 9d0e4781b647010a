"""The in-process media relay: for each relayed call, an RTP/RTCP port pair per leg and media
stream, asyncio datagram endpoints that pass every packet straight on (no task per packet),
symmetric RTP with strict latching, re-INVITE updates and an inactivity timeout.

Latching: a leg's first packets must come from the host its SDP names or the host its signalling
came from; the relay then sends that leg's media back to the source it learnt and drops packets
from any other source (no "RTP bleed"). A leg behind NAT (its SDP address private and not its
signalling source) may be learnt from its very first packet, wherever it comes from; a later
packet from one of the expected hosts takes the place over once, and then the latch is fixed.
A leg behind NAT gets no media until its first packet has opened the way.

Payloads are never looked at beyond the first two bytes (RTP version, RTCP packet type for
rtcp-mux), so SRTP passes untouched.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

from ..sdp.model import SessionDescription
from ..sdp.negotiate import rewrite_address
from ..sip.clock import Clock, LoopClock, TimerHandle
from ..sip.transport.udp import bind_socket
from .ports import PortAllocator, PortsExhausted
from .relay_backend import (
    ICE_ATTRIBUTES,
    LEGS,
    FlowStats,
    Leg,
    MediaTarget,
    RelayError,
    RelayStats,
    behind_nat,
    check_leg,
    media_targets,
    other_leg,
)

log = logging.getLogger(__name__)

MIN_PACKET = 8  # an RTCP header with its SSRC; anything shorter is not media
MAX_PACKET = 4096  # bigger than any RTP packet that fits a path MTU
MAX_STREAMS = 8  # m= sections relayed per call
_DROPPED_ATTRIBUTES = (*ICE_ATTRIBUTES, "rtcp")
_BIND_TRIES = 16


class _Port(asyncio.DatagramProtocol):
    """One relay socket: hands every datagram to its side."""

    __slots__ = ("side", "is_rtcp", "transport")

    def __init__(self, side: _Side, is_rtcp: bool) -> None:
        self.side = side
        self.is_rtcp = is_rtcp
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.side.received(data, addr, self.is_rtcp)

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable from a peer that is not listening (yet): keep relaying.
        log.debug("relay socket error: %s", exc)


class _Side:
    """One leg of one media stream: the relay's port pair facing that leg, what the leg's SDP
    said, and the source learnt from its packets."""

    __slots__ = (
        "leg",
        "stats",
        "flow",
        "other",
        "port",
        "family",
        "rtp",
        "rtcp",
        "target",
        "signalled",
        "peer_host",
        "expected",
        "learn_any",
        "latched",
        "strong",
        "latched_rtcp",
        "rtcp_strong",
        "mux",
        "rtp_to",
        "rtcp_to",
    )

    def __init__(self, leg: Leg, stats: RelayStats) -> None:
        self.leg = leg
        self.stats = stats
        self.flow: FlowStats = stats.flow(leg)  # what this leg sends
        self.other: _Side = self
        self.port = 0
        self.family = socket.AF_INET
        self.rtp: asyncio.DatagramTransport | None = None
        self.rtcp: asyncio.DatagramTransport | None = None
        self.target: MediaTarget | None = None
        self.signalled: tuple[str, int] | None = None  # the last media address it named
        self.peer_host = ""
        self.expected: frozenset[str] = frozenset()
        self.learn_any = False
        self.latched: Any = None
        self.strong = False
        self.latched_rtcp: Any = None
        self.rtcp_strong = False
        self.mux = False
        self.rtp_to: Any = None
        self.rtcp_to: Any = None

    # --- the packet path ----------------------------------------------------------------------

    def received(self, data: bytes, addr: Any, on_rtcp_port: bool) -> None:
        size = len(data)
        if size < MIN_PACKET or size > MAX_PACKET or data[0] & 0xC0 != 0x80:
            self.stats.dropped_malformed += 1
            return
        if on_rtcp_port:
            if addr != self.latched_rtcp and not self._learn_rtcp(addr):
                return
            rtcp = True
        else:
            if addr != self.latched and not self._learn(addr):
                return
            rtcp = self.mux and 192 <= data[1] <= 223  # RFC 5761 demultiplexing
        other = self.other
        if rtcp and not other.mux:
            transport, dest = other.rtcp, other.rtcp_to
        else:
            transport, dest = other.rtp, other.rtp_to
        if dest is None or transport is None:
            self.stats.dropped_early += 1
            return
        transport.sendto(data, dest)
        flow = self.flow
        if rtcp:
            flow.rtcp_packets += 1
        else:
            flow.packets += 1
        flow.bytes += size

    def _learn(self, addr: Any) -> bool:
        """Whether a packet from an RTP source that is not the latched one is accepted (and
        latched)."""
        if self.target is None:
            self.stats.dropped_early += 1
            return False
        if self.strong:
            self.stats.dropped_source += 1
            return False
        host = addr[0]
        if host in self.expected:
            self.strong = True
        elif not self.learn_any or self.latched is not None:
            self.stats.dropped_source += 1
            return False
        if self.latched is not None:
            log.debug("relay leg %s: RTP source %s replaces %s", self.leg, addr, self.latched)
        self.latched = addr
        if self.latched_rtcp is not None and self.latched_rtcp[0] != host:
            self.latched_rtcp = None
            self.rtcp_strong = False
        self._route()
        return True

    def _learn_rtcp(self, addr: Any) -> bool:
        if self.target is None:
            self.stats.dropped_early += 1
            return False
        if self.rtcp_strong:
            self.stats.dropped_source += 1
            return False
        host = addr[0]
        if self.latched is not None:
            # RTCP comes from the host the leg's RTP comes from.
            if host != self.latched[0]:
                self.stats.dropped_source += 1
                return False
            self.rtcp_strong = self.strong or host in self.expected
        elif host in self.expected:
            self.rtcp_strong = True
        elif not self.learn_any or self.latched_rtcp is not None:
            self.stats.dropped_source += 1
            return False
        self.latched_rtcp = addr
        self._route()
        return True

    # --- signalling -------------------------------------------------------------------------

    def update(self, target: MediaTarget, peer_host: str, learn_behind_nat: bool) -> None:
        """What this leg's (new) SDP says. A changed media address or signalling source starts
        learning anew; the same one (a re-INVITE for hold, say) keeps the latch."""
        signalled = (target.host, target.port) if target.host is not None else None
        moved = (
            self.target is None
            or peer_host != self.peer_host
            or (signalled is not None and signalled != self.signalled)
        )
        if signalled is not None:
            self.signalled = signalled
        self.target = target
        self.peer_host = peer_host
        if moved:
            self.latched = self.latched_rtcp = None
            self.strong = self.rtcp_strong = False
            hosts = {peer_host}
            if target.host is not None:
                hosts.add(target.host)
            if target.rtcp_host is not None:
                hosts.add(target.rtcp_host)
            self.expected = frozenset(hosts)
            self.learn_any = learn_behind_nat and behind_nat(target.host, peer_host)
        self._route()

    def _route(self) -> None:
        """Where packets for this leg go: its learnt source, else (unless behind NAT) the
        address its SDP names; nothing while it is on hold."""
        target = self.target
        if target is None or target.host is None or target.port == 0:
            self.rtp_to = self.rtcp_to = None
            return
        if self.latched is not None:
            self.rtp_to = self.latched
        elif self.learn_any:
            self.rtp_to = None
        else:
            self.rtp_to = self._address(target.host, target.port)
        if self.latched_rtcp is not None:
            self.rtcp_to = self.latched_rtcp
        elif self.latched is not None and self.learn_any:
            self.rtcp_to = self._address(self.latched[0], self.latched[1] + 1)
        elif self.learn_any or target.rtcp_host is None:
            self.rtcp_to = None
        else:
            self.rtcp_to = self._address(target.rtcp_host, target.rtcp_port)

    def _address(self, host: str, port: int) -> Any:
        if port > 65535 or (":" in host) != (self.family == socket.AF_INET6):
            return None
        return (host, port)

    def close(self, allocator: PortAllocator) -> None:
        for transport in (self.rtp, self.rtcp):
            if transport is not None:
                transport.close()
        self.rtp = self.rtcp = None
        if self.port:
            allocator.release(self.port)
            self.port = 0


class _Stream:
    __slots__ = ("sides",)

    def __init__(self, stats: RelayStats) -> None:
        a, b = _Side("a", stats), _Side("b", stats)
        a.other, b.other = b, a
        self.sides = (a, b)

    def side(self, leg: Leg) -> _Side:
        return self.sides[0] if leg == "a" else self.sides[1]


class _Call:
    __slots__ = (
        "call_id",
        "stats",
        "streams",
        "offerer",
        "answered",
        "lock",
        "seen_total",
        "timed_out",
        "closed",
    )

    def __init__(self, call_id: str, now: float) -> None:
        self.call_id = call_id
        self.stats = RelayStats(last_activity=now)
        self.streams: list[_Stream] = []
        self.offerer: Leg | None = None
        self.answered = False
        self.lock = asyncio.Lock()
        self.seen_total = 0
        self.timed_out = False
        self.closed = False

    def packet_total(self) -> int:
        s = self.stats
        return s.a_to_b.packets + s.a_to_b.rtcp_packets + s.b_to_a.packets + s.b_to_a.rtcp_packets

    def media_expected(self) -> bool:
        """Whether some stream must carry media both ways (answered, and neither side holds
        it: a call on hold, sendonly/recvonly or inactive, may rightly be silent for long)."""
        if not self.answered:
            return False
        for stream in self.streams:
            a, b = stream.sides
            if a.target is None or b.target is None:
                continue
            if a.target.two_way and b.target.two_way:
                return True
        return False


def _family(address: str) -> socket.AddressFamily:
    try:
        version = ipaddress.ip_address(address).version
    except ValueError:
        raise ValueError(f"relay address must be an IP address, not {address!r}") from None
    return socket.AF_INET6 if version == 6 else socket.AF_INET


class InProcessRelay:
    """The default relay engine (see ``RelayBackend``), on the asyncio loop of the server.

    ``bind_ipv4``/``bind_ipv6`` are where the relay's sockets listen (the wildcard by default,
    so any advertised address of the machine reaches them). ``timeout`` is the silence after
    which an answered call's media counts as dead; ``hold_timeout`` applies while no stream is
    meant to carry media (unanswered, inactive, rejected). ``learn_behind_nat`` allows a NATed
    leg to be learnt from its first packet from anywhere.
    """

    def __init__(
        self,
        allocator: PortAllocator,
        clock: Clock | None = None,
        *,
        bind_ipv4: str = "0.0.0.0",
        bind_ipv6: str = "::",
        timeout: float = 60.0,
        hold_timeout: float = 3600.0,
        check_interval: float | None = None,
        max_calls: int | None = None,
        max_streams: int = MAX_STREAMS,
        learn_behind_nat: bool = True,
    ) -> None:
        if timeout <= 0 or hold_timeout <= 0:
            raise ValueError("relay timeouts must be positive")
        self.allocator = allocator
        self.clock: Clock = clock if clock is not None else LoopClock()
        self.bind_ipv4 = bind_ipv4
        self.bind_ipv6 = bind_ipv6
        self.timeout = timeout
        self.hold_timeout = hold_timeout
        self.check_interval = (
            check_interval if check_interval is not None else max(0.5, min(5.0, timeout / 4))
        )
        # Each call needs at least two port pairs; more calls than that could never be set up.
        self.max_calls = max_calls if max_calls is not None else allocator.capacity // 2
        self.max_streams = max_streams
        self.learn_behind_nat = learn_behind_nat
        self.on_inactive: Callable[[str], None] | None = None
        self._calls: dict[str, _Call] = {}
        self._timer: TimerHandle | None = None

    # --- the RelayBackend interface -----------------------------------------------------------

    async def offer(
        self,
        call_id: str,
        leg: Leg,
        sdp: SessionDescription,
        *,
        peer_host: str,
        advertise: str,
        sender_advertise: str | None = None,
    ) -> SessionDescription:
        leg = check_leg(leg)
        receiver = other_leg(leg)
        targets = self._targets(sdp)
        toward_receiver = _family(advertise)
        call = self._calls.get(call_id)
        created = call is None
        if call is None:
            if len(self._calls) >= self.max_calls:
                raise RelayError(f"media relay busy: {self.max_calls} calls relayed")
            call = self._calls[call_id] = _Call(call_id, self.clock.now())
            self._arm()
        try:
            async with call.lock:
                if call.closed:
                    raise RelayError("call deleted while its offer was relayed", 500)
                first_host = next((t.host for t in targets if t.host is not None), None)
                toward_sender = _family(sender_advertise or first_host or advertise)
                families = {leg: toward_sender, receiver: toward_receiver}
                await self._ensure(call, len(targets), families)
                for stream, target in zip(call.streams, targets, strict=False):
                    stream.side(leg).update(target, peer_host, self.learn_behind_nat)
                    # Until the answer says, only the offerer may multiplex RTCP.
                    stream.side(leg).mux = target.mux
                call.offerer = leg
                ports = [stream.side(receiver).port for stream in call.streams]
        except BaseException:
            if created:
                self._drop(call)
            raise
        return rewrite_address(sdp, advertise, ports, drop_attributes=_DROPPED_ATTRIBUTES)

    async def answer(
        self,
        call_id: str,
        leg: Leg,
        sdp: SessionDescription,
        *,
        peer_host: str,
        advertise: str,
        sender_advertise: str | None = None,
    ) -> SessionDescription:
        leg = check_leg(leg)
        targets = self._targets(sdp)
        toward_offerer = _family(advertise)
        call = self._calls.get(call_id)
        if call is None or call.offerer is None:
            raise RelayError(f"no relayed offer for call {call_id[:60]!r}", 500)
        if call.offerer == leg:
            raise RelayError("the answer must come from the leg that did not offer", 500)
        offerer = call.offerer
        async with call.lock:
            if call.closed:
                raise RelayError("call deleted while its answer was relayed", 500)
            await self._ensure(call, len(call.streams), {offerer: toward_offerer})
            for stream, target in zip(call.streams, targets, strict=False):
                answering, offering = stream.side(leg), stream.side(offerer)
                answering.update(target, peer_host, self.learn_behind_nat)
                mux = target.mux and offering.target is not None and offering.target.mux
                answering.mux = offering.mux = mux
                offering._route()
            if not call.answered:
                call.answered = True
                call.stats.last_activity = self.clock.now()
            ports = [stream.side(offerer).port for stream in call.streams]
        return rewrite_address(sdp, advertise, ports, drop_attributes=_DROPPED_ATTRIBUTES)

    async def delete(self, call_id: str) -> None:
        call = self._calls.get(call_id)
        if call is not None:
            self._drop(call)
            await asyncio.sleep(0)  # the loop closes the sockets: their ports can be bound again

    async def stats(self, call_id: str) -> RelayStats | None:
        return self.snapshot(call_id)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._calls

    async def close(self) -> None:
        for call in list(self._calls.values()):
            self._drop(call)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- inspection ---------------------------------------------------------------------------

    def snapshot(self, call_id: str) -> RelayStats | None:
        """A copy of the call's counters, with the sources learnt so far."""
        call = self._calls.get(call_id)
        if call is None:
            return None
        s = call.stats
        latched: dict[str, tuple[str, int]] = {}
        if call.streams:
            for side in call.streams[0].sides:
                if side.latched is not None:
                    latched[side.leg] = (str(side.latched[0]), int(side.latched[1]))
        return replace(s, a_to_b=replace(s.a_to_b), b_to_a=replace(s.b_to_a), latched=latched)

    def ports(self, call_id: str, leg: Leg) -> list[int]:
        """The relay's RTP ports facing ``leg``, one per stream (0: none bound)."""
        call = self._calls.get(call_id)
        return [] if call is None else [stream.side(leg).port for stream in call.streams]

    @property
    def call_count(self) -> int:
        return len(self._calls)

    # --- internals ----------------------------------------------------------------------------

    def _targets(self, sdp: SessionDescription) -> list[MediaTarget]:
        if len(sdp.media) > self.max_streams:
            raise RelayError(f"more than {self.max_streams} media streams to relay", 488)
        return media_targets(sdp)

    async def _ensure(
        self, call: _Call, count: int, families: dict[Leg, socket.AddressFamily]
    ) -> None:
        """Every stream up to ``count`` has its port pairs, bound in the family each leg is
        reached by (a leg whose family changed gets a new pair)."""
        while len(call.streams) < count:
            call.streams.append(_Stream(call.stats))
        for stream in call.streams[:count]:
            for leg, family in families.items():
                side = stream.side(leg)
                if side.rtp is None or side.family != family:
                    side.close(self.allocator)
                    await self._bind(side, family)
                    side._route()

    async def _bind(self, side: _Side, family: socket.AddressFamily) -> None:
        host = self.bind_ipv6 if family == socket.AF_INET6 else self.bind_ipv4
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for _ in range(max(1, min(_BIND_TRIES, self.allocator.capacity))):
            try:
                port = self.allocator.allocate()
            except PortsExhausted as exc:
                raise RelayError(str(exc)) from None
            socks: list[socket.socket] = []
            try:
                socks.append(bind_socket(host, port, socket.SOCK_DGRAM))
                socks.append(bind_socket(host, port + 1, socket.SOCK_DGRAM))
            except OSError as exc:
                for sock in socks:
                    sock.close()
                self.allocator.release(port)
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    raise RelayError(f"cannot bind relay port on {host}: {exc}") from None
                last = exc
                continue
            side.port, side.family = port, family
            try:
                side.rtp, _ = await loop.create_datagram_endpoint(
                    lambda: _Port(side, False), sock=socks[0]
                )
                side.rtcp, _ = await loop.create_datagram_endpoint(
                    lambda: _Port(side, True), sock=socks[1]
                )
            except BaseException:
                if side.rtp is None:
                    socks[0].close()
                socks[1].close()
                side.close(self.allocator)
                raise
            return
        raise RelayError(
            f"no relay port pair could be bound on {host} in {self.allocator.low}-"
            f"{self.allocator.high + 1} ({last})"
        )

    def _drop(self, call: _Call) -> None:
        call.closed = True
        if self._calls.get(call.call_id) is call:
            del self._calls[call.call_id]
        for stream in call.streams:
            for side in stream.sides:
                side.close(self.allocator)
                side.target = None
                side.rtp_to = side.rtcp_to = None
        if not self._calls and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = self.clock.call_later(self.check_interval, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = self.clock.now()
        silent: list[_Call] = []
        for call in self._calls.values():
            total = call.packet_total()
            if total != call.seen_total:
                call.seen_total = total
                call.stats.last_activity = now
                call.timed_out = False
                continue
            limit = self.timeout if call.media_expected() else self.hold_timeout
            last = call.stats.last_activity
            if not call.timed_out and last is not None and now - last >= limit:
                silent.append(call)
        if self._calls:
            self._arm()
        for call in silent:
            call.timed_out = True
            handler = self.on_inactive
            if handler is None:
                log.info("relay: no media for call %s; deleted", call.call_id)
                self._drop(call)
                continue
            try:
                handler(call.call_id)
            except Exception:
                log.exception("relay: inactivity handler failed for call %s", call.call_id)


__all__ = ["InProcessRelay", "LEGS", "MAX_STREAMS"]
