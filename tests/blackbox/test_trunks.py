"""Trunks between running servers, driven by SIPp: a multi-branch network of three sipswitch
processes on distinct loopback addresses (two branches, 1xxx and 4xxx, and a trunk server, as in
docs/multi-branch.md; branch A's trunk over UDP, branch B's over TCP), and an external line
registered to a second sipswitch acting as carrier.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import Any

import pytest

from .conftest import UasFactory
from .harness import SipswitchServer, server_missing
from .ports import free_port
from .sipp import Sipp, SippResult, run_sipp

pytestmark = [
    pytest.mark.blackbox,
    pytest.mark.skipif(server_missing(), reason="sipswitch.pbx.server does not exist yet"),
]

HQ_HOST, A_HOST, B_HOST = "127.0.0.21", "127.0.0.22", "127.0.0.23"
CARRIER_HOST, OFFICE_HOST = "127.0.0.31", "127.0.0.32"
BRANCH_A_USERS = {"1001": "pw1001-Hq7s", "1002": "pw1002-Kd3w"}
BRANCH_B_USERS = {"4001": "pw4001-Vn8e", "4002": "pw4002-Zt2p"}


class Node(SipswitchServer):
    """A sipswitch process listening on its own loopback address."""

    def __init__(self, workdir: Path, host: str, **options: Any) -> None:
        super().__init__(workdir, **options)
        self.host = host
        self.port = free_port(host)

    def configure(self, extra_config: str) -> Node:
        self.extra_config = extra_config
        self._write_config()
        return self


NodeFactory = Callable[..., Node]


@pytest.fixture
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Generator[NodeFactory, None, None]:
    """Factory: ``node(host, users, name)``; every node is stopped (SIGTERM, exit 0) at the end,
    and its log is attached to the report of a failed test."""
    nodes: list[Node] = []
    request.node._sipswitch_servers = nodes

    def factory(host: str, users: Mapping[str, str], name: str) -> Node:
        server = Node(tmp_path, host, users=users, name=name, ring_timeout=20.0)
        nodes.append(server)
        return server

    yield factory
    failures = []
    for server in nodes:
        try:
            server.stop(check=True)
        except AssertionError as exc:
            failures.append(str(exc))
    if failures:
        pytest.fail("\n\n".join(failures))


def _trunk(name: str, peer: SipswitchServer, lines: str = "") -> str:
    return f'[[trunks]]\nname = "{name}"\nhost = "{peer.host}"\nport = {peer.port}\n{lines}\n'


def _rule(prefix: str, target: str, extra: str = "") -> str:
    return f'[[dialplan]]\nprefix = "{prefix}"\ntarget = "{target}"\n{extra}\n'


def _status(server: SipswitchServer) -> dict[str, dict[str, Any]]:
    try:
        document = json.loads((server.data_dir / "trunks.json").read_text())
    except (OSError, ValueError):
        return {}
    return {entry["name"]: entry for entry in document.get("trunks", [])}


def _wait_for(
    server: SipswitchServer, name: str, key: str, value: str, timeout_s: float = 15.0
) -> float:
    """Polls the server's status file until trunk ``name`` has ``key`` = ``value``; returns
    the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if _status(server).get(name, {}).get(key) == value:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{name}.{key} never became {value!r}: {_status(server).get(name)}")


def _call(
    server: SipswitchServer,
    caller: str,
    callee: str,
    workdir: Path,
    scenario: str = "uac_call",
    **options: Any,
) -> SippResult:
    return run_sipp(
        scenario,
        server.remote,
        workdir,
        service=callee,
        users=[(caller, server.users[caller])],
        timeout_s=30,
        name=f"{scenario}-{caller}-{callee}",
        **options,
    )


def _line_calls_out_and_in(
    office: Node, carrier: Node, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    """Through the office's line 5551000 at the carrier: 200 dials 9300 (the carrier challenges
    the INVITE, the office answers as 5551000), then 300 at the carrier calls 5551000 (the DID
    reaches 200 with the caller's name)."""
    callee = sipp_uas(carrier, "300", "uas_answer", calls=1)
    out = _call(office, "200", "9300", tmp_path)
    assert out.ok, out.describe()
    invite = _received_invite(callee)
    assert "<sip:5551000@" in invite.split("From:", 1)[1].split("\n", 1)[0], invite

    office_phone = sipp_uas(office, "200", "uas_answer", calls=1)
    into = _call(carrier, "300", "5551000", tmp_path)
    assert into.ok, into.describe()
    invite = _received_invite(office_phone)
    assert 'From: "User 300" <sip:300@' in invite, invite


def _received_invite(uas: Sipp) -> str:
    """The first INVITE a SIPp callee received, from its message trace."""
    uas.wait(timeout_s=30)
    trace = uas.message_file.read_text(errors="replace")
    start = trace.find("INVITE sip:")
    assert start >= 0, trace[-3000:]
    return trace[start : start + 2000]


def test_branch_network(node: NodeFactory, sipp_uas: UasFactory, tmp_path: Path) -> None:
    hq = node(HQ_HOST, {}, "hq")
    a = node(A_HOST, BRANCH_A_USERS, "branch-a")
    b = node(B_HOST, BRANCH_B_USERS, "branch-b")
    checks = "options_interval = 1\noptions_failures = 2\n"
    hq.configure(
        _trunk("branch-a", a, "transit = true\nmax_incoming = 1\n" + checks)
        + _trunk("branch-b", b, 'transit = true\ntransport = "tcp"\n' + checks)
        + _rule("1", "trunk:branch-a")
        + _rule("4", "trunk:branch-b")
    )
    a.configure(_trunk("hq", hq, checks) + _rule("4", "trunk:hq"))
    b.configure(_trunk("hq", hq, 'transport = "tcp"\n' + checks) + _rule("1", "trunk:hq"))
    for server in (hq, a, b):
        server.add_extensions()
        server.start()
    _wait_for(hq, "branch-a", "health", "up")
    _wait_for(hq, "branch-b", "health", "up")
    listing = hq.cli("trunk", "list")
    assert listing.returncode == 0 and "branch-b  trunk" in listing.stdout, listing

    # 1001 in branch A calls 4001 in branch B through the trunk server; caller ID intact.
    callee = sipp_uas(b, "4001", "uas_answer", calls=1)
    call = _call(a, "1001", "4001", tmp_path)
    assert call.ok, call.describe()
    invite = _received_invite(callee)
    assert 'From: "User 1001" <sip:1001@' in invite, invite
    assert "To: <sip:4001@" in invite, invite

    # The trunk server takes one call at a time from branch A: a second one gets 503.
    first_callee = sipp_uas(b, "4001", "uas_answer", calls=1)
    second_callee = sipp_uas(b, "4002", "uas_answer", calls=1)
    long_call = Sipp(
        "uac_call",
        a.remote,
        tmp_path,
        service="4001",
        users=[("1001", a.users["1001"])],
        call_length_ms=4000,
        timeout_s=30,
        name="long-1001",
    ).start()
    time.sleep(1.5)  # set-up takes milliseconds; the call then lasts 4 s
    refused = _call(a, "1002", "4002", tmp_path, "uac_call_503")
    assert refused.ok, refused.describe()
    assert long_call.wait().ok
    assert first_callee.wait(timeout_s=30).ok
    assert second_callee.running  # never rung
    second_callee.stop()

    # Branch B stops: the trunk server marks it down within seconds, and calls to 4xxx get
    # 503 at once instead of waiting for a SIP timeout.
    b.stop()
    stopped = time.monotonic()
    down_after = _wait_for(hq, "branch-b", "health", "down", timeout_s=10)
    refused = _call(a, "1001", "4001", tmp_path, "uac_call_503", recv_timeout_ms=5000)
    assert refused.ok, refused.describe()
    answered_in = time.monotonic() - stopped - down_after
    assert "down" in hq.cli("trunk", "list").stdout
    print(
        f"\nbranch B down at the trunk server {down_after:.2f} s after it stopped; "
        f"the 503 call took {answered_in:.2f} s (SIPp, with a digest round trip)"
    )


def test_external_line_to_a_carrier(
    node: NodeFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    carrier = node(CARRIER_HOST, {"5551000": "line-pw-Rk4", "300": "pw300-Jy6"}, "carrier")
    office = node(OFFICE_HOST, {"200": "pw200-Mq2"}, "office")
    carrier.configure("")
    office.configure(
        _trunk(
            "carrier",
            carrier,
            'kind = "line"\nusername = "5551000"\npassword = "line-pw-Rk4"\n'
            'caller_id = "fixed"\ncaller_number = "5551000"\n'
            'dids = { "5551000" = "200" }\noptions_interval = 0\n',
        )
        + _rule("9", "trunk:carrier", "strip = 1")
    )
    for server in (carrier, office):
        server.add_extensions()
        server.start()
    _wait_for(office, "carrier", "registration", "registered")
    listing = office.cli("trunk", "list")
    assert listing.returncode == 0, listing
    assert "registered" in listing.stdout and "expires in" in listing.stdout, listing.stdout

    _line_calls_out_and_in(office, carrier, sipp_uas, tmp_path)

    # Stopping the office unregisters the line: the carrier has nowhere to send 5551000.
    office.stop()
    after = _call(carrier, "300", "5551000", tmp_path, "uac_call_480")
    assert after.ok, after.describe()
