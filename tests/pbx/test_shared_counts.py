"""The count table shared by server processes (``SharedCounts``) and ``CallLimits`` over it:
columns and their sums, a fresh table per start, a dead worker's column cleared, a full table,
files that are not a table, the flock lock, the limit semantics on both backends, and processes
hammering one limit at the same time."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sipswitch.pbx import shared_counts
from sipswitch.pbx.limits import TABLE_FULL, CallLimits
from sipswitch.pbx.shared_counts import (
    MAX_CAPACITY,
    MAX_KEY_BYTES,
    MAX_WORKERS,
    CountsFileError,
    CountsFull,
    SharedCounts,
)

from .test_limits import ext


def bump(counts: SharedCounts, key: str, delta: int = 1) -> int:
    with counts.locked():
        return counts.add(key, delta)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "calls.counts"


@pytest.fixture
def table(path: Path) -> Iterator[SharedCounts]:
    with SharedCounts.create(path, workers=3, capacity=64) as counts:
        yield counts


# --- the table ---
def test_each_process_writes_its_column_and_all_see_the_sum(
    table: SharedCounts, path: Path
) -> None:
    with SharedCounts.attach(path, 1) as one, SharedCounts.attach(path, 2) as two:
        assert bump(table, "all:100") == 1
        assert bump(one, "all:100", 2) == 2
        assert bump(two, "all:100") == 1
        assert bump(two, "out:100") == 1
        for view in (table, one, two):
            assert view.total("all:100") == 4 and view.total("out:100") == 1
            assert view.total("all:999") == 0
        assert (table.own("all:100"), one.own("all:100"), two.own("all:100")) == (1, 2, 1)
        assert bump(one, "all:100", -2) == 0
        assert table.total("all:100") == 2
        assert table.keys == one.keys == 2  # a key keeps its slot at 0


def test_a_dead_workers_column_is_cleared(table: SharedCounts, path: Path) -> None:
    with SharedCounts.attach(path, 2) as dead:
        for number in range(10):
            bump(dead, f"all:{number}", 3)
        bump(table, "all:1")
    table.clear_worker(2)
    assert [table.total(f"all:{n}") for n in range(10)] == [0, 1] + [0] * 8
    with SharedCounts.attach(path, 2) as replacement:  # starts from nothing
        assert replacement.own("all:1") == 0
        assert bump(replacement, "all:1") == 1
    assert table.total("all:1") == 2
    with pytest.raises(ValueError, match="worker 3"):
        table.clear_worker(3)


def test_create_starts_from_zero_and_leaves_an_old_mapping_alone(
    table: SharedCounts, path: Path
) -> None:
    bump(table, "all:100", 5)
    with SharedCounts.create(path, workers=2) as fresh, SharedCounts.attach(path, 1) as worker:
        assert fresh.total("all:100") == 0 and worker.total("all:100") == 0
        assert fresh.workers == 2 and fresh.keys == 0
        bump(worker, "all:100")
        # A process of the earlier run still maps the old file: it neither sees nor disturbs.
        assert table.total("all:100") == 5
        bump(table, "all:100", -5)
        assert fresh.total("all:100") == 1
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no scratch file


def test_a_full_table_refuses_new_keys_only(path: Path) -> None:
    with SharedCounts.create(path, workers=2, capacity=3) as counts:
        with SharedCounts.attach(path, 1) as other:
            for key in ("a", "b"):
                bump(counts, key)
            bump(other, "c")
            with pytest.raises(CountsFull, match="holds 3 keys"):
                bump(counts, "d")
            with pytest.raises(CountsFull):
                bump(other, "e")
            assert counts.keys == 3 and counts.total("d") == 0
            assert bump(counts, "c", 4) == 4 and other.total("c") == 5  # known keys still count


def test_own_count_stays_between_zero_and_int32(table: SharedCounts) -> None:
    with pytest.raises(ValueError, match="would be -1"):
        bump(table, "all:100", -1)
    bump(table, "all:100", 2**31 - 1)
    with pytest.raises(ValueError, match="would be"):
        bump(table, "all:100")
    assert table.total("all:100") == 2**31 - 1


def test_add_needs_the_lock_and_the_lock_nests(table: SharedCounts) -> None:
    with pytest.raises(RuntimeError, match="locked"):
        table.add("all:100", 1)
    with table.locked():
        with table.locked():
            table.add("all:100", 1)
        table.add("all:100", 1)  # still held after the inner block
    assert table.total("all:100") == 2


def test_bounds(path: Path, table: SharedCounts) -> None:
    for workers in (0, MAX_WORKERS + 1):
        with pytest.raises(ValueError, match="workers"):
            SharedCounts.create(path, workers)
    for capacity in (0, MAX_CAPACITY + 1):
        with pytest.raises(ValueError, match="capacity"):
            SharedCounts.create(path, 2, capacity)
    long_key = "x" * (MAX_KEY_BYTES + 1)
    with pytest.raises(ValueError, match="longer than"):
        table.total(long_key)
    with pytest.raises(ValueError, match="longer than"):
        bump(table, long_key)
    assert bump(table, "x" * MAX_KEY_BYTES) == 1
    for worker in (-1, 3):
        with pytest.raises(CountsFileError, match=f"worker {worker} outside"):
            SharedCounts.attach(path, worker)
    with SharedCounts.create(path.with_name("big"), MAX_WORKERS) as big:
        assert big.capacity == shared_counts.DEFAULT_CAPACITY
        bump(big, "k")


def _header(**fields: int) -> bytes:
    values = {"version": 1, "workers": 2, "capacity": 4, "slots": 8, "row": 16, "used": 0}
    values.update(fields)
    return shared_counts._HEADER.pack(b"SWCOUNT1", *values.values()).ljust(64, b"\0")


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"", "only 0 bytes"),
        (b"[sip]\nworkers = 2\n" * 10, "magic b'[sip]\\nwo'"),
        (_header(version=2) + bytes(8 * 16), "version 2, expected 1"),
        (_header(workers=17) + bytes(8 * 16), "workers 17"),
        (_header(capacity=0) + bytes(8 * 16), "capacity 0"),
        (_header(slots=16) + bytes(8 * 16), "slots 16"),
        (_header(row=8) + bytes(8 * 16), "row 8"),
        (_header() + bytes(8 * 16 - 1), "is 191 bytes, its header says 192"),
        (_header(used=5) + bytes(8 * 16), "5 keys in use"),
    ],
)
def test_attach_refuses_what_is_not_a_table(path: Path, content: bytes, error: str) -> None:
    path.write_bytes(content)
    with pytest.raises(CountsFileError) as caught:
        SharedCounts.attach(path, 0)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and error in message


def test_attach_accepts_the_header_the_tests_build(path: Path) -> None:
    path.write_bytes(_header() + bytes(8 * 16))
    with SharedCounts.attach(path, 1) as counts:
        assert (counts.workers, counts.capacity) == (2, 4)


def test_attach_a_missing_table(path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SharedCounts.attach(path, 0)


def test_the_lock_excludes_other_descriptions_not_shared_ones(
    table: SharedCounts, path: Path
) -> None:
    own = os.open(path, os.O_RDWR)  # what another process's attach opens
    shared = os.dup(table._fd)  # what a forked child would inherit
    try:
        with table.locked():
            with pytest.raises(BlockingIOError):
                fcntl.flock(own, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Same open file description: flock does not exclude (hence attach per process).
            fcntl.flock(shared, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(own, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released with the block
        fcntl.flock(own, fcntl.LOCK_UN)
    finally:
        os.close(own)
        os.close(shared)


def test_a_forked_child_may_not_lock_the_parents_table(table: SharedCounts) -> None:
    pid = os.fork()
    if pid == 0:  # the child: report by exit status only
        code = 1
        try:
            with table.locked():
                pass
        except RuntimeError:
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# --- CallLimits over one table from two processes' points of view ---
def test_limits_hold_across_workers(path: Path) -> None:
    with SharedCounts.create(path, 2) as primary, SharedCounts.attach(path, 1) as worker:
        here, there = CallLimits(primary), CallLimits(worker)
        assert here.counts is primary and CallLimits().counts is None
        callee = ext("201", max_calls=1)
        assert there.admit("x", ext("200"), callee) is None
        refusal = here.admit("y", ext("202"), callee)
        assert refusal is not None and refusal.status == 486
        assert here.active("201") == 1 and here.live_calls == 0
        here.release("x")  # not this process's call: nothing to take back
        assert there.active("201") == 1
        assert not here.join_within("y", "201", 1)
        there.release("x")
        assert here.join_within("y", "201", 1)
        assert there.check_callee(callee) is not None
        primary.clear_worker(0)  # the primary's calls are gone with it
        assert there.active("201") == 0


def test_a_full_table_refuses_calls_and_counts_nothing_of_them(path: Path) -> None:
    with SharedCounts.create(path, 1, capacity=3) as counts:
        limits = CallLimits(counts)
        assert limits.admit("c1", ext("100"), None) is None  # all:100, out:100
        # all:101 fits, out:101 does not: the half-made join is taken back.
        assert limits.admit("c2", ext("101"), None) is TABLE_FULL
        assert limits.active("101") == 0 and limits.live_calls == 1
        with pytest.raises(CountsFull):
            limits.join_within("c3", "trunk:t:in", None)
        assert limits.join_or_refuse("c3", "trunk:t:in", None, "unused") is TABLE_FULL
        limits.join("c3", "trunk:t:out")  # logged, not counted: the call is not cut
        assert limits.active("trunk:t:out") == 0
        limits.release("c3")
        assert limits.admit("c4", None, ext("101")) is None  # its key is there now
        assert limits.active("101") == 1
        limits.release("c4")
        limits.release("c1")
        assert limits.live_calls == 0 and counts.total("all:100") == 0


# --- processes at the same time ---
HAMMER_STEPS = 3000
HAMMER_ROUNDS = 20
HAMMER_LIMIT = 2
HAMMER_PROCESSES = 4


def _hammer(path: str, worker: int, start: Any, results: Any) -> None:
    """One worker process. First free running: admit and release calls to the limited extension
    500 (holding up to two at a time), noting after every step the machine-wide count read under
    the lock. Then rounds in step with the others: all try one call at once, and hold it until
    all have tried."""
    counts = SharedCounts.attach(path, worker)
    limits = CallLimits(counts)
    callee = ext("500", max_calls=HAMMER_LIMIT)
    caller = ext(f"10{worker}", max_calls=2, max_out=2)
    rng = random.Random(worker)
    held: list[str] = []
    most = 0
    start.wait(60)
    for step in range(HAMMER_STEPS):
        if held and (len(held) == 2 or rng.random() < 0.5):
            limits.release(held.pop(rng.randrange(len(held))))
        else:
            call = f"w{worker}-{step}"
            if rng.random() < 0.5:
                joined = limits.admit(call, caller, callee) is None
            else:
                joined = limits.join_within(call, "500", HAMMER_LIMIT)
            if joined:
                held.append(call)
            else:
                limits.release(call)  # (nothing to release: proves it is harmless)
        with counts.locked():
            most = max(most, limits.active("500"))
    for call in held:
        limits.release(call)
    wins: list[bool] = []
    for round_ in range(HAMMER_ROUNDS):
        call = f"w{worker}-round-{round_}"
        start.wait(60)
        if round_ % 2:
            won = limits.admit(call, caller, callee) is None
        else:
            won = limits.join_within(call, "500", HAMMER_LIMIT)
        start.wait(60)  # every process has tried; none has let go
        with counts.locked():
            most = max(most, limits.active("500"))
        limits.release(call)
        wins.append(won)
    results.put((worker, most, wins, limits.live_calls))
    counts.close()


def test_processes_hammering_one_limit_never_exceed_it(path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    with SharedCounts.create(path, HAMMER_PROCESSES + 1) as counts:
        start = context.Barrier(HAMMER_PROCESSES)
        results = context.Queue()
        processes = [
            context.Process(target=_hammer, args=(str(path), worker, start, results))
            for worker in range(1, HAMMER_PROCESSES + 1)
        ]
        for process in processes:
            process.start()
        try:
            reports = [results.get(timeout=120) for _ in processes]
        finally:
            for process in processes:
                process.join(timeout=30)
                if process.is_alive():
                    process.kill()
        assert [p.exitcode for p in processes] == [0] * HAMMER_PROCESSES
        assert sorted(r[0] for r in reports) == list(range(1, HAMMER_PROCESSES + 1))
        assert max(r[1] for r in reports) == HAMMER_LIMIT  # reached, never exceeded
        # Tried at the same time by four processes, a limit of two lets exactly two through.
        for round_ in range(HAMMER_ROUNDS):
            assert sum(r[2][round_] for r in reports) == HAMMER_LIMIT, round_
        assert all(r[3] == 0 for r in reports)
        for key in ["all:500", *(f"{kind}:10{w}" for kind in ("all", "out") for w in range(5))]:
            assert counts.total(key) == 0, key
