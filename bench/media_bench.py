"""Benchmark of the RTP media layer (not a test): N concurrent MediaSessions in one process, each
playing a prompt in a loop to a receiver on 127.0.0.1, with the receiver in another process
measuring how far each packet's arrival strays from its stream's 20 ms schedule.

For each N the report gives the p50/p99/max of that deviation (the jitter buffer a phone would
need), the interarrival jitter of RFC 3550, packets lost, and the sender's CPU use; the answer
is the highest N whose p99 stays under 5 ms.

    python bench/media_bench.py              # steps of 10 s
    python bench/media_bench.py --quick      # steps of 4 s, rough numbers
    python bench/media_bench.py --sessions 100 300 600

``run_media_bench(...)`` returns the same report as a dict, for ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from sipswitch.media.ports import PortAllocator  # noqa: E402
from sipswitch.media.prompts import voice_path  # noqa: E402
from sipswitch.media.session import MediaSession  # noqa: E402
from sipswitch.sip.clock import LoopClock  # noqa: E402

HOST = "127.0.0.1"
JITTER_LIMIT_MS = 5.0
DEFAULT_STEPS = [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1200, 1500]
SETTLE_S = 1.0  # measuring starts this long after the last session started
RECEIVE_BUFFER = 16 * 1024 * 1024
_HEADER = struct.Struct("!BBHII")


# --- the receiver (a separate process) --------------------------------------------------------


def receive(port_file: str, seconds: float, settle: float) -> None:
    """Bind, say the port, then record (arrival, ssrc, seq, timestamp) of every packet for
    ``settle + seconds``; print the statistics of the last ``seconds`` as JSON."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    sock.bind((HOST, 0))
    Path(port_file).write_text(str(sock.getsockname()[1]))
    sock.settimeout(0.2)
    clock = time.monotonic
    start = clock()
    measure_from = start + settle
    end = measure_from + seconds
    streams: dict[int, list[tuple[float, int, int]]] = {}
    while True:
        now = clock()
        if now >= end:
            break
        try:
            data = sock.recv(2048)
        except TimeoutError:
            continue
        arrival = clock()
        if arrival < measure_from or len(data) < 12:
            continue
        _, _, seq, ts, ssrc = _HEADER.unpack_from(data)
        streams.setdefault(ssrc, []).append((arrival, seq, ts))
    print(json.dumps(summarise(streams, seconds)))


def summarise(streams: dict[int, list[tuple[float, int, int]]], seconds: float) -> dict[str, Any]:
    deviations: list[float] = []
    interarrival: list[float] = []
    received = lost = 0
    for packets in streams.values():
        if len(packets) < 3:
            continue
        base_ts = packets[0][2]
        transits = []
        for arrival, _, ts in packets:
            elapsed = ((ts - base_ts) & 0xFFFFFFFF) / 8000
            transits.append(arrival - elapsed)
        reference = statistics.median(transits)
        deviations.extend(abs(t - reference) * 1000 for t in transits)
        interarrival.extend(
            abs(b - a) * 1000 for a, b in zip(transits[:-1], transits[1:], strict=True)
        )
        received += len(packets)
        span = (packets[-1][1] - packets[0][1]) & 0xFFFF
        lost += max(0, span + 1 - len(packets))
    deviations.sort()
    interarrival.sort()

    def pct(values: list[float], q: float) -> float | None:
        return round(values[min(len(values) - 1, int(q * len(values)))], 3) if values else None

    return {
        "streams": len(streams),
        "packets": received,
        "packets_per_s": round(received / seconds, 1),
        "lost": lost,
        "deviation_ms_p50": pct(deviations, 0.50),
        "deviation_ms_p99": pct(deviations, 0.99),
        "deviation_ms_max": round(deviations[-1], 3) if deviations else None,
        "interarrival_ms_p99": pct(interarrival, 0.99),
    }


# --- the senders ------------------------------------------------------------------------------


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def _step(sessions: int, seconds: float, port_base: int) -> dict[str, Any]:
    """One measurement: ``sessions`` senders, a fresh receiver process."""
    port_file = Path(f"/tmp/media-bench-{os.getpid()}-{sessions}.port")
    port_file.unlink(missing_ok=True)
    spread = 2.0  # sessions start over 2 s, as calls would, not all on one tick
    receiver = subprocess.Popen(
        [sys.executable, __file__, "--receiver", str(port_file), str(seconds),
         str(spread + SETTLE_S)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(500):
            if port_file.exists() and port_file.read_text():
                break
            await asyncio.sleep(0.01)
        else:
            raise RuntimeError("the receiver did not start")
        port = int(port_file.read_text())
        allocator = PortAllocator(port_base, port_base + 2 * sessions + 200)
        clock = LoopClock()
        prompt = voice_path("welcome", None)
        opened: list[MediaSession] = []
        players: list[asyncio.Task[None]] = []
        stop = asyncio.Event()

        async def keep_playing(session: MediaSession) -> None:
            while not stop.is_set() and not session.closed:
                await session.play(prompt, interruptible=False)

        loop = asyncio.get_running_loop()
        cpu_before = time.process_time()
        for _ in range(sessions):
            session = await MediaSession.open(allocator, HOST, clock)
            opened.append(session)
            await asyncio.sleep(random.uniform(0.0, 2 * spread / sessions))
            session.set_remote(HOST, port, 0, 101)
            players.append(loop.create_task(keep_playing(session)))
        wall_start = time.monotonic()
        cpu_start = time.process_time()
        await asyncio.sleep(SETTLE_S + seconds + 0.5)
        cpu = time.process_time() - cpu_start
        wall = time.monotonic() - wall_start
        stop.set()
        late = sum(s.stats.late_frames for s in opened)
        skipped = sum(s.stats.skipped_frames for s in opened)
        for session in opened:
            session.close()
        await asyncio.gather(*players, return_exceptions=True)
        out, _ = await loop.run_in_executor(None, receiver.communicate)
        result: dict[str, Any] = json.loads(out)
        result.update(
            sessions=sessions,
            sender_cpu_percent=round(100 * cpu / wall, 1),
            setup_cpu_s=round(cpu_start - cpu_before, 2),
            late_frames=late,
            skipped_frames=skipped,
            expected_packets_per_s=50 * sessions,
        )
        return result
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
        port_file.unlink(missing_ok=True)


def run_media_bench(
    steps: list[int] | None = None, seconds: float = 10.0, port_base: int = 30000,
    limit_ms: float = JITTER_LIMIT_MS,
) -> dict[str, Any]:
    """Measure each number of sessions in ``steps`` (stopping after the first that misses the
    limit) and report the highest one whose p99 deviation stays under ``limit_ms``."""
    steps = steps or DEFAULT_STEPS
    _raise_fd_limit(4 * max(steps) + 256)
    try:
        import uvloop

        runner: Any = uvloop.run
        loop_name = "uvloop"
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
        loop_name = "asyncio"
    results = []
    best = 0
    for sessions in steps:
        result = runner(_step(sessions, seconds, port_base))
        ok = (
            result["deviation_ms_p99"] is not None
            and result["deviation_ms_p99"] < limit_ms
            and result["streams"] == sessions
        )
        result["ok"] = ok
        results.append(result)
        print(_row(result), file=sys.stderr, flush=True)
        if not ok:
            break
        best = sessions
    return {
        "name": "media sessions playing a prompt (RTP jitter p99 < 5 ms)",
        "loop": loop_name,
        "limit_ms": limit_ms,
        "step_seconds": seconds,
        "max_sessions": best,
        "steps": results,
    }


def _row(r: dict[str, Any]) -> str:
    return (
        f"{r['sessions']:>6} sessions  {r['packets_per_s']:>8} pkt/s  "
        f"p50 {r['deviation_ms_p50']} ms  p99 {r['deviation_ms_p99']} ms  "
        f"max {r['deviation_ms_max']} ms  lost {r['lost']}  cpu {r['sender_cpu_percent']} %  "
        f"{'ok' if r['ok'] else 'over'}"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--receiver"]:
        receive(argv[1], float(argv[2]), float(argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 s steps")
    parser.add_argument("--seconds", type=float, default=None, help="length of each step")
    parser.add_argument("--sessions", type=int, nargs="+", help="numbers of sessions to try")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    seconds = args.seconds or (4.0 if args.quick else 10.0)
    report = run_media_bench(args.sessions, seconds)
    print(f"highest number of sessions with p99 < {report['limit_ms']} ms: "
          f"{report['max_sessions']} ({report['loop']})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
