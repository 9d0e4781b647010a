"""One call's RTP endpoint: a UDP socket pair from the port range, prompt and tone playback paced
every 20 ms by a drift-free scheduler on the injected clock, recording to WAV, and DTMF in and
out (RFC 4733, SIP INFO, in-band tones).

Pacing: frame n is due at start + n * ptime, whatever the lateness of earlier timers, so the
stream never drifts. Its RTP timestamp is ts0 + n * samples-per-frame, continuous across
prompts and silence; the sequence number grows by one per packet sent.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import ipaddress
import logging
import math
import os
import random
import secrets
import socket
import sys
from array import array
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Protocol, cast

from ..sip.clock import Clock, TimerHandle
from ..sip.transport.udp import bind_socket
from .dtmf import (
    DIGITS,
    DtmfDetector,
    DtmfError,
    DtmfEvent,
    DtmfReceiver,
    digit_to_event,
    dtmf_tone,
    event_train,
)
from .g711 import CODECS, Codec
from .ports import PortAllocator, PortsExhausted
from .prompts import PROMPTS, PromptCache
from .rtp import (
    MAX_PACKET_SIZE,
    RTP_HEADER_SIZE,
    Bye,
    ReceiverReport,
    ReportBlock,
    RtcpPacket,
    RtpError,
    RtpPacket,
    SenderReport,
    SourceDescription,
    build_rtcp,
    build_rtp,
    ntp_from_unix,
    parse_rtcp,
    seq_distance,
    ts_distance,
)
from .wav import SAMPLE_RATE, WavWriter

log = logging.getLogger(__name__)

MAX_CATCH_UP = 5  # frames sent at once after a late timer; frames beyond are skipped
MAX_QUEUED_DIGITS = 32
COMFORT_NOISE_PT = 13
RTCP_INTERVAL = 5.0
MAX_RECORD_GAP = SAMPLE_RATE  # silence inserted for a gap in received audio, at most 1 s

PromptItem = str | os.PathLike[str] | bytes


class PlayResult(enum.Enum):
    COMPLETED = "completed"  # played to the end
    INTERRUPTED = "interrupted"  # a key press stopped it
    STOPPED = "stopped"  # stop_playback() or another playback replaced it
    CLOSED = "closed"  # the session closed


@dataclass(frozen=True, slots=True)
class RecordResult:
    path: Path
    seconds: float
    reason: str  # "max-time", "terminator", "stopped" or "closed"
    digit: str | None = None


@dataclass(frozen=True, slots=True)
class Tone:
    """A call-progress tone: frequencies played together, and a cadence of on/off periods in ms
    (an odd count means the tone ends on). ``repeat`` loops the cadence."""

    name: str
    frequencies: tuple[float, ...]
    cadence: tuple[int, ...]
    amplitude: int = 5000
    repeat: bool = True

    def pcm(self) -> bytes:
        samples = array("h")
        for index, ms in enumerate(self.cadence):
            count = ms * SAMPLE_RATE // 1000
            if index % 2:
                samples.extend([0] * count)
                continue
            per = self.amplitude / max(1, len(self.frequencies))
            steps = [2 * math.pi * f / SAMPLE_RATE for f in self.frequencies]
            samples.extend(int(per * sum(math.sin(w * n) for w in steps)) for n in range(count))
        if sys.byteorder == "big":
            samples.byteswap()
        return samples.tobytes()


RINGBACK = Tone("ringback", (425.0,), (1000, 4000))  # ITU-T E.180, most of Europe
RINGBACK_US = Tone("ringback-us", (440.0, 480.0), (2000, 4000))  # North America
BEEP = Tone("beep", (1000.0,), (250,), amplitude=8000, repeat=False)


@dataclass(slots=True)
class MediaStats:
    """Counters of one session; every dropped packet is counted by its reason."""

    sent_packets: int = 0
    sent_bytes: int = 0
    received_packets: int = 0
    received_bytes: int = 0
    dropped_malformed: int = 0  # too short, too long, bad version or lengths
    dropped_source: int = 0  # from another address than the latched peer
    dropped_early: int = 0  # before the remote end was known
    dropped_payload_type: int = 0  # a payload type that was not negotiated
    late_frames: int = 0  # frames sent late, in a catch-up burst
    skipped_frames: int = 0  # frames dropped because the loop was too late
    digits_rfc4733: int = 0
    digits_inband: int = 0
    digits_info: int = 0
    digits_dropped: int = 0  # over the flood bound or the queue bound
    rtcp_received: int = 0
    rtcp_dropped: int = 0


class _Playback:
    """Encoded audio handed out one frame at a time."""

    __slots__ = ("payload", "position", "future", "interruptible", "loop", "frames_left", "fill")

    def __init__(
        self,
        payload: bytes,
        future: asyncio.Future[PlayResult],
        interruptible: bool,
        loop: bool,
        max_frames: int | None,
        fill: int,
    ) -> None:
        self.payload = payload
        self.position = 0
        self.future = future
        self.interruptible = interruptible
        self.loop = loop
        self.frames_left = max_frames
        self.fill = fill

    def next_frame(self, size: int) -> bytes | None:
        if self.frames_left is not None:
            if self.frames_left <= 0:
                return None
            self.frames_left -= 1
        if self.position >= len(self.payload):
            if not self.loop or not self.payload:
                return None
            self.position = 0
        frame = self.payload[self.position : self.position + size]
        self.position += size
        if len(frame) < size:
            frame += bytes((self.fill,)) * (size - len(frame))
        return frame

    def finish(self, result: PlayResult) -> None:
        if not self.future.done():
            self.future.set_result(result)


class _OutgoingDigit:
    """A key being sent: RFC 4733 event packets, or in-band tone frames."""

    __slots__ = ("events", "tone", "index", "start_ts", "future")

    def __init__(
        self,
        future: asyncio.Future[None],
        events: list[DtmfEvent] | None = None,
        tone: list[bytes] | None = None,
    ) -> None:
        self.events = events
        self.tone = tone
        self.index = 0
        self.start_ts: int | None = None
        self.future = future


class _Recording:
    __slots__ = ("writer", "terminators", "future", "timer", "expected_ts")

    def __init__(
        self, writer: WavWriter, terminators: str, future: asyncio.Future[RecordResult]
    ) -> None:
        self.writer = writer
        self.terminators = terminators
        self.future = future
        self.timer: TimerHandle | None = None
        self.expected_ts: int | None = None


@dataclass(slots=True)
class _ReceiveState:
    """RFC 3550 A.1/A.8 receiver statistics of the peer's stream, for receiver reports."""

    ssrc: int = 0
    base_seq: int = 0
    max_seq: int = 0
    cycles: int = 0
    received: int = 0
    expected_prior: int = 0
    received_prior: int = 0
    jitter: float = 0.0
    last_transit: float | None = None
    last_sr: int = 0
    last_sr_at: float | None = None
    started: bool = False


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Any], None]) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the peer is not listening (yet); keep going.
        log.debug("RTP socket error: %s", exc)


class NegotiatedAudio(Protocol):
    """What ``apply`` reads from an offer/answer outcome (``sipswitch.sdp.AudioChoice``)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def payload_type(self) -> int: ...
    @property
    def codec(self) -> str: ...
    @property
    def telephone_event_pt(self) -> int | None: ...
    @property
    def direction(self) -> str: ...


class MediaSession:
    """One RTP endpoint of a call. Create with ``await MediaSession.open(...)``."""

    def __init__(
        self,
        allocator: PortAllocator,
        clock: Clock,
        local_host: str,
        port: int,
        *,
        codec: Codec,
        ptime_ms: int,
        send_silence: bool,
        symmetric: bool,
        inband: bool | None,
        max_digits_per_second: float,
        prompt_cache: PromptCache,
        ssrc: int | None,
    ) -> None:
        self.allocator = allocator
        self.clock = clock
        self.local_host = local_host
        self.local_port = port
        self.codec = codec
        self.ptime = ptime_ms / 1000
        self.frame_samples = ptime_ms * SAMPLE_RATE // 1000
        self.send_silence = send_silence
        self.symmetric = symmetric
        self.inband = inband
        self.max_digits_per_second = max_digits_per_second
        self.prompt_cache = prompt_cache
        self.ssrc = ssrc if ssrc is not None else secrets.randbits(32)
        self.stats = MediaStats()
        self.on_digit: Callable[[str, str], None] | None = None  # (digit, "rfc4733"|...)
        self._rtp: asyncio.DatagramTransport | None = None
        self._rtcp: asyncio.DatagramTransport | None = None
        self.closed = False
        # Remote end.
        self.remote: tuple[str, int] | None = None
        self.payload_type = codec.payload_type
        self.telephone_event_pt: int | None = None
        self.sending = True
        self._send_to: tuple[str, int] | None = None
        self._rtcp_to: tuple[str, int] | None = None
        self.latched: tuple[str, int] | None = None
        # Pacing.
        self._timer: TimerHandle | None = None
        self._t0 = 0.0
        self._frame = 0
        self._ts0 = secrets.randbits(32)
        self._seq = secrets.randbits(16)
        self._octets = 0
        self._new_spurt = True
        self._playback: _Playback | None = None
        self._outgoing: deque[_OutgoingDigit] = deque()
        # Receiving.
        self._receiver = DtmfReceiver()
        self._detector: DtmfDetector | None = None
        self._digits: deque[str] = deque()
        self._digit_waiters: list[tuple[asyncio.Future[str | None], TimerHandle | None]] = []
        self._tokens = max_digits_per_second
        self._tokens_at = clock.now()
        self._recording: _Recording | None = None
        self._rx = _ReceiveState()
        self._rtcp_timer: TimerHandle | None = None

    # --- opening and closing ----------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        allocator: PortAllocator,
        local_host: str,
        clock: Clock,
        *,
        codec: str = "PCMU",
        ptime_ms: int = 20,
        send_silence: bool = True,
        symmetric: bool = True,
        inband: bool | None = None,
        max_digits_per_second: float = 20.0,
        prompt_cache: PromptCache | None = None,
        ssrc: int | None = None,
        attempts: int = 16,
    ) -> MediaSession:
        """Bind an RTP/RTCP port pair from ``allocator`` on ``local_host`` (an IP literal).

        ``codec`` is the one used until ``set_remote`` names the negotiated payload type;
        ``send_silence`` keeps packets flowing between prompts (NAT bindings stay open and the
        peer hears a live line); ``symmetric`` sends to wherever the peer's RTP comes from;
        ``inband`` switches the Goertzel detector on or off (None: on when the peer has no
        telephone-event). Raises ``PortsExhausted`` when no pair can be bound.
        """
        if not 10 <= ptime_ms <= 60 or ptime_ms % 10:
            raise ValueError("ptime must be 10, 20, 30, 40, 50 or 60 ms")
        chosen = CODECS.get(codec.upper())
        if chosen is None:
            raise ValueError(f"unsupported codec {codec!r}")
        loop = asyncio.get_running_loop()
        tries = max(1, min(attempts, allocator.capacity))
        last_error: OSError | None = None
        for _ in range(tries):
            port = allocator.allocate()
            try:
                rtp_sock = bind_socket(local_host, port, socket.SOCK_DGRAM)
                try:
                    rtcp_sock = bind_socket(local_host, port + 1, socket.SOCK_DGRAM)
                except BaseException:
                    rtp_sock.close()
                    raise
            except OSError as exc:
                allocator.release(port)
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    raise
                last_error = exc
                continue
            session = cls(
                allocator,
                clock,
                local_host,
                port,
                codec=chosen,
                ptime_ms=ptime_ms,
                send_silence=send_silence,
                symmetric=symmetric,
                inband=inband,
                max_digits_per_second=max_digits_per_second,
                prompt_cache=prompt_cache or PROMPTS,
                ssrc=ssrc,
            )
            try:
                session._rtp, _ = await loop.create_datagram_endpoint(
                    partial(_Endpoint, session._on_rtp), sock=rtp_sock
                )
                session._rtcp, _ = await loop.create_datagram_endpoint(
                    partial(_Endpoint, session._on_rtcp), sock=rtcp_sock
                )
            except BaseException:
                if session._rtp is not None:
                    session._rtp.close()
                else:
                    rtp_sock.close()
                rtcp_sock.close()
                allocator.release(port)
                raise
            return session
        raise PortsExhausted(
            f"no RTP port pair could be bound on {local_host} in "
            f"{allocator.low}-{allocator.high + 1} after {tries} tries ({last_error})"
        )

    def close(self) -> None:
        """Stop everything, send an RTCP BYE, close the sockets and give the ports back.
        Pending ``play``/``record``/``get_digit`` calls return (CLOSED, "closed", None)."""
        if self.closed:
            return
        self.closed = True
        for timer in (self._timer, self._rtcp_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._rtcp_timer = None
        if self.stats.sent_packets:
            self._send_rtcp(bye=True)
        if self._playback is not None:
            self._playback.finish(PlayResult.CLOSED)
            self._playback = None
        while self._outgoing:
            outgoing = self._outgoing.popleft()
            if not outgoing.future.done():
                outgoing.future.set_result(None)
        self._finish_recording("closed")
        for future, timer in self._digit_waiters:
            if timer is not None:
                timer.cancel()
            if not future.done():
                future.set_result(None)
        self._digit_waiters.clear()
        for transport in (self._rtp, self._rtcp):
            if transport is not None:
                transport.close()
        self.allocator.release(self.local_port)

    async def __aenter__(self) -> MediaSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # --- the remote end ---------------------------------------------------------------------

    def set_remote(
        self,
        host: str,
        port: int,
        payload_type: int,
        telephone_event_pt: int | None = None,
        *,
        codec: str | None = None,
        send: bool = True,
    ) -> None:
        """Where to send and what: the negotiated address, audio payload type (``codec`` names
        it when the type is dynamic) and telephone-event type. ``send=False`` (the peer is on
        hold) keeps the clock and playback running without sending. May be called again after
        a re-INVITE; the first call starts the 20 ms clock."""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"remote RTP host must be an IP address, not {host!r}") from None
        if (address.version == 6) != (":" in self.local_host):
            raise ValueError(f"cannot send from {self.local_host} to {host}: address families")
        if not 0 < port <= 65535:
            raise ValueError(f"remote RTP port out of range: {port}")
        if codec is not None:
            chosen = CODECS.get(codec.upper())
            if chosen is None:
                raise ValueError(f"unsupported codec {codec!r}")
        else:
            found = [c for c in CODECS.values() if c.payload_type == payload_type]
            if not found:
                raise ValueError(f"payload type {payload_type} needs a codec name")
            chosen = found[0]
        remote = (str(address), port)
        if remote != self.remote:
            self.latched = None
            self._send_to = remote
            self._rtcp_to = (remote[0], port + 1)
        self.remote = remote
        self.codec = chosen
        self.payload_type = payload_type
        self.telephone_event_pt = telephone_event_pt
        self.sending = send
        inband = self.inband if self.inband is not None else telephone_event_pt is None
        if inband and self._detector is None:
            self._detector = DtmfDetector()
        elif not inband:
            self._detector = None
        if self._timer is None and not self.closed:
            self._t0 = self.clock.now()
            self._frame = 0
            self._schedule()
            self._schedule_rtcp()

    def apply(self, negotiated: NegotiatedAudio) -> None:
        """``set_remote`` from an offer/answer outcome (``sdp.AudioChoice``): nothing is sent
        while the peer holds the call (``0.0.0.0`` or a direction without sending). The host
        must be an IP address; a name from the SDP is resolved by the caller."""
        hold = negotiated.host in ("0.0.0.0", "::") or negotiated.direction in (
            "recvonly", "inactive"
        )
        host = negotiated.host
        if host in ("0.0.0.0", "::"):
            host = "::1" if ":" in self.local_host else "127.0.0.1"  # never sent to
        self.set_remote(
            host,
            negotiated.port,
            negotiated.payload_type,
            negotiated.telephone_event_pt,
            codec=negotiated.codec,
            send=not hold,
        )

    @property
    def started(self) -> bool:
        return self.remote is not None

    # --- playback ---------------------------------------------------------------------------

    async def play(
        self, items: PromptItem | Sequence[PromptItem], interruptible: bool = True
    ) -> PlayResult:
        """Play WAV files (paths) and/or 16-bit PCM (bytes) in order, as one talk spurt.

        Every file is read and checked before the first frame is sent (a bad file raises
        ``PromptError``). With ``interruptible``, a key press ends the playback (the key stays
        queued for ``get_digit``), and a key already queued means nothing is played.
        """
        if isinstance(items, (str, bytes, os.PathLike)):
            items = [items]
        payload = b"".join(self._encode(item) for item in items)
        return await self._start_playback(payload, interruptible, loop=False, max_frames=None)

    async def play_tone(
        self, tone: Tone = RINGBACK, max_seconds: float | None = None,
        interruptible: bool = False,
    ) -> PlayResult:
        """Play a call-progress tone (ringback by default) until ``stop_playback``, the end of
        its cadence when it does not repeat, or ``max_seconds``."""
        payload = self._tone_payload(tone)
        frames = None
        if max_seconds is not None:
            frames = max(0, round(max_seconds / self.ptime))
        return await self._start_playback(payload, interruptible, tone.repeat, frames)

    def stop_playback(self) -> None:
        if self._playback is not None:
            self._playback.finish(PlayResult.STOPPED)
            self._playback = None

    @property
    def playing(self) -> bool:
        return self._playback is not None

    async def _start_playback(
        self, payload: bytes, interruptible: bool, loop: bool, max_frames: int | None
    ) -> PlayResult:
        if self.closed:
            return PlayResult.CLOSED
        if self.remote is None:
            raise RuntimeError("set_remote() before playing: the peer's address is not known")
        if interruptible and self._digits:
            return PlayResult.INTERRUPTED
        self.stop_playback()
        future: asyncio.Future[PlayResult] = asyncio.get_running_loop().create_future()
        self._playback = _Playback(
            payload, future, interruptible, loop, max_frames, self.codec.silence
        )
        self._new_spurt = True
        try:
            return await future
        finally:
            if self._playback is not None and self._playback.future is future:
                self._playback = None

    def _encode(self, item: PromptItem) -> bytes:
        if isinstance(item, bytes):
            return self.codec.encode(item)
        return self.prompt_cache.encoded(Path(item), self.codec)

    _tone_cache: ClassVar[dict[tuple[Tone, str], bytes]] = {}

    def _tone_payload(self, tone: Tone) -> bytes:
        key = (tone, self.codec.name)
        payload = self._tone_cache.get(key)
        if payload is None:
            payload = self.codec.encode(tone.pcm())
            if len(self._tone_cache) < 64:
                self._tone_cache[key] = payload
        return payload

    # --- sending DTMF -----------------------------------------------------------------------

    async def send_dtmf(self, digit: str, duration_ms: int = 100) -> None:
        """Send one key: as RFC 4733 events when the peer accepts telephone-event, else as an
        in-band tone. Playback pauses meanwhile. Returns when the last packet was sent."""
        digit_to_event(digit)  # ValueError for anything but 0-9 * # A-D
        if self.closed:
            return
        if self.remote is None:
            raise RuntimeError("set_remote() before sending DTMF")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.telephone_event_pt is not None:
            train = event_train(digit, duration_ms, step=self.frame_samples)
            self._outgoing.append(_OutgoingDigit(future, events=train))
        else:
            encoded = self.codec.encode(dtmf_tone(digit, duration_ms))
            size = self.frame_samples
            frames = [encoded[i : i + size] for i in range(0, len(encoded), size)]
            gap = self.codec.silence_frame(size)
            # A pause after the tone, so two equal keys in a row stay two presses.
            self._outgoing.append(_OutgoingDigit(future, tone=[*frames, gap, gap, gap]))
        await future

    # --- receiving DTMF ---------------------------------------------------------------------

    def feed_info_dtmf(self, digit: str) -> None:
        """A key received in a SIP INFO request (see ``dtmf.parse_info``)."""
        digit_to_event(digit)
        self._deliver_digit(digit.upper(), "info")

    async def get_digit(self, timeout: float | None = None) -> str | None:
        """The next key pressed, waiting up to ``timeout`` seconds of the session's clock
        (0: only a key already queued); None on timeout or close."""
        if self._digits:
            return self._digits.popleft()
        if self.closed or (timeout is not None and timeout <= 0):
            return None
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        timer = None
        if timeout is not None:
            timer = self.clock.call_later(max(0.0, timeout), self._digit_timeout, future)
        entry = (future, timer)
        self._digit_waiters.append(entry)
        try:
            return await future
        finally:
            if timer is not None:
                timer.cancel()
            if entry in self._digit_waiters:
                self._digit_waiters.remove(entry)

    def _digit_timeout(self, future: asyncio.Future[str | None]) -> None:
        if not future.done():
            future.set_result(None)

    async def digits(self) -> AsyncIterator[str]:
        """Every key pressed, until the session closes."""
        while True:
            digit = await self.get_digit()
            if digit is None:
                return
            yield digit

    def clear_digits(self) -> None:
        self._digits.clear()

    @property
    def pending_digits(self) -> str:
        return "".join(self._digits)

    def _deliver_digit(self, digit: str, source: str) -> None:
        if self.closed:
            return
        now = self.clock.now()
        rate = self.max_digits_per_second
        self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            self.stats.digits_dropped += 1
            return
        self._tokens -= 1.0
        if source == "rfc4733":
            self.stats.digits_rfc4733 += 1
        elif source == "inband":
            self.stats.digits_inband += 1
        else:
            self.stats.digits_info += 1
        if self.on_digit is not None:
            self.on_digit(digit, source)
        recording = self._recording
        if recording is not None and digit in recording.terminators:
            self._finish_recording("terminator", digit)
            return
        if self._playback is not None and self._playback.interruptible:
            self._playback.finish(PlayResult.INTERRUPTED)
            self._playback = None
        while self._digit_waiters:
            future, timer = self._digit_waiters.pop(0)
            if timer is not None:
                timer.cancel()
            if not future.done():
                future.set_result(digit)
                return
        if len(self._digits) >= MAX_QUEUED_DIGITS:
            self.stats.digits_dropped += 1
            return
        self._digits.append(digit)

    # --- recording --------------------------------------------------------------------------

    async def record(
        self,
        path: str | os.PathLike[str],
        max_seconds: float,
        terminator_digits: str = "#",
    ) -> RecordResult:
        """Record the peer's audio into a 16-bit 8 kHz WAV file until ``max_seconds`` pass, a
        terminator key is pressed (it is not queued as a digit), ``stop_recording`` or close.
        Gaps in the received stream (lost packets, silence suppression) are filled with
        silence, up to a second each."""
        if self.closed:
            return RecordResult(Path(path), 0.0, "closed")
        if self._recording is not None:
            raise RuntimeError("already recording")
        if any(d not in DIGITS for d in terminator_digits.upper()):
            raise ValueError(f"terminator keys must be DTMF keys: {terminator_digits!r}")
        writer = WavWriter(path)
        future: asyncio.Future[RecordResult] = asyncio.get_running_loop().create_future()
        recording = _Recording(writer, terminator_digits.upper(), future)
        recording.timer = self.clock.call_later(
            max(0.0, max_seconds), self._finish_recording, "max-time"
        )
        self._recording = recording
        return await future

    def stop_recording(self) -> None:
        self._finish_recording("stopped")

    def _finish_recording(self, reason: str, digit: str | None = None) -> None:
        recording = self._recording
        if recording is None:
            return
        self._recording = None
        if recording.timer is not None:
            recording.timer.cancel()
        recording.writer.close()
        if not recording.future.done():
            recording.future.set_result(
                RecordResult(recording.writer.path, recording.writer.seconds, reason, digit)
            )

    # --- the 20 ms clock --------------------------------------------------------------------

    def _schedule(self) -> None:
        deadline = self._t0 + self._frame * self.ptime
        self._timer = self.clock.call_later(max(0.0, deadline - self.clock.now()), self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.closed:
            return
        # Frames 0 .. due-1 are due by now (the epsilon absorbs float rounding of t0 + n*p).
        due = int((self.clock.now() - self._t0) / self.ptime + 1e-6) + 1
        behind = due - self._frame
        if behind > MAX_CATCH_UP:
            skipped = behind - MAX_CATCH_UP
            self._skip(skipped)
        if due - self._frame > 1:
            self.stats.late_frames += due - self._frame - 1
        while self._frame < due:
            self._emit()
            self._frame += 1
        self._schedule()

    def _skip(self, frames: int) -> None:
        self.stats.skipped_frames += frames
        playback = self._playback
        for _ in range(frames):
            if playback is not None and playback.next_frame(self.frame_samples) is None:
                self._end_playback()
                playback = None
        self._frame += frames
        self._new_spurt = True

    def _end_playback(self) -> None:
        if self._playback is not None:
            self._playback.finish(PlayResult.COMPLETED)
            self._playback = None

    def _emit(self) -> None:
        timestamp = (self._ts0 + self._frame * self.frame_samples) & 0xFFFFFFFF
        if self._outgoing:
            self._emit_digit(timestamp)
            return
        payload: bytes | None = None
        marker = False
        playback = self._playback
        if playback is not None:
            payload = playback.next_frame(self.frame_samples)
            if payload is None:
                self._end_playback()
            else:
                marker = self._new_spurt
        if payload is None and self.send_silence:
            payload = self.codec.silence_frame(self.frame_samples)
            marker = self._new_spurt and self.stats.sent_packets == 0
        if payload is None:
            self._new_spurt = True  # nothing sent: the next packet starts a talk spurt
            return
        self._new_spurt = False
        self._send(self.payload_type, timestamp, payload, marker)

    def _emit_digit(self, timestamp: int) -> None:
        outgoing = self._outgoing[0]
        if outgoing.events is not None:
            if outgoing.start_ts is None:
                outgoing.start_ts = timestamp
            event = outgoing.events[outgoing.index]
            pt = self.telephone_event_pt
            if pt is not None:
                self._send(pt, outgoing.start_ts, event.build(), outgoing.index == 0)
            outgoing.index += 1
            done = outgoing.index >= len(outgoing.events)
        else:
            assert outgoing.tone is not None
            frame = outgoing.tone[outgoing.index]
            if len(frame) < self.frame_samples:
                frame += self.codec.silence_frame(self.frame_samples - len(frame))
            self._send(self.payload_type, timestamp, frame, outgoing.index == 0)
            outgoing.index += 1
            done = outgoing.index >= len(outgoing.tone)
        if done:
            self._outgoing.popleft()
            if not outgoing.future.done():
                outgoing.future.set_result(None)
        self._new_spurt = True  # audio resuming after a key starts a new spurt

    def _send(self, payload_type: int, timestamp: int, payload: bytes, marker: bool) -> None:
        if not self.sending or self._send_to is None or self._rtp is None:
            return
        packet = build_rtp(payload_type, self._seq, timestamp, self.ssrc, payload, marker)
        self._seq = (self._seq + 1) & 0xFFFF
        self._rtp.sendto(packet, self._send_to)
        self.stats.sent_packets += 1
        self.stats.sent_bytes += len(packet)
        self._octets += len(payload)

    # --- receiving --------------------------------------------------------------------------

    def _on_rtp(self, data: bytes, addr: Any) -> None:
        stats = self.stats
        size = len(data)
        if size < RTP_HEADER_SIZE or size > MAX_PACKET_SIZE:
            stats.dropped_malformed += 1
            return
        if self.remote is None or self.closed:
            stats.dropped_early += 1
            return
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            stats.dropped_malformed += 1
            return
        source = (addr[0], addr[1])
        pt = packet.payload_type
        if self.latched is None:
            if pt != self.payload_type and pt != self.telephone_event_pt:
                stats.dropped_payload_type += 1
                return
            if not self.symmetric and source != self.remote:
                stats.dropped_source += 1
                return
            self.latched = source
            if self.symmetric and source != self._send_to:
                log.debug("RTP latched to %s:%s (SDP said %s)", *source, self.remote)
                self._send_to = source
                self._rtcp_to = (source[0], source[1] + 1)
        elif source != self.latched:
            stats.dropped_source += 1
            return
        stats.received_packets += 1
        stats.received_bytes += size
        self._update_receive_stats(packet)
        if pt == self.telephone_event_pt:
            try:
                digit = self._receiver.feed(packet.timestamp, packet.payload)
            except DtmfError:
                stats.dropped_malformed += 1
                return
            if digit is not None:
                self._deliver_digit(digit, "rfc4733")
        elif pt == self.payload_type:
            if self._recording is None and self._detector is None:
                return
            pcm = self.codec.decode(packet.payload)
            if self._recording is not None:
                self._record_audio(packet.timestamp, pcm)
            if self._detector is not None:
                for digit in self._detector.feed(pcm):
                    self._deliver_digit(digit, "inband")
        elif pt != COMFORT_NOISE_PT:
            stats.dropped_payload_type += 1

    def _record_audio(self, timestamp: int, pcm: bytes) -> None:
        recording = self._recording
        assert recording is not None
        samples = len(pcm) // 2
        if recording.expected_ts is not None:
            gap = ts_distance(timestamp, recording.expected_ts)
            if gap < 0:
                return  # late or repeated packet: its place is already written
            if gap > 0:
                recording.writer.write(bytes(2 * min(gap, MAX_RECORD_GAP)))
        recording.writer.write(pcm)
        recording.expected_ts = (timestamp + samples) & 0xFFFFFFFF

    def _update_receive_stats(self, packet: RtpPacket) -> None:
        rx = self._rx
        seq = packet.sequence
        if not rx.started or packet.ssrc != rx.ssrc:
            self._rx = rx = _ReceiveState()
            rx.started = True
            rx.ssrc = packet.ssrc
            rx.base_seq = rx.max_seq = seq
        else:
            delta = seq_distance(seq, rx.max_seq)
            if delta > 0:
                if seq < rx.max_seq:
                    rx.cycles += 1
                rx.max_seq = seq
        rx.received += 1
        if packet.payload_type == self.payload_type:
            arrival = self.clock.now() * SAMPLE_RATE
            transit = arrival - packet.timestamp
            if rx.last_transit is not None:
                d = abs(transit - rx.last_transit)
                if d < SAMPLE_RATE * 10:  # not a timestamp jump
                    rx.jitter += (d - rx.jitter) / 16
            rx.last_transit = transit

    # --- RTCP -------------------------------------------------------------------------------

    def _on_rtcp(self, data: bytes, addr: Any) -> None:
        if self.closed or self.remote is None:
            self.stats.rtcp_dropped += 1
            return
        if self.latched is not None and addr[0] != self.latched[0]:
            self.stats.rtcp_dropped += 1
            return
        try:
            packets = parse_rtcp(data)
        except RtpError:
            self.stats.rtcp_dropped += 1
            return
        self.stats.rtcp_received += 1
        for packet in packets:
            if isinstance(packet, SenderReport):
                self._rx.last_sr = (packet.ntp_timestamp >> 16) & 0xFFFFFFFF
                self._rx.last_sr_at = self.clock.now()

    def _schedule_rtcp(self) -> None:
        delay = RTCP_INTERVAL * random.uniform(0.5, 1.5)
        self._rtcp_timer = self.clock.call_later(delay, self._rtcp_tick)

    def _rtcp_tick(self) -> None:
        self._rtcp_timer = None
        if self.closed:
            return
        self._send_rtcp()
        self._schedule_rtcp()

    def _report_block(self) -> ReportBlock | None:
        rx = self._rx
        if not rx.started:
            return None
        extended = rx.cycles * 0x10000 + rx.max_seq
        expected = extended - rx.base_seq + 1
        lost = expected - rx.received
        expected_interval = expected - rx.expected_prior
        received_interval = rx.received - rx.received_prior
        rx.expected_prior, rx.received_prior = expected, rx.received
        lost_interval = expected_interval - received_interval
        fraction = (
            (lost_interval << 8) // expected_interval
            if expected_interval > 0 and lost_interval > 0
            else 0
        )
        dlsr = 0
        if rx.last_sr_at is not None:
            dlsr = int((self.clock.now() - rx.last_sr_at) * 65536)
        return ReportBlock(
            rx.ssrc,
            min(fraction, 255),
            max(-0x800000, min(lost, 0x7FFFFF)),
            extended & 0xFFFFFFFF,
            int(rx.jitter),
            rx.last_sr,
            dlsr & 0xFFFFFFFF,
        )

    def _send_rtcp(self, bye: bool = False) -> None:
        if self._rtcp is None or self._rtcp_to is None or not self.sending:
            return
        block = self._report_block()
        blocks = (block,) if block is not None else ()
        first: RtcpPacket
        if self.stats.sent_packets:
            now_ts = (self._ts0 + self._frame * self.frame_samples) & 0xFFFFFFFF
            first = SenderReport(
                self.ssrc,
                ntp_from_unix(self.clock.wall()),
                now_ts,
                self.stats.sent_packets,
                self._octets,
                blocks,
            )
        else:
            first = ReceiverReport(self.ssrc, blocks)
        cname = f"sipswitch@{self.local_host}".encode()[:255]
        packets: list[RtcpPacket] = [first, SourceDescription(((self.ssrc, ((1, cname),)),))]
        if bye:
            packets.append(Bye((self.ssrc,)))
        try:
            self._rtcp.sendto(build_rtcp(packets), self._rtcp_to)
        except OSError:
            pass

    # --- views ------------------------------------------------------------------------------

    @property
    def next_timestamp(self) -> int:
        """The RTP timestamp of the next frame."""
        return (self._ts0 + self._frame * self.frame_samples) & 0xFFFFFFFF

    @property
    def recording(self) -> bool:
        return self._recording is not None

    def __repr__(self) -> str:
        return (
            f"<MediaSession {self.local_host}:{self.local_port} -> {self._send_to} "
            f"{self.codec.name} {'closed' if self.closed else 'open'}>"
        )


__all__ = [
    "BEEP",
    "RINGBACK",
    "RINGBACK_US",
    "MediaSession",
    "MediaStats",
    "NegotiatedAudio",
    "PlayResult",
    "RecordResult",
    "Tone",
]
