"""NAT keepalives against SIPp phones that register with a Contact naming a private address
(10.1.2.3:5062) while they send from 127.0.0.1: the server pings them where their REGISTER
came from, and logs them unreachable a few intervals after the phone process is killed."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from .conftest import ServerFactory
from .harness import SipswitchServer
from .sipp import Sipp, run_sipp

NAT_CONFIG = "[nat]\nkeepalive_interval = 1\nkeepalive_timeout = 0.5\nkeepalive_failures = 2\n"
UNREACHABLE = "is unreachable"


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Polls ``condition``; returns the seconds it took, fails after ``timeout_s``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what} not within {timeout_s} s")
        time.sleep(0.05)
    return time.monotonic() - start


def log_after(server: SipswitchServer, offset: int) -> str:
    return server.log_text()[offset:]


def traced(phone: Sipp, text: str) -> int:
    """How often ``text`` appears in the messages SIPp traced so far."""
    if not phone.message_file.exists():
        return 0
    return phone.message_file.read_text(errors="replace").count(text)


def test_udp_phone_behind_nat_gets_options_at_its_source_until_it_dies(
    sipswitch_server: ServerFactory, free_port: Callable[[], int], tmp_path: Path
) -> None:
    server = sipswitch_server(extra_config=NAT_CONFIG)
    port = free_port()
    registered = run_sipp(
        "nat_register",
        server.remote,
        tmp_path,
        users=[("200", server.users["200"])],
        local_port=port,
        timeout_s=20,
        name="nat-register-200",
    )
    assert registered.ok, registered.describe()
    # The phone's socket: the OPTIONS must come here (127.0.0.1:port), not to 10.1.2.3:5062.
    phone = Sipp(
        "nat_uas_options",
        None,
        tmp_path,
        calls=1000,
        local_port=port,
        timeout_s=120,
        recv_timeout_ms=60000,
        name="nat-options-200",
    ).start()
    try:
        phone.wait_listening()
        wait_until(
            lambda: traced(phone, "OPTIONS sip:200@10.1.2.3:5062") >= 3,
            15,
            "three keepalive OPTIONS at the phone's source address",
        )
        offset = len(server.log_text())
        assert phone.proc is not None
        phone.proc.kill()
        phone.proc.wait(timeout=5)
        took = wait_until(
            lambda: UNREACHABLE in log_after(server, offset), 10, "the phone marked unreachable"
        )
    finally:
        phone.stop()
    line = next(li for li in log_after(server, offset).splitlines() if UNREACHABLE in li)
    assert "200" in line and f"udp:127.0.0.1:{port}" in line, line
    assert took >= 0.5, took  # two keepalives must fail first, not the first miss
    assert server.running


def test_tcp_phone_behind_nat_is_unreachable_once_its_connection_closes(
    sipswitch_server: ServerFactory, free_port: Callable[[], int], tmp_path: Path
) -> None:
    server = sipswitch_server(extra_config=NAT_CONFIG)
    phone = Sipp(
        "nat_register_hold",
        server.remote,
        tmp_path,
        transport="tcp",
        users=[("201", server.users["201"])],
        local_port=free_port(),
        timeout_s=120,
        name="nat-register-hold-201",
    ).start()
    try:
        wait_until(
            lambda: traced(phone, "SIP/2.0 200 OK") >= 1,
            15,
            "the phone registered over TCP",
        )
        time.sleep(3)  # three intervals of CRLF pings on the open connection
        assert UNREACHABLE not in server.log_text()
        assert phone.running
        offset = len(server.log_text())
        assert phone.proc is not None
        phone.proc.kill()
        phone.proc.wait(timeout=5)
        wait_until(
            lambda: UNREACHABLE in log_after(server, offset), 10, "the phone marked unreachable"
        )
    finally:
        phone.stop()
    line = next(li for li in log_after(server, offset).splitlines() if UNREACHABLE in li)
    assert "201" in line and "tcp:127.0.0.1" in line and "connection closed" in line, line
    assert server.running
