"""MediaSession over real loopback sockets: pacing in virtual time (timestamps, sequence numbers,
markers, no drift over 10,000 packets even with late timers), playback and its interruptions,
tones, recording, DTMF in all three forms and out in two, symmetric RTP latching, bad packets,
floods, RTCP, and the port range; then two sessions talking in real time."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from sipswitch.media.dtmf import DtmfDetector, DtmfEvent, event_train
from sipswitch.media.g711 import ulaw_decode, ulaw_encode
from sipswitch.media.ports import PortAllocator, PortsExhausted
from sipswitch.media.prompts import voice_path
from sipswitch.media.rtp import (
    Bye,
    ReceiverReport,
    RtpPacket,
    SenderReport,
    SourceDescription,
    build_rtcp,
    build_rtp,
    parse_rtcp,
)
from sipswitch.media.session import (
    BEEP,
    RINGBACK,
    RINGBACK_US,
    MediaSession,
    PlayResult,
)
from sipswitch.media.wav import PromptError, read_wav
from sipswitch.sip.clock import LoopClock, TimerHandle, VirtualClock

from .support import WAIT, rms, sine

HOST = "127.0.0.1"
TE = 101


class Peer:
    """The far end: a plain UDP socket (and optionally its RTCP neighbour)."""

    def __init__(self, with_rtcp: bool = False) -> None:
        self.rtcp: socket.socket | None = None
        for _ in range(50):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            self.sock.bind((HOST, 0))
            port = self.sock.getsockname()[1]
            if not with_rtcp:
                break
            if port % 2 == 0:
                try:
                    self.rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    self.rtcp.bind((HOST, port + 1))
                    self.rtcp.setblocking(False)
                    break
                except OSError:
                    self.rtcp.close()
                    self.rtcp = None
            self.sock.close()
        else:
            raise RuntimeError("no even/odd port pair for the test peer")
        self.sock.setblocking(False)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def drain(self) -> list[RtpPacket]:
        packets = []
        while True:
            try:
                packets.append(RtpPacket.parse(self.sock.recv(2048)))
            except BlockingIOError:
                return packets

    def drain_rtcp(self) -> list[bytes]:
        assert self.rtcp is not None
        out = []
        while True:
            try:
                out.append(self.rtcp.recv(2048))
            except BlockingIOError:
                return out

    def send(self, data: bytes, session: MediaSession) -> None:
        self.sock.sendto(data, (HOST, session.local_port))

    def close(self) -> None:
        self.sock.close()
        if self.rtcp is not None:
            self.rtcp.close()


@pytest.fixture
def allocator() -> PortAllocator:
    base = random.randrange(20000, 29000, 2)
    return PortAllocator(base, base + 199)


@pytest.fixture
async def cleanup() -> AsyncIterator[list[Any]]:
    things: list[Any] = []
    yield things
    for thing in things:
        thing.close()
    await settle()


async def settle() -> None:
    """Let every task that is ready run (a resolved future wakes its task one step later)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Let the loop run (received datagrams are handled) until ``condition`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.002)


async def open_pair(
    allocator: PortAllocator, cleanup: list[Any], clock: Any = None, te: int | None = TE,
    **options: Any,
) -> tuple[MediaSession, Peer]:
    clock = clock if clock is not None else VirtualClock()
    session = await MediaSession.open(allocator, HOST, clock, **options)
    peer = Peer(with_rtcp=True)
    cleanup.extend([session, peer])
    session.set_remote(HOST, peer.port, 0, te)
    return session, peer


def packet_from(peer_seq: int, ts: int, payload: bytes, pt: int = 0, marker: bool = False,
                ssrc: int = 0x5EED) -> bytes:
    return build_rtp(pt, peer_seq, ts, ssrc, payload, marker)


# --- pacing in virtual time -------------------------------------------------------------------


async def test_pacing_over_ten_thousand_packets(
    allocator: PortAllocator, cleanup: list[Any]
) -> None:
    clock = VirtualClock()
    session, peer = await open_pair(allocator, cleanup, clock)
    prompt = voice_path("welcome", None)
    received: list[RtpPacket] = []
    plays = 0
    while len(received) < 10_000:
        if not session.playing and plays < 20 and len(received) % 700 < 50:
            asyncio.get_running_loop().create_task(session.play(prompt))
            plays += 1
            await settle()
        clock.advance(1.0)  # 50 frames
        await settle()
        received.extend(peer.drain())
    # Frame 0 goes out at once, then one per 20 ms: no drift, nothing lost.
    assert len(received) == 1 + 50 * (len(received) // 50)
    first = received[0]
    for previous, packet in zip(received[:-1], received[1:], strict=True):
        assert packet.sequence == (previous.sequence + 1) & 0xFFFF
        assert packet.timestamp == (previous.timestamp + 160) & 0xFFFFFFFF
        assert packet.ssrc == first.ssrc and packet.payload_type == 0
        assert len(packet.payload) == 160
    markers = [i for i, p in enumerate(received) if p.marker]
    assert markers[0] == 0 and len(markers) == plays
    # Each marked packet starts a prompt: speech follows, and silence came before.
    for index in markers[1:]:
        assert set(received[index - 1].payload) == {0xFF}
    speech = ulaw_decode(b"".join(p.payload for p in received[markers[1] : markers[1] + 160]))
    assert rms(speech) > 500
    assert session.stats.sent_packets == len(received)
    assert session.stats.late_frames == 0 and session.stats.skipped_frames == 0


class LateClock(VirtualClock):
    """A virtual clock whose timers fire up to 45 ms late, like a busy event loop."""

    def __init__(self) -> None:
        super().__init__()
        self.random = random.Random(5)

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        return super().call_later(delay + self.random.uniform(0.0, 0.045), callback, *args)


async def test_late_timers_do_not_drift(allocator: PortAllocator, cleanup: list[Any]) -> None:
    clock = LateClock()
    session, peer = await open_pair(allocator, cleanup, clock)
    received: list[RtpPacket] = []
    for _ in range(200):
        clock.advance(1.0)
        received.extend(peer.drain())
    # 200 s: a sleep(0.02) loop would be 225 s behind; the deadline schedule is behind only by
    # the frames of the one timer that is due but late (at most 45 ms: 3 frames).
    assert 10_001 - 3 <= len(received) <= 10_001
    stamps = [p.timestamp for p in received]
    assert all((b - a) & 0xFFFFFFFF == 160 for a, b in zip(stamps[:-1], stamps[1:], strict=True))
    assert session.stats.late_frames > 0 and session.stats.skipped_frames == 0


async def test_a_stalled_loop_skips_frames_but_keeps_time(
    allocator: PortAllocator, cleanup: list[Any]
) -> None:
    clock = VirtualClock()
    session, peer = await open_pair(allocator, cleanup, clock)
    clock.advance(0.1)
    before = peer.drain()
    assert len(before) == 6
    # A timer that fires a whole second late: a short burst, then the schedule continues.
    timer = session._timer
    assert timer is not None
    timer.cancel()
    session._timer = None
    clock._now += 1.0
    session._tick()
    burst = peer.drain()
    assert len(burst) == 5
    assert session.stats.skipped_frames == 45
    clock.advance(0.1)
    after = peer.drain()
    assert len(after) == 5
    # Timestamps follow the clock across the gap: the stream is where the clock says.
    expected = (before[0].timestamp + 160 * round((clock.now() - 1000.0) / 0.02)) & 0xFFFFFFFF
    assert after[-1].timestamp == expected
    sequences = [p.sequence for p in before + burst + after]
    assert sequences == [(sequences[0] + i) & 0xFFFF for i in range(len(sequences))]


async def test_no_silence_mode_sends_nothing_between_prompts(
    allocator: PortAllocator, cleanup: list[Any]
) -> None:
    clock = VirtualClock()
    session, peer = await open_pair(allocator, cleanup, clock, send_silence=False)
    clock.advance(1.0)
    assert peer.drain() == []
    task = asyncio.create_task(session.play([sine(440, 100, 4000), sine(440, 100, 4000)]))
    await settle()
    clock.advance(1.0)
    await settle()
    assert task.result() == PlayResult.COMPLETED
    first = peer.drain()
    assert len(first) == 10 and first[0].marker and not any(p.marker for p in first[1:])
    task = asyncio.create_task(session.play(sine(440, 40, 4000)))
    await settle()
    clock.advance(1.0)
    await settle()
    second = peer.drain()
    assert len(second) == 2 and second[0].marker
    # The timestamp moved on with the clock while nothing was sent; the sequence did not.
    assert second[0].sequence == (first[-1].sequence + 1) & 0xFFFF
    gap = (second[0].timestamp - first[-1].timestamp) & 0xFFFFFFFF
    assert gap > 160 and gap % 160 == 0


async def test_ptime_and_codec_options(allocator: PortAllocator, cleanup: list[Any]) -> None:
    clock = VirtualClock()
    session = await MediaSession.open(allocator, HOST, clock, ptime_ms=30, codec="PCMA")
    peer = Peer()
    cleanup.extend([session, peer])
    session.set_remote(HOST, peer.port, 8)
    clock.advance(0.3)
    packets = peer.drain()
    assert len(packets) == 11
    assert {len(p.payload) for p in packets} == {240}
    assert {p.payload_type for p in packets} == {8}
    assert set(packets[0].payload) == {0xD5}
    with pytest.raises(ValueError):
        await MediaSession.open(allocator, HOST, clock, ptime_ms=25)
    with pytest.raises(ValueError):
        await MediaSession.open(allocator, HOST, clock, codec="G729")


# --- playback ---------------------------------------------------------------------------------


async def test_play_returns_completed_and_checks_files_first(
    allocator: PortAllocator, cleanup: list[Any], tmp_path: Path
) -> None:
    clock = VirtualClock()
    session, peer = await open_pair(allocator, cleanup, clock)
    bad = tmp_path / "cd.wav"
    bad.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x02\x00"
                    b"\x44\xac\x00\x00\x10\xb1\x02\x00\x04\x00\x10\x00data\x00\x00\x00\x00")
    with pytest.raises(PromptError, match="44100 Hz"):
        await session.play([voice_path("welcome", None), bad])
    assert not session.playing
    task = asyncio.create_task(session.play([voice_path("digit-1", None), sine(440, 100, 3000)]))
    await settle()
    assert session.playing
    clock.advance(2.0)
    await settle()
    assert task.result() == PlayResult.COMPLETED
    assert not session.playing


async def test_play_before_the_remote_is_known(
    allocator: PortAllocator, cleanup: list[Any]
) -> None:
    session = await MediaSession.open(allocator, HOST, VirtualClock())
    cleanup.append(session)
    with pytest.raises(RuntimeError, match="set_remote"):
        await session.play(sine(440, 100, 3000))
    with pytest.raises(RuntimeError, match="set_remote"):
        await session.send_dtmf("1")


async def test_key_press_interrupts_and_stays_queued(
    allocator: PortAllocator, cleanup: list[Any]
) -> None:
    clock = VirtualClock()
    session, peer = await open_pair(allocator, cleanup, clock)
    task = asyncio.create_task(session.play(voice_path("welcome", None)))
    await settle()
    clock.advance(0.5)
    session.feed_info_dtmf("3")
    await settle()
    assert task.result() == PlayResult.INTERRUPTED
    assert session.pending_digits == "3"
    # A queued key means the next interruptible prompt is not played at all ...
    assert await session.play(voice_path("welcome", None)) == PlayResult.INTERRUPTED
    # ... unless the prompt is not interruptible.
    task = asyncio.create_task(session.play(sine(440, 60, 3000), interruptible=False))
    await settle()
    session.feed_info_dtmf("4")
    clock.advance(0.2)
    await settle()
    assert task.result() == PlayResult.COMPLETED
    assert await session.get_digit(0) == "3"
    assert await session.get_digit(0) == "4"
    session.clear_digits()


async def test_stop_and_replace_playback(allocator: PortAllocator, cleanup: list[Any]) -> None:
    clock = VirtualClock()
    session, peer = await open_pair(allocator, cleanup, clock)
    first = asyncio.create_task(session.play(voice_path("welcome", None)))
    await settle()
    second = asyncio.create_task(session.play(voice_path("goodbye", None)))
    await settle()
    assert first.result() == PlayResult.STOPPED
    session.stop_playback()
    await settle()
    assert second.result() == PlayResult.STOPPED
    third = asyncio.create_task(session.play_tone(RINGBACK))
    await settle()
    session.close()
    await settle()
    assert third.result() == PlayResult.CLOSED
    assert await session.play(sine(440, 20, 100)) == PlayResult.CLOSED


def tone_levels(packets: list[RtpPacket]) -> list[float]:
    return [rms(ulaw_decode(p.payload)) for p in packets]


async def test_ringback_cadence(allocator: PortAllocator, cleanup: list[Any]) -> None:
    clock = VirtualClock()
    session, peer = await open_pair(allocator, cleanup, clock)
    peer.drain()
    task = asyncio.create_task(session.play_tone(RINGBACK, max_seconds=10.0))
    await settle()
    received: list[RtpPacket] = []
    for _ in range(12):
        clock.advance(1.0)
        await settle()
        received.extend(peer.drain())
    assert task.result() == PlayResult.COMPLETED
    levels = tone_levels(received[:500])
    on = [level > 1000 for level in levels]
    # 1 s on, 4 s off, twice.
    assert on[:50] == [True] * 50 and on[50:250] == [False] * 200
    assert on[250:300] == [True] * 50 and on[300:500] == [False] * 200
    assert sum(on) == 100
    # The tone is 425 Hz.
    pcm = ulaw_decode(b"".join(p.payload for p in received[5:45]))
    detector = DtmfDetector()
    assert detector.feed(pcm) == []
    assert 425.0 == pytest.approx(dominant_frequency(pcm), abs=5.0)


def dominant_frequency(pcm: bytes) -> float:
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    crossings = sum(1 for a, b in zip(samples[:-1], samples[1:], strict=True) if a < 0 <= b)
    return crossings / (len(samples) / 8000)


async def test_us_ringback_and_beep(allocator: PortAllocator, cleanup: list[Any]) -> None:
    clock = VirtualClock()
    session, peer = await open_pair(allocator, cleanup, clock)
    peer.drain()
    task = asyncio.create_task(session.play_tone(BEEP))
    await settle()
    clock.advance(1.0)
    await settle()
    assert task.result() == PlayResult.COMPLETED
    on = [level > 1000 for level in tone_levels(peer.drain())]
    assert sum(on) == 13  # 250 ms, rounded up to whole frames
    task = asyncio.create_task(session.play_tone(RINGBACK_US))
    await settle()
    clock.advance(7.0)
    session.stop_playback()
    await settle()
    assert task.result() == PlayResult.STOPPED
    on = [level > 1000 for level in tone_levels(peer.drain())]
    assert on[:100] == [True] * 100 and on[100:300] == [False] * 200 and on[300:] == [True] * 50


# --- DTMF -------------------------------------------------------------------------------------


async def test_rfc4733_digits_once_each_and_bad_packets_counted(
    allocator: PortAllocator, cleanup: list[Any]
) -> None:
    clock = VirtualClock()
    session, peer = await open_pair(allocator, cleanup, clock)
    seq = 100
    garbage = [
        b"\x80\x00",  # too short
        b"\x80\x00" + bytes(2000),  # too long
        b"\x40" + bytes(20),  # RTP version 1
        b"\x8f\x00" + bytes(20),  # 15 CSRCs, none present
        build_rtp(TE, 1, 1, 0x5EED, b"\x05\x0a"),  # event payload of 2 bytes
    ]
    for data in garbage:
        peer.send(data, session)
    for n, digit in enumerate("1#9"):
        for event in event_train(digit, 100):
            peer.send(packet_from(seq, 8000 * (n + 1), event.build(), TE, seq == 100), session)
            seq += 1
        # A retransmission of the end packet.
        peer.send(packet_from(seq - 1, 8000 * (n + 1), event.build(), TE), session)
    await until(lambda: session.stats.digits_rfc4733 == 3 and session.stats.received_packets
                >= 24)
    assert [await session.get_digit(0) for _ in range(3)] == ["1", "#", "9"]
    assert await session.get_digit(0) is None
    assert session.stats.dropped_malformed == len(garbage)


async def test_flood_of_digits_is_bounded(allocator: PortAllocator, cleanup: list[Any]) -> None:
    clock = VirtualClock()
    session, peer = await open_pair(allocator, cleanup, clock)
    for i in range(100):
        peer.send(packet_from(i, 1000 * i, DtmfEvent(i % 10).build(), TE), session)
    await until(lambda: session.stats.received_packets == 100)
    assert len(session.pending_digits) == 20
    assert session.stats.digits_dropped == 80
    session.clear_digits()
    clock.advance(0.5)  # half a second refills ten
    for i in range(100, 130):
        peer.send(packet_from(i, 1000 * i, DtmfEvent(1).build(), TE), session)
    await until(lambda: session.stats.received_packets == 130)
    assert len(session.pending_digits) == 10


async def test_queue_bound_and_digit_iterator(allocator: PortAllocator, cleanup: list[Any]) -> None:
    clock = VirtualClock()
    session, _ = await open_pair(allocator, cleanup, clock, max_digits_per_second=1000.0)
    for _ in range(50):
        session.feed_info_dtmf("7")
    assert len(session.pending_digits) == 32
    assert session.stats.digits_dropped == 18 and session.stats.digits_info == 50
    seen: list[tuple[str, str]] = []
    session.on_digit = lambda digit, source: seen.append((digit, source))
    session.clear_digits()
    session.feed_info_dtmf("a")
    assert seen == [("A", "info")]
    with pytest.raises(ValueError):
        session.feed_info_dtmf("x")
    collected = []

    async def collect() -> None:
        async for digit in session.digits():
            collected.append(digit)

    task = asyncio.create_task(collect())
    await settle()
    session.feed_info_dtmf("1")
    session.feed_info_dtmf("2")
    await settle()
    session.close()
    await asyncio.wait_for(task, WAIT)
    assert collected == ["A", "1", "2"]


async def test_get_digit_times_out_on_the_sessions_clock(
    allocator: PortAllocator, cleanup: list[Any]
) -> None:
    clock = VirtualClock()
    session, _ = await open_pair(allocator, cleanup, clock)
    task = asyncio.create_task(session.get_digit(5.0))
    await settle()
    clock.advance(4.9)
    await settle()
    assert not task.done()
    clock.advance(0.2)
    await settle()
    assert task.result() is None
    task = asyncio.create_task(session.get_digit(5.0))
    await settle()
    session.feed_info_dtmf("9")
    await settle()
    assert task.result() == "9"


async def test_inband_digits_are_detected_when_no_telephone_event(
    allocator: PortAllocator, cleanup: list[Any]
) -> None:
    clock = VirtualClock()
    session, peer = await open_pair(allocator, cleanup, clock, te=None)
    from sipswitch.media.dtmf import dtmf_tone

    audio = ulaw_encode(bytes(1600) + dtmf_tone("6", 80) + bytes(800) + dtmf_tone("0", 80)
                        + bytes(1600))
    for i in range(0, len(audio), 160):
        peer.send(packet_from(i // 160, i, audio[i : i + 160]), session)
    await until(lambda: session.stats.digits_inband == 2)
    assert session.pending_digits == "60"
    # With telephone-event negotiated, in-band detection is off by default (a phone that
    # sends both would otherwise give every key twice).
    session.set_remote(HOST, peer.port, 0, TE)
    session.clear_digits()
    for i in range(0, len(audio), 160):
        peer.send(packet_from(100 + i // 160, 100_000 + i, audio[i : i + 160]), session)
    await until(lambda: session.stats.received_packets >= 2 * len(audio) // 160)
    assert session.pending_digits == ""


async def test_send_rfc4733(allocator: PortAllocator, cleanup: list[Any]) -> None:
    clock = VirtualClock()
    session, peer = await open_pair(allocator, cleanup, clock)
    clock.advance(0.04)
    audio_before = peer.drain()
    task = asyncio.create_task(session.send_dtmf("5", 100))
    await settle()
    clock.advance(0.2)
    await settle()
    assert task.done()
    packets = peer.drain()
    events = [p for p in packets if p.payload_type == TE]
    assert len(events) == 7
    assert events[0].marker and not any(p.marker for p in events[1:])
    assert len({p.timestamp for p in events}) == 1
    assert events[0].timestamp == (audio_before[-1].timestamp + 160) & 0xFFFFFFFF
    parsed = [DtmfEvent.parse(p.payload) for p in events]
    assert [e.end for e in parsed] == [False] * 4 + [True] * 3
    assert {e.event for e in parsed} == {5}
    sequences = [p.sequence for p in audio_before + packets]
    assert sequences == [(sequences[0] + i) & 0xFFFF for i in range(len(sequences))]
    after = [p for p in packets if p.payload_type == 0]
    assert after[0].timestamp == (events[0].timestamp + 7 * 160) & 0xFFFFFFFF
    with pytest.raises(ValueError):
        await session.send_dtmf("E")


async def test_send_inband(allocator: PortAllocator, cleanup: list[Any]) -> None:
    clock = VirtualClock()
    session, peer = await open_pair(allocator, cleanup, clock, te=None)
    for digit in "29":
        task = asyncio.create_task(session.send_dtmf(digit, 80))
        await settle()
        clock.advance(0.2)
        await settle()
        assert task.done()
    packets = peer.drain()
    assert {p.payload_type for p in packets} == {0}
    assert DtmfDetector().feed(ulaw_decode(b"".join(p.payload for p in packets))) == ["2", "9"]


# --- recording --------------------------------------------------------------------------------


async def test_record_until_terminator(
    allocator: PortAllocator, cleanup: list[Any], tmp_path: Path
) -> None:
    clock = VirtualClock()
    session, peer = await open_pair(allocator, cleanup, clock)
    path = tmp_path / "message.wav"
    task = asyncio.create_task(session.record(path, 30.0, "#*"))
    await settle()
    assert session.recording
    tone = ulaw_encode(sine(440, 200, 5000))
    ts = 48000
    for i in range(5):  # 100 ms of tone
        peer.send(packet_from(i, ts + 160 * i, tone[160 * i : 160 * (i + 1)]), session)
    # Packets 5-9 lost: a 100 ms hole; then a duplicate of packet 4 arrives late.
    for i in range(10, 15):
        peer.send(packet_from(i, ts + 160 * i, tone[160 * (i - 5) : 160 * (i - 4)]), session)
    peer.send(packet_from(4, ts + 160 * 4, tone[640:800]), session)
    await until(lambda: session.stats.received_packets == 11)
    peer.send(packet_from(15, 90000, DtmfEvent(11).build(), TE), session)
    result = await asyncio.wait_for(task, WAIT)
    assert result.reason == "terminator" and result.digit == "#"
    assert result.seconds == pytest.approx(0.3)
    assert session.pending_digits == ""  # the terminator is not a digit for the menu
    pcm = read_wav(path)
    assert len(pcm) == 2 * 2400
    assert rms(pcm[:1600]) > 2000 and rms(pcm[1600:3200]) == 0 and rms(pcm[3200:]) > 2000


async def test_record_until_max_time_and_close(
    allocator: PortAllocator, cleanup: list[Any], tmp_path: Path
) -> None:
    clock = VirtualClock()
    session, peer = await open_pair(allocator, cleanup, clock)
    task = asyncio.create_task(session.record(tmp_path / "a.wav", 2.0))
    await settle()
    with pytest.raises(RuntimeError):
        await session.record(tmp_path / "b.wav", 2.0)
    peer.send(packet_from(1, 0, bytes([0x80]) * 160), session)
    await until(lambda: session.stats.received_packets == 1)
    session.feed_info_dtmf("5")  # not a terminator: queued for the menu
    clock.advance(2.0)
    result = await asyncio.wait_for(task, WAIT)
    assert result.reason == "max-time" and result.seconds == pytest.approx(0.02)
    assert session.pending_digits == "5"
    task = asyncio.create_task(session.record(tmp_path / "c.wav", 60.0))
    await settle()
    session.close()
    result = await asyncio.wait_for(task, WAIT)
    assert result.reason == "closed" and (tmp_path / "c.wav").exists()
    other, _ = await open_pair(allocator, cleanup, clock)
    with pytest.raises(ValueError, match="terminator"):
        await other.record(tmp_path / "d.wav", 1.0, "x")


# --- addresses --------------------------------------------------------------------------------


async def test_symmetric_rtp_latches_to_the_first_source(
    allocator: PortAllocator, cleanup: list[Any]
) -> None:
    clock = VirtualClock()
    session, signalled = await open_pair(allocator, cleanup, clock)
    behind_nat = Peer()
    cleanup.append(behind_nat)
    # A packet with a payload type that was not negotiated does not latch.
    behind_nat.send(packet_from(1, 0, b"x" * 20, pt=99), session)
    await until(lambda: session.stats.dropped_payload_type == 1)
    assert session.latched is None
    behind_nat.send(packet_from(2, 160, b"\xff" * 160), session)
    await until(lambda: session.latched is not None)
    assert session.latched == (HOST, behind_nat.port)
    assert signalled.drain() == []  # the clock has not moved: nothing was sent yet
    clock.advance(0.1)
    assert len(behind_nat.drain()) == 6 and signalled.drain() == []
    # Others are dropped once latched, the signalled address included.
    signalled.send(packet_from(3, 320, b"\xff" * 160), session)
    signalled.send(packet_from(4, 480, DtmfEvent(1).build(), TE), session)
    await until(lambda: session.stats.dropped_source == 2)
    assert session.pending_digits == ""
    # A re-INVITE with the same address keeps the latch; a new address forgets it.
    session.set_remote(HOST, signalled.port, 0, TE)
    assert session.latched == (HOST, behind_nat.port)
    moved = Peer()
    cleanup.append(moved)
    session.set_remote(HOST, moved.port, 0, TE)
    assert session.latched is None
    clock.advance(0.02)
    assert len(moved.drain()) == 1 and behind_nat.drain() == []


async def test_without_symmetric_rtp_only_the_signalled_address_counts(
    allocator: PortAllocator, cleanup: list[Any]
) -> None:
    clock = VirtualClock()
    session, signalled = await open_pair(allocator, cleanup, clock, symmetric=False)
    stranger = Peer()
    cleanup.append(stranger)
    stranger.send(packet_from(1, 0, DtmfEvent(1).build(), TE), session)
    await until(lambda: session.stats.dropped_source == 1)
    signalled.send(packet_from(1, 0, DtmfEvent(2).build(), TE), session)
    await until(lambda: session.stats.digits_rfc4733 == 1)
    assert session.pending_digits == "2"


async def test_remote_checks_and_hold(allocator: PortAllocator, cleanup: list[Any]) -> None:
    clock = VirtualClock()
    session, peer = await open_pair(allocator, cleanup, clock)
    with pytest.raises(ValueError, match="IP address"):
        session.set_remote("phone.example.com", 4000, 0)
    with pytest.raises(ValueError, match="address families"):
        session.set_remote("2001:db8::1", 4000, 0)
    with pytest.raises(ValueError, match="port"):
        session.set_remote(HOST, 0, 0)
    with pytest.raises(ValueError, match="codec name"):
        session.set_remote(HOST, 4000, 96)
    session.set_remote(HOST, peer.port, 96, codec="pcmu")
    clock.advance(0.04)
    assert {p.payload_type for p in peer.drain()} == {96}
    session.set_remote(HOST, peer.port, 0, send=False)  # on hold
    clock.advance(1.0)
    assert peer.drain() == []
    session.set_remote(HOST, peer.port, 0)
    clock.advance(0.02)
    assert len(peer.drain()) == 1


async def test_packets_before_the_remote_is_known_are_dropped(
    allocator: PortAllocator, cleanup: list[Any]
) -> None:
    session = await MediaSession.open(allocator, HOST, VirtualClock())
    peer = Peer()
    cleanup.extend([session, peer])
    peer.send(packet_from(1, 0, b"\xff" * 160), session)
    await until(lambda: session.stats.dropped_early == 1)


# --- RTCP and closing -------------------------------------------------------------------------


async def test_rtcp_reports_and_bye(allocator: PortAllocator, cleanup: list[Any]) -> None:
    clock = VirtualClock()
    session, peer = await open_pair(allocator, cleanup, clock)
    for i in range(10):
        peer.send(packet_from(1000 + i, 160 * i, b"\xff" * 160, ssrc=0xABCDEF), session)
    await until(lambda: session.stats.received_packets == 10)
    clock.advance(8.0)
    reports = [parse_rtcp(d) for d in peer.drain_rtcp()]
    assert reports
    sr, sdes = reports[0][:2]
    assert isinstance(sr, SenderReport) and sr.ssrc == session.ssrc
    assert sr.packet_count > 0
    assert sr.reports and sr.reports[0].ssrc == 0xABCDEF
    assert sr.reports[0].highest_sequence == 1009 and sr.reports[0].cumulative_lost == 0
    assert isinstance(sdes, SourceDescription)
    # RTCP from the peer is read; garbage is counted and dropped.
    rtcp_port = session.local_port + 1
    assert peer.rtcp is not None
    peer.rtcp.sendto(build_rtcp([ReceiverReport(0xABCDEF)]), (HOST, rtcp_port))
    peer.rtcp.sendto(b"\x00\x01junk", (HOST, rtcp_port))
    await until(lambda: session.stats.rtcp_received == 1 and session.stats.rtcp_dropped == 1)
    session.close()
    final = parse_rtcp(peer.drain_rtcp()[-1])
    assert isinstance(final[-1], Bye) and final[-1].ssrcs == (session.ssrc,)


async def test_close_frees_the_ports_and_wakes_everyone(
    allocator: PortAllocator, cleanup: list[Any]
) -> None:
    clock = VirtualClock()
    session, peer = await open_pair(allocator, cleanup, clock)
    assert allocator.in_use == 1
    waiting = asyncio.create_task(session.get_digit())
    playing = asyncio.create_task(session.play_tone())
    sending = asyncio.create_task(session.send_dtmf("1"))
    await settle()
    session.close()
    session.close()
    await settle()
    assert waiting.result() is None
    assert playing.result() == PlayResult.CLOSED
    assert sending.result() is None
    assert allocator.in_use == 0
    assert await session.get_digit(1.0) is None
    await session.send_dtmf("1")  # nothing to do
    session.feed_info_dtmf("1")
    assert session.pending_digits == ""
    sent = session.stats.sent_packets
    clock.advance(1.0)
    assert session.stats.sent_packets == sent
    peer.send(packet_from(1, 0, b"\xff" * 160), session)  # the socket is gone: no error


async def test_port_range_exhaustion_and_ports_in_use(cleanup: list[Any]) -> None:
    base = random.randrange(20000, 29000, 2)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cleanup.append(blocker)
    try:
        blocker.bind((HOST, base + 1))  # the first pair's RTCP port is taken by someone else
    except OSError:
        pytest.skip("test port in use")
    allocator = PortAllocator(base, base + 5)  # three pairs, one unusable
    clock = VirtualClock()
    first = await MediaSession.open(allocator, HOST, clock)
    second = await MediaSession.open(allocator, HOST, clock)
    cleanup.extend([first, second])
    assert sorted([first.local_port, second.local_port]) == [base + 2, base + 4]
    with pytest.raises(PortsExhausted):
        await MediaSession.open(allocator, HOST, clock)
    first.close()
    await asyncio.sleep(0.01)
    third = await MediaSession.open(allocator, HOST, clock)
    cleanup.append(third)
    assert third.local_port == first.local_port
    with pytest.raises(OSError):
        await MediaSession.open(PortAllocator(base + 100, base + 120), "192.0.2.1", clock)


async def test_ipv6_session(allocator: PortAllocator, cleanup: list[Any]) -> None:
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    clock = VirtualClock()
    session = await MediaSession.open(allocator, "::1", clock)
    peer = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    peer.bind(("::1", 0))
    peer.setblocking(False)
    cleanup.extend([session, peer])
    session.set_remote("::1", peer.getsockname()[1], 0, TE)
    clock.advance(0.04)
    assert len(RtpPacket.parse(peer.recv(2048)).payload) == 160
    peer.sendto(packet_from(1, 0, DtmfEvent(3).build(), TE), ("::1", session.local_port))
    await until(lambda: session.pending_digits == "3")


# --- two sessions in real time ----------------------------------------------------------------


async def real_pair(
    allocator: PortAllocator, cleanup: list[Any], te: int | None, codec: str = "PCMU"
) -> tuple[MediaSession, MediaSession]:
    clock = LoopClock()
    a = await MediaSession.open(allocator, HOST, clock, codec=codec)
    b = await MediaSession.open(allocator, HOST, clock, codec=codec)
    cleanup.extend([a, b])
    pt = 0 if codec == "PCMU" else 8
    a.set_remote(HOST, b.local_port, pt, te)
    b.set_remote(HOST, a.local_port, pt, te)
    return a, b


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
async def test_loopback_prompt_is_heard(
    allocator: PortAllocator, cleanup: list[Any], tmp_path: Path, codec: str
) -> None:
    a, b = await real_pair(allocator, cleanup, TE, codec)
    path = tmp_path / "heard.wav"
    recording = asyncio.create_task(b.record(path, 10.0))
    result = await asyncio.wait_for(a.play(voice_path("digit-5", None)), WAIT)
    assert result == PlayResult.COMPLETED
    await asyncio.sleep(0.1)
    b.stop_recording()
    recorded = await asyncio.wait_for(recording, WAIT)
    assert recorded.reason == "stopped"
    heard = read_wav(path)
    original = read_wav(voice_path("digit-5", None))
    assert len(heard) >= len(original)
    assert rms(heard) > 500
    assert a.stats.sent_packets > 30 and b.stats.received_packets > 30
    assert a.latched == (HOST, b.local_port) and b.latched == (HOST, a.local_port)


async def test_loopback_rfc4733_digits_arrive_once(
    allocator: PortAllocator, cleanup: list[Any]
) -> None:
    a, b = await real_pair(allocator, cleanup, TE)
    for digit in "1#9*":
        await asyncio.wait_for(a.send_dtmf(digit), WAIT)
    got = [await b.get_digit(WAIT) for _ in range(4)]
    assert got == ["1", "#", "9", "*"]
    await asyncio.sleep(0.1)
    assert b.stats.digits_rfc4733 == 4 and b.pending_digits == ""
    assert b._receiver.duplicates >= 4 * 6


async def test_loopback_inband_digits_are_detected(
    allocator: PortAllocator, cleanup: list[Any]
) -> None:
    a, b = await real_pair(allocator, cleanup, None)
    for digit in "707":
        await asyncio.wait_for(a.send_dtmf(digit, 80), WAIT)
    got = [await b.get_digit(WAIT) for _ in range(3)]
    assert got == ["7", "0", "7"]
    assert b.stats.digits_inband == 3


async def test_apply_an_offer_answer_outcome(allocator: PortAllocator, cleanup: list[Any]) -> None:
    from sipswitch.sdp import answer, parse

    clock = VirtualClock()
    session = await MediaSession.open(allocator, HOST, clock)
    peer = Peer()
    cleanup.extend([session, peer])
    offer = (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {peer.port} RTP/AVP 8 0 96\r\na=rtpmap:96 telephone-event/8000\r\n"
    )
    _, choice = answer(parse(offer.encode()), HOST, session.local_port)
    session.apply(choice)
    assert (session.payload_type, session.codec.name, session.telephone_event_pt) == (
        8, "PCMA", 96
    )
    clock.advance(0.02)
    assert {p.payload_type for p in peer.drain()} == {8}
    held = offer.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0")
    _, choice = answer(parse(held.encode()), HOST, session.local_port)
    session.apply(choice)
    clock.advance(1.0)
    assert peer.drain() == [] and not session.sending
    _, choice = answer(parse((offer + "a=sendonly\r\n").encode()), HOST, session.local_port)
    session.apply(choice)
    clock.advance(1.0)
    assert peer.drain() == []
    _, choice = answer(parse(offer.encode()), HOST, session.local_port)
    session.apply(choice)
    clock.advance(0.02)
    assert len(peer.drain()) == 1
