"""An in-process sipswitch on the loop transport, with phones on the same loop network."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sipswitch.config.settings import load_settings
from sipswitch.pbx.application import Application
from sipswitch.pbx.server import SipServer
from sipswitch.sip.clock import LoopClock
from sipswitch.sip.transport.base import Address, MessageSink
from sipswitch.sip.transport.loop import LoopNetwork, LoopTransport

from .phone import Phone

SERVER = Address("udp", "127.0.0.1", 5060)
PASSWORD = "secret-pass"


class LoopTransports:
    """The shape of a ``TransportManager`` over one loop-network endpoint."""

    def __init__(self, network: LoopNetwork, address: Address) -> None:
        self.address = address
        self.transport = LoopTransport(network, address)
        self.bound = [address]

    def set_sink(self, sink: MessageSink) -> None:
        self.transport.attach(sink)

    async def start(self, listen: list[str], udp_port: int, tcp_port: int) -> None:
        return None

    def send(self, data: bytes, destination: Address) -> bool:
        return self.transport.send(data, destination)

    def local_address(self, transport: str, destination_host: str) -> tuple[str, int]:
        return self.address.host, self.address.port

    async def stop(self) -> None:
        self.transport.close()


class Lab:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.clock = LoopClock()
        self.network = LoopNetwork(self.clock, latency=0.0005)
        self.server: SipServer | None = None
        self.output: list[str] = []
        self._next_port = 7000
        self.ring_timeout = 30.0
        self.extra_config = ""

    async def start_server(
        self,
        extensions: tuple[str, ...] = ("200", "201", "202"),
        applications: dict[str, Application] | None = None,
    ) -> SipServer:
        config = self.tmp_path / "sipswitch.toml"
        config.write_text(f"{self.extra_config}\n[calls]\nring_timeout = {self.ring_timeout}\n")
        settings = load_settings(config, self.tmp_path / "data")
        self.settings = settings
        server = SipServer(
            settings,
            out=self.output.append,
            transports=LoopTransports(self.network, SERVER),  # type: ignore[arg-type]
            applications=applications,
        )
        await server.start()
        existing = {e.number for e in await server.database.extensions.list()}
        for number in extensions:
            if number not in existing:
                await server.database.extensions.add(number, PASSWORD, settings.sip.realm)
        assert server.directory is not None
        await server.directory.load()
        self.server = server
        return server

    async def stop_server(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    def phone(self, number: str, password: str = PASSWORD) -> Phone:
        self._next_port += 1
        address = Address("udp", "127.0.0.2", self._next_port)
        transport = LoopTransport(self.network, address)
        phone = Phone(transport, self.clock, address, number, password, SERVER)
        transport.attach(phone.layer)
        return phone


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    lab = Lab(tmp_path)
    yield lab
    await lab.stop_server()


Factory = Callable[..., Awaitable[SipServer]]
