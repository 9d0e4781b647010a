"""Per-extension call limits, driven by SIPp against the running server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .conftest import ServerFactory, UasFactory
from .harness import SipswitchServer, server_missing
from .sipp import Sipp, SippResult, run_sipp

pytestmark = [
    pytest.mark.blackbox,
    pytest.mark.skipif(server_missing(), reason="sipswitch.pbx.server does not exist yet"),
]


def _limited(factory: ServerFactory, *settings: tuple[str, ...]) -> SipswitchServer:
    server = factory(start=False)
    for args in settings:
        result = server.cli("ext", "set", *args)
        assert result.returncode == 0, result.stderr
    server.start()
    return server


def _call(
    server: SipswitchServer,
    caller: str,
    callee: str,
    scenario: str,
    workdir: Path,
    **options: object,
) -> SippResult:
    return run_sipp(
        scenario,
        server.remote,
        workdir,
        service=callee,
        users=[(caller, server.users[caller])],
        timeout_s=60,
        name=f"{scenario}-{caller}",
        **options,
    )


def _long_call(server: SipswitchServer, caller: str, callee: str, workdir: Path) -> Sipp:
    """A call held up for a few seconds while the test tries another one."""
    sipp = Sipp(
        "uac_call",
        server.remote,
        workdir,
        service=callee,
        users=[(caller, server.users[caller])],
        call_length_ms=4000,
        timeout_s=60,
        name=f"long-{caller}",
    ).start()
    time.sleep(1.5)  # set-up takes milliseconds; the call then lasts 4 s
    return sipp


def test_zero_means_no_calls(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    server = _limited(sipswitch_server, ("200", "--max-calls", "0"), ("202", "--max-calls", "0"))
    sipp_uas(server, "201", "uas_answer", calls=1)
    out = _call(server, "200", "201", "uac_call_403", tmp_path)
    assert out.ok, out.describe()
    sipp_uas(server, "202", "uas_answer", calls=1)
    into = _call(server, "201", "202", "uac_call_486", tmp_path)
    assert into.ok, into.describe()


def test_second_call_to_a_limit_one_extension_is_busy(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    server = _limited(sipswitch_server, ("201", "--max-calls", "1"))
    callee = sipp_uas(server, "201", "uas_answer", calls=1)
    first = _long_call(server, "200", "201", tmp_path)
    busy = _call(server, "202", "201", "uac_call_486", tmp_path)
    assert busy.ok, busy.describe()
    assert first.wait().ok
    assert callee.wait(timeout_s=30).ok


def test_outgoing_over_the_limit_gets_403(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    server = _limited(sipswitch_server, ("200", "--max-calls", "3", "--max-outgoing", "1"))
    callee = sipp_uas(server, "201", "uas_answer", calls=1)
    first = _long_call(server, "200", "201", tmp_path)
    refused = _call(server, "200", "202", "uac_call_403", tmp_path)
    assert refused.ok, refused.describe()
    assert first.wait().ok
    assert callee.wait(timeout_s=30).ok
