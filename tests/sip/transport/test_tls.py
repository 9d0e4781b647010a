"""TlsTransport over real loopback connections: SIP both ways, the protocol and cipher policy,
the handshake timeout, limits applied before the handshake, certificate reload that leaves
established connections alone, RFC 5922 identity checks on outgoing connections, and the
self-signed certificate writer."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sipswitch.sip.message import Request
from sipswitch.sip.transport.base import Address
from sipswitch.sip.transport.certs import (
    CertificateError,
    CertificateFiles,
    ServerCertificates,
    build_client_context,
    build_server_context,
    matches_sip_domain,
    sip_identities,
    write_self_signed,
)
from sipswitch.sip.transport.tls import TlsTransport

from .support import WAIT, MessageReader, RecordingSink, read_to_eof, request, response, wait_until

TLS_VIA = "SIP/2.0/TLS 127.0.0.1:5071;branch=z9hG4bK-tls1"


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Certificates made once per module: an address (127.0.0.1), a name and another name."""
    root = tmp_path_factory.mktemp("certs")
    write_self_signed("127.0.0.1", root / "ip.pem", root / "ip.key")
    write_self_signed("pbx.test", root / "pbx.pem", root / "pbx.key")
    write_self_signed("other.test", root / "other.pem", root / "other.key")
    return root


def files(cert_dir: Path, name: str) -> CertificateFiles:
    return CertificateFiles(cert_dir / f"{name}.pem", cert_dir / f"{name}.key")


@pytest.fixture
async def server(cert_dir: Path) -> AsyncIterator[tuple[TlsTransport, RecordingSink, Address]]:
    sink = RecordingSink()
    transport = TlsTransport(ServerCertificates(files(cert_dir, "ip")), sink, handshake_timeout=2)
    local = await transport.listen("127.0.0.1", 0)
    yield transport, sink, local
    await transport.close()


def client_context(
    cert_dir: Path,
    name: str = "ip",
    version: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(cert_dir / f"{name}.pem"))
    if version is not None:
        # Let the client offer old versions at all (OpenSSL 3 hides them below level 1).
        context.set_ciphers(ciphers or "ALL:@SECLEVEL=0")
        context.minimum_version = version
        context.maximum_version = version
    elif ciphers is not None:
        context.set_ciphers(ciphers)
    return context


async def connect(
    local: Address, context: ssl.SSLContext, name: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection(local.host, local.port, ssl=context, server_hostname=name), WAIT
    )


async def test_sip_both_ways_over_tls(
    server: tuple[TlsTransport, RecordingSink, Address], cert_dir: Path
) -> None:
    transport, sink, local = server
    reader, writer = await connect(local, client_context(cert_dir))
    writer.write(request(via=TLS_VIA))
    await sink.wait_for(messages=1)
    message, source, received_on = sink.messages[0]
    assert isinstance(message, Request) and message.method == "OPTIONS"
    assert source.transport == "tls" and source.host == "127.0.0.1"
    assert received_on == local and local.transport == "tls"
    # The answer goes back over the phone's own connection.
    assert transport.send(response(), source)
    answer = await MessageReader(reader).next()
    assert answer.call_id == "call-1"
    assert transport.connection_count == 1 and transport.handshakes == 1
    writer.close()
    await wait_until(lambda: transport.connection_count == 0)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
async def test_tls_1_0_and_1_1_are_refused(
    server: tuple[TlsTransport, RecordingSink, Address], cert_dir: Path, version: ssl.TLSVersion
) -> None:
    transport, _, local = server
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await connect(local, client_context(cert_dir, version=version))
    await wait_until(lambda: transport.failed_handshakes == 1)
    assert transport.connection_count == 0


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_tls_1_2_and_1_3_are_served_with_aead_suites(
    server: tuple[TlsTransport, RecordingSink, Address], cert_dir: Path, version: ssl.TLSVersion
) -> None:
    _, _, local = server
    _, writer = await connect(local, client_context(cert_dir, version=version))
    ssl_object = writer.get_extra_info("ssl_object")
    cipher, protocol, _ = ssl_object.cipher()
    assert protocol == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[
        version
    ]
    assert "GCM" in cipher or "CHACHA20" in cipher, cipher
    if version is ssl.TLSVersion.TLSv1_2:
        assert cipher.startswith("ECDHE-"), cipher
    writer.close()


@pytest.mark.parametrize(
    "weak",
    [
        "AES128-SHA",  # RSA key exchange, CBC, SHA-1
        "ECDHE-RSA-AES128-SHA",  # CBC-SHA1 even with ECDHE
        "AES256-GCM-SHA384",  # no forward secrecy
        "DHE-RSA-AES128-GCM-SHA256",  # finite-field DHE
        "ECDHE-RSA-AES128-SHA256",  # CBC with SHA-256
        "ECDHE-RSA-NULL-SHA",  # no encryption
        "AECDH-AES128-SHA",  # anonymous
    ],
)
async def test_weak_tls_1_2_suites_are_refused(
    server: tuple[TlsTransport, RecordingSink, Address], cert_dir: Path, weak: str
) -> None:
    _, _, local = server
    context = client_context(
        cert_dir, version=ssl.TLSVersion.TLSv1_2, ciphers=f"{weak}:@SECLEVEL=0"
    )
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await connect(local, context)


async def test_a_silent_client_is_dropped_after_the_handshake_timeout(cert_dir: Path) -> None:
    transport = TlsTransport(ServerCertificates(files(cert_dir, "ip")), handshake_timeout=0.3)
    local = await transport.listen("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(local.host, local.port)
        await wait_until(lambda: transport.connections_from("127.0.0.1") == 1)
        assert await read_to_eof(reader) == b""
        await wait_until(lambda: transport.failed_handshakes == 1)
        assert transport.connections_from("127.0.0.1") == 0
        writer.close()
    finally:
        await transport.close()


async def test_connections_per_source_count_handshakes_in_progress(cert_dir: Path) -> None:
    transport = TlsTransport(
        ServerCertificates(files(cert_dir, "ip")), handshake_timeout=5, max_connections_per_host=2
    )
    local = await transport.listen("127.0.0.1", 0)
    writers = []
    try:
        for _ in range(2):
            _, writer = await asyncio.open_connection(local.host, local.port)
            writers.append(writer)
        await wait_until(lambda: transport.connections_from("127.0.0.1") == 2)
        # The third gets reset at once, without a handshake.
        reader, writer = await asyncio.open_connection(local.host, local.port)
        writers.append(writer)
        assert await read_to_eof(reader) == b""
        assert transport.connections_from("127.0.0.1") == 2
        assert transport.failed_handshakes == 0
    finally:
        for writer in writers:
            writer.close()
        await transport.close()


async def test_admit_hook_refuses_before_any_tls_work(cert_dir: Path) -> None:
    transport = TlsTransport(ServerCertificates(files(cert_dir, "ip")))
    seen: list[str] = []

    def admit(host: str) -> bool:
        seen.append(host)
        return False

    transport.admit = admit
    local = await transport.listen("127.0.0.1", 0)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await connect(local, client_context(cert_dir))
        assert seen == ["127.0.0.1"]
        assert transport.failed_handshakes == 0 and transport.handshakes == 0
    finally:
        await transport.close()


def peer_common_name(writer: asyncio.StreamWriter) -> str:
    cert = writer.get_extra_info("peercert")
    return str(dict(item[0] for item in cert["subject"])["commonName"])


async def test_reload_serves_the_new_certificate_and_keeps_connections(
    cert_dir: Path, tmp_path: Path
) -> None:
    live = CertificateFiles(tmp_path / "cert.pem", tmp_path / "key.pem")
    live.cert.write_bytes((cert_dir / "pbx.pem").read_bytes())
    live.key.write_bytes((cert_dir / "pbx.key").read_bytes())
    certificates = ServerCertificates(live)
    sink = RecordingSink()
    transport = TlsTransport(certificates, sink)
    local = await transport.listen("127.0.0.1", 0)
    both = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    both.check_hostname = False
    both.load_verify_locations(cafile=str(cert_dir / "pbx.pem"))
    both.load_verify_locations(cafile=str(cert_dir / "other.pem"))
    try:
        _, old = await connect(local, both)
        assert peer_common_name(old) == "pbx.test"
        assert not certificates.check()  # nothing changed yet

        # Replaced files are picked up by the change check (what the server runs every 5 s).
        live.cert.write_bytes((cert_dir / "other.pem").read_bytes())
        live.key.write_bytes((cert_dir / "other.key").read_bytes())
        os.utime(live.cert, ns=(1, 1))  # a different mtime even within the clock's resolution
        assert certificates.check()
        _, new = await connect(local, both)
        assert peer_common_name(new) == "other.test"

        # The connection made before the reload still carries SIP.
        old.write(request(via=TLS_VIA, call_id="before-reload"))
        await sink.wait_for(messages=1)
        assert sink.messages[0][0].call_id == "before-reload"

        # A broken key keeps the certificate in service.
        live.key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
        assert not certificates.reload()
        _, third = await connect(local, both)
        assert peer_common_name(third) == "other.test"
        for writer in (old, new, third):
            writer.close()
    finally:
        await transport.close()


def test_mismatched_or_missing_files_are_reported(cert_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="cannot load"):
        build_server_context(CertificateFiles(cert_dir / "pbx.pem", cert_dir / "other.key"))
    with pytest.raises(CertificateError, match="No such file"):
        build_server_context(CertificateFiles(tmp_path / "none.pem", cert_dir / "pbx.key"))


def test_separate_chain_file_is_loaded(cert_dir: Path) -> None:
    context = build_server_context(
        CertificateFiles(cert_dir / "pbx.pem", cert_dir / "pbx.key", cert_dir / "other.pem")
    )
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


# --- RFC 5922 identities ---
SUBJECT = ((("commonName", "cn.example"),),)


@pytest.mark.parametrize(
    ("cert", "identities"),
    [
        ({"subject": SUBJECT}, ["cn.example"]),
        (
            {"subject": SUBJECT, "subjectAltName": (("DNS", "A.example"), ("DNS", "b.example"))},
            ["a.example", "b.example"],
        ),
        (
            {
                "subject": SUBJECT,
                "subjectAltName": (("DNS", "dns.example"), ("URI", "sip:Sip.Example")),
            },
            ["sip.example"],
        ),
        # A SIP URI with a user part is a user's identity, not a domain's.
        (
            {"subject": SUBJECT, "subjectAltName": (("URI", "sip:alice@x.example"),)},
            [],
        ),
        # An IP-only subjectAltName means no SIP domain, and the CN is not consulted.
        ({"subject": SUBJECT, "subjectAltName": (("IP Address", "192.0.2.1"),)}, []),
    ],
)
def test_sip_identities_follow_rfc5922(cert: dict[str, object], identities: list[str]) -> None:
    assert sip_identities(cert) == identities


def test_domain_match_is_exact_and_never_wildcard() -> None:
    cert = {"subjectAltName": (("DNS", "*.example.com"), ("DNS", "pbx.example.com"))}
    assert matches_sip_domain(cert, "PBX.example.com.")
    assert not matches_sip_domain(cert, "other.example.com")
    assert not matches_sip_domain(cert, "")


# --- outgoing connections ---
async def test_outgoing_connection_verifies_chain_and_sip_domain(cert_dir: Path) -> None:
    sink = RecordingSink()
    peer = TlsTransport(ServerCertificates(files(cert_dir, "pbx")), sink)
    peer_address = await peer.listen("127.0.0.1", 0)
    client = TlsTransport(
        ServerCertificates(files(cert_dir, "other")),
        client_context=build_client_context(cert_dir / "pbx.pem", files(cert_dir, "other")),
    )
    try:
        # Without a domain to check, nothing is sent.
        assert not client.send(request(via=TLS_VIA), peer_address)

        # The wrong domain: the handshake completes, the name check refuses, nothing arrives.
        client.expect_domain(peer_address, "wrong.test")
        assert client.send(request(via=TLS_VIA, call_id="wrong"), peer_address)
        await wait_until(lambda: peer.handshakes + peer.failed_handshakes == 1)
        await wait_until(lambda: client.connection_count == 0)

        client.expect_domain(peer_address, "pbx.test")
        assert client.send(request(via=TLS_VIA, call_id="right"), peer_address)
        await sink.wait_for(messages=1)
        assert [m.call_id for m, _, _ in sink.messages] == ["right"]
    finally:
        await client.close()
        await peer.close()


async def test_outgoing_connection_refuses_an_untrusted_chain(cert_dir: Path) -> None:
    sink = RecordingSink()
    peer = TlsTransport(ServerCertificates(files(cert_dir, "pbx")), sink)
    peer_address = await peer.listen("127.0.0.1", 0)
    client = TlsTransport(
        ServerCertificates(files(cert_dir, "other")),
        client_context=build_client_context(cert_dir / "other.pem"),  # does not trust pbx.test
    )
    try:
        client.expect_domain(peer_address, "pbx.test")
        assert client.send(request(via=TLS_VIA), peer_address)
        await wait_until(lambda: peer.failed_handshakes == 1)
        await wait_until(lambda: client.connection_count == 0)
        assert sink.messages == []
    finally:
        await client.close()
        await peer.close()


# --- the self-signed writer ---
def test_self_signed_for_a_name_and_for_an_address(tmp_path: Path) -> None:
    info = write_self_signed("PBX.Example.org", tmp_path / "a.pem", tmp_path / "a.key", days=30)
    assert info.names == ("DNS:pbx.example.org", "URI:sip:pbx.example.org")
    assert (tmp_path / "a.key").stat().st_mode & 0o777 == 0o600
    info = write_self_signed("::1", tmp_path / "b.pem", tmp_path / "b.key")
    assert info.names == ("IP:::1",)
    build_server_context(CertificateFiles(tmp_path / "b.pem", tmp_path / "b.key"))
    with pytest.raises(ValueError):
        write_self_signed("bad host!", tmp_path / "c.pem", tmp_path / "c.key")

