"""A server with worker processes (``[sip] workers = 2``) as a black box: calls spread over the
primary and worker 1 by Call-ID, a callee over TCP reached from the worker through the primary,
registrations and reloads announced to the worker, call limits counted across processes (and
given back when a worker dies), a worker killed and started again, no worker left behind by a
stopped or killed primary, and a TLS trunk (which needs one process) refused with its line.

Calls land on a chosen process by their Call-ID: SIPp's ``-cid_str`` or the raw caller of
``sip_uac``, with Call-IDs picked by ``owner_of_call_id``."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from sipswitch.sip.transport.steering import owner_of_call_id

from . import sip_trace
from .conftest import ServerFactory, UasFactory
from .harness import SipswitchServer, server_missing
from .ports import HOST, port_in_use
from .sip_uac import Invite, UdpCaller
from .sipp import Sipp, SippResult, run_sipp
from .test_reload import _wait_for_log

pytestmark = [
    pytest.mark.blackbox,
    pytest.mark.skipif(server_missing(), reason="sipswitch.pbx.server does not exist yet"),
]

WORKERS = 2
CALLER = "200"
CALLEE = "201"
USERS = {CALLER: "pw200-Kq3vT9", CALLEE: "pw201-Xr8mB2"}
WAIT_S = 20.0  # for a worker to be started again, a process to go

# "2026-01-01 10:00:00,123 INFO [worker 1] sipswitch.calls: call start <Call-ID>: 200 -> 201"
_CALL_START = re.compile(
    r"^\S+ \S+ INFO (?:\[worker (\d+)\] )?sipswitch\.calls: call start (\S+): (\S+) -> (\S+)$",
    re.M,
)
_SERVING = re.compile(r"worker (\d+) \(pid (\d+)\) serving")


def _server(factory: ServerFactory, **options: object) -> SipswitchServer:
    return factory(users=USERS, workers=WORKERS, **options)


def call_id_owned_by(worker: int, tag: str) -> str:
    """A Call-ID (unique to ``tag``) that the primary hands to ``worker`` (0: keeps)."""
    for n in range(1000):
        call_id = f"{tag}-{n}@{HOST}"
        if owner_of_call_id(call_id.encode(), WORKERS) == worker:
            return call_id
    raise AssertionError("no such Call-ID")


def started_calls(server: SipswitchServer) -> dict[str, tuple[int, str]]:
    """Call-ID -> (the process that logged the call's start, its callee number)."""
    return {
        m.group(2): (int(m.group(1) or 0), m.group(4))
        for m in _CALL_START.finditer(server.log_text())
    }


def _call(
    server: SipswitchServer,
    scenario: str,
    workdir: Path,
    *,
    number: str = CALLEE,
    call_id: str | None = None,
) -> SippResult:
    """A SIPp call from CALLER; with ``call_id`` that Call-ID (one call)."""
    extra = ["-cid_str", call_id] if call_id else []
    return run_sipp(
        scenario, server.remote, workdir, service=number,
        users=[(CALLER, server.users[CALLER])], timeout_s=60, extra=extra,
        name=f"{scenario}-{call_id or 'calls'}",
    )  # fmt: skip


def _received_call_ids(result: SippResult) -> list[str]:
    """The Call-IDs of the INVITEs a SIPp callee received."""
    return [m.header("Call-ID") or "" for m in sip_trace.find(result, "received", method="INVITE")]


# --- the processes ---
def worker_pids(primary: int) -> list[int]:
    """The ``sipswitch.worker`` processes whose parent is ``primary``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == primary and b"sipswitch.worker" in cmdline:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs as a worker (neither gone, nor a zombie, nor reused)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return state != "Z" and b"sipswitch.worker" in cmdline


@contextlib.contextmanager
def left_behind_killed(workers: list[int]) -> Iterator[None]:
    """Whatever the test finds, no worker of its server outlives it."""
    try:
        yield
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def serving(server: SipswitchServer) -> list[tuple[int, int]]:
    """(worker, pid) of every "serving" line so far, in order."""
    return [(int(w), int(p)) for w, p in _SERVING.findall(server.log_text())]


def wait_until(what: str, check: Callable[[], object], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.05)


# --- the tests ---
def test_calls_are_shared_by_the_primary_and_the_worker(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    calls = 300
    server = _server(sipswitch_server)
    callee = sipp_uas(server, CALLEE, "uas_answer", calls=calls)
    caller = run_sipp(
        "uac_call", server.remote, tmp_path, service=CALLEE,
        users=[(CALLER, server.users[CALLER])], calls=calls, rate=150, max_concurrent=50,
        timeout_s=60, trace_messages=False,
    )  # fmt: skip
    assert caller.ok and caller.successful == calls, caller.describe()
    answered = callee.wait(timeout_s=30)
    assert answered.ok and answered.successful == calls, answered.describe()

    started = started_calls(server)
    assert len(started) == calls, len(started)
    by_process = {0: 0, 1: 0}
    for call_id, (process, number) in started.items():
        assert number == CALLEE
        assert process == owner_of_call_id(call_id.encode(), WORKERS), (call_id, process)
        by_process[process] += 1
    assert by_process[0] > 0 and by_process[1] > 0, by_process
    # Each process called the callee with Call-IDs of its own, which bring the answers back.
    prefixes = {call_id[:3] for call_id in _received_call_ids(answered)}
    assert prefixes == {"w0-", "w1-"}, prefixes


def test_a_tcp_callee_gets_the_calls_of_both_processes(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    """The primary holds the TCP connection: the worker's requests and the callee's answers to
    them pass through it."""
    calls = 30
    server = _server(sipswitch_server)
    callee = sipp_uas(server, CALLEE, "uas_answer", transport="tcp", calls=calls)
    caller = run_sipp(
        "uac_call", server.remote, tmp_path, service=CALLEE,
        users=[(CALLER, server.users[CALLER])], calls=calls, rate=30, timeout_s=60,
    )  # fmt: skip
    assert caller.ok and caller.successful == calls, caller.describe()
    answered = callee.wait(timeout_s=30)
    assert answered.ok and answered.successful == calls, answered.describe()
    invited = _received_call_ids(answered)
    assert len(invited) == calls
    from_worker = [call_id for call_id in invited if call_id.startswith("w1-")]
    assert from_worker and len(from_worker) < calls, invited
    processes = {process for process, _ in started_calls(server).values()}
    assert processes == {0, 1}, processes
    # Each caller's BYE reached the callee's leg, on whichever process held the call.
    assert len(sip_trace.find(answered, "received", method="BYE")) == calls


def test_the_worker_follows_registrations(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    """The primary takes REGISTERs; worker 1 routes with what it is told: once the callee
    unregisters its calls get 480 there, and once it registers again they ring it again."""
    server = _server(sipswitch_server)
    tag = f"reg-{os.getpid()}"
    first = sipp_uas(server, CALLEE, "uas_answer")
    answered = _call(server, "uac_call", tmp_path, call_id=call_id_owned_by(1, f"{tag}-a"))
    assert answered.ok, answered.describe()
    assert first.wait(timeout_s=30).ok

    gone = run_sipp(
        "register", server.remote, tmp_path, users=[(CALLEE, server.users[CALLEE])],
        local_port=first.local_port, expires=0, timeout_s=20, name="unregister",
    )  # fmt: skip
    assert gone.ok, gone.describe()
    refused = _call(server, "uac_call_480", tmp_path, call_id=call_id_owned_by(1, f"{tag}-b"))
    assert refused.ok, refused.describe()

    again = sipp_uas(server, CALLEE, "uas_answer")  # a new contact
    answered = _call(server, "uac_call", tmp_path, call_id=call_id_owned_by(1, f"{tag}-c"))
    assert answered.ok, answered.describe()
    assert again.wait(timeout_s=30).ok
    handled = started_calls(server)
    assert [handled[call_id_owned_by(1, f"{tag}-{x}")][0] for x in "abc"] == [1, 1, 1]


def _limited(factory: ServerFactory) -> SipswitchServer:
    """A server on which 201 may have one call at a time."""
    server = _server(factory, start=False)
    done = server.cli("ext", "set", CALLEE, "--max-calls", "1")
    assert done.returncode == 0, done.stderr
    return server.start()


def _authenticated(uac: UdpCaller, call_ids: list[str]) -> list[Invite]:
    """For each Call-ID an INVITE to the callee, challenged (and ACKed); the INVITEs with
    credentials, ready to send."""
    challenged = [uac.invite(CALLEE, call_id) for call_id in call_ids]
    uac.wait_final(challenged)
    return [uac.authenticate(invite) for invite in challenged]


def _cancel(uac: UdpCaller, ringing: Invite) -> None:
    uac.cancel(ringing)
    uac.wait_final([ringing])
    assert ringing.statuses[-1] == 487, ringing.statuses
    uac.ack(ringing)


def _one_rings_one_busy(invites: list[Invite]) -> bool:
    ringing = [i for i in invites if 180 in i.statuses and i.final is None]
    busy = [i for i in invites if i.final is not None and i.final.status == 486]
    return len(ringing) == 1 and len(busy) == 1


def test_a_limit_holds_across_processes(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory
) -> None:
    """201 may have one call: two INVITEs sent back to back, one kept by the primary and one
    handed to worker 1, ring it once; the other gets 486. Twice, so the place the first
    round's call took is given back (by whichever process held it)."""
    server = _limited(sipswitch_server)
    callee = sipp_uas(server, CALLEE, "uas_ring", calls=2)
    uac = UdpCaller(server.port, CALLER, server.users[CALLER])
    try:
        for round_ in (1, 2):
            tag = f"limit{round_}-{os.getpid()}"
            invites = _authenticated(uac, [call_id_owned_by(owner, tag) for owner in (0, 1)])
            for invite in invites:  # both processes decide at the same moment
                uac.send(invite)
            uac.wait(partial(_one_rings_one_busy, invites), "one call ringing, one busy")
            ringing, busy = sorted(invites, key=lambda i: i.final is not None)
            uac.ack(busy)
            _cancel(uac, ringing)
    finally:
        uac.close()
    rung = callee.wait(timeout_s=30)
    assert rung.ok and rung.successful == 2, rung.describe()
    assert len(_received_call_ids(rung)) == 2  # one INVITE a round reached the callee


def test_the_places_a_killed_worker_held_are_given_back(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory
) -> None:
    """Worker 1 holds the one call 201 may have and is killed: the call is lost, and so is its
    place, so the next call (kept by the primary) rings instead of being refused 486."""
    server = _limited(sipswitch_server)
    wait_until("worker 1 serving", lambda: serving(server))
    callee = sipp_uas(server, CALLEE, "uas_ring", calls=2)
    uac = UdpCaller(server.port, CALLER, server.users[CALLER])
    try:
        tag = f"held-{os.getpid()}"
        [held, later] = _authenticated(uac, [call_id_owned_by(o, tag) for o in (1, 0)])
        uac.send(held)
        uac.wait(lambda: 180 in held.statuses, "the first call ringing")
        os.kill(serving(server)[0][1], signal.SIGKILL)
        wait_until("worker 1 started again", lambda: len(serving(server)) == 2)
        uac.send(later)
        uac.wait(lambda: 180 in later.statuses or later.final is not None, "the next call")
        assert later.statuses[-1] == 180, later.statuses
        _cancel(uac, later)
    finally:
        uac.close()
    assert len(_received_call_ids(callee.stop())) == 2


def test_a_killed_worker_is_started_again(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    """kill -9 of worker 1: the primary says so and starts it again; a call of its share made
    meanwhile waits for it (the caller's retransmissions), and later calls of both shares are
    answered."""
    server = _server(sipswitch_server)
    assert server.pid is not None
    wait_until("worker 1 serving", lambda: serving(server))
    [(index, old)] = serving(server)
    assert index == 1 and worker_pids(server.pid) == [old]
    callee = sipp_uas(server, CALLEE, "uas_answer", calls=21)

    os.kill(old, signal.SIGKILL)
    meanwhile_id = call_id_owned_by(1, f"meanwhile-{os.getpid()}")
    meanwhile = _call(server, "uac_call", tmp_path, call_id=meanwhile_id)
    assert meanwhile.ok, meanwhile.describe()
    assert started_calls(server)[meanwhile_id][0] == 1  # waited for the new worker 1
    assert f"worker 1 exited ({-signal.SIGKILL})" in server.log_text(), server.log_tail()
    wait_until("worker 1 started again", lambda: len(serving(server)) == 2)
    new = serving(server)[1][1]
    assert new != old and worker_pids(server.pid) == [new] and not alive(old)

    later = run_sipp(
        "uac_call", server.remote, tmp_path, service=CALLEE,
        users=[(CALLER, server.users[CALLER])], calls=20, rate=20, timeout_s=60, name="later",
    )  # fmt: skip
    assert later.ok and later.successful == 20, later.describe()
    assert callee.wait(timeout_s=30).ok
    processes = [p for p, _ in started_calls(server).values()]
    assert processes.count(1) >= 2 and processes.count(0) >= 1, processes


def test_sigterm_stops_the_workers_too(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    """SIGTERM to the primary: worker 1 hangs up the call it holds, every process ends, and
    the primary exits 0."""
    server = _server(sipswitch_server)
    assert server.pid is not None
    wait_until("worker 1 serving", lambda: serving(server))
    workers = worker_pids(server.pid)
    assert len(workers) == WORKERS - 1 and all(alive(pid) for pid in workers), workers
    callee = sipp_uas(server, CALLEE, "uas_answer")
    call_id = call_id_owned_by(1, f"term-{os.getpid()}")
    caller = Sipp(
        "ivr_uac_hung_up", server.remote, tmp_path, service=CALLEE,
        users=[(CALLER, server.users[CALLER])], timeout_s=30, extra=["-cid_str", call_id],
    ).start()  # fmt: skip
    acked = partial(sip_trace.find, callee.message_file, "received", method="ACK")
    wait_until("the call answered", acked, 10)
    assert started_calls(server)[call_id][0] == 1
    with left_behind_killed(workers):
        assert server.stop() == 0  # (the harness asserts 0 too)
        # The primary waited for its workers before it exited.
        assert not [pid for pid in workers if alive(pid)], workers
    # Worker 1 hung up the call it held, both legs, as it stopped.
    for peer in (caller.wait(timeout_s=20), callee.wait(timeout_s=10)):
        assert peer.ok, peer.describe()


def test_no_worker_outlives_a_primary_killed_with_sigkill(
    sipswitch_server: ServerFactory,
) -> None:
    """The workers hold copies of the SIP socket: one left behind would keep the port."""
    server = sipswitch_server(users={}, workers=WORKERS)
    assert server.pid is not None
    wait_until("worker 1 serving", lambda: serving(server))
    workers = worker_pids(server.pid)
    assert len(workers) == WORKERS - 1, workers
    with left_behind_killed(workers):
        server.kill9()
        wait_until("no worker left", lambda: not any(alive(pid) for pid in workers), 10)
    wait_until("the port free", lambda: not port_in_use(server.port, "udp"), 5)


RING_GROUP = """
[[groups]]
number = "600"
strategy = "ring"
members = ["201"]
ring_timeout = 10
"""


def test_a_reloaded_ring_group_is_called_by_the_worker(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    server = _server(sipswitch_server)
    tag = f"group-{os.getpid()}"
    unknown = _call(
        server, "uac_call_404", tmp_path, number="600", call_id=call_id_owned_by(1, f"{tag}-a")
    )
    assert unknown.ok, unknown.describe()
    with server.config_path.open("a") as config:
        config.write(RING_GROUP)
    done = server.cli("reload")
    assert done.returncode == 0, done.stdout + done.stderr
    _wait_for_log(server, "settings reloaded:", 1)

    callee = sipp_uas(server, CALLEE, "uas_answer")
    call_id = call_id_owned_by(1, f"{tag}-b")
    answered = _call(server, "uac_call", tmp_path, number="600", call_id=call_id)
    assert answered.ok, answered.describe()
    assert callee.wait(timeout_s=30).ok
    assert started_calls(server)[call_id] == (1, "600")
    assert "[worker 1] sipswitch: settings reloaded:" in server.log_text()


def test_check_config_takes_workers_with_trunks_and_refuses_too_many(
    sipswitch_server: ServerFactory,
) -> None:
    """Workers serve trunks (over TLS too); more than 16 processes is refused with its line."""
    trunk = '[[trunks]]\nname = "carrier"\nhost = "127.0.0.1"\ntransport = "tls"\n'
    server = sipswitch_server(users={}, workers=WORKERS, extra_config=trunk, start=False)
    done = server.cli("check-config")
    assert done.returncode == 0, done.stdout + done.stderr
    text = server.config_path.read_text().replace(f"workers = {WORKERS}", "workers = 17")
    server.config_path.write_text(text)
    line = text.splitlines().index("workers = 17") + 1
    done = server.cli("check-config")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"sipswitch.toml:{line}: sip.workers:" in done.stderr, done.stderr
