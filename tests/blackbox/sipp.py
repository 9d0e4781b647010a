"""Runs SIPp (Debian's sip-tester) scenarios from ``scenarios/`` and parses their results.

SIPp 3.6.1 answers digest challenges with MD5 only, and takes the first challenge it finds.

Every run is bounded: a call count (``-m``), a whole-run timeout (``-timeout``) and a receive
timeout; the statistics come from the file SIPp writes (``-trace_stat -stf``), response times
from ``-trace_rtt``.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ports import HOST, free_port, free_port_block, port_in_use

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
SIPP = shutil.which("sipp") or "/usr/bin/sipp"

_TRANSPORTS = {"udp": "u1", "tcp": "t1", "tls": "l1"}


def sipp_available() -> bool:
    return os.path.exists(SIPP)


def scenario_path(name: str | Path) -> Path:
    """A scenario by file name in ``scenarios/`` (``"uac_call"`` or ``"uac_call.xml"``) or path."""
    path = Path(name)
    if path.is_absolute() or path.exists():
        return path
    if path.suffix != ".xml":
        path = path.with_suffix(".xml")
    return SCENARIOS / path


def write_users_csv(path: Path, users: Iterable[tuple[str, str]]) -> Path:
    """An ``-inf`` file: field0 is the user, field1 the whole authentication keyword.

    SIPp 3.6.1 does not expand ``[fieldN]`` inside ``[authentication ...]``, so the keyword
    itself lives in the CSV field.
    """
    with path.open("w") as out:
        out.write("SEQUENTIAL\n")
        for user, password in users:
            out.write(f"{user};[authentication username={user} password={password}]\n")
    return path


@dataclass
class SippResult:
    """What one SIPp run did: exit code, call counters and response times."""

    scenario: str
    returncode: int
    successful: int
    failed: int
    stats: dict[str, str]
    rtt_ms: list[float]
    workdir: Path
    elapsed_s: float
    output: str = ""
    errors: str = ""
    messages: str = ""
    command: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.failed == 0 and self.successful > 0

    def stat_int(self, name: str) -> int:
        try:
            return int(float(self.stats.get(name, "0") or 0))
        except ValueError:
            return 0

    def percentile_ms(self, pct: float) -> float | None:
        if not self.rtt_ms:
            return None
        if len(self.rtt_ms) == 1:
            return self.rtt_ms[0]
        cuts = statistics.quantiles(self.rtt_ms, n=1000, method="inclusive")
        index = min(max(int(round(pct * 10)) - 1, 0), len(cuts) - 1)
        return cuts[index]

    def describe(self) -> str:
        """A readable summary for assertion messages."""
        failed_reasons = {
            k: v
            for k, v in self.stats.items()
            if k.startswith("Failed") and k.endswith("(C)") and v not in ("", "0")
        }
        parts = [
            f"sipp {self.scenario}: exit {self.returncode}, {self.successful} successful, "
            f"{self.failed} failed {failed_reasons or ''}",
            "command: " + " ".join(self.command),
        ]
        if self.errors:
            parts.append("--- errors ---\n" + self.errors)
        if self.messages:
            parts.append("--- messages (tail) ---\n" + self.messages)
        if self.output and not self.stats:
            parts.append("--- output (tail) ---\n" + self.output)
        return "\n".join(parts)


def _tail(path: Path, limit: int = 6000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace")


def _parse_stats(path: Path) -> dict[str, str]:
    try:
        with path.open(newline="") as f:
            rows = [row for row in csv.reader(f, delimiter=";") if row]
    except OSError:
        return {}
    if len(rows) < 2:
        return {}
    header, last = rows[0], rows[-1]
    return {name: value for name, value in zip(header, last, strict=False) if name}


def _parse_rtt(workdir: Path) -> list[float]:
    samples: list[float] = []
    for path in sorted(workdir.glob("*_rtt.csv")):
        with path.open(newline="") as f:
            for row in csv.reader(f, delimiter=";"):
                if len(row) >= 2:
                    try:
                        samples.append(float(row[1]))
                    except ValueError:
                        continue  # header line
    return samples


class Sipp:
    """One SIPp process playing a scenario, as a client (``remote`` given) or a server."""

    def __init__(
        self,
        scenario: str | Path,
        remote: str | None,
        workdir: Path,
        *,
        transport: str = "udp",
        service: str | None = None,
        users: Sequence[tuple[str, str]] | None = None,
        calls: int = 1,
        rate: float | None = None,
        max_concurrent: int | None = None,
        local_port: int | None = None,
        call_length_ms: int = 0,
        expires: int = 3600,
        timeout_s: float = 60,
        recv_timeout_ms: int = 5000,
        timeout_is_error: bool = True,
        trace_messages: bool = True,
        trace_rtt: bool = False,
        buff_size: int | None = None,
        extra: Sequence[str] = (),
        name: str | None = None,
    ) -> None:
        self.scenario = scenario_path(scenario)
        if not self.scenario.exists():
            raise FileNotFoundError(self.scenario)
        self.transport = transport
        self.local_port = local_port or free_port()
        self.timeout_s = timeout_s
        self.name = name or self.scenario.stem
        self.workdir = workdir / f"sipp-{self.name}-{self.local_port}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        # SIPp names its trace files after the scenario file: run a copy inside workdir.
        local_scenario = self.workdir / self.scenario.name
        shutil.copyfile(self.scenario, local_scenario)
        self.stat_file = self.workdir / "stats.csv"
        self.error_file = self.workdir / "errors.log"
        self.message_file = self.workdir / "messages.log"
        self.output_file = self.workdir / "output.log"

        cmd = [SIPP]
        if remote:
            cmd.append(remote)
        cmd += [
            "-sf",
            str(local_scenario),
            "-i",
            HOST,
            "-p",
            str(self.local_port),
            "-mp",
            str(free_port_block(4)),
            "-t",
            _TRANSPORTS[transport],
            "-m",
            str(calls),
            "-nostdin",
            "-timeout",
            f"{int(timeout_s)}s",
            "-recv_timeout",
            str(recv_timeout_ms),
            "-d",
            str(call_length_ms),
            "-key",
            "expires",
            str(expires),
            "-aa",
            "-pause_msg_ign",
            "-trace_stat",
            "-stf",
            str(self.stat_file),
            "-fd",
            "5",
            "-trace_err",
            "-error_file",
            str(self.error_file),
        ]
        if timeout_is_error:
            cmd.append("-timeout_error")
        if service is not None:
            cmd += ["-s", service]
            if remote:
                # SIPp's digest uri defaults to host:port; make it the Request-URI as sent.
                cmd += ["-auth_uri", f"{service}@{remote}"]
        if rate is not None:
            cmd += ["-r", f"{rate:g}"]
        if max_concurrent is not None:
            cmd += ["-l", str(max_concurrent)]
        if trace_messages:
            cmd += ["-trace_msg", "-message_file", str(self.message_file)]
        if trace_rtt:
            cmd += ["-trace_rtt", "-rtt_freq", "1"]
        if buff_size is not None:
            cmd += ["-buff_size", str(buff_size)]
        if users:
            cmd += ["-inf", str(write_users_csv(self.workdir / "users.csv", users))]
        cmd += list(extra)
        self.command = cmd
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._result: SippResult | None = None

    def start(self) -> Sipp:
        with self.output_file.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.started_at = time.monotonic()
        return self

    def wait_listening(self, timeout_s: float = 5.0) -> Sipp:
        """Blocks until SIPp holds its local port (a server scenario is ready to receive)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"sipp exited early ({self.proc.returncode}):\n{_tail(self.output_file)}"
                )
            if port_in_use(self.local_port, self.transport):
                return self
            time.sleep(0.05)
        raise TimeoutError(f"sipp did not bind port {self.local_port} in {timeout_s} s")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout_s: float | None = None) -> SippResult:
        """Waits for the run to end (bounded by its own -timeout plus a margin)."""
        assert self.proc is not None
        if self._result is not None:
            return self._result
        try:
            self.proc.wait(timeout=timeout_s if timeout_s is not None else self.timeout_s + 15)
        except subprocess.TimeoutExpired:
            self.stop()
        return self._collect()

    def stop(self) -> SippResult:
        """Ends the run now (SIGUSR1 is SIPp's soft quit; SIGKILL if it lingers)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self._collect()

    def _collect(self) -> SippResult:
        if self._result is not None:
            return self._result
        assert self.proc is not None
        stats = _parse_stats(self.stat_file)
        result = SippResult(
            scenario=self.scenario.name,
            returncode=int(self.proc.returncode if self.proc.returncode is not None else -1),
            successful=0,
            failed=0,
            stats=stats,
            rtt_ms=_parse_rtt(self.workdir),
            workdir=self.workdir,
            elapsed_s=time.monotonic() - self.started_at,
            output=_tail(self.output_file, 3000),
            errors=_tail(self.error_file),
            messages=_tail(self.message_file),
            command=self.command,
        )
        result.successful = result.stat_int("SuccessfulCall(C)")
        result.failed = result.stat_int("FailedCall(C)")
        self._result = result
        return result

    def __enter__(self) -> Sipp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_sipp(scenario: str | Path, remote: str | None, workdir: Path, **options: Any) -> SippResult:
    """Runs a scenario to completion and returns its result (see :class:`Sipp` for options)."""
    return Sipp(scenario, remote, workdir, **options).start().wait()
