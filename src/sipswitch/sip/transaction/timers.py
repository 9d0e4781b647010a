"""The RFC 3261 §17 timer values (T1, T2, T4 and the derived timers A–M) in one place.

Timers D, I, J and K are zero over reliable transports (the transaction ends at once);
Timers L and M are the RFC 6026 "Accepted" state timers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TimerSettings:
    """Base values in seconds; every other timer is derived from them."""

    t1: float = 0.5  # RTT estimate
    t2: float = 4.0  # longest retransmit interval for non-INVITE requests and INVITE responses
    t4: float = 5.0  # longest time a message stays in the network
    d_unreliable: float = 32.0  # Timer D over UDP ("at least 32 seconds")

    def __post_init__(self) -> None:
        if not (self.t1 > 0 and self.t2 >= self.t1 and self.t4 > 0 and self.d_unreliable >= 0):
            raise ValueError("Timer values must be positive and T2 must not be below T1")

    # --- client INVITE ---
    @property
    def timer_a(self) -> float:
        """First INVITE retransmit interval (unreliable only); doubles without a cap."""
        return self.t1

    @property
    def timer_b(self) -> float:
        """INVITE transaction timeout while no response has arrived."""
        return 64 * self.t1

    def timer_d(self, reliable: bool) -> float:
        """Wait time for response retransmissions after a non-2xx final response."""
        return 0.0 if reliable else self.d_unreliable

    @property
    def timer_m(self) -> float:
        """RFC 6026: how long the client stays Accepted to pass on forked/retransmitted 2xx."""
        return 64 * self.t1

    # --- client non-INVITE ---
    @property
    def timer_e(self) -> float:
        """First non-INVITE retransmit interval (unreliable only); doubles, capped at T2."""
        return self.t1

    @property
    def timer_f(self) -> float:
        """Non-INVITE transaction timeout."""
        return 64 * self.t1

    def timer_k(self, reliable: bool) -> float:
        """Wait time for response retransmissions after a final non-INVITE response."""
        return 0.0 if reliable else self.t4

    # --- server INVITE ---
    @property
    def timer_g(self) -> float:
        """First INVITE final-response retransmit interval (unreliable); capped at T2."""
        return self.t1

    @property
    def timer_h(self) -> float:
        """Wait time for the ACK of a non-2xx final response."""
        return 64 * self.t1

    def timer_i(self, reliable: bool) -> float:
        """Wait time for ACK retransmissions after the ACK arrived."""
        return 0.0 if reliable else self.t4

    @property
    def timer_l(self) -> float:
        """RFC 6026: wait time for the ACK of a 2xx (the server stays Accepted this long)."""
        return 64 * self.t1

    # --- server non-INVITE ---
    def timer_j(self, reliable: bool) -> float:
        """Wait time for request retransmissions after a final non-INVITE response."""
        return 0.0 if reliable else 64 * self.t1

    @property
    def server_non_invite_limit(self) -> float:
        """How long a non-INVITE server transaction waits for the TU's final response before it
        is dropped (the client gave up after Timer F anyway); keeps the tables bounded."""
        return 64 * self.t1


DEFAULT_TIMERS = TimerSettings()
