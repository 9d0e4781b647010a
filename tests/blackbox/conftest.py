"""Fixtures for the black-box tests: free ports, the server as a subprocess, SIPp callees
registered to it, and server logs attached to the report of a failed test."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import SipswitchServer
from .ports import free_port as _free_port
from .sipp import Sipp, run_sipp, sipp_available

ServerFactory = Callable[..., SipswitchServer]
UasFactory = Callable[..., Sipp]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    if report.when in ("call", "setup") and report.failed:
        servers: list[SipswitchServer] = getattr(item, "_sipswitch_servers", [])
        for server in servers:
            report.sections.append(
                (f"sipswitch log ({server.log_path})", server.log_tail(20000) or "(empty)")
            )


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Returns a function giving a port free for both UDP and TCP on 127.0.0.1."""
    return _free_port


@pytest.fixture
def sipswitch_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Generator[ServerFactory, None, None]:
    """Factory: ``sipswitch_server(users=..., ring_timeout=..., start=True)`` writes a config
    with free ports, creates the users with ``sipswitch ext add``, starts ``sipswitch serve``
    and waits for OPTIONS to be answered 200. Servers still running at the end are stopped
    with SIGTERM and must exit 0."""
    servers: list[SipswitchServer] = []
    request.node._sipswitch_servers = servers

    def factory(*, start: bool = True, **options: Any) -> SipswitchServer:
        server = SipswitchServer(tmp_path, **options)
        servers.append(server)
        server.add_extensions()
        if start:
            server.start()
        return server

    yield factory
    failures = []
    for server in servers:
        try:
            server.stop(check=True)
        except AssertionError as exc:
            failures.append(str(exc))
    if failures:
        pytest.fail("\n\n".join(failures))


@pytest.fixture
def sipp_uas(tmp_path: Path) -> Generator[UasFactory, None, None]:
    """Factory: registers ``user`` (digest auth, SIPp ``register`` scenario) with a contact on
    a fresh local port, then starts a SIPp callee scenario on that very port and returns it.
    The callee is stopped at the end of the test if it is still running."""
    started: list[Sipp] = []

    def factory(
        server: SipswitchServer,
        user: str,
        scenario: str = "uas_answer",
        *,
        transport: str = "udp",
        calls: int = 1,
        timeout_s: float = 60,
        register: bool = True,
        local_port: int | None = None,
    ) -> Sipp:
        port = local_port or _free_port()
        if register:
            reg = run_sipp(
                "register",
                server.remote,
                tmp_path,
                transport=transport,
                users=[(user, server.users[user])],
                local_port=port,
                timeout_s=20,
                name=f"register-{user}",
            )
            assert reg.ok, reg.describe()
        uas = Sipp(
            scenario,
            None,
            tmp_path,
            transport=transport,
            calls=calls,
            local_port=port,
            timeout_s=timeout_s,
            recv_timeout_ms=60000,
            name=f"{scenario}-{user}",
        )
        started.append(uas.start().wait_listening())
        return uas

    yield factory
    for uas in started:
        uas.stop()


@pytest.fixture(autouse=True)
def _needs_sipp() -> None:
    if not sipp_available():
        pytest.fail("sipp is not installed: run `make test-deps`")
