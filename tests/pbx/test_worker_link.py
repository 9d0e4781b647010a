"""A worker's end of its channel (``WorkerLink``) fed by the primary's ``WorkerPool`` over a
real socket pair, in one process: registrations (one address's change, the whole table a new
worker gets first), phones' reachability and its clean-up when a binding goes, reloaded
settings, where the trunks take calls, messages handed over on UDP and TCP, a worker's TCP sent
through the primary; and ``StreamSteering`` choosing the process of a TCP message."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

import pytest

from sipswitch.config.settings import Settings
from sipswitch.pbx.location import LocationService
from sipswitch.pbx.security import SecurityGate
from sipswitch.pbx.workers import (
    StreamSteering,
    WorkerLink,
    WorkerPool,
    WorkerSpec,
    WorkerTransports,
    _socket_fd,
)
from sipswitch.sip.clock import VirtualClock
from sipswitch.sip.parser import parse_datagram
from sipswitch.sip.transport.base import Address
from sipswitch.sip.transport.manager import TransportManager
from sipswitch.sip.transport.steering import message_frame, owner_of_aor, owner_of_call_id
from sipswitch.store import Binding

from ..sip.transport.support import RecordingSink, request, wait_until

NOW = 1_800_000_000.0
PHONE = "192.0.2.10"


def binding(aor: str, contact: str = "sip:phone@192.0.2.10:5060", cseq: int = 1) -> Binding:
    """A binding the size real phones make (instance id, user agent, a long Contact)."""
    instance = "<urn:uuid:00000000-0000-1000-8000-001565123456>"
    return Binding(
        aor=aor,
        contact_uri=contact,
        contact_value=f'<{contact};transport=udp>;+sip.instance="{instance}";reg-id=1;'
        "expires=3600;+sip.ice;audio;video",
        expires_at=NOW + 3600,
        q=1.0,
        call_id=f"0_1234567890-{aor}@192.0.2.10",
        cseq=cseq,
        transport="udp",
        source_host=PHONE,
        source_port=5060,
        user_agent="Yealink SIP-T46S 66.86.0.15 (a desk phone of the usual kind)",
        instance_id=instance,
        reg_id=1,
    )


def register(location: LocationService, *bindings: Binding) -> None:
    """What the registrar does with a REGISTER: the whole new set of the address."""
    location.replace(bindings[0].aor, list(bindings), [])


@dataclass
class Linked:
    """The primary's pool and registrations, a worker's link and its copy of them."""

    pool: WorkerPool
    transports: TransportManager
    primary: LocationService
    primary_sink: RecordingSink  # what the primary itself serves
    worker_transports: WorkerTransports
    replica: LocationService
    link: WorkerLink
    worker_sink: RecordingSink  # what reaches the worker's core
    reloads: list[Settings]
    trunk_tables: list[dict[str, Address | None]]  # as the worker was told them


@contextlib.asynccontextmanager
async def linked_worker(
    before: list[Binding], security: dict[str, object] | None = None
) -> AsyncIterator[Linked]:
    """Worker 1 of 2 on the far end of a channel the pool opened (as ``WorkerPool.start`` does,
    without a process), the primary holding ``before`` already."""
    settings = Settings.model_validate({"sip": {"workers": 2}, "security": security or {}})
    primary = LocationService(None, lambda: NOW)
    for one in before:
        register(primary, one)
    primary_sink = RecordingSink()
    security = SecurityGate(settings.security, VirtualClock(), primary_sink)
    transports = TransportManager(security)
    await transports.start(["127.0.0.1"], 0, 0)
    pool = WorkerPool(settings, transports, primary, None, security, b"k" * 32, [])
    # The parts of WorkerPool.start that need no process.
    pool._bound_index = {address: i for i, address in enumerate(transports.bound)}
    [udp] = transports.udp
    udp.steer = pool._udp_steering(udp)
    primary.watch(pool._binding_changed)
    pool._open_channel(1)
    theirs = pool._their_ends.pop(1)
    spec = WorkerSpec(
        index=1,
        workers=2,
        channel_fd=theirs.detach(),
        udp_fds={pool._bound_index[udp.local]: os.dup(_socket_fd(udp))},  # as passed to it
        bound=[(a.transport, a.host, a.port) for a in transports.bound],
        secret=(b"k" * 32).hex(),
        settings=settings.model_dump_json(),
    )
    worker_transports = WorkerTransports(spec)
    worker_sink = RecordingSink()
    worker_transports.set_sink(worker_sink)
    await worker_transports.start([], 0, 0)
    replica = LocationService(None, lambda: NOW, replica=True)
    reloads: list[Settings] = []
    trunk_tables: list[dict[str, Address | None]] = []
    link = WorkerLink(spec, worker_transports, replica, reloads.append, None, trunk_tables.append)
    link.start()
    try:
        yield Linked(
            pool, transports, primary, primary_sink, worker_transports, replica, link,
            worker_sink, reloads, trunk_tables,
        )  # fmt: skip
    finally:
        link.close()
        await worker_transports.stop()
        await pool.stop()
        await transports.stop()


@pytest.fixture
async def linked() -> AsyncIterator[Linked]:
    async with linked_worker([]) as pair:
        yield pair


def same_table(a: LocationService, b: LocationService) -> bool:
    return sorted(map(repr, a.all_bindings())) == sorted(map(repr, b.all_bindings()))


# --- registrations ---
async def test_each_registration_change_reaches_the_worker(linked: Linked) -> None:
    first = binding("sip:201@pbx")
    register(linked.primary, first)
    await wait_until(lambda: linked.replica.lookup("sip:201@pbx") == [first])
    refreshed = replace(first, cseq=2, expires_at=NOW + 600)
    second = binding("sip:201@pbx", "sip:phone2@192.0.2.11:5060")
    register(linked.primary, refreshed, second)
    await wait_until(lambda: same_table(linked.primary, linked.replica))
    assert linked.replica.lookup("sip:201@pbx") == [refreshed, second]
    linked.primary.replace("sip:201@pbx", [], [refreshed, second])  # unregistered
    await wait_until(lambda: linked.replica.aor_count == 0)
    assert linked.link.reachable_bindings("sip:201@pbx") == []


TABLE = [binding(f"sip:{n}@pbx", f"sip:{n}@192.0.2.10:{5060 + n % 1000}") for n in range(600)]


async def test_a_new_worker_gets_the_whole_table_first() -> None:
    """600 phones registered before the worker started: all of them reach it, in events none
    too large for the channel."""
    async with linked_worker(TABLE) as linked:
        assert linked.primary.binding_count() == 600
        await wait_until(lambda: linked.replica.binding_count() == 600)
        assert same_table(linked.primary, linked.replica)


# --- reachability ---
async def test_an_unreachable_phone_is_left_out_until_it_answers_again(linked: Linked) -> None:
    phone, other = binding("sip:201@pbx"), binding("sip:201@pbx", "sip:desk@192.0.2.12:5060")
    register(linked.primary, phone, other)
    await wait_until(lambda: len(linked.replica.lookup("sip:201@pbx")) == 2)
    linked.pool._reachability_changed(phone, False)
    await wait_until(lambda: linked.link.reachable_bindings("sip:201@pbx") == [other])
    assert len(linked.replica.lookup("sip:201@pbx")) == 2  # still registered
    linked.pool._reachability_changed(phone, True)
    await wait_until(lambda: len(linked.link.reachable_bindings("sip:201@pbx")) == 2)


async def test_a_phone_that_registers_again_is_reachable(linked: Linked) -> None:
    """Unreachable counts for the registration the keepalives failed for, not a newer one."""
    phone = binding("sip:201@pbx")
    register(linked.primary, phone)
    linked.pool._reachability_changed(phone, False)
    await wait_until(lambda: linked.link.reachable_bindings("sip:201@pbx") == [])
    again = replace(phone, cseq=phone.cseq + 1)
    register(linked.primary, again)
    await wait_until(lambda: linked.link.reachable_bindings("sip:201@pbx") == [again])


async def test_reachability_is_forgotten_when_the_binding_goes(linked: Linked) -> None:
    phone, kept = binding("sip:201@pbx"), binding("sip:202@pbx", "sip:kept@192.0.2.13:5060")
    register(linked.primary, phone)
    register(linked.primary, kept)
    linked.pool._reachability_changed(phone, False)
    linked.pool._reachability_changed(kept, False)
    await wait_until(lambda: len(linked.link._unreachable) == 2)
    linked.primary.replace("sip:201@pbx", [], [phone])
    await wait_until(lambda: linked.replica.lookup("sip:201@pbx") == [])
    assert list(linked.link._unreachable) == [("sip:202@pbx", kept.contact_uri)]
    # The same phone registering once more (same registration, even) is reachable.
    register(linked.primary, phone)
    await wait_until(lambda: linked.link.reachable_bindings("sip:201@pbx") == [phone])
    assert linked.link.reachable_bindings("sip:202@pbx") == []


# --- settings ---
async def test_reloaded_settings_reach_the_worker(linked: Linked) -> None:
    new = Settings.model_validate(
        {"sip": {"workers": 2}, "groups": [{"number": "600", "members": ["201"]}]}
    )
    linked.pool.reload(new)
    await wait_until(lambda: len(linked.reloads) == 1)
    # As JSON, the way a worker is given its settings at start too.
    assert linked.reloads[0] == Settings.model_validate_json(new.model_dump_json())
    assert [g.number for g in linked.reloads[0].groups] == ["600"]
    assert linked.pool.settings is new


class Trunks:
    """Where the primary's trunks take calls, as ``TrunkManager.destinations`` says."""

    def __init__(self, table: dict[str, Address | None]) -> None:
        self.table = table
        self.on_change: Callable[[], None] | None = None

    def destinations(self) -> dict[str, Address | None]:
        return dict(self.table)


async def test_where_trunks_take_calls_reaches_the_worker_when_it_changes(
    linked: Linked,
) -> None:
    carrier = Address("udp", "192.0.2.50", 5060)
    trunks = Trunks({"carrier": carrier, "backup": None})
    linked.pool.follow_trunks(trunks)
    await wait_until(lambda: len(linked.trunk_tables) == 1)
    assert linked.link.trunks == {"carrier": carrier, "backup": None}
    assert trunks.on_change is not None
    trunks.on_change()  # nothing changed: nothing is sent
    trunks.table["carrier"] = None  # down
    trunks.table["backup"] = Address("tcp", "192.0.2.51", 5080)
    trunks.on_change()
    await wait_until(lambda: len(linked.trunk_tables) == 2)
    assert linked.trunk_tables[-1] == trunks.table == linked.link.trunks


# --- messages ---
def _owned_call_id(owner: int, tag: str) -> str:
    return next(
        f"{tag}-{n}@h" for n in range(100) if owner_of_call_id(f"{tag}-{n}@h".encode(), 2) == owner
    )


async def test_a_datagram_of_the_workers_share_is_handed_to_it(linked: Linked) -> None:
    """Read by the primary's socket, taken by the worker's core with the phone's address; the
    worker's reply leaves from the primary's address and port."""
    [udp] = linked.transports.udp
    ours = _owned_call_id(1, "udp")
    theirs = _owned_call_id(0, "udp")
    loop = asyncio.get_running_loop()
    received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    class Phone(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            received.put_nowait((data, addr))

    phone, _ = await loop.create_datagram_endpoint(Phone, local_addr=("127.0.0.1", 0))
    try:
        port = phone.get_extra_info("sockname")[1]
        for call_id in (ours, theirs):
            phone.sendto(request("OPTIONS", call_id), (udp.local.host, udp.local.port))
        await linked.worker_sink.wait_for(messages=1)
        await linked.primary_sink.wait_for(messages=1)
        message, source, local = linked.worker_sink.messages[0]
        assert message.call_id == ours and source == Address("udp", "127.0.0.1", port)
        assert local == udp.local
        assert [m.call_id for m, _, _ in linked.primary_sink.messages] == [theirs]
        assert linked.pool.handed_over == 1

        reply = b"SIP/2.0 200 OK\r\nCall-ID: " + ours.encode() + b"\r\n\r\n"
        assert linked.worker_transports.send(reply, source)
        data, sender = await asyncio.wait_for(received.get(), 3)
        assert data == reply and sender == (udp.local.host, udp.local.port)
    finally:
        phone.close()


async def test_stream_steering_keeps_registers_and_hands_over_the_workers_share(
    linked: Linked,
) -> None:
    tcp = linked.transports.bound["tcp"][0]
    steering = StreamSteering(linked.primary_sink, linked.pool)
    phone = Address("tcp", "127.0.0.1", 40000)
    ours, theirs = _owned_call_id(1, "tcp"), _owned_call_id(0, "tcp")
    made_by_worker = "w1-abc@127.0.0.1"
    for method, call_id in (("REGISTER", ours), ("INVITE", theirs)):
        steering.on_message(parse_datagram(request(method, call_id)), phone, tcp)
    for call_id in (ours, made_by_worker):
        steering.on_message(parse_datagram(request("INVITE", call_id)), phone, tcp)
    await linked.worker_sink.wait_for(messages=2)
    kept = [(m.call_id, m.method) for m, _, _ in linked.primary_sink.messages]
    assert kept == [(ours, "REGISTER"), (theirs, "INVITE")]
    assert [m.call_id for m, _, _ in linked.worker_sink.messages] == [ours, made_by_worker]
    assert {(s, local) for _, s, local in linked.worker_sink.messages} == {(phone, tcp)}

    # While worker 1 is being started again its channel is new; once given up on, none: the
    # primary serves its share then.
    channel = linked.pool.channels[1]
    assert channel is not None
    channel.close()
    linked.pool.channels[1] = None
    steering.on_message(parse_datagram(request("INVITE", ours)), phone, tcp)
    assert [m.call_id for m, _, _ in linked.primary_sink.messages][-1] == ours


async def test_a_workers_tcp_goes_out_on_the_primarys_connection(linked: Linked) -> None:
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def phone(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.put_nowait(await reader.readuntil(b"\r\n\r\n"))
        writer.close()

    server = await asyncio.start_server(phone, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        data = request("OPTIONS", "w1-out@127.0.0.1")
        assert linked.worker_transports.send(data, Address("tcp", "127.0.0.1", port))
        assert await asyncio.wait_for(got.get(), 3) == data
        assert linked.primary_sink.messages == []
    finally:
        server.close()
        await server.wait_closed()


async def test_the_primary_counts_the_rate_of_requests_it_hands_over() -> None:
    """The primary sees every request of a source, so its rate limit counts them all (a worker
    sees only its share); responses are not counted."""
    async with linked_worker([], {"allow": [], "rate_limit": 5, "rate_burst": 5}) as linked:
        [udp] = linked.transports.udp
        assert udp.steer is not None
        flooder = ("192.0.2.50", 5060)
        invites = [request("INVITE", _owned_call_id(1, f"flood-{n}")) for n in range(20)]
        assert all(udp.steer(data, flooder) for data in invites)  # none left to the primary
        assert linked.pool.handed_over == 5
        assert linked.pool.security.dropped_rate == 15
        response = (
            b"SIP/2.0 180 Ringing\r\nCall-ID: " + _owned_call_id(1, "r").encode() + b"\r\n\r\n"
        )
        assert all(udp.steer(response, flooder) for _ in range(10))
        assert linked.pool.handed_over == 15
        await linked.worker_sink.wait_for(messages=15)


async def test_a_tls_peers_certificate_identities_come_with_its_messages(linked: Linked) -> None:
    """A worker holds no TLS connection: it recognises a TLS trunk by the names the primary
    found in the certificate of the connection the message came on."""
    peer = Address("tls", "192.0.2.9", 40111)
    names = frozenset({"carrier.example"})
    transports = linked.worker_transports
    transports.deliver(
        message_frame(request("OPTIONS", "t-1"), "tls", peer.host, peer.port, -1, names)
    )
    assert transports.peer_identities(peer) == names
    message, source, local = linked.worker_sink.messages[-1]
    assert message.call_id == "t-1" and source == peer
    assert local == Address("tls", "0.0.0.0", 0)  # a connection made from no listener
    # A new connection from that address and port without a verified certificate.
    transports.deliver(message_frame(request("OPTIONS", "t-2"), "tls", peer.host, peer.port, -1))
    assert transports.peer_identities(peer) == frozenset()
    assert transports.peer_identities(Address("tls", "192.0.2.9", 1)) == frozenset()


async def test_a_circular_hunt_moved_anywhere_moves_everywhere(linked: Linked) -> None:
    """An answer in a worker moves the group's hunt position in the primary and in every
    worker; one in the primary is told to the workers."""
    at_primary: list[tuple[str, int]] = []
    at_worker: list[tuple[str, int]] = []
    linked.pool.hunt = lambda group, position: at_primary.append((group, position))
    linked.link.on_hunt = lambda group, position: at_worker.append((group, position))
    linked.link.report_hunt("600", 2)
    await wait_until(lambda: at_primary == [("600", 2)] and at_worker == [("600", 2)])
    linked.pool.hunt_moved("601", 1)
    await wait_until(lambda: at_worker == [("600", 2), ("601", 1)])
    assert at_primary == [("600", 2)]


async def test_registers_go_to_the_owner_of_their_address(linked: Linked) -> None:
    """All REGISTERs of an address go to one process (a hash of the To user): over UDP and TCP,
    whatever their Call-ID; the worker's changes reach the primary, which tells every process."""
    assert owner_of_aor("100", 2) == 0 and owner_of_aor("201", 2) == 1
    [udp] = linked.transports.udp
    assert udp.steer is not None
    phone = ("192.0.2.10", 5060)

    def register_to(user: str, call_id: str) -> bytes:
        return request("REGISTER", call_id).replace(b"To: <sip:100@", f"To: <sip:{user}@".encode())

    assert not udp.steer(register_to("100", _owned_call_id(1, "r")), phone)  # the primary's
    assert udp.steer(register_to("201", _owned_call_id(0, "r")), phone)
    assert udp.steer(register_to("%32%30%31", _owned_call_id(0, "s")), phone)  # the same user
    assert not udp.steer(b"REGISTER sip:x SIP/2.0\r\nTo: broken\r\n\r\n", phone)
    tcp = linked.transports.bound["tcp"][0]
    steering = StreamSteering(linked.primary_sink, linked.pool)
    steering.on_message(parse_datagram(register_to("201", "t-1")), Address("tcp", *phone), tcp)
    await linked.worker_sink.wait_for(messages=3)
    assert [m.to.uri.user_unescaped for m, _, _ in linked.worker_sink.messages] == ["201"] * 3

    # What the worker's registrar wrote reaches the primary (and so every other process).
    seen: list[str] = []
    at_worker: list[str] = []
    linked.primary.watch(lambda aor, bindings: seen.append(aor))
    linked.replica.watch(lambda aor, bindings: at_worker.append(aor))
    new = binding("201")
    linked.link.report_bindings("201", [new])
    await wait_until(lambda: linked.primary.lookup("201") == [new])
    assert seen == ["201"]
    # Not sent back to the worker that made it (a later change of its own may be on the way);
    # a change the primary makes afterwards arrives, so the first would have arrived before.
    register(linked.primary, binding("100"))
    await wait_until(lambda: at_worker == ["100"])
