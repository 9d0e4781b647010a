"""The sipswitch server as a black box: config in a temp folder, CLI-created users, a
subprocess on free loopback ports, readiness by OPTIONS, stop / kill -9 / restart."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from .ports import HOST, free_port

READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0

DEFAULT_USERS: dict[str, str] = {
    "200": "pw200-Kq3vT9",
    "201": "pw201-Xr8mB2",
    "202": "pw202-Lz5nC7",
}


def server_missing() -> bool:
    """True while the server module does not exist yet (the black-box tests skip then)."""
    try:
        return importlib.util.find_spec("sipswitch.pbx.server") is None
    except ModuleNotFoundError:
        return True


def sipswitch_command() -> list[str]:
    """The installed ``sipswitch`` entry point beside this interpreter, else ``-m``."""
    script = Path(sys.executable).parent / "sipswitch"
    if script.exists():
        return [str(script)]
    found = shutil.which("sipswitch")
    if found:
        return [found]
    return [sys.executable, "-m", "sipswitch.cli.main"]


_probe_counter = itertools.count(1)


def options_ping(host: str, port: int, timeout_s: float = 0.5) -> bytes | None:
    """Sends one OPTIONS over UDP; returns the response's status line, or None."""
    n = next(_probe_counter)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.settimeout(timeout_s)
        lport = sock.getsockname()[1]
        call_id = f"probe-{os.getpid()}-{n}@{HOST}"
        request = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{lport};branch=z9hG4bK-probe-{os.getpid()}-{n};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@{HOST}>;tag=probe{n}\r\n"
            f"To: <sip:{host}:{port}>\r\n"
            f"Call-ID: {call_id}\r\n"
            f"CSeq: {n} OPTIONS\r\n"
            "Accept: application/sdp\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        sock.sendto(request, (host, port))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                data, _ = sock.recvfrom(65535)
            except (TimeoutError, ConnectionRefusedError):
                return None
            if call_id.encode() in data:
                return data.split(b"\r\n", 1)[0]
    return None


class ServerError(AssertionError):
    """The server did not start, or did not stop cleanly."""


class SipswitchServer:
    """One sipswitch process with its own config, data folder, ports and log file."""

    def __init__(
        self,
        workdir: Path,
        *,
        users: Mapping[str, str] | None = None,
        ring_timeout: float = 30.0,
        max_contacts: int = 3,
        auth_algorithms: list[str] | None = None,
        extra_config: str = "",
        name: str = "sipswitch",
        workers: int | None = None,
    ) -> None:
        self.host = HOST
        self.port = free_port()
        self.workdir = workdir / f"{name}-{self.port}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "sipswitch.toml"
        self.log_path = self.workdir / "server.log"
        self.users: dict[str, str] = dict(DEFAULT_USERS if users is None else users)
        self.ring_timeout = ring_timeout
        self.max_contacts = max_contacts
        self.auth_algorithms = auth_algorithms
        self.extra_config = extra_config
        # SIPSWITCH_TEST_WORKERS=2 runs every black-box server with worker processes.
        self.workers = workers or int(os.environ.get("SIPSWITCH_TEST_WORKERS", "1"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_codes: list[int] = []
        self._write_config()

    @property
    def remote(self) -> str:
        """``host:port`` as SIPp takes it."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _write_config(self) -> None:
        self.config_path.write_text(
            "[sip]\n"
            f'listen = ["{self.host}"]\n'
            f"udp_port = {self.port}\n"
            f"tcp_port = {self.port}\n"
            'domain = ""\n'
            'realm = "sipswitch"\n'
            + (f"workers = {self.workers}\n" if self.workers != 1 else "")
            + (
                f"auth_algorithms = {json.dumps(self.auth_algorithms)}\n"
                if self.auth_algorithms
                else ""
            )
            + "\n[registrar]\n"
            "min_expires = 60\n"
            "max_expires = 3600\n"
            f"max_contacts = {self.max_contacts}\n"
            "\n[calls]\n"
            f"ring_timeout = {float(self.ring_timeout)!r}\n"
            "\n[database]\n"
            'url = ""\n' + (("\n" + self.extra_config + "\n") if self.extra_config else "")
        )

    def cli(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        """Runs ``sipswitch ARGS --config FILE --data DIR`` and returns its result."""
        cmd = [
            *sipswitch_command(),
            *args,
            "--config",
            str(self.config_path),
            "--data",
            str(self.data_dir),
        ]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )

    def add_extensions(self) -> None:
        for number, password in self.users.items():
            done = self.cli(
                "ext", "add", number, "--password", password, "--name", f"User {number}"
            )
            if done.returncode != 0:
                raise ServerError(
                    f"sipswitch ext add {number} failed ({done.returncode}):\n"
                    f"{done.stdout}\n{done.stderr}"
                )

    def start(self) -> SipswitchServer:
        """Starts ``sipswitch serve`` and waits until it answers OPTIONS with 200.

        The port was free when it was chosen, but another process may take it before the
        server binds it; on a first start that fails so, a new port is chosen (at most twice).
        """
        first_start = self.proc is None
        for attempt in range(3):
            try:
                return self._start_once()
            except ServerError:
                taken = b"Address already in use" in self.log_path.read_bytes()[-2000:]
                if not (first_start and taken and not self.running and attempt < 2):
                    raise
                self.proc = None
                self.port = free_port()
                self._write_config()
        raise AssertionError("unreachable")

    def _start_once(self) -> SipswitchServer:
        if self.running:
            raise ServerError("already running")
        cmd = [
            *sipswitch_command(),
            "serve",
            "--config",
            str(self.config_path),
            "--data",
            str(self.data_dir),
        ]
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        last: bytes | None = None
        while time.monotonic() < deadline:
            if not self.running:
                raise ServerError(
                    f"sipswitch exited during start-up ({self._returncode()}):\n{self.log_tail()}"
                )
            last = options_ping(self.host, self.port, timeout_s=0.3)
            if last is not None and last.startswith(b"SIP/2.0 200"):
                return
            time.sleep(0.1)
        self.kill9()
        raise ServerError(
            f"sipswitch did not answer OPTIONS with 200 within {timeout_s} s "
            f"(last answer: {last!r}):\n{self.log_tail()}"
        )

    def _returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    def stop(self, *, check: bool = True) -> int:
        """SIGTERM, wait; with ``check`` the exit code must be 0."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
                raise ServerError(
                    f"sipswitch ignored SIGTERM for {STOP_TIMEOUT_S} s:\n{self.log_tail()}"
                ) from None
        code = int(self.proc.returncode)
        self.exit_codes.append(code)
        self.proc = None
        if check and code != 0:
            raise ServerError(f"sipswitch exited with {code} after SIGTERM:\n{self.log_tail()}")
        return code

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> SipswitchServer:
        """Stops the server if it runs (cleanly), then starts it on the same ports and data."""
        if self.running:
            self.stop()
        return self.start()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, limit: int = 8000) -> str:
        return self.log_text()[-limit:]
