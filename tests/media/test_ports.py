"""The RTP port range: even ports, round-robin reuse, exhaustion, bad ranges."""

from __future__ import annotations

import pytest

from sipswitch.media.ports import PortAllocator, PortsExhausted


def test_even_ports_round_robin() -> None:
    ports = PortAllocator(30000, 30010)
    assert ports.capacity == 6
    got = [ports.allocate() for _ in range(3)]
    assert got == [30000, 30002, 30004]
    ports.release(30000)
    # A freed port is the last to come back.
    assert ports.allocate() == 30006
    assert ports.in_use == 3 and ports.free == 3
    assert 30002 in ports and 30000 not in ports


def test_exhaustion_is_reported_and_freed_ports_come_back() -> None:
    ports = PortAllocator(30000, 30005)  # 30000, 30002, 30004
    taken = [ports.allocate() for _ in range(3)]
    assert sorted(taken) == [30000, 30002, 30004]
    with pytest.raises(PortsExhausted) as caught:
        ports.allocate()
    assert "all 3 pairs of 30000-30005 are in use" in str(caught.value)
    assert caught.value.status == 503
    ports.release(30002)
    ports.release(30002)  # twice is harmless
    ports.release(12345)  # never handed out: harmless
    assert ports.allocate() == 30002
    assert ports.in_use == 3


def test_odd_bounds_are_rounded_inward() -> None:
    ports = PortAllocator(30001, 30009)
    assert (ports.low, ports.high, ports.capacity) == (30002, 30008, 4)
    assert all(ports.allocate() % 2 == 0 for _ in range(4))


@pytest.mark.parametrize("low, high", [(100, 200), (30000, 20000), (65536, 65540), (1024, 70000)])
def test_bad_ranges(low: int, high: int) -> None:
    with pytest.raises(ValueError):
        PortAllocator(low, high)


def test_every_port_is_used_before_any_repeats() -> None:
    ports = PortAllocator(30000, 30199)
    seen = []
    for _ in range(ports.capacity):
        port = ports.allocate()
        seen.append(port)
        ports.release(port)
    assert sorted(seen) == list(range(30000, 30200, 2))
