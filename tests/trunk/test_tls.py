"""Trunks over TLS on real loopback connections: which names a verified certificate proves (SIP
domain identities and iPAddress entries), outgoing connections to a trunk known by address,
client certificates asked for (``verify_clients``, also after a reload) and verified, and
``TrunkManager.identify`` recognising a TLS trunk by the certificate of the connection a request
came on — a client certificate, or the server certificate of a connection this side opened —
never by its address alone; a TLS trunk on a server without ``[tls]`` is reported unusable."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sipswitch.config.settings import load_settings
from sipswitch.sip.transport.base import Address
from sipswitch.sip.transport.certs import (
    CertificateError,
    CertificateFiles,
    ServerCertificates,
    build_client_context,
    write_self_signed,
)
from sipswitch.sip.transport.tls import TlsTransport, certificate_identities, certificate_names
from sipswitch.trunk.manager import TrunkManager
from sipswitch.trunk.status import state_of
from tests.sip.transport.support import RecordingSink, request, response, wait_until

from .conftest import Net

TLS_VIA = "SIP/2.0/TLS 127.0.0.1:5071;branch=z9hG4bK-trunk"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Self-signed certificates (each its own CA): 127.0.0.1, pbx.test, other.test, and rogue.test
    that nobody trusts; ``peers.pem`` trusts the first three."""
    root = tmp_path_factory.mktemp("trunk-certs")
    for name, host in (
        ("ip", "127.0.0.1"),
        ("pbx", "pbx.test"),
        ("other", "other.test"),
        ("rogue", "rogue.test"),
    ):
        write_self_signed(host, root / f"{name}.pem", root / f"{name}.key")
    (root / "peers.pem").write_bytes(
        b"".join((root / f"{name}.pem").read_bytes() for name in ("ip", "pbx", "other"))
    )
    return root


def files(certs: Path, name: str) -> CertificateFiles:
    return CertificateFiles(certs / f"{name}.pem", certs / f"{name}.key")


# --- what a certificate proves ---
@pytest.mark.parametrize(
    ("cert", "names"),
    [
        ({}, set()),
        ({"subjectAltName": (("IP Address", "127.0.0.1"),)}, {"127.0.0.1"}),
        # Python spells IPv6 entries in full and in capitals.
        ({"subjectAltName": (("IP Address", "2001:DB8:0:0:0:0:0:1\n"),)}, {"2001:db8::1"}),
        (
            {"subjectAltName": (("DNS", "pbx.test"), ("IP Address", "192.0.2.1"))},
            {"pbx.test", "192.0.2.1"},
        ),
        # A sip: URI makes the DNS names irrelevant (RFC 5922 §7.1); wildcards never count.
        (
            {"subjectAltName": (("URI", "sip:hq.test"), ("DNS", "pbx.test"))},
            {"hq.test"},
        ),
        ({"subjectAltName": (("DNS", "*.test"),)}, set()),
        # The Common Name only without any subjectAltName.
        ({"subject": ((("commonName", "Pbx.Test."),),)}, {"pbx.test"}),
        ({"subjectAltName": (("IP Address", "garbage"),)}, set()),
    ],
)
def test_certificate_identities(cert: dict[str, object], names: set[str]) -> None:
    assert certificate_identities(cert) == names


def test_an_ip_host_needs_an_ip_entry() -> None:
    by_ip = {"subjectAltName": (("IP Address", "127.0.0.1"),)}
    by_dns = {"subjectAltName": (("DNS", "127.0.0.1"),)}
    by_cn = {"subject": ((("commonName", "127.0.0.1"),),)}
    assert certificate_names(by_ip, "127.0.0.1")
    assert certificate_names(by_ip, "[127.0.0.1]")
    assert not certificate_names(by_dns, "127.0.0.1")
    assert not certificate_names(by_cn, "127.0.0.1")
    assert certificate_names({"subjectAltName": (("DNS", "pbx.test"),)}, "PBX.test.")
    assert not certificate_names(by_ip, "")
    assert not certificate_names(None, "pbx.test")


# --- transports ---
@dataclass
class Side:
    transport: TlsTransport
    sink: RecordingSink
    address: Address


@pytest.fixture
async def sides(certs: Path) -> AsyncIterator[list[Side]]:
    """Each test's transports, closed at the end."""
    made: list[Side] = []
    yield made
    for side in made:
        await side.transport.close()


async def open_side(
    sides: list[Side],
    certs: Path,
    name: str,
    *,
    verify_clients: bool = False,
    trust: str = "peers",
) -> Side:
    """A TLS transport listening on 127.0.0.1 with certificate ``name``; it trusts ``trust``.pem
    for servers (and for clients with ``verify_clients``) and shows its own certificate as a
    client."""
    sink = RecordingSink()
    transport = TlsTransport(
        ServerCertificates(files(certs, name)),
        sink,
        client_context=build_client_context(certs / f"{trust}.pem", files(certs, name)),
        handshake_timeout=2,
        verify_clients=verify_clients,
        client_ca=certs / f"{trust}.pem",
    )
    side = Side(transport, sink, await transport.listen("127.0.0.1", 0))
    sides.append(side)
    return side


async def deliver(sender: Side, receiver: Side, domain: str, call_id: str = "c1") -> Address:
    """``sender`` sends a request to ``receiver`` (expecting ``domain``); returns its source as
    the receiver sees it."""
    sender.transport.expect_domain(receiver.address, domain)
    before = len(receiver.sink.messages)
    assert sender.transport.send(request(via=TLS_VIA, call_id=call_id), receiver.address)
    await receiver.sink.wait_for(messages=before + 1)
    return receiver.sink.messages[-1][1]


async def test_outgoing_to_an_address_needs_that_address_in_the_certificate(
    sides: list[Side], certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    by_ip = await open_side(sides, certs, "ip")
    by_name = await open_side(sides, certs, "pbx")
    client = await open_side(sides, certs, "other")
    await deliver(client, by_ip, "127.0.0.1")
    # pbx.test's certificate does not carry 127.0.0.1: nothing is sent.
    client.transport.expect_domain(by_name.address, "127.0.0.1")
    unreachable: list[Address] = []
    client.transport.on_unreachable = unreachable.append
    with caplog.at_level(logging.WARNING):
        assert client.transport.send(request(via=TLS_VIA, call_id="no"), by_name.address)
        await wait_until(
            lambda: by_name.transport.handshakes + by_name.transport.failed_handshakes == 1
        )
        await wait_until(lambda: client.transport.connection(by_name.address) is None)
    assert by_name.sink.messages == []
    assert "does not name 127.0.0.1 (it names pbx.test)" in caplog.text
    assert client.transport.refusal(by_name.address) == (
        "the certificate names pbx.test, not 127.0.0.1"
    )
    assert unreachable == [by_name.address]  # its requests fail now (503, the next trunk)
    # Told the right name, it connects, and the refusal is forgotten.
    await deliver(client, by_name, "pbx.test")
    assert client.transport.refusal(by_name.address) is None


async def test_client_certificates_are_verified_only_when_asked_for(
    sides: list[Side], certs: Path
) -> None:
    asking = await open_side(sides, certs, "ip", verify_clients=True)
    not_asking = await open_side(sides, certs, "ip")
    client = await open_side(sides, certs, "pbx")
    source = await deliver(client, asking, "127.0.0.1")
    assert asking.transport.peer_identities(source) == {"pbx.test"}
    source = await deliver(client, not_asking, "127.0.0.1")
    assert not_asking.transport.peer_identities(source) == frozenset()
    # Our own connection: the server certificate checked when it was opened.
    assert client.transport.peer_identities(asking.address) == {"127.0.0.1"}

    # A client without a certificate still connects (phones); it proves nothing.
    context = ssl.create_default_context(cafile=str(certs / "ip.pem"))
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", asking.address.port, ssl=context, server_hostname="127.0.0.1"
    )
    writer.write(request(via=TLS_VIA, call_id="phone"))
    await asking.sink.wait_for(messages=2)
    phone = asking.sink.messages[-1][1]
    assert phone.port == writer.get_extra_info("sockname")[1]
    assert asking.transport.peer_identities(phone) == frozenset()
    writer.close()

    # A certificate that does not verify fails the handshake.
    rogue = await open_side(sides, certs, "rogue")
    rogue.transport.expect_domain(asking.address, "127.0.0.1")
    failed = asking.transport.failed_handshakes
    assert rogue.transport.send(request(via=TLS_VIA, call_id="rogue"), asking.address)
    await wait_until(lambda: asking.transport.failed_handshakes == failed + 1)
    assert len(asking.sink.messages) == 2


async def test_a_reloaded_certificate_still_asks_for_client_certificates(
    sides: list[Side], certs: Path
) -> None:
    asking = await open_side(sides, certs, "ip", verify_clients=True)
    assert asking.transport.certificates.reload()
    client = await open_side(sides, certs, "pbx")
    source = await deliver(client, asking, "127.0.0.1")
    assert asking.transport.peer_identities(source) == {"pbx.test"}


def test_an_unreadable_client_ca_stops_the_start(certs: Path, tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="missing.pem"):
        TlsTransport(
            ServerCertificates(files(certs, "ip")),
            verify_clients=True,
            client_ca=tmp_path / "missing.pem",
        )
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(CertificateError, match="CA certificates for clients"):
        TlsTransport(
            ServerCertificates(files(certs, "ip")),
            verify_clients=True,
            client_ca=tmp_path / "junk.pem",
        )


# --- recognising trunks ---
def manager(tmp_path: Path, trunks: str) -> TrunkManager:
    path = tmp_path / "sipswitch.toml"
    path.write_text(trunks)
    return TrunkManager(load_settings(path, tmp_path / "data"))


TRUNKS = """
[[trunks]]
name = "hq"
host = "pbx.test"
transport = "tls"

[[trunks]]
name = "by-ip"
host = "127.0.0.1"
transport = "tls"
port = 5061

[[trunks]]
name = "fenced"
host = "other.test"
transport = "tls"
sources = ["192.0.2.0/24"]
"""


async def test_a_tls_trunk_is_recognised_by_its_client_certificate(
    sides: list[Side], certs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = await open_side(sides, certs, "ip", verify_clients=True)
    trunks = manager(tmp_path, TRUNKS)
    trunks.tls = server.transport
    assert "127.0.0.1" in await trunks.resolve()
    hq = await open_side(sides, certs, "pbx")
    found = trunks.identify(await deliver(hq, server, "127.0.0.1"))
    assert found is not None and found.name == "hq"

    by_ip = await open_side(sides, certs, "ip")
    found = trunks.identify(await deliver(by_ip, server, "127.0.0.1"))
    assert found is not None and found.name == "by-ip"

    # other.test is the trunk "fenced", but only from 192.0.2.0/24.
    other = await open_side(sides, certs, "other")
    source = await deliver(other, server, "127.0.0.1")
    with caplog.at_level(logging.WARNING, logger="sipswitch.trunks"):
        assert trunks.identify(source) is None
        # The address of trunk by-ip, with another certificate: refused, and said why.
        assert "its certificate names other.test, not 127.0.0.1" in caplog.text
        # Over UDP or TCP from that address: never a TLS trunk, and no word about it (phones
        # may share the address).
        caplog.clear()
        assert trunks.identify(Address("udp", "127.0.0.1", 5061)) is None
        assert trunks.identify(Address("tcp", "127.0.0.1", 40000)) is None
        assert caplog.text == ""


async def test_sources_restrict_where_the_certificate_counts(
    sides: list[Side], certs: Path, tmp_path: Path
) -> None:
    server = await open_side(sides, certs, "ip", verify_clients=True)
    other = await open_side(sides, certs, "other")
    source = await deliver(other, server, "127.0.0.1")
    for sources, expected in (('["192.0.2.0/24"]', None), ('["127.0.0.0/8"]', "fenced")):
        trunks = manager(tmp_path, TRUNKS.replace('["192.0.2.0/24"]', sources))
        trunks.tls = server.transport
        await trunks.resolve()
        found = trunks.identify(source)
        assert (found.name if found is not None else None) == expected


async def test_without_client_certificates_only_our_own_connections_prove_a_trunk(
    sides: list[Side], certs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The trunk is only the TLS server: requests it sends back on the connection this side
    opened (and verified) are the trunk's; a connection it opens to us proves nothing."""
    carrier = await open_side(sides, certs, "pbx")  # does not ask for client certificates
    office = await open_side(sides, certs, "ip")  # neither
    trunks = manager(tmp_path, TRUNKS)
    trunks.tls = office.transport
    await trunks.resolve()

    # The office opens the connection (a registration, say); the carrier answers on it and
    # later sends a request back on it.
    seen_by_carrier = await deliver(office, carrier, "pbx.test")
    assert carrier.transport.send(response("c1"), seen_by_carrier)
    assert carrier.transport.send(request(via=TLS_VIA, call_id="in"), seen_by_carrier)
    await office.sink.wait_for(messages=2)
    back = office.sink.messages[-1][1]
    assert back == carrier.address  # the same connection
    found = trunks.identify(back)
    assert found is not None and found.name == "hq"

    # The carrier opening its own connection to the office: no client certificate asked for.
    carrier.transport.expect_domain(office.address, "127.0.0.1")
    assert carrier.transport.send(request(via=TLS_VIA, call_id="new"), office.address)
    await office.sink.wait_for(messages=3)
    fresh = office.sink.messages[-1][1]
    assert fresh != back
    assert trunks.identify(fresh) is None


async def test_a_tls_trunk_without_tls_is_unusable(net: Net) -> None:
    server = await net.server(
        "branch",
        Address("udp", "127.0.0.1", 5060),
        '[[trunks]]\nname = "hq"\nhost = "127.0.0.9"\ntransport = "tls"\noptions_interval = 0\n',
    )
    trunks = server.trunks
    assert isinstance(trunks, TrunkManager)
    assert trunks.destination("hq") is None
    (entry,) = trunks.status()
    assert entry["available"] is False
    assert entry["problem"] == 'transport "tls" needs the server\'s [tls] section'
    assert state_of(entry, 0.0) == ("unusable", entry["problem"])
