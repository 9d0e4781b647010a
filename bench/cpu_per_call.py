"""Server CPU per call at a fixed call rate (SIPp caller -> sipswitch with digest -> SIPp callee),
for one source tree or, interleaved, for two (A/B) so both see the same load from the rest of
the machine.

    .venv/bin/python bench/cpu_per_call.py                      # this tree, 4 runs at 300/s
    .venv/bin/python bench/cpu_per_call.py --a /tmp/old/src     # A = another tree, B = this one

Each server is a ``sipswitch serve`` subprocess (``PYTHONPATH`` picks its source tree) with
its own SIPp callee; every run is ``--duration`` seconds of SIPp ``uac_call`` at ``--rate``.
CPU is the server process's user + system time (/proc) over the run divided by the calls that
succeeded; the median over runs is steadier than calls/s on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.blackbox.harness import SipswitchServer  # noqa: E402
from tests.blackbox.ports import free_port  # noqa: E402
from tests.blackbox.sipp import Sipp, run_sipp  # noqa: E402

CALLER, CALLEE = ("200", "pw200-bench"), ("201", "pw201-bench")
WARM_UP_CALLS = 100


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


class Setup:
    """A server from one source tree, its registered SIPp callee, a work folder."""

    def __init__(self, label: str, src: Path | None, calls: int, budget_s: float) -> None:
        self.label = label
        self.work = Path(tempfile.mkdtemp(prefix=f"cpu-per-call-{label}-"))
        saved = os.environ.get("PYTHONPATH")
        if src is not None:
            os.environ["PYTHONPATH"] = str(src)
        try:
            self.server = SipswitchServer(
                self.work,
                users=dict([CALLER, CALLEE]),
                extra_config='[log]\nlevel = "warning"',
            )
            self.server.add_extensions()
            self.server.start()
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
        port = free_port()
        reg = run_sipp(
            "register", self.server.remote, self.work, users=[CALLEE], local_port=port,
            timeout_s=20, name="register",
        )
        if not reg.ok:
            raise RuntimeError(reg.describe())
        self.uas = Sipp(
            "uas_answer", None, self.work, calls=calls + WARM_UP_CALLS + 100, local_port=port,
            timeout_s=budget_s, recv_timeout_ms=10000, timeout_is_error=False,
            trace_messages=False, buff_size=4 * 1024 * 1024, name="uas",
        ).start()
        self.uas.wait_listening()
        self.run(50, WARM_UP_CALLS / 50)
        self.cpu_ms: list[float] = []
        self.user_ms: list[float] = []

    def run(self, rate: int, duration_s: float) -> tuple[int, int, float, float]:
        """(succeeded, failed, CPU s, user CPU s) of one SIPp caller run."""
        pid = self.server.pid or 0
        user0, system0 = cpu_times(pid)
        result = run_sipp(
            "uac_call", self.server.remote, self.work, calls=int(rate * duration_s), rate=rate,
            max_concurrent=max(1000, rate * 10), timeout_s=duration_s + 30,
            timeout_is_error=False, trace_messages=False, buff_size=4 * 1024 * 1024,
            service=CALLEE[0], users=[CALLER], name=f"uac-{rate}",
        )
        user1, system1 = cpu_times(pid)
        return result.successful, result.failed, user1 - user0 + system1 - system0, user1 - user0

    def stop(self) -> None:
        self.uas.stop()
        self.server.stop(check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=Path, help="source tree (a src folder) to compare against")
    parser.add_argument("--b", type=Path, help="source tree B (default: this checkout)")
    parser.add_argument("--rate", type=int, default=300, help="calls per second")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per run")
    parser.add_argument("--runs", type=int, default=4, help="runs per tree")
    args = parser.parse_args(argv)
    calls = int(args.rate * args.duration) * args.runs
    budget = args.runs * 2 * (args.duration + 30) + 120
    trees = [("A", args.a), ("B", args.b)] if args.a else [("B", args.b)]
    setups = [Setup(label, src, calls, budget) for label, src in trees]
    try:
        for run in range(args.runs):
            for setup in setups if run % 2 == 0 else setups[::-1]:
                time.sleep(0.5)
                ok, failed, cpu_s, user_s = setup.run(args.rate, args.duration)
                setup.cpu_ms.append(cpu_s * 1000 / max(ok, 1))
                setup.user_ms.append(user_s * 1000 / max(ok, 1))
                print(
                    f"{setup.label} run {run + 1}: {ok} calls ok, {failed} failed, "
                    f"CPU {setup.cpu_ms[-1]:.3f} ms/call (user {setup.user_ms[-1]:.3f})",
                    flush=True,
                )
    finally:
        for setup in setups:
            setup.stop()
    for setup in setups:
        print(
            f"{setup.label}: CPU per call median {statistics.median(setup.cpu_ms):.3f} ms, "
            f"best {min(setup.cpu_ms):.3f} ms (user median {statistics.median(setup.user_ms):.3f})"
        )
    if len(setups) == 2:
        a, b = (statistics.median(s.cpu_ms) for s in setups)
        print(f"B/A: {b / a:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
