"""Benchmark of sipswitch with SIPp on this machine (all traffic on 127.0.0.1), with Kamailio
as the reference: authenticated REGISTER/s, calls/s through the B2BUA with response times (in
one process, and with ``[sip] workers`` = the CPUs: ``--workers``), CPU and memory of the
server, memory with 100,000 registrations, and the IVR: how many calls at the auto attendant
(800) one server keeps hearing its prompts with an RTP jitter p99 under 5 ms at the receiver
(and, as a reference, bench/media_bench.py's media sessions alone), and the media relay:
concurrent relayed G.711 calls under 0.1 % packet loss with the latency the relay adds, for
the in-process relay and for rtpengine (bench/relay_bench.py).

Prints a table and writes ``bench-results/bench.json``. Every SIPp run is bounded by a call
count and a time-out. ``--quick`` makes every step short (numbers are then rough)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.blackbox.harness import SipswitchServer, options_ping, server_missing  # noqa: E402
from tests.blackbox.ports import free_port  # noqa: E402
from tests.blackbox.rtp_probe import RtpProbe, jitter_summary  # noqa: E402
from tests.blackbox.sipp import Sipp, SippResult, run_sipp  # noqa: E402

BENCH = Path(__file__).resolve().parent
KAMAILIO_CFG_CANDIDATES = [
    REPO.parent / "shared" / "bench" / "kamailio-proxy.cfg",
    BENCH / "kamailio-proxy.cfg",
]
KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"

TARGET_CALLS_PER_S = 1000
TARGET_REGISTER_PER_S = 2000
TARGET_RSS_100K_MB = 500
TARGET_IVR_CALLS = 500
TARGET_RELAY_CALLS = {"inprocess": 300, "rtpengine": 2000}
RELAY_ENGINES = {"inprocess": "in-process", "rtpengine": "rtpengine"}
IVR_JITTER_LIMIT_MS = 5.0
IVR_NUMBER = "800"  # the shipped auto attendant
IVR_MAX_HOLD_S = 32.0  # the auto attendant hangs up by itself after about 35 s of silence
MAX_FAILED_RATIO = 0.001
SIPP_BUFFER = 4 * 1024 * 1024

CALLER, CALLEE = "200", "201"
REG_USERS = 1000  # users for the REGISTER/s phase (one contact each)
MANY_USERS = 1000  # users holding the 100,000 contacts (max_contacts = 100 each)


@dataclass
class Plan:
    step_s: float
    register_rates: list[int]
    call_rates: list[int]
    kamailio_rates: list[int]
    worker_call_rates: list[int]  # calls/s steps of the server with worker processes
    registrations: int
    ivr_calls: list[int] = field(default_factory=list)  # concurrent IVR calls, step by step
    ivr_rate: int = 100  # calls set up per second (at least) while ramping to a step's count
    ivr_ramp_s: float = 10.0  # at most this long: more calls are set up faster
    ivr_measure_s: float = 10.0
    media_sessions: list[int] = field(default_factory=list)  # media_bench.py steps
    media_step_s: float = 8.0
    relay_step_s: float = 10.0  # bench/relay_bench.py: seconds per step
    relay_budget_s: float = 400.0  # and for its whole run (both engines)


FULL = Plan(
    step_s=15,
    register_rates=[250, 500, 1000, 2000, 3000, 4000],
    call_rates=[50, 100, 200, 400, 700, 1000, 1500, 2000],
    kamailio_rates=[500, 1000, 2000, 3000, 4000, 5000, 6000],
    worker_call_rates=[400, 700, 1000, 1200, 1500, 2000],
    registrations=100_000,
    ivr_calls=[200, 400, 600, 800, 1000, 1200, 1500, 2000],
    ivr_rate=100,
    ivr_measure_s=10.0,
    media_sessions=[500, 1000, 1500, 2000, 3000],
    media_step_s=8.0,
)
QUICK = Plan(
    step_s=5,
    register_rates=[200, 500, 1000, 2000],
    call_rates=[50, 100, 250, 500, 1000],
    kamailio_rates=[500, 1000, 2000],
    worker_call_rates=[500, 1000, 1500],
    registrations=10_000,
    ivr_calls=[100, 250, 500, 750],
    ivr_rate=100,
    ivr_measure_s=4.0,
    media_sessions=[250, 500, 1000],
    media_step_s=4.0,
    relay_step_s=3.0,
    relay_budget_s=120.0,
)


@dataclass
class Step:
    target_rate: int
    duration_s: float
    attempted: int
    successful: int
    failed: int
    achieved_rate: float
    p50_ms: float | None
    p99_ms: float | None
    passed: bool
    failure_kinds: dict[str, str] = field(default_factory=dict)

    @property
    def failed_ratio(self) -> float:
        return 1.0 - self.successful / self.attempted if self.attempted else 1.0


@dataclass
class RateResult:
    steps: list[Step] = field(default_factory=list)

    @property
    def best(self) -> Step | None:
        passed = [s for s in self.steps if s.passed]
        return max(passed, key=lambda s: s.target_rate) if passed else None

    @property
    def usable_rate(self) -> int:
        """The highest rate at which at least 99 % succeeded (for loading, not for scoring)."""
        rates = [s.target_rate for s in self.steps if s.successful >= 0.99 * s.attempted]
        return max(rates, default=0)

    def as_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "best_rate": best.target_rate if best else 0,
            "best_p50_ms": best.p50_ms if best else None,
            "best_p99_ms": best.p99_ms if best else None,
            "steps": [asdict(s) | {"failed_ratio": s.failed_ratio} for s in self.steps],
        }


# ---------------------------------------------------------------- process measurements


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _clock_ticks()


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and all its descendants (Kamailio's workers are children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += cpu_seconds(current)
        except OSError:
            continue
        todo.extend(children.get(current, []))
    return total


def memory_mb(pid: int) -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory in MiB."""
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return {"rss_mb": values.get("VmRSS", 0.0), "peak_rss_mb": values.get("VmHWM", 0.0)}


# ---------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(message, flush=True)


def step_from(result: SippResult, rate: int, duration_s: float) -> Step:
    attempted = int(rate * duration_s)
    successful = min(result.successful, attempted)
    failed = attempted - successful
    kinds = {
        k: v
        for k, v in result.stats.items()
        if k.startswith("Failed") and k.endswith("(C)") and v not in ("", "0")
    }
    return Step(
        target_rate=rate,
        duration_s=duration_s,
        attempted=attempted,
        successful=successful,
        failed=failed,
        achieved_rate=round(successful / duration_s, 1),
        p50_ms=result.percentile_ms(50),
        p99_ms=result.percentile_ms(99),
        passed=attempted > 0 and failed / attempted < MAX_FAILED_RATIO,
        failure_kinds=kinds,
    )


def sweep(
    name: str,
    rates: list[int],
    duration_s: float,
    run_step: Any,
) -> RateResult:
    """Runs increasing rates until one step fails (more than 0.1 % failed)."""
    result = RateResult()
    for rate in rates:
        step = step_from(run_step(rate), rate, duration_s)
        result.steps.append(step)
        p50 = f"{step.p50_ms:.0f}" if step.p50_ms is not None else "-"
        p99 = f"{step.p99_ms:.0f}" if step.p99_ms is not None else "-"
        log(
            f"  {name} {rate:>5}/s: {step.successful}/{step.attempted} ok, "
            f"{step.failed_ratio * 100:.2f}% failed, p50 {p50} ms, p99 {p99} ms"
            + ("" if step.passed else f"  -> limit reached {step.failure_kinds}")
        )
        if not step.passed:
            break
        time.sleep(1)  # let retransmission timers and queues drain between steps
    return result


def sipp_step(
    scenario: str | Path,
    remote: str,
    workdir: Path,
    rate: int,
    duration_s: float,
    **options: Any,
) -> SippResult:
    calls = int(rate * duration_s)
    return run_sipp(
        scenario,
        remote,
        workdir,
        calls=calls,
        rate=rate,
        max_concurrent=max(1000, rate * 10),
        timeout_s=duration_s + 30,
        timeout_is_error=False,
        trace_messages=False,
        trace_rtt=True,
        buff_size=SIPP_BUFFER,
        name=f"{Path(scenario).stem}-{rate}",
        **options,
    )


# ---------------------------------------------------------------- sipswitch


def bulk_add_users(server: SipswitchServer, users: dict[str, str]) -> None:
    """Creates many extensions through the store in one process (the CLI adds one per run)."""
    from sipswitch.config import load_settings
    from sipswitch.store import Database

    settings = load_settings(server.config_path, server.data_dir)

    async def work() -> None:
        db = Database.from_settings(settings)
        await db.open()
        try:
            for number, password in users.items():
                await db.extensions.add(number, password, settings.sip.realm)
        finally:
            await db.close()

    asyncio.run(work())


def register_phase(
    server: SipswitchServer,
    workdir: Path,
    plan: Plan,
    users: dict[str, str],
    label: str = "REGISTER",
) -> RateResult:
    pairs = list(users.items())

    def run(rate: int) -> SippResult:
        return sipp_step("register", server.remote, workdir, rate, plan.step_s, users=pairs)

    return sweep(label, plan.register_rates, plan.step_s, run)


def calls_phase(
    remote: str,
    workdir: Path,
    rates: list[int],
    step_s: float,
    *,
    scenario: str,
    caller_password: str,
    callee_port: int,
    register_callee: SipswitchServer | None,
    label: str,
) -> tuple[RateResult, SippResult | None]:
    if register_callee is not None:
        reg = run_sipp(
            "register",
            register_callee.remote,
            workdir,
            users=[(CALLEE, register_callee.users[CALLEE])],
            local_port=callee_port,
            timeout_s=20,
            name="register-callee",
        )
        if not reg.ok:
            raise RuntimeError("the callee could not register:\n" + reg.describe())
    total_calls = sum(int(r * step_s) for r in rates) + 10
    budget = len(rates) * (step_s + 40) + 60
    uas = Sipp(
        "uas_answer",
        None,
        workdir,
        calls=total_calls,
        local_port=callee_port,
        timeout_s=budget,
        recv_timeout_ms=10000,
        timeout_is_error=False,
        trace_messages=False,
        buff_size=SIPP_BUFFER,
        name=f"uas-{label}",
    ).start()
    uas.wait_listening()

    def run(rate: int) -> SippResult:
        return sipp_step(
            scenario,
            remote,
            workdir,
            rate,
            step_s,
            service=CALLEE,
            users=[(CALLER, caller_password)],
        )

    try:
        result = sweep(label, rates, step_s, run)
    finally:
        uas_result = uas.stop()
    return result, uas_result


def many_registrations_phase(
    server: SipswitchServer, workdir: Path, plan: Plan, users: dict[str, str], rate: int
) -> dict[str, Any]:
    count = plan.registrations
    before = memory_mb(server.pid or 0)
    duration = count / rate
    log(f"  registering {count} contacts at {rate}/s (about {duration:.0f} s)")
    result = run_sipp(
        BENCH / "scenarios" / "register_many.xml",
        server.remote,
        workdir,
        users=list(users.items()),
        calls=count,
        rate=rate,
        max_concurrent=max(1000, rate * 10),
        timeout_s=duration * 3 + 60,
        timeout_is_error=False,
        trace_messages=False,
        buff_size=SIPP_BUFFER,
        name="register-many",
    )
    time.sleep(2)  # let batched writes of the bindings land
    after = memory_mb(server.pid or 0)
    return {
        "contacts": count,
        "registered": result.successful,
        "failed": result.failed,
        "rate": rate,
        "elapsed_s": round(result.elapsed_s, 1),
        "rss_before_mb": round(before["rss_mb"], 1),
        "rss_after_mb": round(after["rss_mb"], 1),
        "peak_rss_mb": round(after["peak_rss_mb"], 1),
    }


def register_sweep(
    plan: Plan, workdir: Path, label: str, workers: int = 1
) -> tuple[RateResult, dict[str, Any]]:
    """The REGISTER/s sweep on a fresh server with ``REG_USERS`` extensions; its result and
    what the report keeps of it (with the CPU of the server's processes)."""
    reg_users = {f"3{i:04d}": f"pw3{i:04d}" for i in range(REG_USERS)}
    server = SipswitchServer(
        workdir,
        users={},
        extra_config='[log]\nlevel = "warning"',
        name=f"sipswitch-{label.lower()}",
        workers=workers,
    )
    log(f"sipswitch on {server.remote}: creating {REG_USERS} extensions")
    server.add_extensions()
    bulk_add_users(server, reg_users)
    server.start()
    try:
        cpu0 = tree_cpu_seconds(server.pid or 0)
        registers = register_phase(server, workdir, plan, reg_users, label=label)
        cpu1 = tree_cpu_seconds(server.pid or 0)
    finally:
        server.stop(check=False)
    return registers, registers.as_dict() | {"cpu_s": round(cpu1 - cpu0, 2)}


def calls_server(workdir: Path, name: str, workers: int = 1) -> SipswitchServer:
    """A fresh, started server with the caller and the callee of the calls/s sweep."""
    server = SipswitchServer(
        workdir,
        users={CALLER: "bench-caller-pw", CALLEE: "bench-callee-pw"},
        extra_config='[log]\nlevel = "warning"',
        name=name,
        workers=workers,
    )
    server.add_extensions()
    server.start()
    return server


def bench_sipswitch(plan: Plan, workdir: Path, out: dict[str, Any]) -> None:
    """Fills ``out`` phase by phase, so a failure keeps what was measured before it. Each phase
    has a fresh server: every sweep ends past the server's limit, and the transactions of that
    overload (kept 32 s to absorb retransmissions) would still weigh on the next phase."""
    log("authenticated REGISTER/s")
    registers, out["register"] = register_sweep(plan, workdir, "REGISTER")
    server = calls_server(workdir, "sipswitch-calls")
    pid = server.pid or 0
    out["pid"] = pid
    try:
        log("calls/s: SIPp caller -> sipswitch (digest) -> SIPp callee, call length 0")
        out["calls"] = sipswitch_calls(server, workdir, plan.call_rates, plan.step_s, "calls")
        out["cpu_s_total"] = round(out["register"]["cpu_s"] + out["calls"]["cpu_s"], 2)
        out["memory_end"] = memory_mb(pid)  # after the calls sweep, ending past its limit
    finally:
        out["exit_code"] = server.stop(check=False)
    # Memory is what this phase measures, not speed: registering at half the rate the
    # REGISTER/s phase sustained (these extensions hold up to 100 contacts each, which costs
    # more per REGISTER), at most 500/s, but finishing within about five minutes.
    reg_rate = max(min(int(registers.usable_rate * 0.5), 500), -(-plan.registrations // 300), 100)
    log(f"memory with {plan.registrations} registrations")
    out["registrations"] = bench_registrations(plan, workdir, reg_rate)


def bench_registrations(plan: Plan, workdir: Path, rate: int) -> dict[str, Any]:
    many_users = {f"4{i:04d}": f"pw4{i:04d}" for i in range(MANY_USERS)}
    contacts_per_user = -(-plan.registrations // MANY_USERS)
    server = SipswitchServer(
        workdir,
        users={},
        max_contacts=min(100, max(3, contacts_per_user)),
        extra_config='[log]\nlevel = "warning"',
        name="sipswitch-registrations",
    )
    server.add_extensions()
    bulk_add_users(server, many_users)
    server.start()
    try:
        return many_registrations_phase(server, workdir, plan, many_users, rate)
    finally:
        server.stop(check=False)


def sipswitch_calls(
    server: SipswitchServer, workdir: Path, rates: list[int], step_s: float, label: str
) -> dict[str, Any]:
    """The calls/s sweep against a running server, with the CPU of its process tree."""
    pid = server.pid or 0
    cpu0 = tree_cpu_seconds(pid)
    calls, _ = calls_phase(
        server.remote,
        workdir,
        rates,
        step_s,
        scenario="uac_call",
        caller_password=server.users[CALLER],
        callee_port=free_port(),
        register_callee=server,
        label=label,
    )
    cpu1 = tree_cpu_seconds(pid)
    successful = sum(s.successful for s in calls.steps)
    return calls.as_dict() | {
        "cpu_s": round(cpu1 - cpu0, 2),
        "cpu_ms_per_call": round((cpu1 - cpu0) * 1000 / successful, 3) if successful else None,
    }


def bench_workers(plan: Plan, workdir: Path, workers: int) -> dict[str, Any]:
    """REGISTER/s and calls/s of servers with ``[sip] workers`` (each sweep on a fresh one):
    the same scenarios, CPU summed over the primary and its worker processes."""
    out: dict[str, Any] = {"workers": workers}
    _, out["register"] = register_sweep(plan, workdir, "REGISTER-workers", workers)
    server = calls_server(workdir, "sipswitch-workers", workers)
    try:
        out |= sipswitch_calls(
            server, workdir, plan.worker_call_rates, plan.step_s, f"calls-{workers}-workers"
        )
    finally:
        out["exit_code"] = server.stop(check=False)
    return out


# ---------------------------------------------------------------- Kamailio


def kamailio_cfg() -> Path | None:
    for path in KAMAILIO_CFG_CANDIDATES:
        if path.is_file():
            return path
    return None


def bench_kamailio(plan: Plan, workdir: Path) -> dict[str, Any]:
    cfg = kamailio_cfg()
    if cfg is None or not os.path.exists(KAMAILIO):
        return {"skipped": "kamailio or its config is missing"}
    port = free_port()
    callee_port = free_port()
    rundir = workdir / "kamailio-run"
    rundir.mkdir(parents=True, exist_ok=True)
    cmd = [
        KAMAILIO, "-f", str(cfg), "-DD", "-E", "-m", "1024", "-M", "32", "-Y", str(rundir),
        "-A", "CHILDREN=2", "-x", "tlsf", "-X", "tlsf",
        "-A", f"LISTEN=udp:127.0.0.1:{port}",
        "-A", f'UAS="sip:127.0.0.1:{callee_port}"',
    ]  # fmt: skip
    log_path = workdir / "kamailio.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 15
        while options_ping("127.0.0.1", port, 0.3) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                return {"skipped": "kamailio did not start: " + log_path.read_text()[-2000:]}
        log(f"kamailio on 127.0.0.1:{port} (pid {proc.pid}), calls/s, call length 0")
        cpu0 = tree_cpu_seconds(proc.pid)
        calls, _ = calls_phase(
            f"127.0.0.1:{port}",
            workdir,
            plan.kamailio_rates,
            plan.step_s,
            scenario="uac_call_noauth",
            caller_password="unused",
            callee_port=callee_port,
            register_callee=None,
            label="kamailio",
        )
        cpu_s = tree_cpu_seconds(proc.pid) - cpu0
        successful = sum(s.successful for s in calls.steps)
        return calls.as_dict() | {
            "pid": proc.pid,
            "cpu_s": round(cpu_s, 2),
            "cpu_ms_per_call": round(cpu_s * 1000 / successful, 3) if successful else None,
        }
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


# ---------------------------------------------------------------- IVR


def ivr_step(
    server: SipswitchServer, workdir: Path, calls: int, plan: Plan, caller_password: str
) -> dict[str, Any]:
    """``calls`` SIPp calls to the auto attendant, set up at ``plan.ivr_rate`` per second (or
    faster, to take at most ``plan.ivr_ramp_s``), all sending their RTP to one receiver (SDP
    port from ``-key rtpport``). Once every call is heard, and a second more, the receiver
    measures for ``plan.ivr_measure_s``: how far each packet's arrival strays from its
    stream's 20 ms schedule (kernel receive timestamps), and how many streams stayed up the
    whole time."""
    settle_s = 1.0
    rate = max(plan.ivr_rate, -(-calls // int(plan.ivr_ramp_s)))
    ramp_s = calls / rate
    hold_s = min(IVR_MAX_HOLD_S, 1.5 * ramp_s + 5 + settle_s + plan.ivr_measure_s)
    pid = server.pid or 0
    with RtpProbe(keep_payload=False) as probe:
        probe.window = (0.0, 0.0)  # count sources only, until every call is heard
        sipp = Sipp(
            "ivr_uac_listen",
            server.remote,
            workdir,
            service=IVR_NUMBER,
            users=[(CALLER, caller_password)],
            calls=calls,
            rate=rate,
            max_concurrent=calls,
            call_length_ms=int(hold_s * 1000),
            timeout_s=hold_s + ramp_s + 60,
            timeout_is_error=False,
            trace_messages=False,
            buff_size=SIPP_BUFFER,
            extra=["-key", "rtpport", str(probe.port)],
            name=f"ivr-{calls}",
        ).start()
        started = time.monotonic()
        heard = probe.wait_for_streams(calls, timeout_s=1.5 * ramp_s + 5)
        ramp_took = time.monotonic() - started
        measured: dict[str, Any] = {}
        if heard:
            begin = time.time() + settle_s
            end = begin + plan.ivr_measure_s
            probe.window = (begin, end)
            time.sleep(settle_s)
            cpu0 = tree_cpu_seconds(pid)
            time.sleep(plan.ivr_measure_s + 0.2)
            cpu = tree_cpu_seconds(pid) - cpu0
            packets = probe.packets
            measured = jitter_summary(packets, plan.ivr_measure_s)
            last_seen: dict[int, float] = {}
            for packet in packets:
                last_seen[packet.ssrc] = packet.arrival
            measured["streams_to_the_end"] = sum(1 for t in last_seen.values() if t >= end - 0.5)
            measured["server_cpu_percent"] = round(100 * cpu / plan.ivr_measure_s, 1)
        heard_count = len(probe.ssrcs)
        result = sipp.wait(timeout_s=hold_s + ramp_s + 60)
    p99 = measured.get("deviation_ms_p99")
    ok = (
        heard
        and measured.get("streams_to_the_end") == calls
        and p99 is not None
        and p99 < IVR_JITTER_LIMIT_MS
    )
    return {
        "calls": calls,
        "rate": rate,
        "heard": heard_count,
        "ramp_s": round(ramp_took, 1),
        **measured,
        "sipp_successful": result.successful,
        "sipp_failed": result.failed,
        "memory_mb": memory_mb(pid) if pid else None,
        "ok": bool(ok),
    }


def bench_ivr(plan: Plan, workdir: Path, out: dict[str, Any]) -> None:
    """Concurrent calls at the auto attendant, step by step until the jitter limit is passed
    (or not every call could be set up and heard); fills ``out`` as it goes."""
    server = SipswitchServer(
        workdir,
        users={CALLER: "bench-ivr-caller-pw"},
        extra_config='[log]\nlevel = "warning"',
        name="sipswitch-ivr",
    )
    server.add_extensions()
    server.start()
    out.update(
        number=IVR_NUMBER,
        limit_ms=IVR_JITTER_LIMIT_MS,
        rate=plan.ivr_rate,
        measure_s=plan.ivr_measure_s,
        max_calls=0,
        steps=[],
    )
    try:
        for calls in plan.ivr_calls:
            step = ivr_step(server, workdir, calls, plan, server.users[CALLER])
            out["steps"].append(step)
            log(
                f"  IVR {calls:>5} calls: heard {step['heard']}, to the end "
                f"{step.get('streams_to_the_end', '-')}, jitter p50 "
                f"{step.get('deviation_ms_p50', '-')} / p99 {step.get('deviation_ms_p99', '-')} "
                f"/ max {step.get('deviation_ms_max', '-')} ms, lost {step.get('lost', '-')}, "
                f"server CPU {step.get('server_cpu_percent', '-')} %"
                + ("" if step["ok"] else "  -> limit reached")
            )
            if not step["ok"]:
                break
            out["max_calls"] = calls
            out["at_max"] = step
            time.sleep(3)  # let the calls of this step end before the next
        out["limit_found"] = bool(out["steps"]) and not out["steps"][-1]["ok"]
    finally:
        out["exit_code"] = server.stop(check=False)


def bench_media(plan: Plan, workdir: Path) -> dict[str, Any]:
    """bench/media_bench.py in its own process: MediaSessions alone, no SIP."""
    report = workdir / "media-bench.json"
    cmd = [
        sys.executable, str(BENCH / "media_bench.py"), "--json", str(report),
        "--seconds", f"{plan.media_step_s:g}",
        "--sessions", *[str(n) for n in plan.media_sessions],
    ]  # fmt: skip
    budget = len(plan.media_sessions) * (plan.media_step_s + 30) + 60
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=budget)
    for line in done.stderr.splitlines():
        log("  " + line)
    if done.returncode != 0 or not report.exists():
        return {"error": f"media_bench.py exited {done.returncode}: {done.stderr[-2000:]}"}
    result: dict[str, Any] = json.loads(report.read_text())
    return result


def bench_relay(plan: Plan, workdir: Path) -> dict[str, Any]:
    """bench/relay_bench.py in its own process: the relay engines alone, no SIP. Returns its
    report with, per engine, the most calls under the loss limit and that step's numbers."""
    report = workdir / "relay-bench.json"
    cmd = [
        sys.executable, str(BENCH / "relay_bench.py"), "--out", str(report),
        "--duration", f"{plan.relay_step_s:g}", "--budget", f"{plan.relay_budget_s:g}",
    ]  # fmt: skip
    if plan.relay_step_s < FULL.relay_step_s:
        cmd.append("--quick")  # its shorter list of steps
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:  # its table, step by step
            log("  " + line.rstrip())
        try:
            process.wait(timeout=plan.relay_budget_s + 120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    if process.returncode != 0 or not report.exists():
        return {"error": f"relay_bench.py exited {process.returncode}"}
    result: dict[str, Any] = json.loads(report.read_text())
    for engine, summary in result.get("summary", {}).items():
        steps = result.get("steps", {}).get(engine, [])
        best = summary.get("max_calls_under_loss_limit", 0)
        summary["at_max"] = next((s for s in steps if s["calls"] == best and s["passed"]), None)
        # Every step passed: the relay's limit lies beyond the last step.
        summary["limit_found"] = bool(steps) and not steps[-1]["passed"]
    return result


# ---------------------------------------------------------------- report


def fmt(value: float | None, unit: str = "", digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def print_table(report: dict[str, Any]) -> None:
    sw = report.get("sipswitch", {})
    kam = report.get("kamailio", {})
    ivr = report.get("ivr", {})
    at_max = ivr.get("at_max", {})
    media = report.get("media_bench", {})
    media_steps = media.get("steps", [])
    media_top = bool(media_steps) and all(step.get("ok") for step in media_steps)

    def at_least(value: int | None, top: bool) -> str:
        """A count; ``>= N`` when even the last step passed (the limit is higher)."""
        return f">= {value:,}" if top and value else fmt(value)
    reg = sw.get("register", {})
    calls = sw.get("calls", {})
    workers = report.get("workers", {})
    workers_reg = workers.get("register", {})
    regs = sw.get("registrations", {})
    contacts = regs.get("contacts", 0)
    rss_regs = regs.get("rss_after_mb")
    ratio = report.get("ratio_calls_to_kamailio")
    if ratio is not None:
        ratio *= 100

    def verdict(ok: bool | None) -> str:
        return "-" if ok is None else ("met" if ok else "NOT met")

    rows = [
        ("measure", "sipswitch", "target", "", "kamailio"),
        (
            "REGISTER/s, one process (digest, <0.1% failed)",
            fmt(reg.get("best_rate")),
            f">= {TARGET_REGISTER_PER_S:,}",
            verdict(reg.get("best_rate", 0) >= TARGET_REGISTER_PER_S if reg else None),
            "",
        ),
        (
            "calls/s, one process (<0.1% failed)",
            fmt(calls.get("best_rate")),
            f">= {TARGET_CALLS_PER_S:,}",
            verdict(calls.get("best_rate", 0) >= TARGET_CALLS_PER_S if calls else None),
            fmt(kam.get("best_rate")),
        ),
        (
            "call setup p50 / p99 at that rate",
            f"{fmt(calls.get('best_p50_ms'), ' ms')} / {fmt(calls.get('best_p99_ms'), ' ms')}",
            "",
            "",
            f"{fmt(kam.get('best_p50_ms'), ' ms')} / {fmt(kam.get('best_p99_ms'), ' ms')}",
        ),
        (
            f"REGISTER/s with [sip] workers = {workers.get('workers', '-')}",
            fmt(workers_reg.get("best_rate")),
            f">= {TARGET_REGISTER_PER_S:,}",
            verdict(
                workers_reg.get("best_rate", 0) >= TARGET_REGISTER_PER_S if workers_reg else None
            ),
            "",
        ),
        (
            f"calls/s with [sip] workers = {workers.get('workers', '-')} (<0.1% failed)",
            fmt(workers.get("best_rate")),
            f">= {TARGET_CALLS_PER_S:,}",
            verdict(workers.get("best_rate", 0) >= TARGET_CALLS_PER_S if workers else None),
            "",
        ),
        (
            "  p50 / p99 at that rate, CPU per call (all processes)",
            f"{fmt(workers.get('best_p50_ms'), ' ms')} / {fmt(workers.get('best_p99_ms'), ' ms')}"
            f", {fmt(workers.get('cpu_ms_per_call'), ' ms', 3)}",
            "", "", "",
        ),
        ("calls/s as a share of kamailio's", fmt(ratio, " %", 1), "", "", ""),
        (
            "server CPU per call",
            fmt(calls.get("cpu_ms_per_call"), " ms", 3),
            "",
            "",
            fmt(kam.get("cpu_ms_per_call"), " ms", 3),
        ),
        ("server CPU, whole run", fmt(sw.get("cpu_s_total"), " s", 1), "", "", ""),
        (
            "server peak RSS",
            fmt(sw.get("memory_end", {}).get("peak_rss_mb"), " MiB", 1),
            "",
            "",
            "",
        ),
        (
            f"RSS with {contacts:,} registrations ({regs.get('registered', 0):,} ok)",
            fmt(rss_regs, " MiB", 1),
            f"< {TARGET_RSS_100K_MB} MiB" + ("" if contacts >= 100_000 else " at 100k"),
            verdict(
                None if rss_regs is None or contacts < 100_000
                else rss_regs < TARGET_RSS_100K_MB and regs.get("registered", 0) >= contacts
            ),
            "",
        ),
        (
            f"IVR: concurrent calls at {IVR_NUMBER} playing a prompt, jitter p99 < "
            f"{IVR_JITTER_LIMIT_MS:g} ms",
            at_least(ivr.get("max_calls"), ivr.get("limit_found") is False),
            f">= {TARGET_IVR_CALLS}",
            verdict(ivr.get("max_calls", 0) >= TARGET_IVR_CALLS if "steps" in ivr else None),
            "",
        ),
        (
            "  IVR jitter p50 / p99 at that count",
            f"{fmt(at_max.get('deviation_ms_p50'), ' ms', 2)} / "
            f"{fmt(at_max.get('deviation_ms_p99'), ' ms', 2)}",
            "", "", "",
        ),
        (
            "media sessions alone (media_bench.py), p99 < 5 ms",
            at_least(media.get("max_sessions"), media_top),
            "", "", "",
        ),
    ]  # fmt: skip
    relay = report.get("relay", {})
    for engine, label in RELAY_ENGINES.items():
        if "skipped" in relay:
            break
        summary = relay.get("summary", {}).get(engine)
        target = TARGET_RELAY_CALLS[engine]
        best = None if summary is None else summary.get("max_calls_under_loss_limit")
        step = (summary or {}).get("at_max") or {}
        rows.append((
            f"relay ({label}): concurrent G.711 calls, 20 ms both ways, loss < 0.1 %",
            at_least(best, summary is not None and summary.get("limit_found") is False),
            f">= {target:,}",
            verdict(None if best is None else best >= target),
            "",
        ))
        rows.append((
            "  relay latency added p99 / loss at that count",
            f"{fmt(step.get('added_p99_ms'), ' ms', 2)} / "
            f"{fmt(None if not step else 100 * step['loss'], ' %', 3)}",
            "", "", "",
        ))  # fmt: skip
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    print()
    for i, row in enumerate(rows):
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    if report.get("quick"):
        print("\n(--quick: short steps; rates are rough)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short steps, 10,000 registrations")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "bench.json")
    parser.add_argument("--skip-kamailio", action="store_true")
    parser.add_argument("--skip-ivr", action="store_true", help="no IVR or media rows")
    parser.add_argument("--skip-relay", action="store_true", help="no media relay rows")
    parser.add_argument(
        "--ivr-only", action="store_true", help="only the IVR and media rows (no SIP phases)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder with logs")
    parser.add_argument(
        "--workers",
        type=int,
        default=max(2, os.cpu_count() or 1),
        help="[sip] workers of the worker-process calls/s row (default: the CPUs, at least 2)",
    )
    args = parser.parse_args(argv)

    if server_missing():
        print("sipswitch.pbx.server is missing: nothing to benchmark", file=sys.stderr)
        return 1
    if not shutil.which("sipp"):
        print("sipp is not installed: run `make test-deps`", file=sys.stderr)
        return 1

    plan = QUICK if args.quick else FULL
    workdir = Path(tempfile.mkdtemp(prefix="sipswitch-bench-"))
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "plan": asdict(plan),
        "targets": {
            "calls_per_s": TARGET_CALLS_PER_S,
            "register_per_s": TARGET_REGISTER_PER_S,
            "rss_100k_registrations_mb": TARGET_RSS_100K_MB,
            "ivr_concurrent_calls": TARGET_IVR_CALLS,
            "ivr_jitter_p99_ms": IVR_JITTER_LIMIT_MS,
            "relay_calls": TARGET_RELAY_CALLS,
        },
        "workdir": str(workdir),
    }
    code = 0
    try:
        if not args.ivr_only:
            report["sipswitch"] = {}
            bench_sipswitch(plan, workdir, report["sipswitch"])
            log(f"REGISTER/s and calls/s with [sip] workers = {args.workers} (fresh servers)")
            report["workers"] = bench_workers(plan, workdir, args.workers)
            if not args.skip_kamailio:
                report["kamailio"] = bench_kamailio(plan, workdir)
                kam_best = report["kamailio"].get("best_rate")
                sw_best = max(
                    report["sipswitch"].get("calls", {}).get("best_rate") or 0,
                    report["workers"].get("best_rate") or 0,
                )
                if kam_best and sw_best is not None:
                    report["ratio_calls_to_kamailio"] = round(sw_best / kam_best, 4)
        if not args.skip_ivr:
            log(f"IVR: concurrent calls at {IVR_NUMBER}, RTP jitter at the receiver")
            report["ivr"] = {}
            bench_ivr(plan, workdir, report["ivr"])
            log("media sessions alone (bench/media_bench.py)")
            report["media_bench"] = bench_media(plan, workdir)
        if args.skip_relay:
            report["relay"] = {"skipped": "--skip-relay"}
        else:
            log("media relay: relayed G.711 calls, in-process and rtpengine (relay_bench.py)")
            report["relay"] = bench_relay(plan, workdir)
    except Exception as exc:  # report what was measured before the failure
        report["error"] = f"{exc.__class__.__name__}: {exc}"
        print(f"benchmark failed: {report['error']}", file=sys.stderr)
        code = 1
    finally:
        report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print_table(report)
        print(f"\nresults: {args.out}")
        if args.keep or code:
            print(f"logs: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
