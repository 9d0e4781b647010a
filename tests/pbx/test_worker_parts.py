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


def test_only_the_owner_of_an_address_deletes_its_expired_bindings() -> None:
    """With workers every process holds every binding, but the process owning an address
    alone writes it: an expired binding of another's address is dropped from memory only."""
    from sipswitch.pbx.location import LocationService
    from sipswitch.store import Binding

    now = [1000.0]

    def binding(aor: str) -> Binding:
        return Binding(
            aor=aor, contact_uri=f"sip:{aor}@192.0.2.1", contact_value=f"<sip:{aor}@192.0.2.1>",
            expires_at=1060.0, q=1.0, call_id=f"c-{aor}", cseq=1, transport="udp",
            source_host="192.0.2.1", source_port=5060,
        )  # fmt: skip

    location = LocationService(None, lambda: now[0], owns=lambda aor: aor == "mine")
    replaced: list[str] = []
    location.on_replace = lambda aor, bindings: replaced.append(aor)
    location.replace("mine", [binding("mine")], [])
    location.apply("theirs", [binding("theirs")])
    assert replaced == ["mine"]  # what others made is not told again
    assert set(location._batch.upserts) == {("mine", "sip:mine@192.0.2.1")}
    now[0] = 2000.0
    assert location.remove_expired() == 2
    assert location.aor_count == 0
    assert location._batch.deletes == {("mine", "sip:mine@192.0.2.1")}
