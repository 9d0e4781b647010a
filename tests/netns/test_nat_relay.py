"""The in-process relay in a server namespace between a phone behind an nftables NAT (LAN) and
a peer on the WAN: the topology itself, two-way RTP with the relay latched onto the NAT's public
port, the local address in the SDP toward the LAN and the external one toward the WAN, and a
third address dropped both before and after the phone's first packet."""

from __future__ import annotations

from .relay_control import RelayHost, RtpPeer, sdp_text
from .topology import NatTopology

PHONE_PORT = 40000
WAN_PORT = 50000
PACKETS = 100
THIRD_SSRC = 0xBAD


def test_topology_only_nat_reaches_the_phone(nat: NatTopology) -> None:
    server = RtpPeer(nat, nat.server, "--bind", f"{nat.server_local}:7000", "--linger", "2")
    phone = RtpPeer(
        nat, nat.lan, "--bind", f"{nat.phone}:7002", "--to", f"{nat.server_local}:7000",
        "--count", "5", "--delay", "0.3",
    )
    assert phone.result()["sent"] == 5
    seen = server.result()
    assert seen["received"] == 5
    (source,) = seen["sources"]
    assert source.startswith(f"{nat.nat_public}:")  # masqueraded behind the router
    # Without the NAT's mapping there is no way from the server to the phone.
    direct = RtpPeer(
        nat, nat.server, "--bind", f"{nat.server_local}:7004", "--to", f"{nat.phone}:7002",
        "--count", "3", "--linger", "0.2",
    )
    assert direct.result()["sent"] == 3
    wan = RtpPeer(
        nat, nat.wan, "--bind", f"{nat.wan_peer}:7006", "--to", f"{nat.phone}:7002",
        "--count", "3", "--linger", "0.2",
    )
    assert wan.result()["sent"] == 3


def _call(relay: RelayHost, nat: NatTopology, call_id: str) -> tuple[int, int]:
    """Phone (leg a, behind NAT) calls the WAN peer (leg b). Returns the relay's ports facing
    the phone and facing the WAN peer."""
    to_wan = relay.relay(
        "offer", call_id, "a", sdp_text(nat.phone, PHONE_PORT),
        peer_host=nat.nat_public, advertise=nat.server_external,
    )
    to_phone = relay.relay(
        "answer", call_id, "b", sdp_text(nat.wan_peer, WAN_PORT),
        peer_host=nat.wan_peer, advertise=nat.server_local,
    )
    # The external address toward the WAN, the local one toward the LAN.
    assert to_wan.connection is not None and to_wan.connection.address == nat.server_external
    assert to_wan.origin.address == nat.server_external
    assert to_phone.connection is not None and to_phone.connection.address == nat.server_local
    return to_phone.media[0].port, to_wan.media[0].port


def test_two_way_rtp_through_the_relay_behind_nat(nat: NatTopology, relay_host: RelayHost) -> None:
    phone_side, wan_side = _call(relay_host, nat, "nat-call")
    # The phone speaks first (it must: its NAT opens only from inside); the WAN peer a moment
    # later, so none of its packets meet an unopened NAT.
    phone = RtpPeer(
        nat, nat.lan, "--bind", f"{nat.phone}:{PHONE_PORT}",
        "--to", f"{nat.server_local}:{phone_side}", "--count", str(PACKETS), "--ssrc", "0xA",
        "--linger", "6", "--expect", str(PACKETS),
    )
    wan = RtpPeer(
        nat, nat.wan, "--bind", f"{nat.wan_peer}:{WAN_PORT}",
        "--to", f"{nat.server_external}:{wan_side}", "--count", str(PACKETS), "--ssrc", "0xB",
        "--delay", "0.5", "--linger", "6", "--expect", str(PACKETS),
    )
    heard_by_phone, heard_by_wan = phone.result(), wan.result()
    # Real UDP on a shared machine: allow a packet or two lost, never a stranger's.
    assert heard_by_wan["received"] >= PACKETS - 2 and heard_by_wan["ssrcs"] == [0xA]
    assert heard_by_wan["sources"] == [f"{nat.server_external}:{wan_side}"]
    assert heard_by_phone["received"] >= PACKETS - 2 and heard_by_phone["ssrcs"] == [0xB]
    assert heard_by_phone["sources"] == [f"{nat.server_local}:{phone_side}"]
    stats = relay_host.stats("nat-call")
    latched_host, latched_port = stats["latched"]["a"]
    assert latched_host == nat.nat_public  # the NAT's public address and port, not the SDP's
    assert stats["latched"]["b"] == [nat.wan_peer, WAN_PORT]
    assert stats["a_to_b"]["packets"] >= PACKETS - 2 and stats["b_to_a"]["packets"] >= PACKETS - 2
    assert stats["dropped_source"] == 0
    relay_host.request("delete", call_id="nat-call")
    assert latched_port > 0


def test_third_address_is_dropped(nat: NatTopology, relay_host: RelayHost) -> None:
    phone_side, wan_side = _call(relay_host, nat, "bleed")
    # Before the phone has sent anything, a third party on the WAN aims at the port the relay
    # opened for the phone (the NATed leg may be learnt from any first packet) ...
    early = RtpPeer(
        nat, nat.wan, "--bind", f"{nat.third}:7100",
        "--to", f"{nat.server_external}:{phone_side}", "--count", "10", "--ssrc", hex(THIRD_SSRC),
        "--interval", "0.01", "--linger", "0.1",
    )
    assert early.result()["send_errors"] == 0
    phone = RtpPeer(
        nat, nat.lan, "--bind", f"{nat.phone}:{PHONE_PORT}",
        "--to", f"{nat.server_local}:{phone_side}", "--count", str(PACKETS), "--ssrc", "0xA",
        "--linger", "6", "--expect", str(PACKETS),
    )
    wan = RtpPeer(
        nat, nat.wan, "--bind", f"{nat.wan_peer}:{WAN_PORT}",
        "--to", f"{nat.server_external}:{wan_side}", "--count", str(PACKETS), "--ssrc", "0xB",
        "--delay", "0.5", "--linger", "6", "--expect", str(PACKETS),
    )
    # ... and keeps at it on both of the call's ports once the call is running.
    late = RtpPeer(
        nat, nat.wan, "--bind", f"{nat.third}:7102",
        "--to", f"{nat.server_external}:{phone_side}", "--count", "50", "--ssrc", hex(THIRD_SSRC),
        "--delay", "0.8", "--linger", "1.2",
    )
    late_wan_side = RtpPeer(
        nat, nat.wan, "--bind", f"{nat.third}:7104",
        "--to", f"{nat.server_external}:{wan_side}", "--count", "50", "--ssrc", hex(THIRD_SSRC),
        "--delay", "0.8", "--linger", "1.2",
    )
    heard_by_phone, heard_by_wan = phone.result(), wan.result()
    attacker = [late.result(), late_wan_side.result()]
    # The phone took its leg over from the early stranger; nothing of the stranger got through
    # after that, and the stranger heard nothing of the call.
    assert heard_by_phone["ssrcs"] == [0xB] and heard_by_phone["received"] >= PACKETS - 2
    assert THIRD_SSRC not in heard_by_wan["ssrcs"]
    assert heard_by_wan["received"] >= PACKETS - 2
    assert all(report["received"] == 0 for report in attacker)
    assert all(report["send_errors"] == 0 for report in attacker)
    stats = relay_host.stats("bleed")
    assert stats["latched"]["a"][0] == nat.nat_public
    assert stats["dropped_source"] >= 100, stats
    relay_host.request("delete", call_id="bleed")


def test_stranger_first_holds_the_nated_leg_only_until_the_phone(
    nat: NatTopology, relay_host: RelayHost
) -> None:
    """A stranger that sends before the phone holds the NATed leg only until the phone's first
    packet, and hears nothing while the WAN peer is silent."""
    phone_side, _ = _call(relay_host, nat, "early")
    early = RtpPeer(
        nat, nat.wan, "--bind", f"{nat.third}:7106",
        "--to", f"{nat.server_external}:{phone_side}", "--count", "5",
        "--ssrc", hex(THIRD_SSRC), "--linger", "0.3",
    )
    report = early.result()
    assert report["send_errors"] == 0 and report["received"] == 0
    assert relay_host.stats("early")["latched"]["a"][0] == nat.third
    phone = RtpPeer(
        nat, nat.lan, "--bind", f"{nat.phone}:{PHONE_PORT}",
        "--to", f"{nat.server_local}:{phone_side}", "--count", "3", "--linger", "0.3",
    )
    assert phone.result()["send_errors"] == 0
    assert relay_host.stats("early")["latched"]["a"][0] == nat.nat_public
    relay_host.request("delete", call_id="early")
