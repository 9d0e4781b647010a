"""The parse caches behind the typed views: name-addr values shared by every message of a
dialog, the Via view kept after stamping received/rport, the Request-Line fast paths."""

from __future__ import annotations

import pytest

from sipswitch.sip import headers as headers_module
from sipswitch.sip.errors import SipError
from sipswitch.sip.headers import parse_name_addr, parse_via
from sipswitch.sip.message import Request
from sipswitch.sip.parser import MessageError, parse_datagram
from sipswitch.sip.transaction.matching import response_destination, stamp_via
from sipswitch.sip.transport.base import Address
from sipswitch.sip.uri import AbsoluteUri, SipUri

INVITE = (
    b"INVITE sip:201@127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bK-1;rport, "
    b"SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK-2\r\n"
    b'From: "Alice" <sip:200@127.0.0.1;user=phone>;tag=a1\r\n'
    b"To: <sip:201@127.0.0.1>\r\n"
    b"Call-ID: c1@10.0.0.7\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Max-Forwards: 70\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_a_cached_name_addr_is_a_copy_nobody_can_change_for_the_next_message() -> None:
    value = '"Alice" <sip:200@127.0.0.1;user=phone>;tag=a1'
    first = parse_name_addr(value)
    assert isinstance(first.uri, SipUri)
    first.params["tag"] = "changed"
    first.uri.params["user"] = "ip"
    second = parse_name_addr(value)
    assert second.tag == "a1"
    assert isinstance(second.uri, SipUri) and second.uri.params == {"user": "phone"}
    assert second is not first and second.uri is not first.uri
    assert str(second) == value


def test_absolute_uris_are_copied_too() -> None:
    first = parse_name_addr("<tel:+1-201-555-0123>;tag=x")
    second = parse_name_addr("<tel:+1-201-555-0123>;tag=x")
    assert isinstance(second.uri, AbsoluteUri) and second.uri == first.uri
    assert second.uri is not first.uri


def test_malformed_values_are_not_cached_and_fail_every_time() -> None:
    for _ in range(2):
        with pytest.raises(SipError):
            parse_name_addr("<sip:200@127.0.0.1")


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(headers_module, "_NAME_ADDR_CACHE", {})
    monkeypatch.setattr(headers_module, "_NAME_ADDR_CACHE_SIZE", 8)
    for n in range(50):
        assert parse_name_addr(f"<sip:{n}@example.com>;tag={n}").tag == str(n)
    assert len(headers_module._NAME_ADDR_CACHE) <= 8
    headers_module._NAME_ADDR_CACHE.clear()
    long_value = "<sip:" + "a" * 300 + "@example.com>;tag=long"
    assert parse_name_addr(long_value).tag == "long"
    assert headers_module._NAME_ADDR_CACHE == {}  # long values are never kept


def test_a_stamped_via_keeps_a_view_equal_to_parsing_the_new_text() -> None:
    request = parse_datagram(INVITE)
    assert isinstance(request, Request)
    source = Address("udp", "192.0.2.10", 40000)
    stamped = stamp_via(request, request.top_via, source)
    assert stamped.params["received"] == "192.0.2.10" and stamped.params["rport"] == "40000"
    assert request.top_via is stamped
    reparsed = [parse_via(v) for v in request.headers.values("Via")]
    assert request.vias == reparsed
    assert len(reparsed) == 2 and reparsed[1].branch == "z9hG4bK-2"
    # The response goes where the request came from: the very same address object.
    assert response_destination(request, source) is source


def test_request_line_errors_still_carry_the_partial_request() -> None:
    bad_uri = INVITE.replace(b"sip:201@127.0.0.1:5060", b"sip:201@127.0.0.1:99999", 1)
    with pytest.raises(MessageError) as caught:
        parse_datagram(bad_uri)
    partial = caught.value.partial
    assert isinstance(partial, Request) and partial.method == "INVITE"
    assert partial.call_id == "c1@10.0.0.7"
    bad_method = INVITE.replace(b"INVITE sip:", b"INV(TE sip:", 1)
    with pytest.raises(MessageError) as caught:
        parse_datagram(bad_method)
    assert isinstance(caught.value.partial, Request)
    assert caught.value.partial.method == "UNKNOWN"
    bad_version = INVITE.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1)
    with pytest.raises(MessageError) as caught:
        parse_datagram(bad_version)
    assert caught.value.status == 505
    lower_version = parse_datagram(INVITE.replace(b"SIP/2.0\r\n", b"sip/2.0\r\n", 1))
    assert isinstance(lower_version, Request) and lower_version.version == "SIP/2.0"
