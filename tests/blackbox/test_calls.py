"""Registration and call outcomes through sipswitch, driven by SIPp over UDP and TCP:
answered (relayed B2BUA-style), busy, cancelled, unknown number, not registered, no answer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import ServerFactory, UasFactory
from .harness import server_missing
from .sipp import SippResult, run_sipp

pytestmark = [
    pytest.mark.blackbox,
    pytest.mark.skipif(server_missing(), reason="sipswitch.pbx.server does not exist yet"),
]

TRANSPORTS = ["udp", "tcp"]
CALLER = "200"
CALLEE = "201"
NEVER_REGISTERED = "202"


def _call(
    server_remote: str,
    users: dict[str, str],
    scenario: str,
    service: str,
    workdir: Path,
    transport: str,
    **options: object,
) -> SippResult:
    return run_sipp(
        scenario,
        server_remote,
        workdir,
        transport=transport,
        service=service,
        users=[(CALLER, users[CALLER])],
        timeout_s=60,
        **options,
    )


def _received_call_ids(result: SippResult, method: str) -> set[str]:
    """Call-IDs of the requests of ``method`` that a SIPp run received (from its trace)."""
    ids: set[str] = set()
    for block in (
        result.workdir.joinpath("messages.log")
        .read_text(errors="replace")
        .split("-----------------------------------------------")
    ):
        if "message received" in block and re.search(rf"^{method} ", block, re.M):
            found = re.search(r"^Call-ID:\s*(\S+)", block, re.M | re.I)
            if found:
                ids.add(found.group(1))
    return ids


def _sent_call_ids(result: SippResult, method: str) -> set[str]:
    ids: set[str] = set()
    for block in (
        result.workdir.joinpath("messages.log")
        .read_text(errors="replace")
        .split("-----------------------------------------------")
    ):
        if "message sent" in block and re.search(rf"^{method} ", block, re.M):
            found = re.search(r"^Call-ID:\s*(\S+)", block, re.M | re.I)
            if found:
                ids.add(found.group(1))
    return ids


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_register_with_digest(
    sipswitch_server: ServerFactory, tmp_path: Path, transport: str
) -> None:
    server = sipswitch_server()
    result = run_sipp(
        "register",
        server.remote,
        tmp_path,
        transport=transport,
        users=[(CALLER, server.users[CALLER])],
    )
    assert result.ok, result.describe()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_register_with_wrong_password_is_refused(
    sipswitch_server: ServerFactory, tmp_path: Path, transport: str
) -> None:
    server = sipswitch_server()
    result = run_sipp(
        "register",
        server.remote,
        tmp_path,
        transport=transport,
        users=[(CALLER, "not-the-password")],
        timeout_is_error=False,
    )
    assert result.successful == 0 and result.failed == 1, result.describe()
    assert "SIP/2.0 200" not in result.messages, result.describe()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_call_answered_and_relayed_as_b2bua(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path, transport: str
) -> None:
    server = sipswitch_server()
    callee = sipp_uas(server, CALLEE, "uas_answer", transport=transport)
    caller = _call(
        server.remote, server.users, "uac_call", CALLEE, tmp_path, transport, call_length_ms=300
    )
    assert caller.ok, caller.describe()
    answered = callee.wait(timeout_s=30)
    assert answered.ok and answered.successful == 1, answered.describe()
    # Back-to-back: the callee's dialog is a new one, not the caller's.
    caller_ids = _sent_call_ids(caller, "INVITE")
    callee_ids = _received_call_ids(answered, "INVITE")
    assert caller_ids and callee_ids
    assert not caller_ids & callee_ids, (caller_ids, callee_ids)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_call_to_busy_callee_gets_486(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path, transport: str
) -> None:
    server = sipswitch_server()
    callee = sipp_uas(server, CALLEE, "uas_busy", transport=transport)
    caller = _call(server.remote, server.users, "uac_call_486", CALLEE, tmp_path, transport)
    assert caller.ok, caller.describe()
    busy = callee.wait(timeout_s=30)
    assert busy.ok, busy.describe()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_call_cancelled_while_ringing_gets_487(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path, transport: str
) -> None:
    server = sipswitch_server()
    callee = sipp_uas(server, CALLEE, "uas_ring", transport=transport)
    caller = _call(server.remote, server.users, "uac_cancel_487", CALLEE, tmp_path, transport)
    assert caller.ok, caller.describe()
    # The callee saw the CANCEL relayed to it and answered its INVITE with 487.
    ringing = callee.wait(timeout_s=30)
    assert ringing.ok, ringing.describe()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_call_to_unknown_number_gets_404(
    sipswitch_server: ServerFactory, tmp_path: Path, transport: str
) -> None:
    server = sipswitch_server()
    caller = _call(server.remote, server.users, "uac_call_404", "999", tmp_path, transport)
    assert caller.ok, caller.describe()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_call_to_unregistered_extension_gets_480(
    sipswitch_server: ServerFactory, tmp_path: Path, transport: str
) -> None:
    server = sipswitch_server()
    caller = _call(
        server.remote, server.users, "uac_call_480", NEVER_REGISTERED, tmp_path, transport
    )
    assert caller.ok, caller.describe()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unanswered_call_times_out_with_408(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path, transport: str
) -> None:
    server = sipswitch_server(ring_timeout=3.0)
    callee = sipp_uas(server, CALLEE, "uas_ring", transport=transport)
    caller = _call(server.remote, server.users, "uac_call_408", CALLEE, tmp_path, transport)
    assert caller.ok, caller.describe()
    # After ring_timeout the server cancelled the callee's leg.
    ringing = callee.wait(timeout_s=30)
    assert ringing.ok, ringing.describe()


def test_call_to_a_tcp_phone_that_is_gone_fails_at_once(
    sipswitch_server: ServerFactory, tmp_path: Path
) -> None:
    """201 registers over TCP and goes away (SIPp exits, its connection and port close): the
    server cannot connect to it, so the caller hears 480 at once rather than after the ring
    timeout or Timer B."""
    server = sipswitch_server(ring_timeout=60.0)
    registered = run_sipp(
        "register", server.remote, tmp_path / "reg", transport="tcp",
        users=[(CALLEE, server.users[CALLEE])], timeout_s=20, name="register-tcp",
    )  # fmt: skip
    assert registered.ok, registered.describe()
    caller = _call(
        server.remote, server.users, "uac_call_480", CALLEE, tmp_path / "call", "udp",
        recv_timeout_ms=8000,  # far below the 60 s ring timeout and Timer B's 32 s
    )  # fmt: skip
    assert caller.ok, caller.describe()
    assert "TCP connection to" in server.log_text() and "failed" in server.log_text()
