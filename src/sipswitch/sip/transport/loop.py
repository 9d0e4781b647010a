"""An in-memory network for tests and simulations: ``LoopTransport`` endpoints send bytes through
a ``LoopNetwork`` that delivers them after a latency on the injected clock, parsing them on the
way (so framing and parse errors are exercised), records every message and can drop some.
"""

from __future__ import annotations

from collections.abc import Callable

from ..clock import Clock
from .base import Address, MessageSink, deliver_whole

LossPredicate = Callable[[Address, Address, bytes], bool]


class LoopNetwork:
    """Connects ``LoopTransport`` endpoints by address.

    ``sent`` records every message handed to the network as ``(source, destination, bytes)``
    (dropped ones too) and ``sent_times`` the clock time of each, so tests can assert
    retransmission schedules; ``dropped`` lists what loss injection swallowed.
    """

    def __init__(self, clock: Clock, latency: float = 0.001, record: bool = True) -> None:
        self.clock = clock
        self.latency = latency
        self.record = record
        self.sent: list[tuple[Address, Address, bytes]] = []
        self.sent_times: list[float] = []
        self.dropped: list[tuple[Address, Address, bytes]] = []
        self.delivered = 0
        self._sinks: dict[Address, MessageSink] = {}
        self._drop_next = 0
        self._drop_predicate: LossPredicate | None = None
        self._drop_limit: int | None = None

    # --- endpoints ---
    def attach(self, address: Address, sink: MessageSink) -> None:
        if address in self._sinks:
            raise ValueError(f"{address} is already attached")
        self._sinks[address] = sink

    def detach(self, address: Address) -> None:
        self._sinks.pop(address, None)

    def is_attached(self, address: Address) -> bool:
        return address in self._sinks

    # --- loss injection ---
    def drop_next(self, count: int = 1) -> None:
        """Drop the next ``count`` messages sent by anyone."""
        self._drop_next += count

    def drop_matching(self, predicate: LossPredicate | None, limit: int | None = None) -> None:
        """Drop messages for which ``predicate(source, destination, data)`` is true, at most
        ``limit`` of them (None: until cleared with ``drop_matching(None)``)."""
        self._drop_predicate = predicate
        self._drop_limit = limit

    # --- recording ---
    def clear_record(self) -> None:
        self.sent.clear()
        self.sent_times.clear()
        self.dropped.clear()

    def sent_between(
        self, source: Address | None = None, destination: Address | None = None
    ) -> list[tuple[float, bytes]]:
        """(time, bytes) of every recorded message from ``source`` to ``destination``."""
        return [
            (at, data)
            for at, (src, dst, data) in zip(self.sent_times, self.sent, strict=True)
            if (source is None or src == source) and (destination is None or dst == destination)
        ]

    # --- carrying messages ---
    def transmit(self, source: Address, destination: Address, data: bytes) -> bool:
        """Carry ``data``; False when a reliable destination has nobody attached (no connection
        could be opened). Datagrams to nowhere are lost silently, as on a real network."""
        if self.record:
            self.sent.append((source, destination, data))
            self.sent_times.append(self.clock.now())
        if destination.reliable and destination not in self._sinks:
            return False
        if self._should_drop(source, destination, data):
            self.dropped.append((source, destination, data))
            return True
        self.clock.call_later(self.latency, self._deliver, source, destination, data)
        return True

    def _should_drop(self, source: Address, destination: Address, data: bytes) -> bool:
        if self._drop_next > 0:
            self._drop_next -= 1
            return True
        predicate = self._drop_predicate
        if predicate is not None and predicate(source, destination, data):
            if self._drop_limit is not None:
                self._drop_limit -= 1
                if self._drop_limit <= 0:
                    self._drop_predicate = None
                    self._drop_limit = None
            return True
        return False

    def _deliver(self, source: Address, destination: Address, data: bytes) -> None:
        sink = self._sinks.get(destination)
        if sink is None:
            return
        self.delivered += 1
        deliver_whole(sink, data, source, destination)


class LoopTransport:
    """One endpoint on a ``LoopNetwork``; implements ``Transport``. Attach the sink that
    receives what is sent to ``address`` with ``attach`` (usually the transaction layer, which
    itself needs the transport first)."""

    def __init__(
        self, network: LoopNetwork, address: Address, sink: MessageSink | None = None
    ) -> None:
        self.network = network
        self.address = address
        self.sink: MessageSink | None = None
        if sink is not None:
            self.attach(sink)

    def attach(self, sink: MessageSink) -> None:
        self.network.attach(self.address, sink)
        self.sink = sink

    def close(self) -> None:
        self.network.detach(self.address)
        self.sink = None

    def send(self, data: bytes, destination: Address) -> bool:
        if destination.transport != self.address.transport:
            return False
        return self.network.transmit(self.address, destination, data)
