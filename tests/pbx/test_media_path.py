"""When a call is relayed (relay_reason) and how a relayed call's messages cross (MediaPath:
in order, SDP rewritten by the real in-process relay, failures reported, closed calls quiet)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sipswitch.config.settings import NatSettings
from sipswitch.media.ports import PortAllocator
from sipswitch.media.relay import InProcessRelay
from sipswitch.media.relay_backend import Leg, RelayError
from sipswitch.pbx.addresses import AddressPlan
from sipswitch.pbx.media_path import Kind, MediaPath, Side, is_sdp, relay_reason, sdp_host
from sipswitch.sdp.model import parse as parse_sdp

PLAN = AddressPlan(NatSettings())
OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 192.168.1.20\r\ns=-\r\nc=IN IP4 192.168.1.20\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def side(signalling: str, named: str | None, forward: bool = False) -> Side:
    return Side(signalling, named, forward, f"phone at {signalling}")


@pytest.mark.parametrize(
    ("caller", "callee", "always", "reason"),
    [
        (side("192.168.1.20", "192.168.1.20"), side("192.168.1.21", "192.168.1.21"), False, None),
        (side("192.168.1.20", "192.168.1.20"), side("192.168.1.21", "192.168.1.21"), True,
         "relay always on"),
        (side("192.168.1.20", "192.168.1.20", True), side("192.168.1.21", "192.168.1.21"), False,
         "forward media on phone at 192.168.1.20"),
        (side("192.168.1.20", "192.168.1.20"), side("10.0.0.1", "10.0.0.1", True), False,
         "forward media on phone at 10.0.0.1"),
        # A phone on the Internet whose SDP names its LAN address: behind NAT.
        (side("198.51.100.7", "192.168.0.10"), side("192.168.1.21", "192.168.1.21"), False,
         "phone at 198.51.100.7 behind NAT"),
        # A phone on the Internet with a public address and one in the LAN: two realms.
        (side("198.51.100.7", "198.51.100.7"), side("192.168.1.21", "192.168.1.21"), False,
         "sides in different address realms"),
        # Two public phones: same realm, nothing to do.
        (side("198.51.100.7", "198.51.100.7"), side("203.0.113.9", "203.0.113.9"), False, None),
        # No address known for a side (no SDP, no Contact): cannot tell, so relay.
        (side("198.51.100.7", None), side("203.0.113.9", "203.0.113.9"), False,
         "phone at 198.51.100.7 behind NAT"),
    ],
)  # fmt: skip
def test_relay_reason(caller: Side, callee: Side, always: bool, reason: str | None) -> None:
    assert relay_reason(caller, callee, PLAN, always) == reason


def test_sdp_helpers() -> None:
    assert is_sdp("application/sdp", OFFER)
    assert is_sdp("Application/SDP; charset=utf-8", OFFER)
    assert not is_sdp("application/dtmf-relay", b"Signal=1")
    assert not is_sdp("application/sdp", b"")
    assert sdp_host(OFFER) == "192.168.1.20"
    assert sdp_host(b"not an sdp") is None
    assert sdp_host(None) is None


class Spawner:
    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []

    def __call__(self, coroutine: Any) -> None:
        self.tasks.append(asyncio.ensure_future(coroutine))

    async def settle(self) -> None:
        while any(not task.done() for task in self.tasks):
            await asyncio.gather(*self.tasks)


async def test_messages_cross_in_order_and_sdp_is_rewritten() -> None:
    relay = InProcessRelay(PortAllocator(30000, 30100))
    spawn = Spawner()
    path = MediaPath("call-1", relay, spawn)
    seen: list[tuple[str, bytes | None]] = []
    failures: list[RelayError] = []
    try:
        # Not relayed yet: passed on at once, untouched.
        path.pass_on("application/sdp", OFFER, None, lambda b: seen.append(("direct", b)),
                     failures.append)  # fmt: skip
        assert seen == [("direct", OFFER)]
        assert path.engage("test") and path.relayed
        step: tuple[Kind, Leg, str, str, str] = (
            "offer", "a", "192.168.1.20", "127.0.0.1", "127.0.0.1"
        )  # fmt: skip
        path.pass_on("application/sdp", OFFER, step, lambda b: seen.append(("offer", b)),
                     failures.append)  # fmt: skip
        # A body-less message behind it waits its turn.
        path.pass_on(None, b"", None, lambda b: seen.append(("plain", b)), failures.append)
        assert [name for name, _ in seen] == ["direct"]
        await spawn.settle()
        assert [name for name, _ in seen] == ["direct", "offer", "plain"]
        rewritten = seen[1][1]
        assert rewritten is not None
        description = parse_sdp(rewritten)
        assert description.connection is not None
        assert description.connection.address == "127.0.0.1"
        assert 30000 <= description.media[0].port <= 30100
        assert "call-1" in relay
        # An SDP the relay cannot take is reported, not passed on.
        bad = OFFER.replace(b"c=IN IP4 192.168.1.20", b"c=IN IP4 phone.example")
        path.pass_on("application/sdp", bad, step, lambda b: seen.append(("bad", b)),
                     failures.append)  # fmt: skip
        await spawn.settle()
        assert len(failures) == 1 and failures[0].status in (400, 488)
        assert [name for name, _ in seen] == ["direct", "offer", "plain"]
        # Closed: the relay forgets the call; nothing more is passed on through it.
        path.close()
        await spawn.settle()
        assert "call-1" not in relay
    finally:
        await relay.close()
