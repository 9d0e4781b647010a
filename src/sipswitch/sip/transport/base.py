"""What every transport shares: peer addresses and the interface between transports and the
transaction layer.

A transport turns bytes from the network into messages and hands them to a ``MessageSink``;
the layers above send through ``Transport.send`` with a destination ``Address``. For stream
transports an ``Address`` of a connected peer names that connection, so responses and requests
to a phone registered over TCP reuse the connection it opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..message import Message
from ..parser import MessageError, parse_datagram

RELIABLE = frozenset({"tcp", "tls", "ws", "wss"})


@dataclass(frozen=True, slots=True)
class Address:
    """A transport endpoint: ``transport`` is "udp", "tcp" or "tls"; ``host`` is an IP literal
    without brackets; ``port`` an integer."""

    transport: str
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport in RELIABLE

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


class MessageSink(Protocol):
    """Receives what transports read. ``local`` is the listening address that received it."""

    def on_message(self, message: Message, source: Address, local: Address) -> None: ...

    def on_parse_error(self, error: MessageError, source: Address, local: Address) -> None: ...


def deliver_whole(sink: MessageSink, data: bytes, source: Address, local: Address) -> None:
    """Parse one whole message (a datagram, or a framed stream message handed on) and give it,
    or its parse error, to ``sink``."""
    try:
        message = parse_datagram(data)
    except MessageError as error:
        sink.on_parse_error(error, source, local)
        return
    sink.on_message(message, source, local)


class Transport(Protocol):
    """Sends bytes to an address. ``send`` never blocks; failures are logged, not raised, except
    that a stream transport with no connection and no way to open one returns False."""

    def send(self, data: bytes, destination: Address) -> bool: ...
