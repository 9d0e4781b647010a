"""The address plan: local vs external realm and which address each peer is told about."""

from __future__ import annotations

import pydantic
import pytest

from sipswitch.config.settings import NatSettings
from sipswitch.pbx.addresses import AddressPlan


def plan(**values: object) -> AddressPlan:
    return AddressPlan(NatSettings.model_validate(values))


def test_realms_follow_the_local_networks() -> None:
    default = plan()
    assert default.realm("192.168.1.20") == "local"
    assert default.realm("10.1.2.3") == "local"
    assert default.realm("127.0.0.1") == "local"
    assert default.realm("::1") == "local"
    assert default.realm("[fd00::5]") == "local"
    assert default.realm("198.51.100.2") == "external"
    assert default.realm("2001:db8::1") == "external"
    assert default.realm("carrier.example.com") == "external"
    narrow = plan(local_networks=["10.200.0.0/16"])
    assert narrow.realm("10.200.1.1") == "local"
    assert narrow.realm("10.1.0.1") == "external"
    assert narrow.realm("192.168.1.1") == "external"


def test_external_address_only_toward_the_outside() -> None:
    nat = plan(local_address="10.200.2.1", external_address="203.0.113.7")
    assert nat.advertised("198.51.100.2", "10.200.2.1") == "203.0.113.7"
    assert nat.advertised("10.200.1.5", "10.200.2.9") == "10.200.2.1"
    # Another IP family keeps the routed address: an IPv4 address cannot be named to IPv6.
    assert nat.advertised("2001:db8::1", "2001:db8::10") == "2001:db8::10"


def test_nothing_configured_keeps_the_routed_address() -> None:
    default = plan()
    assert not default.has_external
    assert default.advertised("198.51.100.2", "192.0.2.10") == "192.0.2.10"
    assert default.advertised("10.0.0.8", "10.0.0.1") == "10.0.0.1"


def test_bad_addresses_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="not an IP address"):
        NatSettings.model_validate({"external_address": "pbx.example.com"})
    with pytest.raises(pydantic.ValidationError, match="CIDR"):
        NatSettings.model_validate({"local_networks": ["10.0.0.0/33"]})
