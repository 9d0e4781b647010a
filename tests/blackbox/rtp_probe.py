"""An RTP receiver standing in for a phone's media port, for the black-box tests and the
benchmark: a UDP socket on a free loopback port whose background thread records the packets
it receives (kernel arrival time, header fields, payload), and the measures taken on them:
pacing, sequence and timestamp continuity, deviation from each stream's 20 ms schedule, and
the level and pitch of the audio (G.711 mu-law decoded here, independently of the server).

Arrival times come from the kernel (``SO_TIMESTAMPNS``) where it offers them, so the
receiver's own scheduling delays do not count as the sender's jitter.
"""

from __future__ import annotations

import math
import socket
import statistics
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .ports import HOST

_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_HEADER = struct.Struct("!BBHII")
_TIMESPEC = struct.Struct("@qq")
SAMPLE_RATE = 8000
MAX_DATAGRAM = 2048


@dataclass(frozen=True, slots=True)
class RtpRecord:
    """One received RTP packet. ``arrival`` is in ``time.time()`` seconds."""

    arrival: float
    source: tuple[str, int]
    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


class RtpProbe:
    """Receives RTP on ``host``:``port`` (a free port unless given) until stopped.

    ``keep_payload`` False keeps only the headers (the benchmark's many streams). Packets are
    recorded between ``window`` start and end (``time.time()`` seconds; the whole run when not
    set); every source seen is counted in ``ssrcs`` whatever the window. At most
    ``max_packets`` are kept, so memory stays bounded.
    """

    def __init__(
        self,
        host: str = HOST,
        port: int = 0,
        *,
        keep_payload: bool = True,
        receive_buffer: int = 8 * 1024 * 1024,
        max_packets: int = 2_000_000,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:  # beyond net.core.rmem_max where allowed (root), else up to it
            self.sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, receive_buffer)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            self.kernel_timestamps = True
        except OSError:
            self.kernel_timestamps = False
        self.sock.bind((host, port))
        self.sock.settimeout(0.1)
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self.keep_payload = keep_payload
        self.max_packets = max_packets
        self.window: tuple[float, float] | None = None
        self.ssrcs: set[int] = set()
        self.malformed = 0
        self._records: list[RtpRecord] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rtp-probe-{self.port}")
        self._thread.daemon = True

    def start(self) -> RtpProbe:
        self._thread.start()
        return self

    def stop(self) -> list[RtpRecord]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.sock.close()
        return self.packets

    def __enter__(self) -> RtpProbe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def packets(self) -> list[RtpRecord]:
        with self._lock:
            return list(self._records)

    def _receive(self) -> tuple[bytes, tuple[str, int], float] | None:
        try:
            data, ancillary, _, source = self.sock.recvmsg(MAX_DATAGRAM, 64)
        except (TimeoutError, BlockingIOError):
            return None
        arrival = 0.0
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                seconds, nanos = _TIMESPEC.unpack_from(value)
                arrival = seconds + nanos / 1e9
        return data, source, arrival or time.time()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                received = self._receive()
            except OSError:
                if self._stop.is_set():
                    return
                continue
            if received is None:
                continue
            data, source, arrival = received
            if len(data) < _HEADER.size or data[0] >> 6 != 2:
                self.malformed += 1
                continue
            _, second, seq, timestamp, ssrc = _HEADER.unpack_from(data)
            self.ssrcs.add(ssrc)
            window = self.window
            if window is not None and not window[0] <= arrival < window[1]:
                continue
            if len(self._records) >= self.max_packets:
                continue
            record = RtpRecord(
                arrival,
                (source[0], source[1]),
                second & 0x7F,
                bool(second & 0x80),
                seq,
                timestamp,
                ssrc,
                _payload(data) if self.keep_payload else b"",
            )
            with self._lock:
                self._records.append(record)

    def wait_for_streams(self, count: int, timeout_s: float) -> bool:
        """True once ``count`` distinct sources (SSRCs) have been heard, False at the timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.ssrcs) >= count:
                return True
            time.sleep(0.05)
        return len(self.ssrcs) >= count


def _payload(data: bytes) -> bytes:
    """The payload after the fixed header, the CSRC list, any extension and any padding."""
    count = data[0] & 0x0F
    offset = 12 + 4 * count
    if data[0] & 0x10 and len(data) >= offset + 4:
        offset += 4 + 4 * struct.unpack_from("!H", data, offset + 2)[0]
    end = len(data)
    if data[0] & 0x20 and end > offset:
        end -= data[-1]
    return data[offset:end] if end > offset else b""


# --- one stream ------------------------------------------------------------------------------


@dataclass
class StreamCheck:
    """What a receiver sees of one RTP stream (one SSRC), in arrival order."""

    ssrc: int
    packets: int
    payload_types: set[int]
    seq_steps: Counter[int]
    ts_steps: Counter[int]
    arrival_span_s: float
    timestamp_span_s: float
    markers: int
    first_marker: bool
    deviation_ms: list[float] = field(default_factory=list)

    @property
    def packets_per_s(self) -> float:
        return (self.packets - 1) / self.arrival_span_s if self.arrival_span_s > 0 else 0.0

    def describe(self) -> str:
        return (
            f"ssrc {self.ssrc:#x}: {self.packets} packets over {self.arrival_span_s:.2f} s "
            f"({self.packets_per_s:.1f}/s), timestamps span {self.timestamp_span_s:.2f} s, "
            f"payload types {sorted(self.payload_types)}, seq steps {dict(self.seq_steps)}, "
            f"ts steps {dict(self.ts_steps.most_common(6))}, markers {self.markers}"
        )


def check_stream(records: Sequence[RtpRecord]) -> StreamCheck:
    """Measures one stream's records (all of one SSRC, in arrival order; at least two)."""
    if len(records) < 2:
        raise ValueError("a stream needs at least two packets to be measured")
    seq_steps: Counter[int] = Counter()
    ts_steps: Counter[int] = Counter()
    for before, after in zip(records, records[1:], strict=False):
        seq_steps[(after.seq - before.seq) & 0xFFFF] += 1
        step = (after.timestamp - before.timestamp) & 0xFFFFFFFF
        ts_steps[step - (1 << 32) if step >= 1 << 31 else step] += 1
    first, last = records[0], records[-1]
    ts_span = ((last.timestamp - first.timestamp) & 0xFFFFFFFF) / SAMPLE_RATE
    return StreamCheck(
        ssrc=first.ssrc,
        packets=len(records),
        payload_types={r.payload_type for r in records},
        seq_steps=seq_steps,
        ts_steps=ts_steps,
        arrival_span_s=last.arrival - first.arrival,
        timestamp_span_s=ts_span,
        markers=sum(r.marker for r in records),
        first_marker=first.marker,
        deviation_ms=schedule_deviation_ms(records),
    )


def by_ssrc(records: Iterable[RtpRecord]) -> dict[int, list[RtpRecord]]:
    streams: dict[int, list[RtpRecord]] = {}
    for record in records:
        streams.setdefault(record.ssrc, []).append(record)
    return streams


def schedule_deviation_ms(records: Sequence[RtpRecord]) -> list[float]:
    """How far each packet's arrival strays from the stream's own schedule (its RTP
    timestamp), measured from the median transit time: the jitter buffer a phone would need."""
    base = records[0].timestamp
    transits = [
        r.arrival - ((r.timestamp - base) & 0xFFFFFFFF) / SAMPLE_RATE for r in records
    ]
    reference = statistics.median(transits)
    return [abs(t - reference) * 1000 for t in transits]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` by rank, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def jitter_summary(records: Iterable[RtpRecord], seconds: float) -> dict[str, Any]:
    """Deviation from schedule over every stream with three packets or more (p50, p99, max),
    the RFC 3550 interarrival differences (p99), packets and packets lost by sequence."""
    deviations: list[float] = []
    interarrival: list[float] = []
    received = lost = 0
    streams = by_ssrc(records)
    for packets in streams.values():
        if len(packets) < 3:
            continue
        base = packets[0].timestamp
        transits = [
            p.arrival - ((p.timestamp - base) & 0xFFFFFFFF) / SAMPLE_RATE for p in packets
        ]
        reference = statistics.median(transits)
        deviations.extend(abs(t - reference) * 1000 for t in transits)
        interarrival.extend(abs(b - a) * 1000 for a, b in zip(transits, transits[1:], strict=False))
        received += len(packets)
        span = (packets[-1].seq - packets[0].seq) & 0xFFFF
        lost += max(0, span + 1 - len(packets))

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {
        "streams": len(streams),
        "packets": received,
        "packets_per_s": round(received / seconds, 1) if seconds > 0 else None,
        "lost": lost,
        "deviation_ms_p50": rounded(percentile(deviations, 0.50)),
        "deviation_ms_p99": rounded(percentile(deviations, 0.99)),
        "deviation_ms_max": rounded(max(deviations)) if deviations else None,
        "interarrival_ms_p99": rounded(percentile(interarrival, 0.99)),
    }


# --- the audio -------------------------------------------------------------------------------


def _ulaw_table() -> list[int]:
    table = []
    for byte in range(256):
        value = ~byte & 0xFF
        sign, exponent, mantissa = value & 0x80, (value >> 4) & 0x07, value & 0x0F
        magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
        table.append(-magnitude if sign else magnitude)
    return table


ULAW = _ulaw_table()


def decode_pcmu(payload: bytes) -> list[int]:
    """G.711 mu-law bytes to 16-bit linear samples."""
    return [ULAW[b] for b in payload]


def rms(samples: Sequence[int]) -> float:
    return math.sqrt(sum(s * s for s in samples) / len(samples)) if samples else 0.0


def tone_level(samples: Sequence[int], frequency: float) -> float:
    """Amplitude of ``frequency`` in ``samples`` (Goertzel), on the samples' scale."""
    if not samples:
        return 0.0
    coefficient = 2 * math.cos(2 * math.pi * frequency / SAMPLE_RATE)
    s1 = s2 = 0.0
    for sample in samples:
        s1, s2 = sample + coefficient * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - coefficient * s1 * s2
    return 2 * math.sqrt(max(power, 0.0)) / len(samples)
