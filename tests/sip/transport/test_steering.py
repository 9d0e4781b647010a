"""Which worker owns a message (Call-ID found by byte search, worker-made Call-IDs come home,
REGISTERs to the primary), the frames between processes, and the channel that carries them."""

from __future__ import annotations

import asyncio
import zlib

import pytest

from sipswitch.sip.dialog import new_call_id, set_call_id_prefix
from sipswitch.sip.parser import parse_datagram
from sipswitch.sip.transport.steering import (
    FRAME_LIMIT,
    MAX_QUEUED,
    Channel,
    call_id_prefix,
    event_frame,
    find_call_id,
    frame_identities,
    message_frame,
    owner_of,
    owner_of_call_id,
    send_frame,
    split_frame,
)


def invite(call_id_line: str, method: str = "INVITE") -> bytes:
    return (
        f"{method} sip:201@127.0.0.1 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1\r\n"
        "From: <sip:200@127.0.0.1>;tag=a\r\n"
        "To: <sip:201@127.0.0.1>\r\n"
        f"{call_id_line}\r\n"
        f"CSeq: 1 {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    "line",
    [
        "Call-ID: abc123@host",
        "call-id:abc123@host",
        "CALL-ID :  abc123@host  ",
        "i: abc123@host",
        "I:\tabc123@host",
    ],
)
def test_the_call_id_is_found_in_every_spelling_the_parser_accepts(line: str) -> None:
    data = invite(line)
    assert find_call_id(data) == b"abc123@host"
    assert parse_datagram(data).call_id == "abc123@host"


def test_a_header_ending_in_i_is_not_taken_for_the_compact_call_id() -> None:
    data = invite("Call-ID: real@host").replace(b"CSeq", b"X-Multi: fake\r\nCSeq")
    assert find_call_id(data) == b"real@host"
    assert find_call_id(b"OPTIONS sip:x SIP/2.0\r\nVia: x\r\n\r\n") is None


def test_register_and_messages_without_call_id_belong_to_the_primary() -> None:
    assert owner_of(invite("Call-ID: x@y", "REGISTER"), 4) == 0
    assert owner_of(b"OPTIONS sip:x SIP/2.0\r\n\r\n", 4) == 0
    assert owner_of(invite("Call-ID: x@y"), 1) == 0


def test_other_messages_go_by_a_stable_hash_of_the_call_id() -> None:
    owners = {owner_of(invite(f"Call-ID: call-{n}@host"), 3) for n in range(200)}
    assert owners == {0, 1, 2}  # all workers get a share
    for n in range(50):
        call_id = f"call-{n}@host".encode()
        assert owner_of(invite(f"Call-ID: call-{n}@host"), 3) == zlib.crc32(call_id) % 3
        # A response or an in-dialog request of that call goes to the same worker.
        bye = invite(f"i: call-{n}@host", "BYE")
        assert owner_of(bye, 3) == owner_of_call_id(call_id, 3)


def test_call_ids_a_worker_makes_come_home_to_it() -> None:
    try:
        for worker in range(5):
            set_call_id_prefix(call_id_prefix(worker))
            call_ids = [new_call_id("127.0.0.1") for _ in range(20)]
            assert all(owner_of(invite(f"Call-ID: {c}"), 5) == worker for c in call_ids)
            assert all(owner_of(invite(f"Call-ID: {c}"), 16) == worker for c in call_ids)
    finally:
        set_call_id_prefix("")
    assert not new_call_id("127.0.0.1").startswith("w")


def test_a_worker_tag_beyond_the_workers_is_hashed() -> None:
    call_id = b"w7-0123@host"
    assert owner_of_call_id(call_id, 8) == 7
    assert owner_of_call_id(call_id, 4) == zlib.crc32(call_id) % 4
    for odd in (b"w-1@h", b"wx-1@h", b"w123-1@h", b"w"):
        assert owner_of_call_id(odd, 4) == zlib.crc32(odd) % 4


def test_frames_carry_the_message_its_source_and_the_listening_socket() -> None:
    data = invite("Call-ID: f@h") + b"body\nwith\nnewlines"
    fields, payload = split_frame(message_frame(data, "udp", "::1", 5070, 2))
    assert fields == ["udp", "::1", "5070", "2"] and payload == data
    fields, payload = split_frame(send_frame(data, "tcp", "192.0.2.1", 40000))
    assert fields == ["tcp", "192.0.2.1", "40000"] and payload == data
    assert event_frame({"ready": 1}) == b'E{"ready":1}'
    names = frozenset({"sip:carrier.example", "carrier.example", "odd, name %"})
    fields, payload = split_frame(message_frame(data, "tls", "192.0.2.1", 5061, 1, names))
    assert fields[:4] == ["tls", "192.0.2.1", "5061", "1"] and payload == data
    assert frame_identities(fields) == names
    assert frame_identities(split_frame(message_frame(data, "tls", "h", 1, 0))[0]) == frozenset()
    with pytest.raises(ValueError):
        split_frame(b"M no newline here")


async def test_a_channel_carries_frames_both_ways_in_order() -> None:
    a_end, b_end = Channel.pair()
    got_a: list[bytes] = []
    got_b: list[bytes] = []
    a, b = Channel(a_end, got_a.append), Channel(b_end, got_b.append)
    a.start()
    b.start()
    try:
        big = b"x" * 65_600  # a message of the largest size plus its frame header
        event = b"E" + b"b" * 200_000  # an extension's many bindings
        frames = [f"frame {n}".encode() for n in range(500)] + [big, event]
        for frame in frames:
            assert a.send(frame)
        assert not a.send(b"z" * (FRAME_LIMIT + 1))  # refused whole, never cut short
        b.send(b"back")
        for _ in range(200):
            if len(got_b) == len(frames) and got_a:
                break
            await asyncio.sleep(0.01)
        assert got_b == frames
        assert got_a == [b"back"]
    finally:
        a.close()
        b.close()
    assert not a.send(b"after close")


async def test_a_busy_peer_makes_frames_wait_then_drops_past_the_bound() -> None:
    a_end, b_end = Channel.pair()
    got: list[bytes] = []
    a = Channel(a_end, lambda frame: None)
    a.start()
    frame = b"y" * 60_000
    sent = sum(a.send(frame) for _ in range(MAX_QUEUED + 400))
    # The socket took what fits, the queue held MAX_QUEUED more, the rest was dropped.
    assert a.dropped > 0
    assert sent == MAX_QUEUED + 400 - a.dropped
    b = Channel(b_end, got.append)
    b.start()
    try:
        for _ in range(1000):
            if len(got) == sent:
                break
            await asyncio.sleep(0.01)
        assert len(got) == sent and all(g == frame for g in got)
    finally:
        a.close()
        b.close()
