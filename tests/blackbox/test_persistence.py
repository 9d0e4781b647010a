"""Registrations survive a hard crash: after kill -9 and a restart, a call still reaches the
callee registered before the crash, without it registering again."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import ServerFactory, UasFactory
from .harness import server_missing
from .sipp import run_sipp

pytestmark = [
    pytest.mark.blackbox,
    pytest.mark.skipif(server_missing(), reason="sipswitch.pbx.server does not exist yet"),
]


def test_registration_survives_kill_9_and_restart(
    sipswitch_server: ServerFactory, sipp_uas: UasFactory, tmp_path: Path
) -> None:
    server = sipswitch_server()
    callee = sipp_uas(server, "201", "uas_answer", calls=1, timeout_s=90)

    server.kill9()
    server.start()

    caller = run_sipp(
        "uac_call",
        server.remote,
        tmp_path,
        service="201",
        users=[("200", server.users["200"])],
        call_length_ms=200,
        name="call-after-restart",
    )
    assert caller.ok, caller.describe()
    answered = callee.wait(timeout_s=30)
    assert answered.ok and answered.successful == 1, answered.describe()
