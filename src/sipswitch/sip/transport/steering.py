"""Which worker process owns a message, and the channel that carries messages between processes.

With ``[sip] workers = N`` the primary process (worker 0) reads every socket and hands each
message to the worker that owns its dialog, chosen from the Call-ID alone: a byte search, no
parse. Call-IDs a worker makes itself carry its number (``w3-…``), so the responses and
in-dialog requests of the legs it originates come home to it; any other Call-ID is hashed.
A REGISTER belongs to the owner of its address-of-record (``owner_of_aor``), the one writer
of that address's registrations.

Between the primary and a worker runs a ``Channel``: a Unix datagram socket pair (message
boundaries kept, no port anyone else can reach, no ten-datagram queue limit since the pair is
connected both ways) carrying frames:

* ``M`` a message received by the primary for the worker, with its source and the index of the
  listening socket that took it;
* ``S`` a message a worker asks the primary to send on a TCP or TLS connection it holds;
* ``E`` an event (JSON): a registration change, a ban, a reachability change.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import re
import socket
import zlib
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote

log = logging.getLogger(__name__)

MAX_WORKERS = 16  # processes a server may run (the shared call counts have a column each)
# The largest frame: a message (at most 65,535 octets) with its frame header, or an event (one
# extension's bindings: up to its max_contacts of them). A longer one is refused, not cut.
FRAME_LIMIT = 256 * 1024
CHANNEL_BUFFER = 4 * 1024 * 1024
MAX_QUEUED = 4096  # frames waiting for a busy peer before new ones are dropped
_READ_BATCH = 128  # frames read per wake-up before other callbacks get their turn

_CALL_ID = re.compile(rb"\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


def call_id_prefix(worker: int) -> str:
    """What the Call-IDs made by ``worker`` start with."""
    return f"w{worker}-"


def find_call_id(data: bytes) -> bytes | None:
    """The Call-ID of a raw message (None when it has none)."""
    found = _CALL_ID.search(data)
    return found.group(1).rstrip() if found is not None else None


def owner_of_call_id(call_id: bytes, workers: int) -> int:
    """The worker owning a dialog: the one named by a worker-made Call-ID, else a hash."""
    if call_id[:1] == b"w":
        dash = call_id.find(b"-", 1, 4)
        if dash > 1 and call_id[1:dash].isdigit():
            worker = int(call_id[1:dash])
            if worker < workers:
                return worker
    return zlib.crc32(call_id) % workers


def owner_of_aor(aor: str, workers: int) -> int:
    """The process that takes the REGISTERs of an address-of-record (and alone writes its
    bindings): a hash of the address, so all of its devices meet in one process."""
    return zlib.crc32(aor.encode()) % workers if workers > 1 else 0


def owner_of(data: bytes, workers: int) -> int:
    """The worker a raw message goes to by its Call-ID; REGISTERs (owned by their address of
    record, which takes a parse: ``owner_of_aor``) and messages without a Call-ID go to the
    primary (0)."""
    if workers < 2 or data.startswith(b"REGISTER "):
        return 0
    call_id = find_call_id(data)
    if not call_id:
        return 0
    return owner_of_call_id(call_id, workers)


# --- frames ---
def message_frame(
    data: bytes,
    transport: str,
    host: str,
    port: int,
    local_index: int,
    identities: frozenset[str] = frozenset(),
) -> bytes:
    """``identities``: what the verified certificate of a TLS connection names (the worker
    recognises TLS trunks by it)."""
    names = (
        b" " + ",".join(quote(n, safe="") for n in sorted(identities)).encode()
        if identities
        else b""
    )
    return b"M %s %s %d %d%s\n%s" % (
        transport.encode(),
        host.encode(),
        port,
        local_index,
        names,
        data,
    )


def frame_identities(fields: list[str]) -> frozenset[str]:
    """The certificate identities an ``M`` frame's header carries."""
    if len(fields) < 5 or not fields[4]:
        return frozenset()
    return frozenset(unquote(n) for n in fields[4].split(","))


def send_frame(data: bytes, transport: str, host: str, port: int) -> bytes:
    return b"S %s %s %d\n%s" % (transport.encode(), host.encode(), port, data)


def event_frame(event: dict[str, Any]) -> bytes:
    return b"E" + json.dumps(event, separators=(",", ":")).encode()


def split_frame(frame: bytes) -> tuple[list[str], bytes]:
    """(header fields, payload) of an M or S frame; ValueError when malformed."""
    end = frame.index(b"\n", 0, 300)
    return frame[2:end].decode().split(" "), frame[end + 1 :]


class Channel:
    """One end of a Unix datagram socket pair read and written on the running loop.

    ``on_frame`` gets every frame received. Sending never blocks: when the peer is busy the
    frame waits in a bounded queue flushed as soon as the socket takes more; past the bound a
    frame is dropped (a datagram lost, as on the network: the sender retransmits)."""

    def __init__(self, sock: socket.socket, on_frame: Callable[[bytes], None]) -> None:
        sock.setblocking(False)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, CHANNEL_BUFFER)
            except OSError:
                pass
        self.sock = sock
        self.on_frame = on_frame
        self._buffer = bytearray(FRAME_LIMIT)  # read into, then copied out at its length
        self._view = memoryview(self._buffer)
        self._queue: collections.deque[bytes] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.dropped = 0
        self.closed = False

    @staticmethod
    def pair() -> tuple[socket.socket, socket.socket]:
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def send(self, frame: bytes) -> bool:
        if self.closed:
            return False
        if len(frame) > FRAME_LIMIT:
            log.error("a frame of %d octets is over the channel's limit: not sent", len(frame))
            return False
        if self._queue:
            return self._enqueue(frame)
        try:
            self.sock.send(frame)
        except BlockingIOError:
            return self._enqueue(frame)
        except OSError as exc:
            log.debug("channel send failed: %s", exc)
            return False
        return True

    def _enqueue(self, frame: bytes) -> bool:
        if len(self._queue) >= MAX_QUEUED:
            self.dropped += 1
            return False
        if not self._queue and self._loop is not None:
            self._loop.add_writer(self.sock.fileno(), self._writable)
        self._queue.append(frame)
        return True

    def _writable(self) -> None:
        queue = self._queue
        try:
            while queue:
                self.sock.send(queue[0])
                queue.popleft()
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("channel send failed: %s", exc)
            queue.clear()
        if self._loop is not None:
            self._loop.remove_writer(self.sock.fileno())

    def _readable(self) -> None:
        recv_into, view = self.sock.recv_into, self._view
        for _ in range(_READ_BATCH):
            try:
                frame = bytes(view[: recv_into(view)])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("channel read failed: %s", exc)
                return
            if not frame:
                continue
            try:
                self.on_frame(frame)
            except Exception:
                log.exception("frame handler failed")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.sock.fileno())
            if self._queue:
                self._loop.remove_writer(self.sock.fileno())
        self._queue.clear()
        self.sock.close()
