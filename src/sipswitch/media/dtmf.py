"""DTMF in its three forms: RFC 4733 telephone-event packets (parse, build, a receiver that
reports each key press once and a sender's packet train), SIP INFO bodies
(``application/dtmf-relay`` and ``application/dtmf``), and an in-band Goertzel detector over
16-bit PCM at 8 kHz, with a tone generator for sending digits in-band.
"""

from __future__ import annotations

import math
import struct
from array import array
from collections import deque
from dataclasses import dataclass
from operator import mul

DIGITS = "0123456789*#ABCD"
SAMPLE_RATE = 8000
MAX_INFO_BODY = 1024

ROW_FREQUENCIES = (697.0, 770.0, 852.0, 941.0)
COLUMN_FREQUENCIES = (1209.0, 1336.0, 1477.0, 1633.0)
KEYPAD = ("123A", "456B", "789C", "*0#D")

_EVENT = struct.Struct("!BBH")


class DtmfError(ValueError):
    """A DTMF packet or INFO body that cannot be read; ``status`` is the SIP answer for INFO."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


def digit_to_event(digit: str) -> int:
    index = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if index < 0:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    return index


def event_to_digit(event: int) -> str | None:
    """The key of a telephone-event code 0-15; other events (flash, tones) are None."""
    return DIGITS[event] if 0 <= event < 16 else None


# --- RFC 4733 ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    """One telephone-event payload: the event code, the end bit, the volume (0 to -63 dBm0, as
    a positive number) and the duration so far in timestamp units."""

    event: int
    end: bool = False
    volume: int = 10
    duration: int = 0

    @property
    def digit(self) -> str | None:
        return event_to_digit(self.event)

    def build(self) -> bytes:
        return _EVENT.pack(
            self.event & 0xFF,
            (0x80 if self.end else 0) | (self.volume & 0x3F),
            min(self.duration, 0xFFFF),
        )

    @classmethod
    def parse(cls, payload: bytes) -> DtmfEvent:
        # RFC 4733 §2.5.1.5 allows several events in one payload (redundancy); the first is
        # the one this packet is about.
        if len(payload) < 4 or len(payload) % 4:
            raise DtmfError(f"telephone-event payload of {len(payload)} bytes")
        event, flags, duration = _EVENT.unpack_from(payload)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)


class DtmfReceiver:
    """Turns received telephone-event packets into key presses, once each.

    An event is identified by its RTP timestamp (the start of the press, RFC 4733 §2.5.1.2):
    updates, the three redundant end packets and retransmissions share it and are ignored after
    the first. The digit is reported on the first packet seen, so a lost start still counts.
    """

    def __init__(self, memory: int = 32) -> None:
        self._recent: deque[tuple[int, int]] = deque(maxlen=memory)
        self.duplicates = 0

    def feed(self, timestamp: int, payload: bytes) -> str | None:
        """The digit this packet starts, or None (repeat, or a non-key event).
        Raises ``DtmfError`` for a malformed payload."""
        event = DtmfEvent.parse(payload)
        key = (timestamp, event.event)
        if key in self._recent:
            self.duplicates += 1
            return None
        self._recent.append(key)
        return event.digit


def event_train(
    digit: str, duration_ms: int = 100, volume: int = 10, step: int = 160
) -> list[DtmfEvent]:
    """The payloads a sender emits for one key press, one per 20 ms packet: the start, updates
    with the growing duration, and the final duration three times with the end bit."""
    event = digit_to_event(digit)
    total = max(step, int(duration_ms * SAMPLE_RATE / 1000) // step * step)
    train = [DtmfEvent(event, False, volume, d) for d in range(step, total, step)]
    if not train:
        train.append(DtmfEvent(event, False, volume, step))
    train.extend(DtmfEvent(event, True, volume, total) for _ in range(3))
    return train


# --- SIP INFO ---------------------------------------------------------------------------------


def parse_info(content_type: str, body: bytes) -> str:
    """The key in a SIP INFO body. ``application/dtmf-relay`` carries ``Signal=5`` (and
    ``Duration=160``); ``application/dtmf`` carries the key alone. Event numbers 10 and 11 are
    read as * and #, as some phones send them. Raises ``DtmfError`` (415 for another content
    type, 400 for a body without a key)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind not in ("application/dtmf-relay", "application/dtmf"):
        raise DtmfError(f"unsupported INFO content type {kind[:40]!r}", 415)
    if len(body) > MAX_INFO_BODY:
        raise DtmfError("INFO body too large")
    text = body.decode("ascii", "replace")
    if kind == "application/dtmf":
        return _key(text.strip())
    for line in text.splitlines():
        name, eq, value = line.partition("=")
        if eq and name.strip().lower() == "signal":
            return _key(value.strip())
    raise DtmfError("INFO body without a Signal= line")


def _key(value: str) -> str:
    if len(value) == 1 and value.upper() in DIGITS:
        return value.upper()
    if value.isdigit() and len(value) <= 2 and int(value) < 16:
        return DIGITS[int(value)]
    raise DtmfError(f"not a DTMF key: {value[:20]!r}")


def build_info(digit: str, duration_ms: int = 160) -> tuple[str, bytes]:
    """An ``application/dtmf-relay`` INFO body for one key: (content type, body)."""
    key = DIGITS[digit_to_event(digit)]
    return "application/dtmf-relay", f"Signal={key}\r\nDuration={duration_ms}\r\n".encode()


# --- in-band ----------------------------------------------------------------------------------


def _key_frequencies(digit: str) -> tuple[float, float]:
    for row, keys in enumerate(KEYPAD):
        column = keys.find(digit.upper())
        if column >= 0:
            return ROW_FREQUENCIES[row], COLUMN_FREQUENCIES[column]
    raise ValueError(f"not a DTMF digit: {digit!r}")


def dtmf_tone(digit: str, duration_ms: int = 100, amplitude: int = 7000) -> bytes:
    """A key's dual tone as 16-bit PCM at 8 kHz, ``amplitude`` per tone (7000: about -13 dBFS,
    a desk phone's level)."""
    low, high = _key_frequencies(digit)
    count = duration_ms * SAMPLE_RATE // 1000
    w1 = 2 * math.pi * low / SAMPLE_RATE
    w2 = 2 * math.pi * high / SAMPLE_RATE
    samples = array(
        "h", (int(amplitude * (math.sin(w1 * n) + math.sin(w2 * n))) for n in range(count))
    )
    return _le_bytes(samples)


def _le_bytes(samples: array[int]) -> bytes:
    if struct.pack("=h", 1) != struct.pack("<h", 1):
        samples = array("h", samples)
        samples.byteswap()
    return samples.tobytes()


def _le_samples(pcm: bytes) -> array[int]:
    samples = array("h")
    samples.frombytes(pcm[: len(pcm) & ~1])
    if struct.pack("=h", 1) != struct.pack("<h", 1):
        samples.byteswap()
    return samples


class DtmfDetector:
    """In-band DTMF detection by the Goertzel algorithm (a DFT at the eight key frequencies).

    Blocks of 160 samples (20 ms, 50 Hz resolution) are analysed every 80 samples. A block shows
    a key when its two halves carry similar energy (the tone fills the block), the strongest row
    and column tones are loud enough, within the allowed twist, clearly above the other rows and
    columns, and carry most of the block's energy (speech and noise spread theirs). A key is
    reported when two blocks in a row show it (tones shorter than about 24 ms are ignored, from
    35 ms on they are always caught) and once per press: the same key counts again only after
    three blocks without it (a pause of 40 ms is enough, a dropout of 10 ms is not).
    """

    BLOCK = 160
    HOP = 80
    MIN_AMPLITUDE = 400.0  # per tone, about -38 dBFS
    MAX_ROW_LOUDER = 10 ** (8 / 10)  # twist limits, as power ratios
    MAX_COLUMN_LOUDER = 10 ** (6 / 10)
    PEAK_RATIO = 10 ** (6 / 10)  # best row/column over the others
    MIN_TONE_SHARE = 0.8  # of the block's energy in the two tones
    MIN_BALANCE = 0.7  # energy of the quieter half of a block over the louder one
    DETUNE = 0.015
    RELEASE_BLOCKS = 3  # blocks without the key that end a press (a 10 ms dropout does not)

    def __init__(self) -> None:
        freqs = ROW_FREQUENCIES + COLUMN_FREQUENCIES
        half = self.HOP
        self._cos = [
            [math.cos(2 * math.pi * f * n / SAMPLE_RATE) for n in range(half)] for f in freqs
        ]
        self._sin = [
            [-math.sin(2 * math.pi * f * n / SAMPLE_RATE) for n in range(half)] for f in freqs
        ]
        # Rotation bringing the second half's sums to the block's phase reference.
        self._shift = [complex(math.cos(2 * math.pi * f * half / SAMPLE_RATE),
                               -math.sin(2 * math.pi * f * half / SAMPLE_RATE)) for f in freqs]
        # The same transform over a whole block at 1.5 % below and above each key frequency
        # (the tolerance of ITU-T Q.24), used when a slightly off-key tone falls short.
        block = self.BLOCK
        self._detuned = [
            [
                (
                    [math.cos(2 * math.pi * f * k * n / SAMPLE_RATE) for n in range(block)],
                    [math.sin(2 * math.pi * f * k * n / SAMPLE_RATE) for n in range(block)],
                )
                for k in (1 - self.DETUNE, 1 + self.DETUNE)
            ]
            for f in freqs
        ]
        self._pending: list[int] = []
        self._odd = b""  # half a sample left over from the last feed
        self._previous_half: tuple[list[complex], float, list[int]] | None = None
        self._candidate: str | None = None
        self._hits = 0
        self._reported: str | None = None
        self._misses = 0
        self._min_energy = self.BLOCK * self.MIN_AMPLITUDE**2  # two tones at the minimum
        self.blocks = 0

    def reset(self) -> None:
        self._pending.clear()
        self._odd = b""
        self._previous_half = None
        self._candidate = None
        self._hits = 0
        self._reported = None
        self._misses = 0

    def feed(self, pcm: bytes) -> list[str]:
        """Analyse more 16-bit PCM; returns the keys whose presses were recognised in it."""
        found: list[str] = []
        pending = self._pending
        if self._odd:
            pcm = self._odd + pcm
        self._odd = pcm[-1:] if len(pcm) & 1 else b""
        pending.extend(_le_samples(pcm))
        hop = self.HOP
        start = 0
        while len(pending) - start >= hop:
            half = pending[start : start + hop]
            start += hop
            digit = self._analyse_half(half)
            if digit is not None:
                found.append(digit)
        del pending[:start]
        return found

    def _analyse_half(self, half: list[int]) -> str | None:
        energy = float(sum(map(mul, half, half)))
        if energy * 2 < self._min_energy and (
            self._previous_half is None or self._previous_half[1] * 2 < self._min_energy
        ):
            # Both halves quiet: no need for the transform.
            self._previous_half = ([], energy, half)
            return self._step(None)
        sums = [
            complex(sum(map(mul, half, c)), sum(map(mul, half, s)))
            for c, s in zip(self._cos, self._sin, strict=True)
        ]
        previous = self._previous_half
        self._previous_half = (sums, energy, half)
        if previous is None:
            return None
        first, first_energy, first_half = previous
        if not first or min(first_energy, energy) < max(first_energy, energy) * self.MIN_BALANCE:
            # A tone in only part of the block: a press shorter than the block, or its edge.
            return self._step(None)
        self.blocks += 1
        powers = [
            abs(a + b * shift) ** 2
            for a, b, shift in zip(first, sums, self._shift, strict=True)
        ]
        return self._step(self._classify(powers, first_energy + energy, first_half + half))

    def _detuned_power(self, index: int, block: list[int]) -> float:
        best = 0.0
        for cos, sin in self._detuned[index]:
            best = max(best, sum(map(mul, block, cos)) ** 2 + sum(map(mul, block, sin)) ** 2)
        return best

    def _classify(self, powers: list[float], energy: float, block: list[int]) -> str | None:
        rows, columns = powers[:4], powers[4:]
        row = max(range(4), key=rows.__getitem__)
        column = max(range(4), key=columns.__getitem__)
        row_power, column_power = rows[row], columns[column]
        # A tone of amplitude A gives a power of (A * BLOCK / 2) ** 2.
        floor = (self.MIN_AMPLITUDE * self.BLOCK / 2) ** 2
        if row_power < floor or column_power < floor:
            return None
        if row_power > column_power * self.MAX_ROW_LOUDER:
            return None
        if column_power > row_power * self.MAX_COLUMN_LOUDER:
            return None
        for i in range(4):
            if i != row and rows[i] * self.PEAK_RATIO > row_power:
                return None
            if i != column and columns[i] * self.PEAK_RATIO > column_power:
                return None
        scale = 2 / self.BLOCK / max(energy, 1.0)
        if (row_power + column_power) * scale < self.MIN_TONE_SHARE:
            row_power = max(row_power, self._detuned_power(row, block))
            column_power = max(column_power, self._detuned_power(4 + column, block))
            if (row_power + column_power) * scale < self.MIN_TONE_SHARE:
                return None
        return KEYPAD[row][column]

    def _step(self, digit: str | None) -> str | None:
        if digit is not None and digit == self._candidate:
            self._hits += 1
        else:
            self._candidate = digit
            self._hits = 1 if digit is not None else 0
        if digit is None or digit != self._reported:
            self._misses += 1
            if self._misses >= self.RELEASE_BLOCKS:
                self._reported = None
        else:
            self._misses = 0
        if self._hits >= 2 and digit is not None and digit != self._reported:
            self._reported = digit
            self._misses = 0
            return digit
        return None
