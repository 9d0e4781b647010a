"""Fixtures for the network namespace tests: the NAT topology (skipped with the reason when this
machine cannot build it) and the relay running in its server namespace."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .relay_control import RelayHost
from .topology import NatTopology, remove_stale, unavailable


@pytest.fixture(scope="module")
def nat() -> Iterator[NatTopology]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    remove_stale()
    with NatTopology() as topology:
        yield topology


@pytest.fixture
def relay_host(nat: NatTopology) -> Iterator[RelayHost]:
    host = RelayHost.start(nat, nat.server)
    try:
        yield host
    finally:
        host.stop()
