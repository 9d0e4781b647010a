"""The in-process relay over real loopback sockets: SDP rewriting, RTP and RTCP both ways
(port + 1 and rtcp-mux), SRTP bytes untouched, symmetric RTP with strict latching (third
addresses and other ports dropped, a NATed leg learnt from its packets), re-INVITE updates and
hold, the inactivity timeout in virtual time, ports freed on delete, and every bound.

Loopback addresses other than 127.0.0.1 (127.0.0.2, .3, .4) stand for other hosts."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from sipswitch.media.ports import PortAllocator
from sipswitch.media.relay import InProcessRelay
from sipswitch.media.relay_backend import RelayError, is_private, media_targets
from sipswitch.sdp import SessionDescription, parse
from sipswitch.sip.clock import VirtualClock
from tests.blackbox.ports import free_port_block
from tests.netns.peers import UdpPeer, phone_sdp, rtcp_sr, rtp

RELAY = "127.0.0.1"
THIRD = "127.0.0.2"  # a host that is neither leg
NAT = "127.0.0.3"  # the public side of a NAT
NAT_POOL = "127.0.0.4"  # another address of a NAT's pool


@dataclass
class Env:
    relay: InProcessRelay
    clock: VirtualClock
    allocator: PortAllocator


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    base = free_port_block(64, RELAY)
    allocator = PortAllocator(base, base + 62)
    clock = VirtualClock()
    relay = InProcessRelay(allocator, clock, bind_ipv4=RELAY, timeout=30.0, hold_timeout=600.0)
    yield Env(relay, clock, allocator)
    await relay.close()
    assert allocator.in_use == 0


def relay_port(sdp: SessionDescription, index: int = 0) -> int:
    return sdp.media[index].port


async def setup_call(
    relay: InProcessRelay,
    a: UdpPeer,
    b: UdpPeer,
    *,
    call_id: str = "call-1",
    a_sdp: SessionDescription | None = None,
    b_sdp: SessionDescription | None = None,
    a_peer: str = "127.0.0.1",
    b_peer: str = "127.0.0.1",
) -> tuple[tuple[str, int], tuple[str, int]]:
    """Offer from a, answer from b; returns the relay addresses a and b must send to."""
    to_b = await relay.offer(
        call_id, "a", a_sdp or phone_sdp(*a.address), peer_host=a_peer, advertise=RELAY
    )
    to_a = await relay.answer(
        call_id, "b", b_sdp or phone_sdp(*b.address), peer_host=b_peer, advertise=RELAY
    )
    return (RELAY, relay_port(to_a)), (RELAY, relay_port(to_b))


async def test_rewrites_sdp_toward_each_leg(env: Env) -> None:
    offer = phone_sdp(
        "127.0.0.1",
        40000,
        extra="a=rtcp:40001 IN IP4 127.0.0.1\r\na=candidate:1 1 UDP 2130706431 192.0.2.9 4 typ"
        " host\r\na=ice-ufrag:abcd\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:KEY\r\n",
    )
    to_b = await env.relay.offer("c", "a", offer, peer_host="127.0.0.1", advertise="198.51.100.7")
    text = to_b.to_text()
    assert "c=IN IP4 198.51.100.7" in text and "o=phone 42 7 IN IP4 198.51.100.7" in text
    port_b = to_b.media[0].port
    assert port_b in env.relay.ports("c", "b") and port_b % 2 == 0
    assert "candidate" not in text and "ice-ufrag" not in text and "a=rtcp:" not in text
    assert "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:KEY" in text  # SRTP keys pass through
    assert "a=rtpmap:101 telephone-event/8000" in text and "a=sendrecv" in text
    to_a = await env.relay.answer(
        "c", "b", phone_sdp("127.0.0.1", 40100), peer_host="127.0.0.1", advertise="10.1.2.3"
    )
    assert to_a.connection is not None and to_a.connection.address == "10.1.2.3"
    assert to_a.media[0].port == env.relay.ports("c", "a")[0] != port_b
    assert env.allocator.in_use == 2


async def test_relays_rtp_and_rtcp_both_ways_untouched(env: Env) -> None:
    a, b = await UdpPeer.open(), await UdpPeer.open()
    a_rtcp = await UdpPeer.open(port=a.port + 1) if a.port % 2 == 0 else None
    try:
        to_relay_a, to_relay_b = await setup_call(env.relay, a, b)
        sent_ab = [rtp(seq) for seq in range(20)]  # random payloads: SRTP is bytes too
        for packet in sent_ab:
            a.send(packet, to_relay_a)
        got = [(await b.receive()) for _ in sent_ab]
        assert [data for data, _ in got] == sent_ab
        assert {src for _, src in got} == {to_relay_b}  # from the relay's port facing b
        sent_ba = [rtp(seq, ssrc=0x99) for seq in range(20)]
        for packet in sent_ba:
            b.send(packet, to_relay_b)
        assert [(await a.receive())[0] for _ in sent_ba] == sent_ba
        # RTCP goes port + 1 to port + 1.
        report = rtcp_sr(0x99)
        b.send(report, (RELAY, to_relay_b[1] + 1))
        if a_rtcp is not None:
            data, src = await a_rtcp.receive()
            assert data == report and src == (RELAY, to_relay_a[1] + 1)
        stats = await env.relay.stats("call-1")
        assert stats is not None
        assert (stats.a_to_b.packets, stats.b_to_a.packets) == (20, 20)
        assert stats.b_to_a.rtcp_packets == (1 if a_rtcp is not None else 0)
        assert stats.a_to_b.bytes == sum(map(len, sent_ab))
        assert stats.latched == {"a": a.address, "b": b.address}
        assert stats.dropped_source == 0
    finally:
        for peer in (a, b, a_rtcp):
            if peer is not None:
                peer.close()


async def test_rtcp_of_a_leg_that_sends_from_elsewhere_is_learnt(env: Env) -> None:
    a, b = await UdpPeer.open(), await UdpPeer.open()
    a_rtcp, b_rtcp = await UdpPeer.open(), await UdpPeer.open()
    try:
        a_sdp = phone_sdp(*a.address, extra=f"a=rtcp:{a_rtcp.port}\r\n")
        b_sdp = phone_sdp(*b.address, extra=f"a=rtcp:{b_rtcp.port} IN IP4 127.0.0.1\r\n")
        to_relay_a, to_relay_b = await setup_call(env.relay, a, b, a_sdp=a_sdp, b_sdp=b_sdp)
        report = rtcp_sr(1)
        a_rtcp.send(report, (RELAY, to_relay_a[1] + 1))
        assert (await b_rtcp.receive())[0] == report  # to b's a=rtcp port
        b_rtcp.send(report, (RELAY, to_relay_b[1] + 1))
        assert (await a_rtcp.receive())[0] == report
        # A stranger's RTCP is dropped once the leg's RTCP source is known.
        stranger = await UdpPeer.open(THIRD)
        stranger.send(report, (RELAY, to_relay_a[1] + 1))
        assert await b_rtcp.nothing()
        stranger.close()
    finally:
        for peer in (a, b, a_rtcp, b_rtcp):
            peer.close()


async def test_rtcp_mux(env: Env) -> None:
    a, b = await UdpPeer.open(), await UdpPeer.open()
    try:
        mux = "a=rtcp-mux\r\n"
        to_relay_a, to_relay_b = await setup_call(
            env.relay,
            a,
            b,
            a_sdp=phone_sdp(*a.address, extra=mux),
            b_sdp=phone_sdp(*b.address, extra=mux),
        )
        a.send(rtp(1), to_relay_a)
        await b.receive()
        report = rtcp_sr(5)
        a.send(report, to_relay_a)  # RTCP on the RTP port
        data, src = await b.receive()
        assert data == report and src == to_relay_b
        b.send(report, to_relay_b)
        assert (await a.receive())[0] == report
        stats = await env.relay.stats("call-1")
        assert stats is not None and stats.a_to_b.rtcp_packets == 1 and stats.a_to_b.packets == 1
    finally:
        a.close()
        b.close()


async def test_symmetric_rtp_answers_where_packets_come_from(env: Env) -> None:
    """A phone whose SDP names one port but sends from another gets media at the source."""
    a, b = await UdpPeer.open(), await UdpPeer.open()
    a_listen = await UdpPeer.open()  # what a's SDP names
    try:
        to_relay_a, to_relay_b = await setup_call(
            env.relay, a, b, a_sdp=phone_sdp(*a_listen.address)
        )
        b.send(rtp(1), to_relay_b)
        assert (await a_listen.receive())[0]  # before a has sent: its SDP address
        a.send(rtp(1), to_relay_a)
        await b.receive()
        b.send(rtp(2), to_relay_b)
        data, _ = await a.receive()  # afterwards: where a sends from
        assert data[2:4] == (2).to_bytes(2, "big")
        assert await a_listen.nothing(0.1)
    finally:
        for peer in (a, b, a_listen):
            peer.close()


async def test_strict_latching_drops_third_addresses_and_other_ports(env: Env) -> None:
    a, b = await UdpPeer.open(), await UdpPeer.open()
    stranger = await UdpPeer.open(THIRD)
    same_host = await UdpPeer.open()
    try:
        to_relay_a, to_relay_b = await setup_call(env.relay, a, b)
        # Before a has sent anything: a stranger's packet does not latch.
        stranger.send(rtp(100, ssrc=0xBAD), to_relay_a)
        assert await b.nothing()
        a.send(rtp(1), to_relay_a)
        await b.receive()
        # After latching: the stranger, and the right host from another port, are dropped.
        stranger.send(rtp(101, ssrc=0xBAD), to_relay_a)
        same_host.send(rtp(102, ssrc=0xBAD), to_relay_a)
        stranger.send(rtp(103, ssrc=0xBAD), to_relay_b)
        assert await b.nothing() and await a.nothing(0.05)
        a.send(rtp(2), to_relay_a)
        assert (await b.receive())[0][2:4] == (2).to_bytes(2, "big")
        stats = await env.relay.stats("call-1")
        assert stats is not None
        assert stats.dropped_source == 4 and stats.a_to_b.packets == 2
        assert stranger.drain() == []  # the relay never answered the stranger
    finally:
        for peer in (a, b, stranger, same_host):
            peer.close()


async def test_leg_behind_nat_is_learnt_from_its_public_address(env: Env) -> None:
    """SDP says 192.168.1.10 (private); the phone's signalling and media come from the NAT."""
    phone = await UdpPeer.open(NAT)
    b = await UdpPeer.open()
    try:
        private = phone_sdp("192.168.1.10", 4000)
        to_relay_a, to_relay_b = await setup_call(
            env.relay, phone, b, a_sdp=private, a_peer=NAT
        )
        # Nothing is sent toward the private address before the phone has sent.
        b.send(rtp(1), to_relay_b)
        assert await phone.nothing(0.1)
        phone.send(rtp(1), to_relay_a)
        await b.receive()
        b.send(rtp(2), to_relay_b)
        data, src = await phone.receive()
        assert src == to_relay_a and data[2:4] == (2).to_bytes(2, "big")
        stats = await env.relay.stats("call-1")
        assert stats is not None and stats.latched["a"] == phone.address
        assert stats.dropped_early == 1
    finally:
        phone.close()
        b.close()


async def test_nat_leg_first_packet_then_expected_host_takes_over(env: Env) -> None:
    """A NAT that sends media from another address of its pool than the signalling: the first
    packet latches; a packet from the signalling address replaces it once, then it is fixed."""
    pool = await UdpPeer.open(NAT_POOL)
    public = await UdpPeer.open(NAT)
    b = await UdpPeer.open()
    try:
        to_relay_a, to_relay_b = await setup_call(
            env.relay, pool, b, a_sdp=phone_sdp("10.9.8.7", 5000), a_peer=NAT
        )
        pool.send(rtp(1), to_relay_a)
        await b.receive()
        b.send(rtp(1), to_relay_b)
        assert (await pool.receive())[1] == to_relay_a
        public.send(rtp(2), to_relay_a)  # the expected host takes over
        await b.receive()
        pool.send(rtp(3), to_relay_a)  # and now the pool address is a stranger
        assert await b.nothing()
        b.send(rtp(2), to_relay_b)
        assert (await public.receive())[0][2:4] == (2).to_bytes(2, "big")
        stats = await env.relay.stats("call-1")
        assert stats is not None and stats.latched["a"] == public.address
        assert stats.dropped_source == 1
    finally:
        for peer in (pool, public, b):
            peer.close()


async def test_without_nat_learning_a_stranger_never_latches(env: Env) -> None:
    relay = InProcessRelay(env.allocator, env.clock, bind_ipv4=RELAY, learn_behind_nat=False)
    pool, b = await UdpPeer.open(NAT_POOL), await UdpPeer.open()
    try:
        to_relay_a, _ = await setup_call(
            relay, pool, b, a_sdp=phone_sdp("10.9.8.7", 5000), a_peer=NAT
        )
        pool.send(rtp(1), to_relay_a)
        assert await b.nothing()
    finally:
        await relay.close()
        pool.close()
        b.close()


async def test_reinvite_moves_a_leg_and_hold_keeps_the_latch(env: Env) -> None:
    a, b = await UdpPeer.open(), await UdpPeer.open()
    b2 = await UdpPeer.open()
    try:
        to_relay_a, to_relay_b = await setup_call(env.relay, a, b)
        a.send(rtp(1), to_relay_a)
        await b.receive()
        b.send(rtp(1), to_relay_b)
        await a.receive()
        ports_before = (env.relay.ports("call-1", "a"), env.relay.ports("call-1", "b"))
        # b re-INVITEs with a new address (it moved to b2): offer from b, answer from a.
        to_a = await env.relay.offer(
            "call-1", "b", phone_sdp(*b2.address), peer_host="127.0.0.1", advertise=RELAY
        )
        to_b = await env.relay.answer(
            "call-1", "a", phone_sdp(*a.address), peer_host="127.0.0.1", advertise=RELAY
        )
        assert (to_a.media[0].port, to_b.media[0].port) == (to_relay_a[1], to_relay_b[1])
        assert ports_before == (env.relay.ports("call-1", "a"), env.relay.ports("call-1", "b"))
        a.send(rtp(2), to_relay_a)
        assert (await b2.receive())[0][2:4] == (2).to_bytes(2, "big")
        assert await b.nothing(0.05)
        b2.send(rtp(2), to_relay_b)  # b's new source latches
        await a.receive()
        b.send(rtp(3), to_relay_b)  # the old one no longer does
        assert await a.nothing()
        # a puts b on hold with the old-style 0.0.0.0 address: nothing is sent to a ...
        await env.relay.offer(
            "call-1",
            "a",
            phone_sdp("0.0.0.0", a.port, direction="sendonly"),
            peer_host="127.0.0.1",
            advertise=RELAY,
        )
        b2.send(rtp(4), to_relay_b)
        assert await a.nothing()
        # ... and resuming with the same address keeps what was learnt (a's latch).
        await env.relay.offer(
            "call-1", "a", phone_sdp(*a.address), peer_host="127.0.0.1", advertise=RELAY
        )
        await env.relay.answer(
            "call-1", "b", phone_sdp(*b2.address), peer_host="127.0.0.1", advertise=RELAY
        )
        b2.send(rtp(5), to_relay_b)
        assert (await a.receive())[0][2:4] == (5).to_bytes(2, "big")
        stats = await env.relay.stats("call-1")
        assert stats is not None and stats.latched == {"a": a.address, "b": b2.address}
    finally:
        for peer in (a, b, b2):
            peer.close()


async def test_reinvite_adds_a_stream(env: Env) -> None:
    a, b = await UdpPeer.open(), await UdpPeer.open()
    va, vb = await UdpPeer.open(), await UdpPeer.open()
    try:
        await setup_call(env.relay, a, b)

        def two(audio: int, video: int) -> SessionDescription:
            return phone_sdp(
                "127.0.0.1",
                0,
                media_lines=f"m=audio {audio} RTP/AVP 0\r\nm=video {video} RTP/AVP 96\r\n"
                "a=rtpmap:96 H264/90000\r\n",
            )

        to_b = await env.relay.offer(
            "call-1", "a", two(a.port, va.port), peer_host="127.0.0.1", advertise=RELAY
        )
        to_a = await env.relay.answer(
            "call-1", "b", two(b.port, vb.port), peer_host="127.0.0.1", advertise=RELAY
        )
        assert len(to_b.media) == len(to_a.media) == 2
        frame = rtp(1, payload=bytes(1200), pt=96)
        va.send(frame, (RELAY, to_a.media[1].port))
        assert (await vb.receive())[0] == frame
        assert env.allocator.in_use == 4
    finally:
        for peer in (a, b, va, vb):
            peer.close()


async def test_rejected_stream_and_inactive_media(env: Env) -> None:
    a = await UdpPeer.open()
    sdp = phone_sdp("127.0.0.1", 0, media_lines="m=audio 0 RTP/AVP 0\r\n")
    to_b = await env.relay.offer("c", "a", sdp, peer_host="127.0.0.1", advertise=RELAY)
    assert to_b.media[0].port == 0
    targets = media_targets(phone_sdp("0.0.0.0", 4000, direction="inactive"))
    assert targets[0].host is None and not targets[0].active
    a.close()


async def test_inactivity_timeout_calls_the_handler_once(env: Env) -> None:
    a, b = await UdpPeer.open(), await UdpPeer.open()
    silent: list[str] = []
    env.relay.on_inactive = silent.append
    try:
        to_relay_a, _ = await setup_call(env.relay, a, b)
        env.clock.advance(20)
        assert silent == []
        a.send(rtp(1), to_relay_a)
        await b.receive()
        env.clock.advance(20)  # the packet is seen by the next check (every 5 s): t = 25
        assert silent == []
        env.clock.advance(10)  # t = 50: 25 s of silence
        assert silent == []
        env.clock.advance(10)  # t = 60: the check at 55 found 30 s of silence
        assert silent == ["call-1"]
        env.clock.advance(100)
        assert silent == ["call-1"]  # once, until media comes back
        stats = await env.relay.stats("call-1")
        assert stats is not None and stats.last_activity is not None
        assert "call-1" in env.relay
    finally:
        a.close()
        b.close()


async def test_inactivity_on_hold_and_unanswered_uses_the_hold_timeout(env: Env) -> None:
    a = await UdpPeer.open()
    silent: list[str] = []
    env.relay.on_inactive = silent.append
    await env.relay.offer("ringing", "a", phone_sdp(*a.address), peer_host="127.0.0.1",
                          advertise=RELAY)
    await env.relay.offer("held", "a", phone_sdp(*a.address, direction="inactive"),
                          peer_host="127.0.0.1", advertise=RELAY)
    await env.relay.answer("held", "b", phone_sdp("127.0.0.1", 4000, direction="inactive"),
                           peer_host="127.0.0.1", advertise=RELAY)
    env.clock.advance(300)
    assert silent == []
    env.clock.advance(310)
    assert sorted(silent) == ["held", "ringing"]
    a.close()


async def test_call_on_hold_with_sendonly_is_not_taken_for_dead(env: Env) -> None:
    """Phones holding a call with a=sendonly often send nothing (and the held side, recvonly,
    must not): the hold timeout applies, not the one for dead media; resuming restores it."""
    a = await UdpPeer.open()
    silent: list[str] = []
    env.relay.on_inactive = silent.append
    try:
        await env.relay.offer("hold", "a", phone_sdp(*a.address), peer_host="127.0.0.1",
                              advertise=RELAY)  # fmt: skip
        await env.relay.answer("hold", "b", phone_sdp("127.0.0.1", 4000),
                               peer_host="127.0.0.1", advertise=RELAY)  # fmt: skip
        await env.relay.offer("hold", "a", phone_sdp(*a.address, direction="sendonly"),
                              peer_host="127.0.0.1", advertise=RELAY)  # fmt: skip
        await env.relay.answer("hold", "b", phone_sdp("127.0.0.1", 4000, direction="recvonly"),
                               peer_host="127.0.0.1", advertise=RELAY)  # fmt: skip
        env.clock.advance(300)
        assert silent == []
        # Resumed: silence now means dead media again.
        await env.relay.offer("hold", "a", phone_sdp(*a.address), peer_host="127.0.0.1",
                              advertise=RELAY)  # fmt: skip
        await env.relay.answer("hold", "b", phone_sdp("127.0.0.1", 4000),
                               peer_host="127.0.0.1", advertise=RELAY)  # fmt: skip
        env.clock.advance(40)
        assert silent == ["hold"]
    finally:
        a.close()


async def test_inactive_call_without_handler_is_deleted_and_ports_freed(env: Env) -> None:
    a, b = await UdpPeer.open(), await UdpPeer.open()
    try:
        await setup_call(env.relay, a, b)
        assert env.allocator.in_use == 2
        env.clock.advance(40)
        assert "call-1" not in env.relay and env.allocator.in_use == 0
        assert env.clock.pending == 0  # no check left running without calls
    finally:
        a.close()
        b.close()


async def test_delete_frees_ports_and_closes_sockets(env: Env) -> None:
    a, b = await UdpPeer.open(), await UdpPeer.open()
    try:
        to_relay_a, to_relay_b = await setup_call(env.relay, a, b)
        await env.relay.delete("call-1")
        await env.relay.delete("call-1")  # twice is harmless
        assert env.allocator.in_use == 0 and await env.relay.stats("call-1") is None
        await asyncio.sleep(0.01)  # the loop closes the sockets on its next turn
        for port in (to_relay_a[1], to_relay_a[1] + 1, to_relay_b[1], to_relay_b[1] + 1):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind((RELAY, port))  # free again
    finally:
        a.close()
        b.close()


async def test_malformed_packets_are_dropped(env: Env) -> None:
    a, b = await UdpPeer.open(), await UdpPeer.open()
    try:
        to_relay_a, _ = await setup_call(env.relay, a, b)
        for junk in (b"\x80\x00", bytes(20), b"\x00\x01" + bytes(18), bytes([0x80]) * 5000):
            a.send(junk, to_relay_a)
        a.send(rtp(1), to_relay_a)
        assert (await b.receive())[0][2:4] == (1).to_bytes(2, "big")
        stats = await env.relay.stats("call-1")
        assert stats is not None and stats.dropped_malformed == 4
    finally:
        a.close()
        b.close()


async def test_ipv6_leg(env: Env) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        a6 = await UdpPeer.open("::1")
    except OSError as exc:
        pytest.skip(f"cannot bind ::1: {exc}")
    relay = InProcessRelay(env.allocator, env.clock, bind_ipv4=RELAY, bind_ipv6="::1")
    b = await UdpPeer.open()
    try:
        to_b = await relay.offer("v6", "a", phone_sdp(*a6.address), peer_host="::1",
                                 advertise=RELAY, sender_advertise="::1")
        to_a = await relay.answer("v6", "b", phone_sdp(*b.address), peer_host="127.0.0.1",
                                  advertise="::1")
        assert "c=IN IP6 ::1" in to_a.to_text() and "c=IN IP4 127.0.0.1" in to_b.to_text()
        a6.send(rtp(1), ("::1", to_a.media[0].port))
        assert (await b.receive())[1] == (RELAY, to_b.media[0].port)
        b.send(rtp(2), (RELAY, to_b.media[0].port))
        assert (await a6.receive())[0][2:4] == (2).to_bytes(2, "big")
    finally:
        await relay.close()
        a6.close()
        b.close()


async def test_bounds_and_errors(env: Env) -> None:
    relay = InProcessRelay(env.allocator, env.clock, bind_ipv4=RELAY, max_calls=2, max_streams=2)
    try:
        offer = phone_sdp("127.0.0.1", 4000)
        await relay.offer("1", "a", offer, peer_host="127.0.0.1", advertise=RELAY)
        await relay.offer("2", "a", offer, peer_host="127.0.0.1", advertise=RELAY)
        with pytest.raises(RelayError) as busy:
            await relay.offer("3", "a", offer, peer_host="127.0.0.1", advertise=RELAY)
        assert busy.value.status == 503
        await relay.offer("1", "a", offer, peer_host="127.0.0.1", advertise=RELAY)  # re-offer
        three = phone_sdp("127.0.0.1", 0, media_lines="m=audio 4000 RTP/AVP 0\r\n" * 3)
        with pytest.raises(RelayError) as streams:
            await relay.offer("1", "a", three, peer_host="127.0.0.1", advertise=RELAY)
        assert streams.value.status == 488
        named = parse("v=0\r\no=- 1 1 IN IP4 h.example\r\ns=-\r\nc=IN IP4 h.example\r\nt=0 0\r\n"
                      "m=audio 4000 RTP/AVP 0\r\n")
        with pytest.raises(RelayError) as host:
            await relay.offer("1", "a", named, peer_host="127.0.0.1", advertise=RELAY)
        assert host.value.status == 488
        with pytest.raises(RelayError):
            await relay.answer("none", "b", offer, peer_host="127.0.0.1", advertise=RELAY)
        with pytest.raises(RelayError):
            await relay.answer("1", "a", offer, peer_host="127.0.0.1", advertise=RELAY)
        with pytest.raises(ValueError):
            await relay.offer("1", "a", offer, peer_host="127.0.0.1", advertise="relay.example")
        with pytest.raises(ValueError):
            await relay.offer("1", "c", offer, peer_host="127.0.0.1", advertise=RELAY)  # type: ignore[arg-type]
        assert relay.call_count == 2
    finally:
        await relay.close()


async def test_ports_exhausted_leaks_nothing() -> None:
    base = free_port_block(8, RELAY)
    allocator = PortAllocator(base, base + 6)  # four pairs: two calls
    relay = InProcessRelay(allocator, VirtualClock(), bind_ipv4=RELAY, max_calls=10)
    try:
        offer = phone_sdp("127.0.0.1", 4000)
        for call in ("1", "2"):
            await relay.offer(call, "a", offer, peer_host="127.0.0.1", advertise=RELAY)
        with pytest.raises(RelayError) as exhausted:
            await relay.offer("3", "a", offer, peer_host="127.0.0.1", advertise=RELAY)
        assert exhausted.value.status == 503
        assert "3" not in relay and allocator.in_use == 4
        await relay.delete("1")
        await relay.offer("3", "a", offer, peer_host="127.0.0.1", advertise=RELAY)
    finally:
        await relay.close()
    assert allocator.in_use == 0


def test_private_addresses() -> None:
    for host in ("10.0.0.1", "192.168.1.1", "172.16.5.5", "100.64.0.1", "fd00::1", "fe80::1",
                 "127.0.0.1", "0.0.0.0"):
        assert is_private(host), host
    for host in ("198.51.100.1", "8.8.8.8", "2001:4860::1", "not-an-ip"):
        assert not is_private(host), host
