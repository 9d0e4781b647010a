"""Settings reloaded in the running server: its settings file is edited, ``sipswitch reload``
signals it (found by its pid file), and SIPp calls meet the new ring group; a broken file is
logged with its line and the server keeps serving with the routing it had; ``reload`` refuses a
missing or stale pid file."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import ServerFactory, UasFactory
from .harness import SipswitchServer, options_ping, server_missing
from .sipp import SippResult, run_sipp

pytestmark = [
    pytest.mark.blackbox,
    pytest.mark.skipif(server_missing(), reason="sipswitch.pbx.server does not exist yet"),
]

RING_GROUP = """
[[groups]]
number = "600"
strategy = "ring"
members = ["201", "202"]
ring_timeout = 10
"""
RELOADED = "settings reloaded:"


def _call(server: SipswitchServer, scenario: str, workdir: Path, name: str) -> SippResult:
    return run_sipp(
        scenario,
        server.remote,
        workdir,
        service="600",
        users=[("200", server.users["200"])],
        timeout_s=60,
        name=name,
    )


def _wait_for_log(server: SipswitchServer, text: str, count: int, timeout_s: float = 10) -> None:
    """Until ``text`` has appeared ``count`` times in the server's log."""
    deadline = time.monotonic() + timeout_s
    while server.log_text().count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{server.log_tail()}"
        time.sleep(0.1)


def _pid_file(server: SipswitchServer) -> Path:
    return server.data_dir / "sipswitch.pid"


def test_reload_adds_a_ring_group(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    server = sipswitch_server()
    assert _pid_file(server).read_text().strip() == str(server.pid)
    before = _call(server, "uac_call_404", tmp_path, "before")
    assert before.ok, before.describe()

    with server.config_path.open("a") as config:
        config.write(RING_GROUP)
    done = server.cli("reload")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"sent SIGHUP to sipswitch (pid {server.pid}" in done.stdout, done.stdout
    _wait_for_log(server, RELOADED, 1)

    ringing = sipp_uas(server, "201", "uas_ring")  # gets the CANCEL when 202 answers
    target = sipp_uas(server, "202", "uas_answer")
    caller = _call(server, "uac_call", tmp_path, "after")
    assert caller.ok, caller.describe()
    assert ringing.wait(timeout_s=30).ok and target.wait(timeout_s=30).ok
    assert server.running
    server.stop()
    assert not _pid_file(server).exists()  # removed at a clean stop


def test_broken_file_keeps_the_routing_and_restart_settings_are_named(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    server = sipswitch_server(extra_config=RING_GROUP)
    good = server.config_path.read_text()
    server.config_path.write_text(good.replace('"202"]', '"2x2"]'))
    line = server.config_path.read_text().splitlines().index('members = ["201", "2x2"]') + 1
    done = server.cli("reload")  # the command checks the file first and leaves the server be
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"sipswitch.toml:{line}:" in done.stderr and "not signalled" in done.stderr
    assert RELOADED not in server.log_text()

    assert server.pid is not None
    os.kill(server.pid, signal.SIGHUP)  # as `kill -HUP` would: the server reads it itself
    _wait_for_log(server, "settings not reloaded", 1)
    assert f"sipswitch.toml:{line}: groups.0.members" in server.log_text()
    assert options_ping(server.host, server.port) == b"SIP/2.0 200 OK"

    # A restart-only change next to a good group list: named in the log, not applied.
    server.config_path.write_text(good.replace('realm = "sipswitch"', 'realm = "elsewhere"'))
    assert server.cli("reload").returncode == 0
    _wait_for_log(server, RELOADED, 1)
    assert "setting sip.realm changed: it needs a restart to apply" in server.log_text()

    ringing = sipp_uas(server, "201", "uas_ring")
    target = sipp_uas(server, "202", "uas_answer")  # registered in the realm still in use
    caller = _call(server, "uac_call", tmp_path, "after")
    assert caller.ok, caller.describe()
    assert ringing.wait(timeout_s=30).ok and target.wait(timeout_s=30).ok


def test_reload_refuses_a_missing_or_stale_pid_file(
    sipswitch_server: ServerFactory, tmp_path: Path
) -> None:
    server = sipswitch_server(start=False)
    done = server.cli("reload")
    assert done.returncode == 1 and "no server is running" in done.stderr, done.stderr

    # A pid file left by a server killed with -9, its number now another program's.
    other = subprocess.Popen(["sleep", "30"])
    try:
        _pid_file(server).parent.mkdir(parents=True, exist_ok=True)
        _pid_file(server).write_text(f"{other.pid}\n")
        done = server.cli("reload")
        assert done.returncode == 1 and "is not sipswitch" in done.stderr, done.stderr
        assert other.poll() is None  # not signalled
    finally:
        other.kill()
        other.wait(timeout=5)
    done = server.cli("reload")
    assert done.returncode == 1 and "is gone" in done.stderr, done.stderr
