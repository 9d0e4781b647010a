"""Shared pieces of the transport tests: a recording sink, SIP messages as bytes, bounded waits
and an IPv6 check."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import pytest

from sipswitch.sip.message import Message
from sipswitch.sip.parser import MessageError, StreamFramer
from sipswitch.sip.transport.base import Address

WAIT = 3.0  # seconds: upper bound for anything a test waits for on loopback


class RecordingSink:
    """A MessageSink that keeps what it receives and lets a test await the next item."""

    def __init__(self) -> None:
        self.messages: list[tuple[Message, Address, Address]] = []
        self.errors: list[tuple[MessageError, Address, Address]] = []
        self._arrived = asyncio.Event()

    def on_message(self, message: Message, source: Address, local: Address) -> None:
        self.messages.append((message, source, local))
        self._arrived.set()

    def on_parse_error(self, error: MessageError, source: Address, local: Address) -> None:
        self.errors.append((error, source, local))
        self._arrived.set()

    async def wait_for(self, messages: int = 0, errors: int = 0) -> None:
        """Wait until at least this many messages and errors arrived."""
        async def until() -> None:
            while len(self.messages) < messages or len(self.errors) < errors:
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(until(), WAIT)


def request(
    method: str = "OPTIONS",
    call_id: str = "call-1",
    body: bytes = b"",
    content_length: str | None = None,
    via: str = "SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK-1",
) -> bytes:
    length = str(len(body)) if content_length is None else content_length
    head = (
        f"{method} sip:100@127.0.0.1 SIP/2.0\r\n"
        f"Via: {via}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:200@127.0.0.1>;tag=a1\r\n"
        "To: <sip:100@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 {method}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    return head.encode() + body


def response(call_id: str = "call-1", status: int = 200) -> bytes:
    return (
        f"SIP/2.0 {status} OK\r\n"
        "Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK-1\r\n"
        "From: <sip:200@127.0.0.1>;tag=a1\r\n"
        "To: <sip:100@127.0.0.1>;tag=b2\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll a condition that socket I/O will make true (never a timer: those run on a virtual
    clock); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.001)


class MessageReader:
    """Reads SIP messages one at a time from a stream, keeping any that arrived together."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.framer = StreamFramer()
        self.ready: list[Message] = []

    async def next(self) -> Message:
        async def read() -> Message:
            while not self.ready:
                data = await self.reader.read(65536)
                if not data:
                    raise AssertionError("connection closed before a message arrived")
                self.ready.extend(self.framer.feed(data))
            return self.ready.pop(0)

        return await asyncio.wait_for(read(), WAIT)


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything the peer writes until it closes (a reset counts as a close)."""
    async def read() -> bytes:
        chunks = []
        while True:
            try:
                data = await reader.read(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    return await asyncio.wait_for(read(), WAIT)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_IPV6 = _has_ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback (::1) on this machine")


async def wait_until_closed(address: Address) -> None:
    """Wait until nothing accepts TCP connections on ``address``."""
    async def refused() -> None:
        while True:
            try:
                _, writer = await asyncio.open_connection(address.host, address.port)
            except OSError:
                return
            writer.close()
            await asyncio.sleep(0.01)

    await asyncio.wait_for(refused(), WAIT)
