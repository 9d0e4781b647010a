"""The media relay interface the B2BUA drives (offer/answer per leg, delete, statistics,
inactivity), and what its engines share: legs, statistics, errors and reading an SDP's media
targets.

A relayed call has two legs, ``"a"`` (the caller) and ``"b"`` (the callee). Whichever leg sends an
offer, ``offer`` takes that SDP and returns the one to send to the other leg, with the relay's
address and ports in it; ``answer`` does the same for the answering leg's SDP. A re-INVITE is
``offer``/``answer`` again on the same call id (either leg may offer); it updates addresses and
ports, and a side whose media address did not change keeps what the relay learnt about it.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ..sdp.model import MediaDescription, SessionDescription
from ..sip.errors import SipError

Leg = Literal["a", "b"]
LEGS: tuple[Leg, Leg] = ("a", "b")

# ICE cannot survive a relay that rewrites addresses: the candidates would let the phones go
# around it. Removed from every SDP a relay writes.
ICE_ATTRIBUTES = (
    "candidate",
    "remote-candidates",
    "ice-ufrag",
    "ice-pwd",
    "ice-options",
    "ice-lite",
    "ice-mismatch",
    "end-of-candidates",
)


class RelayError(SipError):
    """A relay request that cannot be carried out; ``status`` is the SIP answer to give (503 when
    the relay has no capacity or does not answer, 488 for media it cannot relay)."""

    def __init__(self, reason: str, status: int = 503) -> None:
        super().__init__(reason, status)


def other_leg(leg: Leg) -> Leg:
    return "b" if leg == "a" else "a"


def check_leg(leg: str) -> Leg:
    if leg == "a":
        return "a"
    if leg == "b":
        return "b"
    raise ValueError(f"relay leg must be 'a' or 'b', not {leg!r}")


@dataclass(slots=True)
class FlowStats:
    """What the relay received from one leg and passed on to the other."""

    packets: int = 0  # RTP packets relayed
    bytes: int = 0  # RTP and RTCP bytes relayed
    rtcp_packets: int = 0  # RTCP packets relayed


@dataclass(slots=True)
class RelayStats:
    """One call's relay counters. ``last_activity`` is the clock time media was last seen
    (to the precision of the inactivity check), ``latched`` each leg's learnt RTP source."""

    a_to_b: FlowStats = field(default_factory=FlowStats)
    b_to_a: FlowStats = field(default_factory=FlowStats)
    dropped_source: int = 0  # from an address other than the leg's latched or expected one
    dropped_early: int = 0  # before the relay knew where the packet should go
    dropped_malformed: int = 0  # too short or too long to be RTP/RTCP
    last_activity: float | None = None
    latched: dict[str, tuple[str, int]] = field(default_factory=dict)

    def flow(self, from_leg: Leg) -> FlowStats:
        return self.a_to_b if from_leg == "a" else self.b_to_a


class RelayBackend(Protocol):
    """A media relay engine. The in-process relay (``media.relay.InProcessRelay``) is the
    default; ``media.rtpengine.RtpEngineRelay`` drives an external rtpengine."""

    on_inactive: Callable[[str], None] | None
    """Called with the call id once that call's media has been silent for the relay's timeout
    (the B2BUA hangs the call up and calls ``delete``). Without a handler the relay deletes the
    call itself."""

    async def offer(
        self,
        call_id: str,
        leg: Leg,
        sdp: SessionDescription,
        *,
        peer_host: str,
        advertise: str,
        sender_advertise: str | None = None,
    ) -> SessionDescription:
        """Relay the offer ``sdp`` that ``leg`` sent from signalling address ``peer_host``;
        returns the SDP to send to the other leg, with ``advertise`` (the relay address that leg
        can reach: the local one toward the LAN, the external one toward the WAN) and the
        relay's ports in it. ``sender_advertise`` is the address the offering leg reaches the
        relay at, for engines that pick a network interface per side. Raises ``RelayError``."""
        ...

    async def answer(
        self,
        call_id: str,
        leg: Leg,
        sdp: SessionDescription,
        *,
        peer_host: str,
        advertise: str,
        sender_advertise: str | None = None,
    ) -> SessionDescription:
        """Relay the answer ``sdp`` that ``leg`` sent; returns the SDP for the offering leg, with
        ``advertise`` (the address the offering leg can reach) in it. A provisional answer
        (183) and the final one may both be given. Raises ``RelayError``."""
        ...

    async def delete(self, call_id: str) -> None:
        """End the call's relaying and free its ports (an unknown call id does nothing)."""
        ...

    async def stats(self, call_id: str) -> RelayStats | None:
        """The call's counters, or None for an unknown call."""
        ...

    def __contains__(self, call_id: object) -> bool: ...

    async def close(self) -> None:
        """Delete every call and release the engine."""
        ...


# --- reading an SDP's media targets -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaTarget:
    """Where one m= stream of an SDP wants its media: RTP ``host:port``, RTCP ``host:rtcp_port``
    (``a=rtcp`` or port + 1), ``mux`` when ``a=rtcp-mux`` is present. ``host`` is None for a
    stream on hold with the 0.0.0.0 / :: address, ``port`` 0 for a rejected stream."""

    host: str | None
    port: int
    rtcp_host: str | None
    rtcp_port: int
    mux: bool
    direction: str

    @property
    def active(self) -> bool:
        return self.port != 0 and self.host is not None and self.direction != "inactive"

    @property
    def two_way(self) -> bool:
        """Active and not on hold: media is due both ways."""
        return self.active and self.direction == "sendrecv"


def _literal(address: str, where: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        raise RelayError(
            f"media address in {where} must be an IP address: {address[:60]!r}", 488
        ) from None


def media_target(sdp: SessionDescription, media: MediaDescription) -> MediaTarget:
    """The target of one media section. Raises ``RelayError`` (488) for a host name."""
    direction = sdp.direction_of(media)
    conn = sdp.connection_of(media)
    if media.port == 0 or conn is None:
        return MediaTarget(None, 0, None, 0, False, direction)
    host: str | None = _literal(conn.address, "c=")
    if host is not None and ipaddress.ip_address(host).is_unspecified:
        host = None
    mux = media.attribute("rtcp-mux") is not None
    rtcp_host, rtcp_port = host, media.port + 1
    rtcp = media.attribute("rtcp")
    if rtcp:
        parts = rtcp.split()
        if parts and parts[0].isdigit() and len(parts[0]) <= 5 and 0 < int(parts[0]) <= 65535:
            rtcp_port = int(parts[0])
            if len(parts) == 4 and parts[1] == "IN":
                rtcp_host = _literal(parts[3], "a=rtcp")
    if rtcp_port > 65535:
        rtcp_port = media.port  # RTP on 65535 leaves no room for RTCP; only mux works
    return MediaTarget(host, media.port, rtcp_host, rtcp_port, mux, direction)


def media_targets(sdp: SessionDescription) -> list[MediaTarget]:
    return [media_target(sdp, media) for media in sdp.media]


def is_private(host: str) -> bool:
    """An address that cannot be reached from the Internet (RFC 1918, CGNAT, ULA, link-local,
    loopback, unspecified): in an SDP from elsewhere it says the phone is behind NAT.
    Documentation ranges count as public, as the tests use them for the Internet."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if address.is_unspecified or address.is_loopback or address.is_link_local:
        return True
    return any(address in network for network in _PRIVATE if network.version == address.version)


_PRIVATE = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


@functools.lru_cache(maxsize=4096)
def behind_nat(signalled_host: str | None, peer_host: str) -> bool:
    """Whether a leg whose SDP names ``signalled_host`` and whose signalling came from
    ``peer_host`` is behind NAT: its SDP address is private, or absent, and is not where its
    signalling came from (two loopback addresses are the same machine, not a NAT)."""
    if signalled_host is None:
        return True
    if signalled_host == peer_host or not is_private(signalled_host):
        return False
    # On one machine every loopback address reaches every other one.
    return not (_is_loopback(signalled_host) and _is_loopback(peer_host))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
