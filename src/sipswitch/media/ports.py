"""The RTP port range: hands out even ports (RTP on the even port, RTCP on the next odd one) and
takes them back when a call's media closes.

Ports are handed out round-robin, so a port just freed is the last to be reused: late packets
of an ended call do not land in a new one.
"""

from __future__ import annotations


class PortsExhausted(RuntimeError):
    """Every port pair of the range is in use; a call gets 503 rather than media."""

    status = 503


class PortAllocator:
    """Even RTP ports in ``[low, high]`` (RTCP is port + 1, so ``high`` + 1 is used too)."""

    def __init__(self, low: int = 10000, high: int = 20000) -> None:
        if low % 2:
            low += 1
        if high % 2:
            high -= 1
        if not 1024 <= low <= high <= 65534:
            raise ValueError(
                f"RTP port range {low}-{high} is not an even range within 1024-65534"
            )
        self.low = low
        self.high = high
        self._in_use: set[int] = set()
        self._next = low

    @property
    def capacity(self) -> int:
        """How many RTP/RTCP pairs the range holds."""
        return (self.high - self.low) // 2 + 1

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    @property
    def free(self) -> int:
        return self.capacity - len(self._in_use)

    def allocate(self) -> int:
        """An even port not in use. Raises ``PortsExhausted`` when the range is full."""
        if len(self._in_use) >= self.capacity:
            raise PortsExhausted(
                f"no free RTP port: all {self.capacity} pairs of {self.low}-{self.high + 1} "
                "are in use"
            )
        port = self._next
        while port in self._in_use:
            port = port + 2 if port < self.high else self.low
        self._in_use.add(port)
        self._next = port + 2 if port < self.high else self.low
        return port

    def release(self, port: int) -> None:
        """Give a port back (releasing a port twice, or one never allocated, does nothing)."""
        self._in_use.discard(port)

    def __contains__(self, port: object) -> bool:
        return port in self._in_use
