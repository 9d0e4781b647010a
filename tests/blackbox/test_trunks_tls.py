"""Trunks over TLS between running servers, driven by SIPp: an office server and a carrier (a
second sipswitch) each hold a trunk to the other with ``transport = "tls"``, each with a
self-signed certificate the other trusts (``[tls] ca_file``) and client certificates asked for
(``verify_clients = "optional"``). The carrier's certificate names its address (iPAddress
subjectAltName, the office's trunk host is 127.0.0.41); the office's names ``localhost`` (the
carrier's trunk host). Calls go out and come back in over TLS, each side recognising the other by
its certificate; a carrier whose certificate does not name the trunk's host gets nothing, and
the call fails with 503. An external line registered over TLS, on an office that asks for no
client certificates, takes the carrier's calls because they come back on its own connection."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .conftest import UasFactory
from .harness import server_missing
from .ports import free_port
from .sipp import run_sipp
from .test_trunks import (
    Node,
    NodeFactory,
    _call,
    _line_calls_out_and_in,
    _received_invite,
    _rule,
    _status,
    _wait_for,
)
from .test_trunks import node as node  # the fixture

pytestmark = [
    pytest.mark.blackbox,
    pytest.mark.skipif(server_missing(), reason="sipswitch.pbx.server does not exist yet"),
]

CARRIER_HOST, OFFICE_HOST = "127.0.0.41", "127.0.0.1"  # "localhost" resolves to 127.0.0.1
CARRIER_USERS = {"300": "pw300-Tl5s"}
OFFICE_USERS = {"200": "pw200-Tl7q"}
DIDS = 'dids = { "5551000" = "200" }\n'


def _tls(port: int, trusted: Node, verify_clients: str = "optional") -> str:
    return (
        f"[tls]\nport = {port}\nca_file = \"{trusted.data_dir / 'tls' / 'cert.pem'}\"\n"
        f'verify_clients = "{verify_clients}"\n\n'
    )


def _tls_trunk(name: str, host: str, port: int, lines: str = "") -> str:
    return (
        f'[[trunks]]\nname = "{name}"\nhost = "{host}"\nport = {port}\ntransport = "tls"\n'
        f"{lines}\n"
    )


def _selfsigned(node: Node, host: str) -> None:
    done = node.cli("tls", "selfsigned", "--host", host)
    assert done.returncode == 0, done.stdout + done.stderr


def _start_with_certificates(carrier: Node, office: Node) -> None:
    """Self-signed certificates for the carrier's address and the office's "localhost", then
    both servers with their extensions."""
    _selfsigned(carrier, CARRIER_HOST)
    _selfsigned(office, "localhost")
    for server in (carrier, office):
        server.add_extensions()
        server.start()


def test_calls_out_and_in_over_tls_trunks(
    node: NodeFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    carrier = node(CARRIER_HOST, CARRIER_USERS, "carrier")
    office = node(OFFICE_HOST, OFFICE_USERS, "office")
    carrier_tls, office_tls = free_port(CARRIER_HOST), free_port(OFFICE_HOST)
    checks = "options_interval = 1\noptions_failures = 2\n"
    carrier.configure(
        _tls(carrier_tls, office)
        + _tls_trunk("office", "localhost", office_tls, checks)
        + _rule("5551", "trunk:office")
    )
    office.configure(
        _tls(office_tls, carrier)
        + _tls_trunk("carrier", CARRIER_HOST, carrier_tls, DIDS + checks)
        + _rule("9", "trunk:carrier", "strip = 1")
    )
    _start_with_certificates(carrier, office)
    # Each side's OPTIONS reach the other over TLS, the server certificate checked.
    _wait_for(office, "carrier", "health", "up")
    _wait_for(carrier, "office", "health", "up")
    assert _status(office)["carrier"]["address"] == f"tls:{CARRIER_HOST}:{carrier_tls}"
    assert _status(carrier)["office"]["address"] == f"tls:{OFFICE_HOST}:{office_tls}"

    # Out: 200 dials 9300. The carrier takes the INVITE as its trunk "office" only by the
    # client certificate naming localhost (otherwise it would challenge it, and the office has
    # no password to give): 300 answers, caller ID intact.
    callee = sipp_uas(carrier, "300", "uas_answer", calls=1)
    started = time.monotonic()
    out = _call(office, "200", "9300", tmp_path)
    out_s = time.monotonic() - started
    assert out.ok, out.describe()
    invite = _received_invite(callee)
    assert 'From: "User 200" <sip:200@' in invite, invite

    # In: 300 calls the office's number 5551000. The carrier opens its own TLS connection to
    # the office (certificate for localhost), whose INVITE the office recognises as the trunk
    # "carrier" by the client certificate for 127.0.0.41: the DID reaches 200.
    office_phone = sipp_uas(office, "200", "uas_answer", calls=1)
    started = time.monotonic()
    into = _call(carrier, "300", "5551000", tmp_path)
    in_s = time.monotonic() - started
    assert into.ok, into.describe()
    invite = _received_invite(office_phone)
    assert 'From: "User 300" <sip:300@' in invite, invite

    for server in (carrier, office):
        text = server.log_text()
        assert "not taken as trunk" not in text, text[-4000:]
        assert "refused: the certificate" not in text, text[-4000:]
    print(
        f"\nTLS trunks: call out {out_s:.2f} s, call in {in_s:.2f} s (SIPp, set-up and hang-up, "
        "a digest round trip included)"
    )


def test_a_carrier_whose_certificate_does_not_name_the_trunk_host_gets_nothing(
    node: NodeFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    carrier = node(CARRIER_HOST, CARRIER_USERS, "carrier")
    office = node(OFFICE_HOST, OFFICE_USERS, "office")
    carrier_tls, office_tls = free_port(CARRIER_HOST), free_port(OFFICE_HOST)
    carrier.configure(_tls(carrier_tls, office, "none"))
    office.configure(
        _tls(office_tls, carrier)
        # No health checks: the call itself meets the certificate.
        + _tls_trunk("carrier", CARRIER_HOST, carrier_tls, "options_interval = 0\n")
        + _rule("9", "trunk:carrier", "strip = 1")
    )
    # Trusted (office's ca_file holds it), but for another name than the trunk's host.
    _selfsigned(carrier, "carrier.test")
    _selfsigned(office, "localhost")
    for server in (carrier, office):
        server.add_extensions()
        server.start()
    callee = sipp_uas(carrier, "300", "uas_answer", calls=1)
    started = time.monotonic()
    refused = _call(office, "200", "9300", tmp_path, "uac_call_503", recv_timeout_ms=15000)
    failed_s = time.monotonic() - started
    assert refused.ok, refused.describe()
    assert callee.running  # never rung
    callee.stop()
    expected = (
        f"TLS connection to tls:{CARRIER_HOST}:{carrier_tls} refused: the certificate does not "
        f"name {CARRIER_HOST} (it names carrier.test)"
    )
    assert expected in office.log_text(), office.log_tail()
    why = f"the certificate names carrier.test, not {CARRIER_HOST}"
    _wait_for(office, "carrier", "tls_detail", why, timeout_s=10)
    listing = office.cli("trunk", "list")
    assert listing.returncode == 0 and f"TLS: {why}" in listing.stdout, listing
    print(f"\ncall through a carrier with the wrong certificate: 503 after {failed_s:.2f} s")


def test_without_tls_a_tls_trunk_is_reported_unusable(node: NodeFactory, tmp_path: Path) -> None:
    office = node(OFFICE_HOST, OFFICE_USERS, "office")
    office.configure(
        _tls_trunk("carrier", CARRIER_HOST, 5061, "options_interval = 0\n")
        + _rule("9", "trunk:carrier", "strip = 1")
    )
    office.add_extensions()
    office.start()
    _wait_for(office, "carrier", "problem", 'transport "tls" needs the server\'s [tls] section')
    listing = office.cli("trunk", "list")
    assert listing.returncode == 0 and "unusable" in listing.stdout, listing
    assert "[tls] section" in listing.stdout, listing
    refused = run_sipp(
        "uac_call_503",
        office.remote,
        tmp_path,
        service="9300",
        users=[("200", office.users["200"])],
        timeout_s=30,
        name="uac_call_503-no-tls",
    )
    assert refused.ok, refused.describe()


def test_a_line_over_tls_takes_calls_back_on_its_own_connection(
    node: NodeFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    """The office asks for no client certificates: calls from the carrier are the line's only
    because they come back on the connection the office opened (and verified) to register."""
    carrier = node(CARRIER_HOST, {**CARRIER_USERS, "5551000": "line-pw-Tl9"}, "carrier")
    office = node(OFFICE_HOST, OFFICE_USERS, "office")
    carrier_tls, office_tls = free_port(CARRIER_HOST), free_port(OFFICE_HOST)
    carrier.configure(_tls(carrier_tls, office, "none"))
    office.configure(
        _tls(office_tls, carrier, "none")
        + _tls_trunk(
            "carrier",
            CARRIER_HOST,
            carrier_tls,
            'kind = "line"\nusername = "5551000"\npassword = "line-pw-Tl9"\n'
            'caller_id = "fixed"\ncaller_number = "5551000"\n' + DIDS + "options_interval = 0\n",
        )
        + _rule("9", "trunk:carrier", "strip = 1")
    )
    _start_with_certificates(carrier, office)
    _wait_for(office, "carrier", "registration", "registered")

    _line_calls_out_and_in(office, carrier, sipp_uas, tmp_path)
