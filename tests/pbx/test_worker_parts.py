"""The parts of worker processes that need no process: each one's share of the RTP ports, the
spec a worker reads at start, the settings rules."""

from __future__ import annotations

import pytest

from sipswitch.config.settings import MediaSettings, Settings
from sipswitch.pbx.workers import WorkerSpec, media_share


@pytest.mark.parametrize(
    ("low", "high", "workers"), [(10000, 20000, 2), (10001, 10100, 3), (4000, 4011, 4)]
)
def test_each_process_gets_a_separate_even_aligned_part_of_the_rtp_ports(
    low: int, high: int, workers: int
) -> None:
    media = MediaSettings(rtp_port_min=low, rtp_port_max=high)
    shares = [media_share(media, index, workers) for index in range(workers)]
    for share in shares:
        assert low <= share.rtp_port_min < share.rtp_port_max <= high
        assert share.rtp_port_min % 2 == 0
        assert share.rtp_port_max - share.rtp_port_min >= 1
    for first, second in zip(shares, shares[1:], strict=False):
        assert first.rtp_port_max < second.rtp_port_min
    assert media_share(media, 0, 1) == media


def test_a_range_too_small_to_share_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        media_share(MediaSettings(rtp_port_min=4000, rtp_port_max=4003), 0, 3)


def test_the_spec_goes_through_json_unchanged() -> None:
    spec = WorkerSpec(
        index=2,
        workers=3,
        channel_fd=7,
        udp_fds={0: 8, 2: 9},
        bound=[("udp", "127.0.0.1", 5060), ("tcp", "127.0.0.1", 5060), ("udp", "::1", 5060)],
        secret="ab" * 32,
        settings=Settings().model_dump_json(),
        counts="/tmp/x/call-counts",
        fds=[7, 8, 9],
    )
    assert WorkerSpec.from_json(spec.to_json()) == spec
    assert Settings.model_validate_json(spec.settings).sip.workers == 1


def test_workers_serve_trunks_and_at_most_sixteen() -> None:
    assert Settings.model_validate({"sip": {"workers": 4}}).sip.workers == 4
    for transport in ("udp", "tcp", "tls"):
        trunk = {"name": "carrier", "host": "192.0.2.1", "transport": transport}
        assert Settings.model_validate({"sip": {"workers": 2}, "trunks": [trunk]}).trunks
    with pytest.raises(ValueError, match="less than or equal to 16"):
        Settings.model_validate({"sip": {"workers": 17}})
