"""RFC 4475 and RFC 5118 torture messages through the parser and the request checks.

Expected outcomes follow tests/fixtures/conformance/INDEX.md: ``ok`` (accepted), a status the
server answers with, ``drop`` (a response that matches nothing usable) or ``resp`` (a valid
response).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sipswitch.sip.errors import SipError
from sipswitch.sip.message import Request, Response
from sipswitch.sip.parser import MessageError, parse_datagram
from sipswitch.sip.validate import UnsupportedExtension, check_request, check_response

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "conformance"
KNOWN = {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "MESSAGE", "UPDATE"}

EXPECTED: dict[str, object] = {
    # 3.1.1 valid
    "wsinv.dat": "ok", "intmeth.dat": 501, "esc01.dat": "ok", "escnull.dat": "ok",
    "esc02.dat": 501, "lwsdisp.dat": "ok", "longreq.dat": "ok", "dblreq.dat": "ok",
    "semiuri.dat": "ok", "transports.dat": "ok", "mpart01.dat": "ok", "unreason.dat": "resp",
    "noreason.dat": "resp",
    # 3.1.2 invalid
    "badinv01.dat": 400, "clerr.dat": 400, "ncl.dat": 400, "scalar02.dat": 400,
    "scalarlg.dat": "drop", "quotbal.dat": 400, "ltgtruri.dat": 400, "lwsruri.dat": 400,
    "lwsstart.dat": 400, "trws.dat": "ok", "escruri.dat": 400, "baddate.dat": "ok",
    "regbadct.dat": "ok",  # the registrar rejects its Contact (400), not the parser
    "badaspec.dat": 400, "baddn.dat": 400, "badvers.dat": 505, "mismatch01.dat": 400,
    "mismatch02.dat": 501, "bigcode.dat": "drop",
    # 3.2, 3.3, 3.4
    "badbranch.dat": "ok", "insuf.dat": 400, "unkscm.dat": 416, "novelsc.dat": 416,
    "unksm2.dat": "ok", "bext01.dat": 420, "invut.dat": "ok", "regaut01.dat": "ok",
    "multi01.dat": 400, "mcl01.dat": 400, "bcast.dat": "resp", "zeromf.dat": "ok",
    "cparam01.dat": "ok", "cparam02.dat": "ok", "regescrt.dat": "ok", "sdp01.dat": "ok",
    "inv2543.dat": "ok", "test.dat": 400,
    "derived/baddn_terminated.dat": 400,
    # RFC 5118 (wire copies)
    "rfc5118/wire/ipv6-good.dat": "ok", "rfc5118/wire/ipv6-bad.dat": 400,
    "rfc5118/wire/port-ambiguous.dat": "ok", "rfc5118/wire/port-unambiguous.dat": "ok",
    "rfc5118/wire/via-received-param-with-delim.dat": "ok",
    "rfc5118/wire/via-received-param-no-delim.dat": "ok",
    "rfc5118/wire/ipv6-in-sdp.dat": "ok", "rfc5118/wire/mult-ip-in-header.dat": "ok",
    "rfc5118/wire/mult-ip-in-sdp.dat": "ok", "rfc5118/wire/ipv4-mapped-ipv6.dat": "ok",
    "rfc5118/wire/ipv6-bug-abnf-3-colons.dat": "ok",
    "rfc5118/wire/ipv6-correct-abnf-2-colons.dat": "ok",
}


def outcome(data: bytes) -> object:
    try:
        message = parse_datagram(data)
    except MessageError as exc:
        return exc.status if exc.partial is not None else "drop"
    if isinstance(message, Response):
        return "resp" if check_response(message) else "drop"
    assert isinstance(message, Request)
    try:
        check_request(message, KNOWN)
    except SipError as exc:
        return exc.status
    return "ok"


def test_every_corpus_file_has_an_expectation() -> None:
    files = {str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*.dat")}
    files |= {str(p.relative_to(CORPUS)) for p in (CORPUS / "rfc5118").glob("*") if p.is_file()}
    originals = {f for f in files if f.startswith("rfc5118/") and "/wire/" not in f}
    assert files - originals == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_outcome(name: str) -> None:
    assert outcome((CORPUS / name).read_bytes()) == EXPECTED[name]


@pytest.mark.parametrize(
    "path", sorted(p for p in (CORPUS / "rfc5118").glob("*") if p.is_file()), ids=str
)
def test_rfc5118_originals_never_raise_foreign_errors(path: Path) -> None:
    outcome(path.read_bytes())  # LF-only, unterminated: must end in ok, a status or a drop


def test_bext01_lists_required_extensions() -> None:
    message = parse_datagram((CORPUS / "bext01.dat").read_bytes())
    assert isinstance(message, Request)
    with pytest.raises(UnsupportedExtension) as info:
        check_request(message, KNOWN)
    assert info.value.extensions == ["nothingSupportsThis", "nothingSupportsThisEither"]


def test_dblreq_ignores_trailing_octets() -> None:
    message = parse_datagram((CORPUS / "dblreq.dat").read_bytes())
    assert isinstance(message, Request) and message.method == "REGISTER"
    assert message.body == b""


def test_mpart01_body_framed_by_content_length() -> None:
    message = parse_datagram((CORPUS / "mpart01.dat").read_bytes())
    assert len(message.body) == 553
    assert message.body.count(b"\x00") >= 2


def test_inv2543_body_is_rest_of_datagram() -> None:
    data = (CORPUS / "inv2543.dat").read_bytes()
    message = parse_datagram(data)
    assert message.body and data.endswith(message.body)


def test_wsinv_keeps_unknown_header_verbatim() -> None:
    message = parse_datagram((CORPUS / "wsinv.dat").read_bytes())
    assert message.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert message.cseq.number == 9 and message.max_forwards == 68


def test_escnull_keeps_nul_in_user() -> None:
    message = parse_datagram((CORPUS / "escnull.dat").read_bytes())
    assert isinstance(message, Request)
    contacts = message.contacts
    assert contacts is not None and len(contacts) == 2
    users = [c.sip_uri.user_unescaped for c in contacts]
    assert all("\x00" in u for u in users) and users[0] != users[1]
    assert "\x00" in message.to.sip_uri.user_unescaped


def test_esc02_has_two_contacts_and_literal_display() -> None:
    message = parse_datagram((CORPUS / "esc02.dat").read_bytes())
    contacts = message.contacts
    assert contacts is not None and len(contacts) == 2
    assert message.from_.display_text == "%Z%45"


def test_semiuri_user_part() -> None:
    message = parse_datagram((CORPUS / "semiuri.dat").read_bytes())
    assert isinstance(message, Request)
    assert message.uri.user_unescaped == "user;par=u@example.net"  # type: ignore[union-attr]


def test_port_ambiguous_has_no_port() -> None:
    message = parse_datagram((CORPUS / "rfc5118/wire/port-ambiguous.dat").read_bytes())
    assert isinstance(message, Request)
    uri = message.uri
    assert uri.port is None and uri.host == "[2001:db8::10:5070]"  # type: ignore[union-attr]


def test_via_received_forms() -> None:
    for name in ("via-received-param-with-delim", "via-received-param-no-delim"):
        message = parse_datagram((CORPUS / f"rfc5118/wire/{name}.dat").read_bytes())
        assert "2001:db8::9:255" in (message.top_via.params["received"] or "")


def test_roundtrip_serialisation_reparses_identically() -> None:
    for name, expected in EXPECTED.items():
        if expected != "ok":
            continue
        first = parse_datagram((CORPUS / name).read_bytes())
        again = parse_datagram(first.to_bytes())
        def without_length(message: object) -> list[tuple[str, str]]:
            return [h for h in message.headers if h[0] != "Content-Length"]  # type: ignore[attr-defined]

        assert without_length(again) == without_length(first)
        assert again.body == first.body
