"""Worker processes: several processes sharing one server's calls (``[sip] workers = N``).

The primary process (worker 0) is the server as it runs alone, plus a ``WorkerPool``: it starts
workers 1..N-1 as fresh interpreters, gives each a copy of the UDP sockets (so a worker sends
from the server's own address and port) and a ``Channel``, and hands every message another
process owns to it (``sip.transport.steering``): a dialog's messages by Call-ID, unparsed; a
REGISTER by its address-of-record (the To user), which the owner alone writes. TCP and TLS
messages go over once framed. The primary holds the TCP and TLS connections, pings phones
behind NAT, registers lines, checks trunks and writes the pid file; it announces every
registration change, every change of a phone's reachability, where trunks take calls, moved
hunt positions and reloaded settings to the workers. A worker that dies is started again; its
share waits in a new channel meanwhile (the primary takes it over only from a worker that keeps
dying at once).

A worker (``WorkerLink`` with ``WorkerTransports``) runs a whole PBX core on what it is handed:
its own transactions, B2BUA, registrar for the addresses it owns, IVR and voicemail, CDRs
written to the shared database, and a copy of every other registration. It sends UDP itself
and asks the primary to send on TCP and TLS. Call limits count machine-wide
(``shared_counts``); each process has its own share of the RTP port range; the digest nonce
secret is the primary's, so a nonce is good in any process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ..config.settings import MediaSettings, Settings
from ..sip.message import Request
from ..sip.parser import MessageError, parse_datagram
from ..sip.transport.base import Address, MessageSink, deliver_whole
from ..sip.transport.manager import BoundAddresses, TransportManager
from ..sip.transport.steering import (
    Channel,
    event_frame,
    frame_identities,
    message_frame,
    owner_of,
    owner_of_aor,
    owner_of_call_id,
    send_frame,
    split_frame,
)
from ..sip.transport.udp import SendOnlyUdp, UdpTransport
from ..sip.uri import SipUri
from ..store import Binding
from .keepalive import NatKeepalive
from .location import LocationService
from .security import SecurityGate

log = logging.getLogger("sipswitch.workers")

READY_TIMEOUT = 60.0  # a worker that has not reported ready by then fails the start
STOP_TIMEOUT = 10.0  # after SIGTERM, before SIGKILL
RESPAWN_DELAY = 1.0
MAX_QUICK_DEATHS = 3  # deaths within QUICK_DEATH seconds of a start before giving up on one
QUICK_DEATH = 10.0
MAX_TLS_PEERS = 10_000  # TLS peers whose certificate identities a worker remembers
SNAPSHOT_CHUNK = 30_000  # octets of bindings per event when a worker gets the whole table


@dataclass(slots=True)
class WorkerSpec:
    """What a worker process is told on its standard input when it starts."""

    index: int
    workers: int
    channel_fd: int
    udp_fds: dict[int, int]  # index in ``bound`` -> descriptor of that UDP socket
    bound: list[tuple[str, str, int]]  # the primary's listening addresses, in its order
    secret: str  # hex: the digest nonce secret
    settings: str  # JSON of the settings in use
    counts: str = ""  # path of the shared call counts ("" when none)
    parent: int = 0  # the primary's pid
    fds: list[int] = field(default_factory=list)  # every descriptor handed over

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        raw = json.loads(text)
        raw["udp_fds"] = {int(k): int(v) for k, v in raw["udp_fds"].items()}
        raw["bound"] = [tuple(b) for b in raw["bound"]]
        return cls(**raw)


def media_share(media: MediaSettings, index: int, workers: int) -> MediaSettings:
    """The part of the RTP port range process ``index`` of ``workers`` allocates from (even
    boundaries, so RTP/RTCP pairs stay whole)."""
    if workers < 2:
        return media
    low, high = media.rtp_port_min, media.rtp_port_max
    share = ((high - low + 1) // workers) & ~1
    if share < 2:
        raise ValueError("the RTP port range is too small to share between the workers")
    start = (low + 1) & ~1 if low % 2 else low
    first = start + index * share
    last = high if index == workers - 1 else first + share - 1
    return media.model_copy(update={"rtp_port_min": first, "rtp_port_max": last})


def _binding_event(aor: str, bindings: list[Binding]) -> bytes:
    return event_frame({"bind": aor, "list": [asdict(b) for b in bindings]})


class FollowedTrunks(Protocol):
    """What worker processes need of the primary's trunks (``trunk.manager.TrunkManager``):
    where each one takes calls now, and a word when that may have changed."""

    on_change: Callable[[], None] | None

    def destinations(self) -> dict[str, Address | None]: ...


def _trunks_event(destinations: dict[str, Address | None]) -> bytes:
    table = {
        name: None if a is None else [a.transport, a.host, a.port]
        for name, a in destinations.items()
    }
    return event_frame({"trunks": table})


def register_owner(request: Request, workers: int) -> int:
    """The process a REGISTER goes to: the owner of its To address (the registrar's key), the
    primary when it has none (the primary answers what is wrong with it)."""
    try:
        uri = request.to.uri
    except Exception:  # noqa: BLE001 - a To the registrar will refuse
        return 0
    if not isinstance(uri, SipUri) or not uri.user_unescaped:
        return 0
    return owner_of_aor(uri.user_unescaped, workers)


def register_owner_of_datagram(data: bytes, workers: int) -> int:
    try:
        request = parse_datagram(data)
    except MessageError:
        return 0
    return register_owner(request, workers) if isinstance(request, Request) else 0


# --- the primary's side ---
class StreamSteering:
    """Between the TCP/TLS transports and the security gate in the primary: a message whose
    dialog another worker owns goes to it, the rest on to ``inner``."""

    def __init__(self, inner: MessageSink, pool: WorkerPool) -> None:
        self.inner = inner
        self.pool = pool

    def on_message(self, message: Any, source: Address, local: Address) -> None:
        pool = self.pool
        if isinstance(message, Request) and message.method == "REGISTER":
            owner = register_owner(message, pool.workers)
        else:
            owner = owner_of_call_id(message.call_id.encode(), pool.workers)
        if owner and pool.hand_over(owner, message.to_bytes(), source, local):
            return
        self.inner.on_message(message, source, local)

    def on_parse_error(self, error: MessageError, source: Address, local: Address) -> None:
        self.inner.on_parse_error(error, source, local)


class WorkerPool:
    """The primary's workers: started, fed, told, watched, stopped."""

    def __init__(
        self,
        settings: Settings,
        transports: TransportManager,
        location: LocationService,
        keepalive: NatKeepalive | None,
        security: SecurityGate,
        secret: bytes,
        command: list[str],
        counts_path: str = "",
        on_worker_lost: Callable[[int], None] | None = None,
        trunks: FollowedTrunks | None = None,
        hunt: Callable[[str, int], None] | None = None,
    ) -> None:
        self.trunks = trunks
        self.hunt = hunt  # sets a circular hunt's position in the primary's calls
        self._trunk_table: dict[str, Address | None] = {}
        self.settings = settings
        self.workers = settings.sip.workers
        self.transports = transports
        self.location = location
        self.keepalive = keepalive
        self.security = security
        self.secret = secret
        self.command = command
        self.counts_path = counts_path
        self.on_worker_lost = on_worker_lost
        self.channels: list[Channel | None] = [None] * self.workers
        self.processes: list[asyncio.subprocess.Process | None] = [None] * self.workers
        self.handed_over = 0
        self._ready: dict[int, asyncio.Future[None]] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self._their_ends: dict[int, socket.socket] = {}  # channel ends not yet handed over
        self._origin: int | None = None  # the worker whose registration change is applied
        self._stopping = False
        self._bound_index: dict[Address, int] = {}

    # --- life cycle ---
    async def start(self) -> None:
        """Start every worker and wait until each is serving. What arrives for a worker that is
        still starting waits in its channel, behind the registrations it is given first."""
        bound = list(self.transports.bound)
        self._bound_index = {address: i for i, address in enumerate(bound)}
        for udp in self.transports.udp:
            udp.steer = self._udp_steering(udp)
        for stream in (self.transports.tcp, self.transports.tls):
            if stream is not None and stream.sink is not None:
                stream.sink = StreamSteering(stream.sink, self)
        self.location.watch(self._binding_changed)
        if self.keepalive is not None:
            self.keepalive.on_reachability = self._reachability_changed
        # A TCP or TLS connection that cannot be set up fails the requests waiting on it in
        # every process (a worker's went out through the primary).
        own = self.transports.tcp.on_unreachable

        def unreachable(peer: Address) -> None:
            if own is not None:
                own(peer)
            self._broadcast(event_frame({"gone": [peer.transport, peer.host, peer.port]}))

        self.transports.set_unreachable_handler(unreachable)
        if self.trunks is not None:
            self.trunks.on_change = self._trunks_changed
            self._trunk_table = self.trunks.destinations()
        try:
            for index in range(1, self.workers):
                self._open_channel(index)
                await self._launch(index)
                self._watchers.append(
                    asyncio.create_task(self._watch(index), name=f"worker-{index}")
                )
            await asyncio.wait_for(
                asyncio.gather(*(self._ready[i] for i in range(1, self.workers))), READY_TIMEOUT
            )
        except BaseException:
            await self.stop()
            raise
        log.info("%d worker processes serving", self.workers - 1)

    def _open_channel(self, index: int) -> None:
        """A new channel to worker ``index``, starting with the registrations and unreachable
        phones as they are now; events and messages follow in order."""
        ours, theirs = Channel.pair()
        channel = Channel(ours, lambda frame: self._from_worker(index, channel, frame))
        channel.start()
        self._their_ends[index] = theirs
        self._ready[index] = asyncio.get_running_loop().create_future()
        by_aor: dict[str, list[Binding]] = {}
        for binding in self.location.all_bindings():
            by_aor.setdefault(binding.aor, []).append(binding)
        chunk: list[tuple[str, list[dict[str, Any]]]] = []
        size = 0
        for aor, bindings in by_aor.items():
            rows = [asdict(b) for b in bindings]
            # Measured, not guessed: a frame past FRAME_LIMIT would arrive cut short.
            rows_size = len(json.dumps([aor, rows], separators=(",", ":"))) + 1
            if chunk and size + rows_size > SNAPSHOT_CHUNK:
                channel.send(event_frame({"binds": chunk}))
                chunk, size = [], 0
            chunk.append((aor, rows))
            size += rows_size
        if chunk:
            channel.send(event_frame({"binds": chunk}))
        if self.keepalive is not None:
            for binding in self.keepalive.unreachable_bindings():
                channel.send(event_frame({"reach": asdict(binding), "ok": False}))
        if self.trunks is not None:
            channel.send(_trunks_event(self._trunk_table))
        self.channels[index] = channel

    async def _launch(self, index: int) -> None:
        """Start the process of worker ``index`` on the far end of its channel."""
        theirs = self._their_ends.pop(index)
        udp_fds = {self._bound_index[u.local]: _socket_fd(u) for u in self.transports.udp}
        spec = WorkerSpec(
            index=index,
            workers=self.workers,
            channel_fd=theirs.fileno(),
            udp_fds=udp_fds,
            bound=[(a.transport, a.host, a.port) for a in self.transports.bound],
            secret=self.secret.hex(),
            settings=self.settings.model_dump_json(),
            counts=self.counts_path,
            parent=os.getpid(),
        )
        spec.fds = [theirs.fileno(), *udp_fds.values()]
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.PIPE, pass_fds=spec.fds
            )
        finally:
            theirs.close()
        assert process.stdin is not None
        process.stdin.write(spec.to_json().encode())
        process.stdin.close()
        self.processes[index] = process

    async def _watch(self, index: int) -> None:
        """Start worker ``index`` again whenever it dies (unless it keeps dying at once). Its
        share waits in a new channel meanwhile; a worker given up on leaves its share to the
        primary."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        quick_deaths = 0
        while True:
            process = self.processes[index]
            assert process is not None
            code = await process.wait()
            if self._stopping:
                return
            channel = self.channels[index]
            if channel is not None:
                channel.close()
            self.channels[index] = None
            ready = self._ready.get(index)
            if ready is not None and not ready.done():
                ready.set_exception(RuntimeError(f"worker {index} exited ({code}) while starting"))
            if self.on_worker_lost is not None:
                self.on_worker_lost(index)
            quick_deaths = quick_deaths + 1 if loop.time() - started < QUICK_DEATH else 0
            if quick_deaths >= MAX_QUICK_DEATHS:
                log.critical(
                    "worker %d keeps exiting (%s): the primary serves its share from now on",
                    index,
                    code,
                )
                return
            log.error("worker %d exited (%s): its calls are lost; starting it again", index, code)
            self._open_channel(index)
            await asyncio.sleep(RESPAWN_DELAY)
            if self._stopping:
                return
            await self._launch(index)
            started = loop.time()

    async def stop(self) -> None:
        """SIGTERM to every worker (each finishes its transactions and hangs up its calls),
        SIGKILL to any still running after ``STOP_TIMEOUT``."""
        self._stopping = True
        running = [p for p in self.processes if p is not None and p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in running:
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                log.error("worker pid %d did not stop: killed", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for task in self._watchers:
            task.cancel()
        for index, channel in enumerate(self.channels):
            if channel is not None:
                channel.close()
                self.channels[index] = None
        for end in self._their_ends.values():
            end.close()
        self._their_ends.clear()

    def reload(self, settings: Settings) -> None:
        """Tell every worker the settings just taken."""
        self.settings = settings
        self._broadcast(event_frame({"reload": settings.model_dump_json()}))

    # --- messages to the workers ---
    def _udp_steering(self, udp: UdpTransport) -> Callable[[bytes, tuple[str | int, ...]], bool]:
        index = self._bound_index[udp.local]
        workers = self.workers
        channels = self.channels
        admit_source = self.security.admit_source

        def steer(data: bytes, addr: tuple[str | int, ...]) -> bool:
            if data.startswith(b"REGISTER "):
                owner = register_owner_of_datagram(data, workers)
            else:
                owner = owner_of(data, workers)
            if owner == 0:
                return False
            channel = channels[owner]
            if channel is None:  # a worker given up on: the primary serves its share
                return False
            host = str(addr[0])
            if not data.startswith(b"SIP/") and not admit_source(host):
                return True  # a request from a banned or flooding source: dropped here
            self.handed_over += 1
            channel.send(message_frame(data, "udp", host, int(addr[1]), index))
            return True

        return steer

    def hand_over(self, owner: int, data: bytes, source: Address, local: Address) -> bool:
        channel = self.channels[owner]
        if channel is None:
            return False
        index = self._bound_index.get(local, -1)  # -1: a connection made from no listener
        tls = self.transports.tls
        names = (
            tls.peer_identities(source)
            if tls is not None and source.transport == "tls"
            else frozenset()
        )
        self.handed_over += 1
        channel.send(message_frame(data, source.transport, source.host, source.port, index, names))
        return True

    def _broadcast(self, frame: bytes) -> None:
        for channel in self.channels:
            if channel is not None:
                channel.send(frame)

    def _binding_changed(self, aor: str, bindings: list[Binding]) -> None:
        frame = _binding_event(aor, bindings)
        for index, channel in enumerate(self.channels):
            if channel is not None and index != self._origin:
                channel.send(frame)

    def hunt_moved(self, group: str, position: int) -> None:
        """A circular hunt moved (in the primary or a worker): every worker takes it."""
        self._broadcast(event_frame({"hunt": [group, position]}))

    def _trunks_changed(self) -> None:
        if self.trunks is None:
            return
        table = self.trunks.destinations()
        if table != self._trunk_table:
            self._trunk_table = table
            self._broadcast(_trunks_event(table))

    def follow_trunks(self, trunks: FollowedTrunks) -> None:
        """The trunk service was replaced (a reload): follow the new one."""
        self.trunks = trunks
        trunks.on_change = self._trunks_changed
        self._trunks_changed()

    def _reachability_changed(self, binding: Binding, reachable: bool) -> None:
        self._broadcast(event_frame({"reach": asdict(binding), "ok": reachable}))

    # --- what the workers send ---
    def _from_worker(self, index: int, channel: Channel, frame: bytes) -> None:
        kind = frame[:1]
        if kind == b"S":
            fields, payload = split_frame(frame)
            transport, host, port = fields[0], fields[1], int(fields[2])
            self.transports.send(payload, Address(transport, host, port))
        elif kind == b"E":
            event = json.loads(frame[1:])
            if "ready" in event:
                self._worker_ready(index, channel)
            elif "bind" in event:  # a REGISTER the worker took: every other process takes it
                self._origin = index  # (not sent back: a later change there may have come)
                try:
                    rows = event["list"]
                    self.location.apply(str(event["bind"]), [Binding(**row) for row in rows])
                finally:
                    self._origin = None
            elif "hunt" in event:  # a worker's answer moved a circular hunt
                group, position = str(event["hunt"][0]), int(event["hunt"][1])
                if self.hunt is not None:
                    self.hunt(group, position)
                self.hunt_moved(group, position)
            elif "ban" in event:
                self.security.ban(
                    str(event["ban"]),
                    str(event.get("reason", "")),  # (the worker logged it too, with its prefix)
                    float(event.get("seconds", self.settings.security.ban_time)),
                )
        else:
            log.warning("worker %d sent an unknown frame", index)

    def _worker_ready(self, index: int, channel: Channel) -> None:
        if self.channels[index] is not channel:
            return
        ready = self._ready.get(index)
        if ready is not None and not ready.done():
            ready.set_result(None)
        log.info("worker %d (pid %d) serving", index, _pid(self.processes[index]))


def _pid(process: asyncio.subprocess.Process | None) -> int:
    return process.pid if process is not None else 0


def _socket_fd(udp: UdpTransport) -> int:
    transport = udp._transport
    if transport is None:
        raise RuntimeError(f"{udp.local} is closed")
    sock = transport.get_extra_info("socket")
    return int(sock.fileno())


# --- a worker's side ---
class WorkerTransports(TransportManager):
    """A worker's transports: copies of the primary's UDP sockets to send from, what the
    primary hands over to receive, TCP and TLS through the primary."""

    def __init__(self, spec: WorkerSpec) -> None:
        super().__init__()
        self.spec = spec
        self.channel: Channel | None = None
        self._udp_at: dict[int, UdpTransport] = {}
        # What the certificates of the primary's TLS connections name, per peer, as the
        # primary told with their messages (bounded: peers come and go).
        self._identities: dict[Address, frozenset[str]] = {}

    async def start(self, listen: list[str], udp_port: int, tcp_port: int) -> None:
        self.bound = BoundAddresses(Address(t, h, p) for t, h, p in self.spec.bound)
        for index, fd in sorted(self.spec.udp_fds.items()):
            udp = SendOnlyUdp(socket.socket(fileno=fd), self.sink)
            self.udp.append(udp)
            self._udp_at[index] = udp
        self._index_udp()
        self._started = True

    def send(self, data: bytes, destination: Address) -> bool:
        if destination.transport == "udp":
            return super().send(data, destination)
        channel = self.channel
        if channel is None:
            return False
        return channel.send(
            send_frame(data, destination.transport, destination.host, destination.port)
        )

    def peer_identities(self, peer: Address) -> frozenset[str]:
        """What the verified certificate of the primary's connection with ``peer`` names."""
        return self._identities.get(peer, frozenset())

    def deliver(self, frame: bytes) -> None:
        """An ``M`` frame from the primary: a message as if read from its socket."""
        fields, payload = split_frame(frame)
        transport, host, port, index = fields[0], fields[1], int(fields[2]), int(fields[3])
        if transport == "udp":
            udp = self._udp_at.get(index)
            if udp is not None:
                udp.datagram_received(payload, (host, port))
            return
        sink = self.sink
        if sink is None:
            return
        source = Address(transport, host, port)
        if transport == "tls":
            names = frame_identities(fields)
            if names or source in self._identities:
                if len(self._identities) >= MAX_TLS_PEERS:
                    self._identities.clear()
                self._identities[source] = names
        if 0 <= index < len(self.bound):
            local = self.bound[index]
        else:
            local = Address(transport, "::" if ":" in host else "0.0.0.0", 0)
        deliver_whole(sink, payload, source, local)


class WorkerLink:
    """A worker's end of its channel: hands messages to the transports, applies what the
    primary announces, and answers ``reachable_bindings`` as the primary's keepalives found."""

    def __init__(
        self,
        spec: WorkerSpec,
        transports: WorkerTransports,
        location: LocationService,
        on_reload: Callable[[Settings], None],
        on_peer_unreachable: Callable[[Address], None] | None = None,
        on_trunks: Callable[[dict[str, Address | None]], None] | None = None,
        on_hunt: Callable[[str, int], None] | None = None,
    ) -> None:
        self.on_hunt = on_hunt
        self.spec = spec
        self.on_peer_unreachable = on_peer_unreachable
        self.on_trunks = on_trunks
        self.trunks: dict[str, Address | None] = {}  # the primary's trunk destinations
        self.transports = transports
        self.location = location
        self.on_reload = on_reload
        self._unreachable: dict[tuple[str, str], tuple[str, int]] = {}
        self.channel = Channel(socket.socket(fileno=spec.channel_fd), self._on_frame)
        transports.channel = self.channel

    def start(self) -> None:
        self.channel.start()
        self.channel.send(event_frame({"ready": self.spec.index}))

    def close(self) -> None:
        self.channel.close()

    def report_ban(self, host: str, reason: str, seconds: float) -> None:
        """A ban made here holds at the primary, which reads every socket."""
        self.channel.send(event_frame({"ban": host, "reason": reason, "seconds": seconds}))

    def report_bindings(self, aor: str, bindings: list[Binding]) -> None:
        """A REGISTER taken here changed ``aor``: the primary tells every process."""
        self.channel.send(_binding_event(aor, bindings))

    def report_hunt(self, group: str, position: int) -> None:
        """An answer here moved a circular hunt: the primary tells every process."""
        self.channel.send(event_frame({"hunt": [group, position]}))

    def reachable_bindings(self, aor: str) -> list[Binding]:
        unreachable = self._unreachable
        if not unreachable:
            return self.location.lookup(aor)
        return [
            b
            for b in self.location.lookup(aor)
            if unreachable.get((b.aor, b.contact_uri)) != (b.call_id, b.cseq)
        ]

    def _bindings(self, aor: str, rows: list[dict[str, Any]]) -> None:
        bindings = [Binding(**row) for row in rows]
        self.location.apply(aor, bindings)
        for key in [k for k in self._unreachable if k[0] == aor]:
            if not any(b.contact_uri == key[1] for b in bindings):
                del self._unreachable[key]

    def _on_frame(self, frame: bytes) -> None:
        kind = frame[:1]
        if kind == b"M":
            self.transports.deliver(frame)
        elif kind == b"E":
            self._on_event(json.loads(frame[1:]))

    def _on_event(self, event: dict[str, Any]) -> None:
        if "bind" in event:
            self._bindings(str(event["bind"]), event["list"])
        elif "binds" in event:
            for aor, rows in event["binds"]:
                self._bindings(str(aor), rows)
        elif "reach" in event:
            binding = Binding(**event["reach"])
            key = (binding.aor, binding.contact_uri)
            if event.get("ok"):
                self._unreachable.pop(key, None)
            else:
                self._unreachable[key] = (binding.call_id, binding.cseq)
        elif "reload" in event:
            self.on_reload(Settings.model_validate_json(event["reload"]))
        elif "trunks" in event:
            self.trunks = {
                str(name): None if a is None else Address(str(a[0]), str(a[1]), int(a[2]))
                for name, a in event["trunks"].items()
            }
            if self.on_trunks is not None:
                self.on_trunks(self.trunks)
        elif "hunt" in event:
            if self.on_hunt is not None:
                self.on_hunt(str(event["hunt"][0]), int(event["hunt"][1]))
        elif "gone" in event:
            transport, host, port = event["gone"]
            if self.on_peer_unreachable is not None:
                self.on_peer_unreachable(Address(str(transport), str(host), int(port)))


def die_with_parent(parent: int) -> None:
    """Ask the kernel to end this process when the primary ends (Linux ``PR_SET_PDEATHSIG``),
    so no worker outlives a primary killed with SIGKILL; end now if it already has."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        log.debug("cannot ask to die with the primary")
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
