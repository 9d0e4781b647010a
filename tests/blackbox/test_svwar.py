"""sipvicious svwar cannot tell existing extensions from unknown ones: every request for a
user is challenged the same way."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from .conftest import ServerFactory
from .harness import server_missing
from .ports import free_port

pytestmark = [
    pytest.mark.blackbox,
    pytest.mark.skipif(server_missing(), reason="sipswitch.pbx.server does not exist yet"),
]

SVWAR = shutil.which("svwar") or "/usr/bin/svwar"
# A row of svwar's result table: | 201 | reqauth |
FOUND_ROW = re.compile(r"^\|\s*(\S+)\s*\|\s*(reqauth|noauth|weird)\s*\|", re.M)


def _svwar(port: int, method: str, *, force: bool) -> str:
    cmd = [
        SVWAR,
        "-e198-205,999",
        "-m",
        method,
        "-p",
        str(port),
        "-P",
        str(free_port()),
        "-b",
        "127.0.0.1",
        "--maximumtime",
        "5",
        "127.0.0.1",
    ]
    if force:
        cmd.insert(1, "--force")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    return done.stdout + done.stderr


def _assert_answered(output: str) -> None:
    # svwar reports a silent target as a socket time-out or "No server response".
    assert "No server response" not in output and "socket error" not in output, output


@pytest.mark.parametrize("method", ["REGISTER", "INVITE", "OPTIONS"])
def test_svwar_does_not_enumerate_extensions(sipswitch_server: ServerFactory, method: str) -> None:
    if not shutil.which("svwar"):
        pytest.fail("sipvicious is not installed: run `make test-deps`")
    # By default svwar's requests are dropped unanswered (scanner User-Agent); with that off,
    # the answers themselves must not tell extensions apart.
    server = sipswitch_server(extra_config="[security]\ndrop_scanners = false\n")

    plain = _svwar(server.port, method, force=False)
    _assert_answered(plain)
    assert not FOUND_ROW.search(plain) and "we have" not in plain, plain

    # Forced past its sanity check, it compares every answer with the one for a random user.
    forced = _svwar(server.port, method, force=True)
    _assert_answered(forced)
    assert not FOUND_ROW.search(forced) and "we have" not in forced, forced
