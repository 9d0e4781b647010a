"""rtpengine as a relay engine: a bounded bencode codec, the ng control protocol over UDP
(cookies, retransmission, time-out), ``RtpEngineRelay`` (the ``RelayBackend`` that drives it)
and ``RtpEngineDaemon`` (a local rtpengine process with userspace forwarding).

ng protocol: each request is one datagram ``COOKIE SP bencoded-dictionary``; the answer carries
the same cookie. rtpengine keeps answers by cookie for a while, so a retransmitted request is
answered again without being carried out twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from ..sdp.model import SdpError, SessionDescription
from ..sdp.model import parse as parse_sdp
from ..sip.clock import Clock, LoopClock, TimerHandle
from .relay_backend import (
    FlowStats,
    Leg,
    RelayError,
    RelayStats,
    behind_nat,
    check_leg,
    media_targets,
    other_leg,
)

log = logging.getLogger(__name__)

# --- bencode ----------------------------------------------------------------------------------

BValue: TypeAlias = int | str | bytes | list["BValue"] | dict[str, "BValue"]
"""What the codec encodes; decoding gives ``str`` for every byte string."""

MAX_MESSAGE = 65_000  # one UDP datagram
MAX_DEPTH = 32
MAX_ITEMS = 100_000
_MAX_INT_DIGITS = 20
_MAX_LEN_DIGITS = 8


class BencodeError(ValueError):
    """Bytes that are not a well-formed, bounded bencoded value."""


def bencode(value: BValue) -> bytes:
    """Encode ``value`` (dictionary keys are sorted, as bencode requires)."""
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def _encode(value: BValue, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BencodeError(f"value nested deeper than {MAX_DEPTH}")
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogateescape")
        out.append(b"%d:" % len(data))
        out.append(data)
    elif isinstance(value, bytes):
        out.append(b"%d:" % len(value))
        out.append(value)
    elif isinstance(value, list | tuple):
        out.append(b"l")
        for item in value:
            _encode(item, out, depth + 1)
        out.append(b"e")
    elif isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"bencode dictionary keys are strings, not {type(key).__name__}")
        out.append(b"d")
        for key in sorted(value, key=lambda k: k.encode("utf-8", "surrogateescape")):
            _encode(key, out, depth + 1)
            _encode(value[key], out, depth + 1)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes) -> BValue:
    """Decode one bencoded value that fills ``data`` exactly. Raises ``BencodeError`` for
    anything malformed, truncated, longer than ``MAX_MESSAGE``, nested deeper than
    ``MAX_DEPTH`` or with more than ``MAX_ITEMS`` items."""
    if len(data) > MAX_MESSAGE:
        raise BencodeError(f"bencoded value larger than {MAX_MESSAGE} bytes")
    decoder = _Decoder(data)
    value = decoder.value(0)
    if decoder.pos != len(data):
        raise BencodeError(f"{len(data) - decoder.pos} bytes after the bencoded value")
    return value


class _Decoder:
    __slots__ = ("data", "pos", "items")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.items = 0

    def value(self, depth: int) -> BValue:
        if depth > MAX_DEPTH:
            raise BencodeError(f"bencoded value nested deeper than {MAX_DEPTH}")
        self.items += 1
        if self.items > MAX_ITEMS:
            raise BencodeError(f"more than {MAX_ITEMS} bencoded items")
        data, pos = self.data, self.pos
        if pos >= len(data):
            raise BencodeError("bencoded value truncated")
        lead = data[pos]
        if lead == ord("i"):
            end = data.find(b"e", pos + 1, pos + 2 + _MAX_INT_DIGITS)
            if end < 0:
                raise BencodeError("bencoded integer unterminated or too long")
            text = data[pos + 1 : end]
            digits = text[1:] if text.startswith(b"-") else text
            if not digits.isdigit() or (len(digits) > 1 and digits.startswith(b"0")):
                raise BencodeError(f"malformed bencoded integer {text[:24]!r}")
            self.pos = end + 1
            return int(text)
        if lead == ord("l"):
            self.pos = pos + 1
            items: list[BValue] = []
            while True:
                if self.pos >= len(data):
                    raise BencodeError("bencoded list unterminated")
                if data[self.pos] == ord("e"):
                    self.pos += 1
                    return items
                items.append(self.value(depth + 1))
        if lead == ord("d"):
            self.pos = pos + 1
            result: dict[str, BValue] = {}
            while True:
                if self.pos >= len(data):
                    raise BencodeError("bencoded dictionary unterminated")
                if data[self.pos] == ord("e"):
                    self.pos += 1
                    return result
                if not chr(data[self.pos]).isdigit():
                    raise BencodeError("bencoded dictionary key is not a string")
                key = self.value(depth + 1)
                assert isinstance(key, str)
                result[key] = self.value(depth + 1)
        if ord("0") <= lead <= ord("9"):
            colon = data.find(b":", pos, pos + _MAX_LEN_DIGITS + 1)
            if colon < 0:
                raise BencodeError("bencoded string length unterminated or too long")
            length_text = data[pos:colon]
            if not length_text.isdigit() or (len(length_text) > 1 and length_text[0] == 48):
                raise BencodeError(f"malformed bencoded string length {length_text!r}")
            start, end = colon + 1, colon + 1 + int(length_text)
            if end > len(data):
                raise BencodeError("bencoded string runs past the data")
            self.pos = end
            return data[start:end].decode("utf-8", "surrogateescape")
        raise BencodeError(f"unexpected byte {bytes([lead])!r} in bencoded data")


# --- the ng control protocol ------------------------------------------------------------------


class RtpEngineError(RelayError):
    """rtpengine answered a request with an error (``reason`` is its error-reason)."""

    def __init__(self, reason: str, status: int = 503) -> None:
        super().__init__(f"rtpengine: {reason}", status)
        self.engine_reason = reason


class RtpEngineTimeout(RelayError):
    """rtpengine did not answer a request within the time-out."""


@dataclass(slots=True)
class _Pending:
    message: bytes
    future: asyncio.Future[dict[str, BValue]]
    deadline: float
    interval: float
    timer: TimerHandle | None = None
    sent: int = 0


class NgClient(asyncio.DatagramProtocol):
    """The ng protocol over one connected UDP socket (only the engine's answers get in).
    Create with ``await NgClient.open(host, port)``.

    A request is sent again after ``retransmit`` seconds, then at doubling intervals, until
    ``timeout`` seconds have passed (``RtpEngineTimeout``). At most ``max_pending`` requests
    wait at once."""

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        retransmit: float = 0.5,
        timeout: float = 5.0,
        max_pending: int = 4096,
    ) -> None:
        self.clock: Clock = clock if clock is not None else LoopClock()
        self.retransmit = retransmit
        self.timeout = timeout
        self.max_pending = max_pending
        self.transport: asyncio.DatagramTransport | None = None
        self._pending: dict[str, _Pending] = {}
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)
        self.retransmissions = 0
        self.stray = 0  # answers that matched no waiting request (late, duplicate, malformed)

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        clock: Clock | None = None,
        *,
        retransmit: float = 0.5,
        timeout: float = 5.0,
        max_pending: int = 4096,
    ) -> NgClient:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_datagram_endpoint(
            lambda: cls(clock, retransmit=retransmit, timeout=timeout, max_pending=max_pending),
            remote_addr=(host, port),
        )
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for pending in list(self._pending.values()):
            self._finish(pending, RtpEngineTimeout("rtpengine control socket closed"))

    def error_received(self, exc: Exception) -> None:
        # ECONNREFUSED: nothing listens (yet); retransmission goes on until the time-out.
        log.debug("rtpengine control socket: %s", exc)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        cookie, space, body = data.partition(b" ")
        pending = self._pending.get(cookie.decode("ascii", "replace")) if space else None
        if pending is None or pending.future.done():
            self.stray += 1
            return
        try:
            reply = bdecode(body)
        except BencodeError as exc:
            self.stray += 1
            log.warning("malformed answer from rtpengine: %s", exc)
            return
        if not isinstance(reply, dict):
            self.stray += 1
            return
        self._finish(pending, reply)

    async def request(
        self, command: str, args: Mapping[str, BValue] | None = None
    ) -> dict[str, BValue]:
        """Send ``command`` with ``args``; returns the answer dictionary when its ``result`` is
        not ``error``. Raises ``RtpEngineError``, ``RtpEngineTimeout`` or ``RelayError``."""
        if self.transport is None:
            raise RtpEngineTimeout("rtpengine control socket closed")
        if len(self._pending) >= self.max_pending:
            raise RelayError(f"{self.max_pending} requests to rtpengine already waiting")
        cookie = f"{self._prefix}_{next(self._counter)}"
        body: dict[str, BValue] = dict(args or {})
        body["command"] = command
        message = cookie.encode() + b" " + bencode(body)
        if len(message) > MAX_MESSAGE:
            raise RelayError(f"rtpengine request larger than {MAX_MESSAGE} bytes", 488)
        future: asyncio.Future[dict[str, BValue]] = asyncio.get_running_loop().create_future()
        pending = _Pending(message, future, self.clock.now() + self.timeout, self.retransmit)
        self._pending[cookie] = pending
        self._send(pending)
        try:
            reply = await future
        finally:
            if pending.timer is not None:
                pending.timer.cancel()
            self._pending.pop(cookie, None)
        result = reply.get("result")
        if result == "error":
            reason = reply.get("error-reason")
            raise RtpEngineError(str(reason)[:200] if reason is not None else "error")
        if result == "load limit":
            raise RtpEngineError("load limit reached")
        return reply

    def _send(self, pending: _Pending) -> None:
        pending.timer = None
        if pending.future.done():
            return
        now = self.clock.now()
        if now >= pending.deadline:
            self._finish(
                pending,
                RtpEngineTimeout(
                    f"rtpengine did not answer in {self.timeout:g} s ({pending.sent} sends)"
                ),
            )
            return
        if self.transport is not None:
            self.transport.sendto(pending.message)
        if pending.sent:
            self.retransmissions += 1
        pending.sent += 1
        delay = min(pending.interval, pending.deadline - now)
        pending.interval *= 2
        pending.timer = self.clock.call_later(delay, self._send, pending)

    @staticmethod
    def _finish(pending: _Pending, outcome: dict[str, BValue] | Exception) -> None:
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None
        if pending.future.done():
            return
        if isinstance(outcome, Exception):
            pending.future.set_exception(outcome)
        else:
            pending.future.set_result(outcome)

    async def ping(self) -> None:
        reply = await self.request("ping")
        if reply.get("result") != "pong":
            raise RtpEngineError(f"ping answered with {reply.get('result')!r}")

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


# --- the relay backend ------------------------------------------------------------------------


@dataclass(slots=True)
class _EngineCall:
    offerer: Leg | None = None
    answered: bool = False
    seen_total: int = -1
    last_activity: float = 0.0
    timed_out: bool = False
    media_expected: bool = False


_UNKNOWN_CALL = ("unknown call-id", "call-id not found", "unknown call")


def _as_dict(value: BValue | None) -> dict[str, BValue]:
    return value if isinstance(value, dict) else {}


def _as_list(value: BValue | None) -> list[BValue]:
    return value if isinstance(value, list) else []


def _as_int(value: BValue | None) -> int:
    return value if isinstance(value, int) else 0


def _addr_family(host: str) -> str:
    try:
        return "IP6" if ipaddress.ip_address(host).version == 6 else "IP4"
    except ValueError:
        raise ValueError(f"peer address must be an IP address, not {host!r}") from None


class RtpEngineRelay:
    """The ``RelayBackend`` that has rtpengine relay the media. Legs are rtpengine tags
    (``"a"`` and ``"b"``); every request asks for strict source checking, ICE removal and the
    SDP origin and session address replaced.

    ``interfaces`` maps an advertised address to the name of the rtpengine interface that has
    it (``--interface=lan/10.0.0.1 --interface=wan/203.0.113.5``): when both legs' addresses are
    known, the offer names the two interfaces (rtpengine's ``direction``). Without a mapping,
    rtpengine's first interface is advertised to both legs.

    Inactivity: every ``poll_interval`` seconds each call is queried; a call whose packet count
    has not moved for ``timeout`` seconds (``hold_timeout`` while no media is expected), or that
    rtpengine no longer knows, is reported to ``on_inactive``.
    """

    def __init__(
        self,
        client: NgClient,
        clock: Clock | None = None,
        *,
        interfaces: Mapping[str, str] | None = None,
        flags: Sequence[str] = (),
        timeout: float = 60.0,
        hold_timeout: float = 3600.0,
        poll_interval: float | None = None,
        max_calls: int = 100_000,
        poll_concurrency: int = 16,
    ) -> None:
        self.client = client
        self.clock: Clock = clock if clock is not None else client.clock
        self.interfaces = dict(interfaces or {})
        self.flags = list(flags)
        self.timeout = timeout
        self.hold_timeout = hold_timeout
        self.poll_interval = (
            poll_interval if poll_interval is not None else max(1.0, min(10.0, timeout / 4))
        )
        self.max_calls = max_calls
        self.poll_concurrency = poll_concurrency
        self.on_inactive: Callable[[str], None] | None = None
        self._calls: dict[str, _EngineCall] = {}
        self._timer: TimerHandle | None = None
        self._poll_task: asyncio.Task[None] | None = None

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
        call = self._calls.get(call_id)
        if call is None and len(self._calls) >= self.max_calls:
            raise RelayError(f"media relay busy: {self.max_calls} calls relayed")
        args = self._args(call_id, sdp, peer_host)
        args["from-tag"] = leg
        if call is not None and call.answered:
            args["to-tag"] = other_leg(leg)
        sender_if = self.interfaces.get(sender_advertise or "")
        receiver_if = self.interfaces.get(advertise)
        if sender_if is not None and receiver_if is not None:
            args["direction"] = [sender_if, receiver_if]
        reply = await self.client.request("offer", args)
        if call is None:
            call = self._calls.setdefault(call_id, _EngineCall(last_activity=self.clock.now()))
            self._arm()
        call.offerer = leg
        return self._sdp(reply)

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
        call = self._calls.get(call_id)
        if call is None or call.offerer is None:
            raise RelayError(f"no relayed offer for call {call_id[:60]!r}", 500)
        if call.offerer == leg:
            raise RelayError("the answer must come from the leg that did not offer", 500)
        args = self._args(call_id, sdp, peer_host)
        args["from-tag"] = call.offerer
        args["to-tag"] = leg
        reply = await self.client.request("answer", args)
        if not call.answered:
            call.answered = True
            call.last_activity = self.clock.now()
        # A stream on hold (sendonly, recvonly, inactive) may be silent: the hold timeout.
        call.media_expected = any(t.two_way for t in media_targets(sdp))
        return self._sdp(reply)

    async def delete(self, call_id: str) -> None:
        if self._calls.pop(call_id, None) is None:
            return
        if not self._calls and self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            await self.client.request("delete", {"call-id": call_id, "delete-delay": 0})
        except RtpEngineError as exc:
            if not exc.engine_reason.lower().startswith(_UNKNOWN_CALL):
                raise
        except RtpEngineTimeout:
            log.warning("rtpengine did not confirm deleting call %s", call_id)

    async def stats(self, call_id: str) -> RelayStats | None:
        call = self._calls.get(call_id)
        if call is None:
            return None
        try:
            reply = await self.client.request("query", {"call-id": call_id})
        except RtpEngineError as exc:
            if exc.engine_reason.lower().startswith(_UNKNOWN_CALL):
                return None
            raise
        stats = self.parse_query(reply)
        self._observe(call, stats)
        stats.last_activity = call.last_activity
        return stats

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._calls

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
            self._poll_task = None
        for call_id in list(self._calls):
            with contextlib.suppress(RelayError):
                await self.delete(call_id)

    @property
    def call_count(self) -> int:
        return len(self._calls)

    # --- requests and answers -----------------------------------------------------------------

    def _args(self, call_id: str, sdp: SessionDescription, peer_host: str) -> dict[str, BValue]:
        flags: list[BValue] = ["strict-source", *self.flags]
        targets = media_targets(sdp)
        first_host = next((t.host for t in targets if t.host is not None), None)
        if behind_nat(first_host, peer_host):
            # Send to where the signalling came from until the first packet says more.
            flags.append("SIP-source-address")
        return {
            "call-id": call_id,
            "sdp": sdp.to_text(),
            "received-from": [_addr_family(peer_host), peer_host],
            "replace": ["origin", "session-connection"],
            "ICE": "remove",
            "flags": flags,
        }

    @staticmethod
    def _sdp(reply: Mapping[str, BValue]) -> SessionDescription:
        body = reply.get("sdp")
        if not isinstance(body, str):
            raise RtpEngineError("answer without an SDP")
        try:
            return parse_sdp(body)
        except SdpError as exc:
            raise RtpEngineError(f"unusable SDP in its answer: {exc.reason}") from None

    @staticmethod
    def parse_query(reply: Mapping[str, BValue]) -> RelayStats:
        """A query answer as ``RelayStats``: what rtpengine received on each tag's RTP and RTCP
        streams, and where it sends each tag's first RTP stream once packets came from it (with
        strict source, the learnt source). rtpengine
        does not say why it dropped a packet: its error count is in ``dropped_malformed``."""
        stats = RelayStats()
        for tag, value in _as_dict(reply.get("tags")).items():
            if tag not in ("a", "b"):
                continue
            flow: FlowStats = stats.flow("a" if tag == "a" else "b")
            for media in _as_list(_as_dict(value).get("medias")):
                for stream in _as_list(_as_dict(media).get("streams")):
                    s = _as_dict(stream)
                    counters = _as_dict(s.get("stats"))
                    flags = [f for f in _as_list(s.get("flags")) if isinstance(f, str)]
                    packets = _as_int(counters.get("packets"))
                    flow.bytes += _as_int(counters.get("bytes"))
                    stats.dropped_malformed += _as_int(counters.get("errors"))
                    if "RTCP" in flags:
                        flow.rtcp_packets += packets
                        continue
                    flow.packets += packets
                    endpoint = _as_dict(s.get("endpoint"))
                    address, port = endpoint.get("address"), endpoint.get("port")
                    if (
                        tag not in stats.latched
                        and packets > 0
                        and isinstance(address, str)
                        and isinstance(port, int)
                    ):
                        stats.latched[tag] = (address, port)
        return stats

    # --- inactivity ---------------------------------------------------------------------------

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = self.clock.call_later(self.poll_interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._poll_task is None or self._poll_task.done():
            self._poll_task = asyncio.get_running_loop().create_task(self.poll())
        if self._calls:
            self._arm()

    def _observe(self, call: _EngineCall, stats: RelayStats) -> None:
        total = (
            stats.a_to_b.packets
            + stats.a_to_b.rtcp_packets
            + stats.b_to_a.packets
            + stats.b_to_a.rtcp_packets
        )
        if total != call.seen_total:
            if total > 0:
                call.last_activity = self.clock.now()
                call.timed_out = False
            call.seen_total = total

    async def poll(self) -> None:
        """Query every call once and report the silent ones (the timer calls this)."""
        gate = asyncio.Semaphore(self.poll_concurrency)
        silent: list[str] = []

        async def check(call_id: str, call: _EngineCall) -> None:
            async with gate:
                if self._calls.get(call_id) is not call:
                    return
                try:
                    reply = await self.client.request("query", {"call-id": call_id})
                except RtpEngineError as exc:
                    if exc.engine_reason.lower().startswith(_UNKNOWN_CALL):
                        if not call.timed_out:
                            silent.append(call_id)
                    return
                except RelayError as exc:
                    log.warning("rtpengine query for %s failed: %s", call_id, exc)
                    return
                self._observe(call, self.parse_query(reply))
                limit = self.timeout if call.answered and call.media_expected else self.hold_timeout
                if not call.timed_out and self.clock.now() - call.last_activity >= limit:
                    silent.append(call_id)

        await asyncio.gather(*(check(cid, call) for cid, call in list(self._calls.items())))
        for call_id in silent:
            call = self._calls.get(call_id)
            if call is None:
                continue
            call.timed_out = True
            handler = self.on_inactive
            if handler is None:
                log.info("rtpengine: no media for call %s; deleted", call_id)
                with contextlib.suppress(RelayError):
                    await self.delete(call_id)
                continue
            try:
                handler(call_id)
            except Exception:
                log.exception("relay: inactivity handler failed for call %s", call_id)


# --- a local rtpengine process ----------------------------------------------------------------


@dataclass
class RtpEngineDaemon:
    """A local rtpengine in userspace forwarding (no kernel module, no root needed), started
    with no configuration file so that only the listeners given here are opened.

    ``interfaces`` are rtpengine ``--interface`` values (``ADDR``, ``NAME/ADDR`` or
    ``NAME/ADDR!ADVERTISED``); ``ng_port`` 0 picks a free port. Its log goes to ``log_path``
    (a temporary file by default, removed by ``stop``): a file never fills up and stalls the
    engine the way an unread pipe would.
    """

    interfaces: Sequence[str] = ("127.0.0.1",)
    port_min: int = 30000
    port_max: int = 30999
    ng_host: str = "127.0.0.1"
    ng_port: int = 0
    binary: str = "rtpengine"
    # rtpengine's default ("delayed") lets any source take a stream over during the first
    # seconds; "immediate" fixes the first source, which strict-source then enforces.
    endpoint_learning: str = "immediate"
    extra_args: Sequence[str] = ()
    startup_timeout: float = 15.0
    log_path: Path | None = None
    process: asyncio.subprocess.Process | None = None
    _own_log: bool = False

    @staticmethod
    def available(binary: str = "rtpengine") -> str | None:
        """The path of the rtpengine program, or None when it is not installed."""
        return shutil.which(binary) or next(
            (p for p in (f"/usr/bin/{binary}", f"/usr/sbin/{binary}") if os.access(p, os.X_OK)),
            None,
        )

    def command(self) -> list[str]:
        path = self.available(self.binary)
        if path is None:
            raise FileNotFoundError(f"{self.binary} is not installed (Debian: rtpengine-daemon)")
        args = [
            path,
            "--config-file=none",
            "--table=-1",
            f"--listen-ng={self.ng_host}:{self.ng_port}",
            f"--port-min={self.port_min}",
            f"--port-max={self.port_max}",
            "--delete-delay=0",
            f"--endpoint-learning={self.endpoint_learning}",
            "--foreground",
            "--log-stderr",
        ]
        args.extend(f"--interface={value}" for value in self.interfaces)
        args.extend(self.extra_args)
        return args

    async def start(self) -> None:
        """Start it and wait for ``Startup complete`` in its log. Raises ``RuntimeError`` (with
        its last log lines) when it exits or does not get there within ``startup_timeout``."""
        if self.ng_port == 0:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind((self.ng_host, 0))
                self.ng_port = int(sock.getsockname()[1])
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="rtpengine-", suffix=".log")
            os.close(handle)
            self.log_path, self._own_log = Path(name), True
        with open(self.log_path, "ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                *self.command(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.startup_timeout
        while "Startup complete" not in self._read_log():
            if self.process.returncode is not None:
                tail = self.log_tail()
                await self.stop()
                raise RuntimeError("rtpengine exited while starting:\n" + tail)
            if loop.time() > deadline:
                tail = self.log_tail()
                await self.stop()
                raise RuntimeError(
                    f"rtpengine did not start in {self.startup_timeout:g} s:\n" + tail
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 0.05)

    def _read_log(self, limit: int = 1 << 20) -> str:
        if self.log_path is None:
            return ""
        try:
            with open(self.log_path, "rb") as log_file:
                log_file.seek(0, os.SEEK_END)
                size = log_file.tell()
                log_file.seek(max(0, size - limit))
                return log_file.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self._read_log(64 * 1024).splitlines()[-lines:])

    @property
    def ng_address(self) -> tuple[str, int]:
        return self.ng_host, self.ng_port

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; removes its own log file."""
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._own_log and self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
            self.log_path, self._own_log = None, False


__all__ = [
    "BValue",
    "BencodeError",
    "NgClient",
    "RtpEngineDaemon",
    "RtpEngineError",
    "RtpEngineRelay",
    "RtpEngineTimeout",
    "bdecode",
    "bencode",
]
