"""Integer counts keyed by short strings, shared by the server processes of one machine.

A ``SharedCounts`` table lives in a file mapped with ``mmap`` (``MAP_SHARED``): every process
that maps the same path sees the same numbers. The primary process makes a fresh, zeroed table
at start (``create``: the counts of a crashed earlier run are gone); each worker maps it
(``attach``) under its worker index.

Layout (little endian). A 64-byte header: magic, version, workers, capacity (keys the table
holds), slots (a power of two, at least twice the capacity, so a probe ends quickly), row size,
and the number of keys in use. Then one row per slot: the key's 64-bit blake2b hash (0: an empty
slot) followed by one int32 per worker. A process writes only its own column, so the
machine-wide count of a key is the sum of its row; ``clear_worker`` zeroes the column of a worker
that died (its calls are gone with it) before a replacement takes its index. Rows are found by
open addressing with linear probing; a slot, once given to a key, keeps it for the table's life,
so each process caches where its keys are. A full table raises ``CountsFull``. Keys are short
(``MAX_KEY_BYTES``) and come from the configuration (extension numbers, trunk names), never from
a peer; two keys with one 64-bit hash would share a count, a chance of about n**2 / 2**65.

Mutual exclusion is ``fcntl.flock`` on a descriptor each process opens itself: a flock lock
belongs to the *open file description*, so two descriptors that share one (inherited across
``fork``, or ``dup``) do not exclude each other. That is why a table is attached in every
process by path, never handed down, and why ``locked`` refuses to run in a process other than
the one that opened the table. The kernel drops the lock of a process that dies holding it.
Within one process the table is meant for one thread (the event loop): flock does not exclude
threads that share the descriptor.

Reads without the lock (``total`` for display) see each int32 whole but may mix columns from
before and after a concurrent change; a check and the change that depends on it belong inside
one ``with counts.locked():``.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
from pathlib import Path

from ..sip.transport.steering import MAX_WORKERS

MAGIC = b"SWCOUNT1"
VERSION = 1
MAX_CAPACITY = 1 << 18
DEFAULT_CAPACITY = 1 << 16
MAX_KEY_BYTES = 128
_INT32_MAX = (1 << 31) - 1

_HEADER = struct.Struct("<8sIIIIII")  # magic, version, workers, capacity, slots, row, used
_HEADER_SIZE = 64
_USED = struct.Struct("<I")
_USED_OFFSET = _HEADER.size - _USED.size
_HASH = struct.Struct("<Q")
_CELL = struct.Struct("<i")


class CountsFull(Exception):
    """The table holds ``capacity`` keys and cannot take another."""


class CountsFileError(ValueError):
    """The file is not a count table of this kind, or does not fit the request."""


def _slots_for(capacity: int) -> int:
    slots = 1
    while slots < 2 * capacity:
        slots <<= 1
    return slots


def _row_size(workers: int) -> int:
    return (8 + 4 * workers + 7) // 8 * 8


def _check_workers(workers: int) -> None:
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be 1..{MAX_WORKERS}, not {workers}")


class _Lock:
    """``with counts.locked():`` holds the table's flock; re-entering within it is allowed."""

    __slots__ = ("_counts",)

    def __init__(self, counts: SharedCounts) -> None:
        self._counts = counts

    def __enter__(self) -> SharedCounts:
        counts = self._counts
        if counts._depth == 0:
            counts._acquire()
        counts._depth += 1
        return counts

    def __exit__(self, *exc: object) -> None:
        counts = self._counts
        counts._depth -= 1
        if counts._depth == 0:
            fcntl.flock(counts._fd, fcntl.LOCK_UN)


class SharedCounts:
    """One process's view of a shared count table; make it with ``create`` or ``attach``."""

    def __init__(self, path: Path, fd: int, worker: int) -> None:
        """Map the table open at ``fd`` (checked against the header) as ``worker``."""
        self.path = path
        self._fd = fd
        self._pid = os.getpid()
        self._depth = 0
        self._lock = _Lock(self)
        size = os.fstat(fd).st_size
        if size < _HEADER_SIZE:
            raise CountsFileError(f"{path}: not a call count table (only {size} bytes)")
        magic, version, workers, capacity, slots, row, used = _HEADER.unpack(
            os.pread(fd, _HEADER.size, 0)
        )
        if magic != MAGIC:
            raise CountsFileError(f"{path}: not a call count table (magic {magic!r})")
        if version != VERSION:
            raise CountsFileError(f"{path}: count table version {version}, expected {VERSION}")
        if not 1 <= workers <= MAX_WORKERS or not 1 <= capacity <= MAX_CAPACITY:
            raise CountsFileError(
                f"{path}: damaged count table header (workers {workers}, capacity {capacity})"
            )
        if slots != _slots_for(capacity) or row != _row_size(workers):
            raise CountsFileError(f"{path}: damaged count table header (slots {slots}, row {row})")
        if used > capacity:
            raise CountsFileError(
                f"{path}: damaged count table header ({used} keys in use, capacity {capacity})"
            )
        if size != _HEADER_SIZE + slots * row:
            raise CountsFileError(
                f"{path}: count table is {size} bytes, its header says {_HEADER_SIZE + slots * row}"
            )
        if not 0 <= worker < workers:
            raise CountsFileError(f"{path}: worker {worker} outside the table's 0..{workers - 1}")
        self.worker = worker
        self.workers: int = workers
        self.capacity: int = capacity
        self._slots: int = slots
        self._mask: int = slots - 1
        self._row: int = row
        self._columns = struct.Struct(f"<{workers}i")
        self._own = 8 + 4 * worker
        access = mmap.PROT_READ | mmap.PROT_WRITE
        self._map = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=access)
        # Row offsets of keys seen in the table: a slot keeps its key for the table's life.
        self._where: dict[str, int] = {}

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], workers: int, capacity: int = DEFAULT_CAPACITY
    ) -> SharedCounts:
        """A fresh, zeroed table at ``path`` for ``workers`` processes, mapped as worker 0.

        The file is built beside ``path`` and renamed over it, so a process still mapping an
        earlier table at that path keeps its own (and cannot disturb the new counts)."""
        _check_workers(workers)
        if not 1 <= capacity <= MAX_CAPACITY:
            raise ValueError(f"capacity must be 1..{MAX_CAPACITY}, not {capacity}")
        target = Path(path)
        slots, row = _slots_for(capacity), _row_size(workers)
        scratch = target.with_name(f".{target.name}.{os.getpid()}.new")
        fd = os.open(scratch, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, _HEADER_SIZE + slots * row)
            header = _HEADER.pack(MAGIC, VERSION, workers, capacity, slots, row, 0)
            os.pwrite(fd, header, 0)
            os.replace(scratch, target)
            return cls(target, fd, 0)
        except BaseException:
            os.close(fd)
            scratch.unlink(missing_ok=True)
            raise

    @classmethod
    def attach(cls, path: str | os.PathLike[str], worker: int) -> SharedCounts:
        """Map the table the primary created at ``path`` as ``worker`` (opened here, so this
        process's flock excludes the others)."""
        target = Path(path)
        fd = os.open(target, os.O_RDWR)
        try:
            return cls(target, fd, worker)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        if self._fd >= 0:
            self._map.close()
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SharedCounts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- locking ---
    def locked(self) -> _Lock:
        """The table's lock, for ``with``: ``add`` needs it; ``total`` inside it is exact."""
        return self._lock

    def _acquire(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError(
                f"{self.path}: count table opened by process {self._pid}; attach it in this one"
            )
        if self._fd < 0:
            raise ValueError(f"{self.path}: count table is closed")
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    # --- counts ---
    def total(self, key: str) -> int:
        """The machine-wide count of ``key`` (0 for a key never counted)."""
        offset = self._where.get(key) or self._find(key, insert=False)
        return 0 if offset is None else sum(self._columns.unpack_from(self._map, offset + 8))

    def add(self, key: str, delta: int) -> int:
        """Add ``delta`` to this process's count of ``key`` (under the lock); the new own count.

        ``CountsFull`` when ``key`` is new and the table is full; ``ValueError`` when the own
        count would leave 0..2**31-1 (a process takes back only what it added). Either way
        nothing is changed."""
        if self._depth == 0:
            raise RuntimeError("SharedCounts.add outside 'with counts.locked()'")
        offset = self._where.get(key) or self._find(key, insert=True)
        assert offset is not None
        cell = offset + self._own
        value: int = _CELL.unpack_from(self._map, cell)[0] + delta
        if not 0 <= value <= _INT32_MAX:
            raise ValueError(f"count of {key!r} for worker {self.worker} would be {value}")
        _CELL.pack_into(self._map, cell, value)
        return value

    def own(self, key: str) -> int:
        """This process's own count of ``key``."""
        offset = self._where.get(key) or self._find(key, insert=False)
        if offset is None:
            return 0
        value: int = _CELL.unpack_from(self._map, offset + self._own)[0]
        return value

    @property
    def keys(self) -> int:
        """How many keys hold a slot (at most ``capacity``)."""
        used: int = _USED.unpack_from(self._map, _USED_OFFSET)[0]
        return used

    def clear_worker(self, worker: int) -> None:
        """Zero ``worker``'s column: that process is gone, and so are the calls it counted.
        The one write into another process's column; O(slots)."""
        if not 0 <= worker < self.workers:
            raise ValueError(f"worker {worker} outside the table's 0..{self.workers - 1}")
        cell = _HEADER_SIZE + 8 + 4 * worker
        with self.locked():
            for _ in range(self._slots):
                _CELL.pack_into(self._map, cell, 0)
                cell += self._row

    def _find(self, key: str, insert: bool) -> int | None:
        """The row offset of ``key``: found by probing from its hash, or (``insert``) given the
        first empty slot. The probe is bounded by the slot count; under half of the slots are
        ever used, so it ends within a few rows."""
        raw = key.encode()
        if len(raw) > MAX_KEY_BYTES:
            raise ValueError(f"count key longer than {MAX_KEY_BYTES} bytes: {key[:40]!r}...")
        digest = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little") or 1
        index = digest & self._mask
        memory = self._map
        for _ in range(self._slots):
            offset = _HEADER_SIZE + index * self._row
            found = _HASH.unpack_from(memory, offset)[0]
            if found == digest:
                self._where[key] = offset
                return offset
            if found == 0:
                if not insert:
                    return None
                used = self.keys
                if used >= self.capacity:
                    raise CountsFull(
                        f"{self.path}: the count table holds {self.capacity} keys and is full"
                    )
                _HASH.pack_into(memory, offset, digest)
                _USED.pack_into(memory, _USED_OFFSET, used + 1)
                self._where[key] = offset
                return offset
            index = (index + 1) & self._mask
        raise CountsFileError(f"{self.path}: count table has no empty slot (damaged)")
