"""A throwaway PostgreSQL server for tests: its own cluster in a temp folder on loopback.

PostgreSQL refuses to run as root, so when the tests run as root the cluster belongs to the
``postgres`` system user and its programs run through ``runuser``.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
PG_USER = "postgres"
_TIMEOUT = 120


def find_pg_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` that has initdb, pg_ctl and psql."""
    candidates: list[tuple[int, Path]] = []
    for path in Path("/").glob(PG_BIN_GLOB.lstrip("/")):
        match = re.search(r"/postgresql/(\d+)/bin$", str(path))
        if match and all((path / tool).is_file() for tool in ("initdb", "pg_ctl", "psql")):
            candidates.append((int(match.group(1)), path))
    return max(candidates)[1] if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresError(RuntimeError):
    pass


class PostgresServer:
    """initdb + pg_ctl start on 127.0.0.1:<free port>; ``stop()`` removes everything."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.as_root = os.geteuid() == 0
        self.root: Path | None = None
        self.port = 0

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.root is not None
        return self.root / "run"

    def _command(self, tool: str, *args: str) -> list[str]:
        command = [str(self.bin_dir / tool), *args]
        return ["runuser", "-u", PG_USER, "--", *command] if self.as_root else command

    def _run(self, tool: str, *args: str) -> str:
        result = subprocess.run(
            self._command(tool, *args),
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise PostgresError(
                f"{tool} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result.stdout

    def _ensure_user(self) -> None:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                 PG_USER],  # fmt: skip
                check=True,
                capture_output=True,
                timeout=_TIMEOUT,
            )

    def start(self) -> None:
        if self.as_root:
            self._ensure_user()
        self.root = Path(tempfile.mkdtemp(prefix="sipswitch-pg-"))
        self.socket_dir.mkdir()
        if self.as_root:
            user = pwd.getpwnam(PG_USER)
            for path in (self.root, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
        self._run(
            "initdb",
            "-D", str(self.data_dir),
            "-U", PG_USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )  # fmt: skip
        last_error: PostgresError | None = None
        for _attempt in range(3):  # the free port may be taken before the server binds it
            self.port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.socket_dir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            try:
                self._run(
                    "pg_ctl", "start", "-w", "-t", "60",
                    "-D", str(self.data_dir),
                    "-l", str(self.root / "server.log"),
                    "-o", options,
                )  # fmt: skip
                return
            except PostgresError as exc:
                last_error = exc
        log = (self.root / "server.log").read_text(errors="replace")[-4000:]
        raise PostgresError(f"{last_error}\nserver log:\n{log}")

    def stop(self) -> None:
        if self.root is None:
            return
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self._run(
                    "pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.data_dir)
                )  # fmt: skip
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._run(
            "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, "-d", database,
            "-c", sql,
        )  # fmt: skip

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy asyncpg URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{PG_USER}@127.0.0.1:{self.port}/{database}"
