"""The rtpengine engine: the bencode codec (fixtures, round trips, every malformed form
refused within bounds), the ng client's retransmission and time-out against a UDP peer that
drops or never answers, and RtpEngineRelay against a real rtpengine (Debian rtpengine-daemon,
userspace forwarding) started here: ping, SDP rewriting, RTP and RTCP relayed both ways,
strict source, re-INVITE, statistics, inactivity, errors and delete."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from sipswitch.media.relay_backend import RelayError
from sipswitch.media.rtpengine import (
    MAX_DEPTH,
    BencodeError,
    BValue,
    NgClient,
    RtpEngineDaemon,
    RtpEngineError,
    RtpEngineRelay,
    RtpEngineTimeout,
    bdecode,
    bencode,
)
from sipswitch.sdp import parse
from sipswitch.sip.clock import VirtualClock
from tests.blackbox.ports import free_port_block
from tests.netns.peers import UdpPeer, phone_sdp, rtcp_sr, rtp

HOST = "127.0.0.1"

# --- bencode ----------------------------------------------------------------------------------


def test_bencode_fixtures() -> None:
    assert bencode({"command": "ping"}) == b"d7:command4:pinge"
    assert bencode({"b": 1, "a": [b"x", "yz", -3, 0]}) == b"d1:al1:x2:yzi-3ei0ee1:bi1ee"
    assert bencode("") == b"0:" and bencode(0) == b"i0e"
    assert bdecode(b"d6:result4:ponge") == {"result": "pong"}
    assert bdecode(b"le") == [] and bdecode(b"de") == {}
    assert bdecode(b"i-42e") == -42
    assert bdecode(b"2:\xc3\xa9") == "\u00e9"  # lengths count UTF-8 bytes
    with pytest.raises(TypeError):
        bencode(True)
    with pytest.raises(TypeError):
        bencode(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        bencode({1: "x"})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"i12",
        b"i-e",
        b"i01e",
        b"i-0x1e",
        b"i" + b"9" * 30 + b"e",
        b"5:abc",
        b"05:abcde",
        b"999999999:x",
        b"l1:a",
        b"d1:a",
        b"di1e1:ae",
        b"d1:ae",
        b"x",
        b"i1ei2e",
        b"1:ab",
        b"l" * (MAX_DEPTH + 2) + b"e" * (MAX_DEPTH + 2),
        b"l" + b"le" * 100_001 + b"e",
        b"1:" + b"a" * 70_000,
    ],
)
def test_bdecode_refuses_malformed_and_oversized(data: bytes) -> None:
    with pytest.raises(BencodeError):
        bdecode(data)


_values: st.SearchStrategy[Any] = st.recursive(
    st.integers(min_value=-(2**62), max_value=2**62) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)


@given(_values)
@settings(max_examples=300, deadline=None)
def test_bencode_round_trip(value: BValue) -> None:
    assert bdecode(bencode(value)) == value


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_bdecode_any_bytes_decodes_or_raises(data: bytes) -> None:
    try:
        bdecode(data)
    except BencodeError:
        pass


# --- the ng client against a UDP peer that misbehaves -----------------------------------------


class _Engine(asyncio.DatagramProtocol):
    """Answers ng requests like rtpengine, after dropping the first ``drop`` of them."""

    def __init__(self, drop: int) -> None:
        self.drop = drop
        self.requests: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.requests.append(data)
        if len(self.requests) <= self.drop:
            return
        assert self.transport is not None
        cookie, _, body = data.partition(b" ")
        request = bdecode(body)
        assert isinstance(request, dict)
        self.transport.sendto(b"someone-else " + bencode({"result": "pong"}), addr)
        self.transport.sendto(cookie + b" {not bencode", addr)
        if request.get("command") == "ping":
            self.transport.sendto(cookie + b" " + bencode({"result": "pong"}), addr)
        else:
            reply = {"result": "error", "error-reason": "Unrecognized command"}
            self.transport.sendto(cookie + b" " + bencode(reply), addr)


async def _engine(drop: int) -> tuple[asyncio.DatagramTransport, _Engine]:
    loop = asyncio.get_running_loop()
    return await loop.create_datagram_endpoint(lambda: _Engine(drop), local_addr=(HOST, 0))


async def test_ng_client_retransmits_until_answered() -> None:
    transport, engine = await _engine(drop=2)
    port = transport.get_extra_info("sockname")[1]
    client = await NgClient.open(HOST, port, retransmit=0.05, timeout=5.0)
    try:
        await client.ping()
        assert len(engine.requests) == 3 and client.retransmissions == 2
        assert len(set(engine.requests)) == 1  # the same cookie every time
        assert client.stray >= 1 and client.waiting == 0
        with pytest.raises(RtpEngineError) as error:
            await client.request("bogus")
        assert error.value.engine_reason == "Unrecognized command"
        assert error.value.status == 503
    finally:
        client.close()
        transport.close()


async def test_ng_client_times_out_with_bounded_sends() -> None:
    transport, engine = await _engine(drop=1_000)
    port = transport.get_extra_info("sockname")[1]
    client = await NgClient.open(HOST, port, retransmit=0.05, timeout=0.5)
    try:
        with pytest.raises(RtpEngineTimeout) as timeout:
            await client.ping()
        assert isinstance(timeout.value, RelayError) and timeout.value.status == 503
        # 0.05, 0.1, 0.2 doubling within 0.5 s: five sends at most.
        assert 2 <= len(engine.requests) <= 5
        assert client.waiting == 0
    finally:
        client.close()
        transport.close()


async def test_ng_client_bounds_waiting_requests_and_size() -> None:
    transport, _ = await _engine(drop=1_000)
    port = transport.get_extra_info("sockname")[1]
    client = await NgClient.open(HOST, port, retransmit=1.0, timeout=1.0, max_pending=2)
    try:
        with pytest.raises(RelayError) as big:
            await client.request("offer", {"sdp": "x" * 70_000})
        assert big.value.status == 488
        waiting = [asyncio.ensure_future(client.ping()) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(RelayError) as full:
            await client.ping()
        assert full.value.status == 503 and client.waiting == 2
        for future in waiting:
            future.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        assert client.waiting == 0
    finally:
        client.close()
        transport.close()


# --- against a real rtpengine -----------------------------------------------------------------

needs_rtpengine = pytest.mark.skipif(
    RtpEngineDaemon.available() is None,
    reason="rtpengine is not installed (scripts/install-test-deps.sh installs rtpengine-daemon)",
)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def daemon() -> AsyncIterator[RtpEngineDaemon]:
    base = free_port_block(100, HOST)
    engine = RtpEngineDaemon(interfaces=(HOST,), port_min=base, port_max=base + 99)
    await engine.start()
    yield engine
    await engine.stop()
    assert not engine.running


@pytest_asyncio.fixture(loop_scope="module")
async def relay(daemon: RtpEngineDaemon) -> AsyncIterator[RtpEngineRelay]:
    client = await NgClient.open(*daemon.ng_address, timeout=5.0)
    engine_relay = RtpEngineRelay(client, poll_interval=3600)
    yield engine_relay
    await engine_relay.close()
    client.close()


async def _call(
    relay: RtpEngineRelay, call_id: str, a: UdpPeer, b: UdpPeer
) -> tuple[tuple[str, int], tuple[str, int]]:
    to_b = await relay.offer(call_id, "a", phone_sdp(*a.address), peer_host=HOST, advertise=HOST)
    to_a = await relay.answer(call_id, "b", phone_sdp(*b.address), peer_host=HOST, advertise=HOST)
    assert to_a.connection is not None and to_b.connection is not None
    return (
        (to_a.connection.address, to_a.media[0].port),
        (to_b.connection.address, to_b.media[0].port),
    )


@needs_rtpengine
@pytest.mark.asyncio(loop_scope="module")
async def test_rtpengine_ping_and_sdp_rewrite(
    relay: RtpEngineRelay, daemon: RtpEngineDaemon
) -> None:
    await relay.client.ping()
    offer = phone_sdp(HOST, 40000, extra="a=candidate:1 1 UDP 2130706431 192.0.2.9 4 typ host\r\n")
    to_b = await relay.offer("rw", "a", offer, peer_host=HOST, advertise=HOST)
    text = to_b.to_text()
    assert "c=IN IP4 127.0.0.1" in text and "candidate" not in text
    assert daemon.port_min <= to_b.media[0].port <= daemon.port_max
    assert to_b.media[0].port != 40000
    assert "rw" in relay
    await relay.delete("rw")
    assert "rw" not in relay


@needs_rtpengine
@pytest.mark.asyncio(loop_scope="module")
async def test_rtpengine_relays_rtp_and_rtcp_both_ways(relay: RtpEngineRelay) -> None:
    a, b = await UdpPeer.open(), await UdpPeer.open()
    try:
        to_relay_a, to_relay_b = await _call(relay, "media", a, b)
        sent = [rtp(seq, payload=bytes([seq]) * 160) for seq in range(50)]
        for packet in sent:
            a.send(packet, to_relay_a)
        got = [(await b.receive())[0] for _ in sent]
        # SSRC, sequence numbers and payload untouched; rtpengine's threads may reorder a burst.
        assert sorted(got) == sorted(sent)
        back = [rtp(seq, ssrc=0x77) for seq in range(50)]
        for packet in back:
            b.send(packet, to_relay_b)
        assert sorted([(await a.receive())[0] for _ in back]) == sorted(back)
        stats = await relay.stats("media")
        assert stats is not None
        assert (stats.a_to_b.packets, stats.b_to_a.packets) == (50, 50)
        assert stats.latched == {"a": a.address, "b": b.address}
    finally:
        await relay.delete("media")
        a.close()
        b.close()


@needs_rtpengine
@pytest.mark.asyncio(loop_scope="module")
async def test_rtpengine_rtcp_on_port_plus_one(relay: RtpEngineRelay) -> None:
    a, b = await UdpPeer.open(), await UdpPeer.open()
    b_rtcp = await UdpPeer.open()
    try:
        to_b = await relay.offer("rtcp", "a", phone_sdp(*a.address), peer_host=HOST,
                                 advertise=HOST)
        b_sdp = phone_sdp(*b.address, extra=f"a=rtcp:{b_rtcp.port}\r\n")
        to_a = await relay.answer("rtcp", "b", b_sdp, peer_host=HOST, advertise=HOST)
        a.send(rtp(1), (HOST, to_a.media[0].port))
        await b.receive()
        report = rtcp_sr(0x1234)
        a.send(report, (HOST, to_a.media[0].port + 1))
        data, _ = await b_rtcp.receive()
        assert data[:2] == report[:2]  # rtpengine may rewrite report contents, not the type
        stats = await relay.stats("rtcp")
        assert stats is not None and stats.a_to_b.rtcp_packets == 1
        assert to_b.media[0].port % 2 == 0
    finally:
        await relay.delete("rtcp")
        for peer in (a, b, b_rtcp):
            peer.close()


@needs_rtpengine
@pytest.mark.asyncio(loop_scope="module")
async def test_rtpengine_strict_source_drops_third_addresses(relay: RtpEngineRelay) -> None:
    a, b = await UdpPeer.open(), await UdpPeer.open()
    stranger = await UdpPeer.open("127.0.0.2")
    try:
        to_relay_a, _ = await _call(relay, "strict", a, b)
        for seq in range(5):
            a.send(rtp(seq), to_relay_a)
            await b.receive()
        for seq in range(5):
            stranger.send(rtp(100 + seq, ssrc=0xBAD), to_relay_a)
        assert await b.nothing(0.5)
        a.send(rtp(9), to_relay_a)
        assert (await b.receive())[0][2:4] == (9).to_bytes(2, "big")
    finally:
        await relay.delete("strict")
        for peer in (a, b, stranger):
            peer.close()


@needs_rtpengine
@pytest.mark.asyncio(loop_scope="module")
async def test_rtpengine_reinvite_moves_a_leg(relay: RtpEngineRelay) -> None:
    a, b, b2 = await UdpPeer.open(), await UdpPeer.open(), await UdpPeer.open()
    try:
        to_relay_a, to_relay_b = await _call(relay, "move", a, b)
        a.send(rtp(1), to_relay_a)
        await b.receive()
        to_a = await relay.offer("move", "b", phone_sdp(*b2.address), peer_host=HOST,
                                 advertise=HOST)
        to_b = await relay.answer("move", "a", phone_sdp(*a.address), peer_host=HOST,
                                  advertise=HOST)
        # rtpengine may hand out new ports in a re-INVITE: the new SDP says which.
        to_relay_a, to_relay_b = (HOST, to_a.media[0].port), (HOST, to_b.media[0].port)
        a.send(rtp(2), to_relay_a)
        assert (await b2.receive())[0][2:4] == (2).to_bytes(2, "big")
        b2.send(rtp(3), to_relay_b)
        assert (await a.receive())[0][2:4] == (3).to_bytes(2, "big")
        assert await b.nothing(0.1)
    finally:
        await relay.delete("move")
        for peer in (a, b, b2):
            peer.close()


@needs_rtpengine
@pytest.mark.asyncio(loop_scope="module")
async def test_rtpengine_errors(relay: RtpEngineRelay) -> None:
    with pytest.raises(RelayError):
        await relay.answer("nothing-offered", "b", phone_sdp(HOST, 4000), peer_host=HOST,
                           advertise=HOST)
    assert await relay.stats("nothing-offered") is None
    # rtpengine refuses the answer of a call it does not know (deleted behind our back).
    await relay.offer("gone", "a", phone_sdp(HOST, 4000), peer_host=HOST, advertise=HOST)
    await relay.client.request("delete", {"call-id": "gone"})
    with pytest.raises(RtpEngineError):
        await relay.answer("gone", "b", phone_sdp(HOST, 4002), peer_host=HOST, advertise=HOST)
    await relay.delete("gone")  # unknown to rtpengine: no error
    bad = parse("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n")
    with pytest.raises(RtpEngineError):
        await relay.offer("no-media", "a", bad, peer_host=HOST, advertise=HOST)


@needs_rtpengine
@pytest.mark.asyncio(loop_scope="module")
async def test_rtpengine_inactivity_in_virtual_time(daemon: RtpEngineDaemon) -> None:
    client = await NgClient.open(*daemon.ng_address)
    clock = VirtualClock()
    relay = RtpEngineRelay(client, clock, timeout=30.0, hold_timeout=600.0)
    silent: list[str] = []
    relay.on_inactive = silent.append
    a, b = await UdpPeer.open(), await UdpPeer.open()
    try:
        to_relay_a, _ = await _call(relay, "quiet", a, b)
        await relay.offer("ringing", "a", phone_sdp(HOST, 4000), peer_host=HOST, advertise=HOST)
        clock.advance(20)
        a.send(rtp(1), to_relay_a)
        await b.receive()
        await relay.poll()  # sees the packet at t = 20
        clock.advance(25)
        await relay.poll()
        assert silent == []
        clock.advance(10)
        await relay.poll()
        assert silent == ["quiet"]
        await relay.poll()
        assert silent == ["quiet"]  # once
        # A call rtpengine dropped on its own is reported too.
        await client.request("delete", {"call-id": "ringing"})
        await relay.poll()
        assert silent == ["quiet", "ringing"]
        # Without a handler, the relay deletes silent calls itself.
        relay.on_inactive = None
        await _call(relay, "orphan", a, b)
        clock.advance(31)
        await relay.poll()
        assert "orphan" not in relay
    finally:
        await relay.close()
        client.close()
        a.close()
        b.close()


@needs_rtpengine
@pytest.mark.asyncio(loop_scope="module")
async def test_rtpengine_daemon_reports_a_failed_start() -> None:
    engine = RtpEngineDaemon(interfaces=("no-such-interface",), port_min=40000,
                             port_max=40010, startup_timeout=10.0)
    with pytest.raises(RuntimeError) as failed:
        await engine.start()
    assert "Invalid interface specification" in str(failed.value)
    assert not engine.running
