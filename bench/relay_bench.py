"""Benchmark of the media relay engines: concurrent relayed G.711 calls (one 172-byte RTP
packet every 20 ms each way, as a phone sends), on 127.0.0.1, for the in-process relay (in a
process of its own, on uvloop, as the server runs it) and for rtpengine (userspace forwarding).

For each engine the number of calls is stepped up until the packet loss reaches 0.1 % or the
time budget is spent. Each step reports the loss, the one-way latency through the relay
(p50/p99), the same generator's latency sending directly (the baseline) and the difference
(the latency the relay adds, p99), and the relay's CPU use. The load comes from generator
processes with one socket per phone; when they fall behind their 20 ms schedule the step says
so, as its numbers then measure the generator more than the relay.

    python bench/relay_bench.py [--quick] [--duration S] [--budget S]
                                [--engines inprocess,rtpengine]

Prints a table and writes ``bench-results/relay.json``."""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import resource
import select
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

TARGETS = {"inprocess": 300, "rtpengine": 2000}
MAX_LOSS = 0.001
PTIME = 0.020
SLOTS = 20  # sends spread over the 20 ms: 1 ms slices, as unsynchronised phones would
PAYLOAD = 160
HOST = "127.0.0.1"
# Below the kernel's ephemeral ports (32768 up), where the generator's sockets live. rtpengine
# takes four ports per call and hands them out sparsely: it gets the larger range.
INPROCESS_PORTS = (10000, 15998)
RTPENGINE_PORTS = (16000, 31998)
LATENCY_SAMPLES = 200_000  # per generator process
DRAIN = 0.5  # seconds of listening after the last send

_PACKET_HEAD = struct.Struct("!BBHIIQ")  # RTP header, then the send time (ns) in the payload
_SENT_AT = struct.Struct("!Q")


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- the load generator (a process per CPU) ---------------------------------------------------


def generator(conn: Connection, pairs: int) -> None:
    """``pairs`` calls: two sockets each (phone A, phone B). Reports its addresses, waits for
    destinations and a start time, runs, and reports what it sent, got and measured."""
    _raise_fd_limit()
    socks: list[socket.socket] = []
    for _ in range(2 * pairs):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((HOST, 0))
        sock.setblocking(False)
        socks.append(sock)
    conn.send([s.getsockname() for s in socks])
    destinations, start, duration = conn.recv()
    by_fd = {s.fileno(): s for s in socks}
    poller = select.epoll(len(socks) + 1)
    for sock in socks:
        poller.register(sock.fileno(), select.EPOLLIN)
    senders = [
        (s.sendto, dest, index)
        for index, (s, dest) in enumerate(zip(socks, destinations, strict=True))
    ]
    slices = [senders[k::SLOTS] for k in range(SLOTS)]
    packet = bytearray(12 + PAYLOAD)
    buffer = bytearray(2048)
    sent = received = foreign = errors = 0
    latencies: list[int] = []
    stride = max(1, (2 * pairs * int(duration / PTIME)) // LATENCY_SAMPLES)
    tick = 0
    max_lag = 0.0
    now_ns = time.monotonic_ns
    pack_into = _PACKET_HEAD.pack_into
    sent_at = _SENT_AT.unpack_from
    stop_at = start + duration
    end = stop_at + DRAIN
    slot = 0
    while True:
        due = start + tick * PTIME + slot * (PTIME / SLOTS)
        now = time.monotonic()
        if now >= end:
            break
        if due < stop_at and now >= due:
            max_lag = max(max_lag, now - due)
            seq = tick & 0xFFFF
            timestamp = tick * PAYLOAD
            for sendto, dest, index in slices[slot]:
                pack_into(packet, 0, 0x80, 0, seq, timestamp, index, now_ns())
                try:
                    sendto(packet, dest)
                    sent += 1
                except OSError:
                    errors += 1
            slot += 1
            if slot == SLOTS:
                slot = 0
                tick += 1
            continue
        wait = (due if due < stop_at else end) - now
        # One datagram per ready socket and wake-up: the poll is level-triggered, so a socket
        # with more comes back at once, and no call ends in an exception.
        for fd, _ in poller.poll(max(0.0, wait)):
            try:
                size = by_fd[fd].recv_into(buffer)
            except BlockingIOError:
                continue
            if size < _PACKET_HEAD.size:
                foreign += 1
                continue
            received += 1
            if received % stride == 0 and len(latencies) < LATENCY_SAMPLES:
                latencies.append(now_ns() - sent_at(buffer, 12)[0])
    conn.send(
        {
            "sent": sent,
            "received": received,
            "foreign": foreign,
            "send_errors": errors,
            "max_lag_ms": max_lag * 1000,
            "latencies_ns": latencies,
        }
    )
    for sock in socks:
        sock.close()


# --- the in-process relay in a process of its own ---------------------------------------------


def inprocess_relay(conn: Connection, low: int, high: int) -> None:
    """Serves ("setup", [(a_addr, b_addr), ...]) -> [(port for a, port for b), ...],
    ("clear",) and ("stop",) over ``conn``."""
    _raise_fd_limit()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    from sipswitch.media.ports import PortAllocator
    from sipswitch.media.relay import InProcessRelay
    from sipswitch.sdp import parse

    async def serve() -> None:
        relay = InProcessRelay(PortAllocator(low, high), bind_ipv4=HOST, timeout=3600)
        loop = asyncio.get_running_loop()
        calls: list[str] = []
        while True:
            # A blocking read in a thread: a large command arrives in several chunks.
            command = await loop.run_in_executor(None, conn.recv)
            if command[0] == "setup":
                ports = []
                try:
                    for a_addr, b_addr in command[1]:
                        call_id = f"bench-{len(calls)}"
                        calls.append(call_id)
                        to_b = await relay.offer(
                            call_id, "a", parse(_sdp(*a_addr)), peer_host=HOST, advertise=HOST
                        )
                        to_a = await relay.answer(
                            call_id, "b", parse(_sdp(*b_addr)), peer_host=HOST, advertise=HOST
                        )
                        ports.append((to_a.media[0].port, to_b.media[0].port))
                except Exception as exc:
                    conn.send({"error": str(exc)})
                else:
                    conn.send({"ports": ports})
            elif command[0] == "clear":
                for call_id in calls:
                    await relay.delete(call_id)
                calls.clear()
                conn.send("ok")
            else:
                await relay.close()
                conn.send("ok")
                return

    asyncio.run(serve())


def _sdp(host: str, port: int) -> str:
    return (
        f"v=0\r\no=bench 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n"
    )


# --- measuring --------------------------------------------------------------------------------


@dataclass
class Step:
    engine: str
    calls: int
    sent: int = 0
    received: int = 0
    loss: float = 1.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    baseline_p99_ms: float = 0.0
    added_p99_ms: float = 0.0
    relay_cpu_percent: float = 0.0
    generator_lag_ms: float = 0.0
    generator_saturated: bool = False
    passed: bool = False
    notes: list[str] = field(default_factory=list)


def _cpu_seconds(pid: int) -> float:
    total = 0.0
    task_dir = Path(f"/proc/{pid}/task")
    try:
        for task in task_dir.iterdir():
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0
    return total


def _percentile(values: list[int], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1e6


class Generators:
    """Generator processes holding ``calls`` calls between them."""

    def __init__(self, calls: int, workers: int) -> None:
        ctx = mp.get_context("spawn")
        self.parts = [calls // workers + (1 if i < calls % workers else 0) for i in range(workers)]
        self.parts = [p for p in self.parts if p > 0]
        self.links: list[tuple[Any, Connection]] = []
        for pairs in self.parts:
            parent, child = ctx.Pipe()
            process = ctx.Process(target=generator, args=(child, pairs), daemon=True)
            process.start()
            self.links.append((process, parent))
        self.addresses = [parent.recv() for _, parent in self.links]

    def pairs(self) -> list[tuple[tuple[str, int], tuple[str, int]]]:
        """(phone A, phone B) addresses of every call, in order."""
        out: list[tuple[tuple[str, int], tuple[str, int]]] = []
        for addresses in self.addresses:
            out.extend((addresses[2 * i], addresses[2 * i + 1]) for i in range(len(addresses) // 2))
        return out

    def abort(self) -> None:
        for process, parent in self.links:
            process.kill()
            process.join(5)
            parent.close()

    def run(self, destinations: list[tuple[Any, Any]], duration: float) -> list[dict[str, Any]]:
        start = time.monotonic() + 0.5
        offset = 0
        for (_, parent), addresses in zip(self.links, self.addresses, strict=True):
            count = len(addresses) // 2
            flat: list[Any] = []
            for dest_a, dest_b in destinations[offset : offset + count]:
                flat.extend((dest_a, dest_b))
            offset += count
            parent.send((flat, start, duration))
        reports = []
        for process, parent in self.links:
            if not parent.poll(duration + DRAIN + 30):
                raise RuntimeError("a generator process did not report")
            reports.append(parent.recv())
            process.join(5)
        return reports


def measure(
    engine: str,
    calls: int,
    duration: float,
    workers: int,
    setup: Any,
    relay_pid: int,
) -> Step:
    """One step: ``setup(pairs)`` returns each call's (A's destination, B's destination)."""
    step = Step(engine, calls)
    # Baseline: the same generator, phones sending straight to each other.
    direct = Generators(calls, workers)
    pairs = direct.pairs()
    reports = direct.run([(b, a) for a, b in pairs], duration)
    step.baseline_p99_ms = _percentile(
        [v for r in reports for v in r["latencies_ns"]], 0.99
    )
    load = Generators(calls, workers)
    pairs = load.pairs()
    try:
        destinations = setup(pairs)
    except Exception as exc:  # the engine refused: this step fails, the run goes on
        load.abort()
        step.notes.append(f"setup failed: {exc}")
        return step
    cpu_before, wall_before = _cpu_seconds(relay_pid), time.monotonic()
    reports = load.run(destinations, duration)
    cpu = _cpu_seconds(relay_pid) - cpu_before
    wall = time.monotonic() - wall_before
    step.sent = sum(r["sent"] for r in reports)
    step.received = sum(r["received"] for r in reports)
    step.loss = 1 - step.received / step.sent if step.sent else 1.0
    latencies = [v for r in reports for v in r["latencies_ns"]]
    step.p50_ms = _percentile(latencies, 0.50)
    step.p99_ms = _percentile(latencies, 0.99)
    step.added_p99_ms = max(0.0, step.p99_ms - step.baseline_p99_ms)
    step.relay_cpu_percent = 100 * cpu / wall if wall > 0 else 0.0
    step.generator_lag_ms = max(r["max_lag_ms"] for r in reports)
    step.generator_saturated = step.generator_lag_ms > 2 * PTIME * 1000
    if any(r["send_errors"] for r in reports):
        step.notes.append(f"{sum(r['send_errors'] for r in reports)} send errors")
    if step.generator_saturated:
        step.notes.append("generator behind schedule")
    step.passed = step.loss < MAX_LOSS and step.sent > 0
    return step


# --- the engines ------------------------------------------------------------------------------


def bench_inprocess(
    levels: list[int], duration: float, workers: int, deadline: float
) -> list[Step]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=inprocess_relay, args=(child, *INPROCESS_PORTS), daemon=True)
    process.start()
    steps: list[Step] = []
    try:

        def setup(pairs: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
            parent.send(("setup", pairs))
            if not parent.poll(120):
                raise RuntimeError("the relay process did not set the calls up")
            reply = parent.recv()
            if "error" in reply:
                raise RuntimeError(reply["error"])
            return [((HOST, pa), (HOST, pb)) for pa, pb in reply["ports"]]

        for calls in levels:
            if time.monotonic() + 2 * duration + 10 > deadline:
                break
            assert process.pid is not None
            step = measure("inprocess", calls, duration, workers, setup, process.pid)
            parent.send(("clear",))
            parent.poll(60) and parent.recv()
            steps.append(step)
            _print_step(step)
            if not step.passed:
                break
    finally:
        parent.send(("stop",))
        parent.poll(30) and parent.recv()
        process.join(10)
        if process.is_alive():
            process.kill()
    return steps


def bench_rtpengine(
    levels: list[int], duration: float, workers: int, deadline: float
) -> list[Step]:
    from sipswitch.media.rtpengine import NgClient, RtpEngineDaemon, RtpEngineRelay
    from sipswitch.sdp import parse

    if RtpEngineDaemon.available() is None:
        print("rtpengine is not installed (Debian package rtpengine-daemon): skipped")
        return []
    loop = asyncio.new_event_loop()
    daemon = RtpEngineDaemon(
        interfaces=(HOST,),
        port_min=RTPENGINE_PORTS[0],
        port_max=RTPENGINE_PORTS[1],
        extra_args=("--timeout=3600",),
        startup_timeout=30,
    )
    loop.run_until_complete(daemon.start())
    client = loop.run_until_complete(NgClient.open(*daemon.ng_address, timeout=10))
    relay = RtpEngineRelay(client, poll_interval=3600)
    steps: list[Step] = []
    calls_made: list[str] = []

    async def setup_async(calls: int, pairs: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
        gate = asyncio.Semaphore(64)

        async def one(index: int, a: Any, b: Any) -> tuple[Any, Any]:
            async with gate:
                call_id = f"bench-{calls}-{index}"
                to_b = await relay.offer(call_id, "a", parse(_sdp(*a)), peer_host=HOST,
                                         advertise=HOST)
                to_a = await relay.answer(call_id, "b", parse(_sdp(*b)), peer_host=HOST,
                                          advertise=HOST)
                calls_made.append(call_id)
                assert to_a.connection is not None and to_b.connection is not None
                return (
                    (to_a.connection.address, to_a.media[0].port),
                    (to_b.connection.address, to_b.media[0].port),
                )

        return list(await asyncio.gather(*(one(i, a, b) for i, (a, b) in enumerate(pairs))))

    async def clear() -> None:
        gate = asyncio.Semaphore(64)

        async def one(call_id: str) -> None:
            async with gate:
                await relay.delete(call_id)

        await asyncio.gather(*(one(c) for c in calls_made))
        calls_made.clear()

    try:
        assert daemon.process is not None
        for calls in levels:
            if time.monotonic() + 2 * duration + 20 > deadline:
                break
            step = measure(
                "rtpengine",
                calls,
                duration,
                workers,
                lambda pairs: loop.run_until_complete(setup_async(len(pairs), pairs)),
                daemon.process.pid,
            )
            loop.run_until_complete(clear())
            if not step.passed and step.loss > 0.5:
                step.notes.append("rtpengine: " + " | ".join(daemon.log_tail(3).splitlines()))
            steps.append(step)
            _print_step(step)
            if not step.passed:
                break
    finally:
        loop.run_until_complete(relay.close())
        client.close()
        loop.run_until_complete(daemon.stop())
        loop.close()
    return steps


# --- output -----------------------------------------------------------------------------------

_COLUMNS = (
    ("engine", 10, "{:<10}"),
    ("calls", 6, "{:>6}"),
    ("pkt/s", 8, "{:>8.0f}"),
    ("loss %", 8, "{:>8.3f}"),
    ("p50 ms", 7, "{:>7.2f}"),
    ("p99 ms", 7, "{:>7.2f}"),
    ("base p99", 8, "{:>8.2f}"),
    ("added p99", 9, "{:>9.2f}"),
    ("relay CPU%", 10, "{:>10.0f}"),
    ("ok", 3, "{:>3}"),
)


def _header() -> None:
    print("  ".join(f"{name:>{width}}" if i else f"{name:<{width}}"
                    for i, (name, width, _) in enumerate(_COLUMNS)))


def _print_step(step: Step) -> None:
    rate = step.sent / max(1e-9, _DURATION[0])
    values = (step.engine, step.calls, rate, 100 * step.loss, step.p50_ms, step.p99_ms,
              step.baseline_p99_ms, step.added_p99_ms, step.relay_cpu_percent,
              "yes" if step.passed else "no")
    line = "  ".join(fmt.format(v) for (_, _, fmt), v in zip(_COLUMNS, values, strict=True))
    print(line + ("  (" + "; ".join(step.notes) + ")" if step.notes else ""), flush=True)


_DURATION = [10.0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short steps (rough numbers)")
    parser.add_argument("--duration", type=float, help="seconds per step (default 10; quick 3)")
    parser.add_argument("--budget", type=float, help="seconds for the whole run (default 400)")
    parser.add_argument("--engines", default="inprocess,rtpengine")
    parser.add_argument("--workers", type=int, default=max(1, min(4, (os.cpu_count() or 2))))
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "relay.json")
    args = parser.parse_args()
    _raise_fd_limit()
    duration = args.duration or (3.0 if args.quick else 10.0)
    _DURATION[0] = duration
    budget = args.budget or (120.0 if args.quick else 400.0)
    deadline = time.monotonic() + budget
    levels = {
        # --quick: a few steps each, the last at the engine's target.
        "inprocess": [100, 300, 500, 700, 1000] if not args.quick else [100, 300],
        "rtpengine": [300, 1000, 1500, 2000, 3000] if not args.quick else [300, 1000, 2000],
    }
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    print(f"relay benchmark: G.711 20 ms both ways, {duration:g} s per step, "
          f"{args.workers} generator processes, loss limit {100 * MAX_LOSS:g} %")
    _header()
    results: dict[str, list[Step]] = {}
    for engine in engines:
        if engine == "inprocess":
            results[engine] = bench_inprocess(levels[engine], duration, args.workers, deadline)
        elif engine == "rtpengine":
            results[engine] = bench_rtpengine(levels[engine], duration, args.workers, deadline)
        else:
            print(f"unknown engine {engine!r}", file=sys.stderr)
            return 2
    summary = {}
    print()
    for engine, steps in results.items():
        best = max((s.calls for s in steps if s.passed), default=0)
        target = TARGETS[engine]
        limited = any(s.generator_saturated for s in steps)
        summary[engine] = {
            "max_calls_under_loss_limit": best,
            "target": target,
            "meets_target": best >= target,
            "generator_limited": limited,
        }
        print(f"{engine}: {best} calls with < {100 * MAX_LOSS:g} % loss (target {target})"
              + ("; the generator fell behind, so the relay may do more" if limited else ""))
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "duration_s": duration,
        "loss_limit": MAX_LOSS,
        "summary": summary,
        "steps": {engine: [asdict(s) for s in steps] for engine, steps in results.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
