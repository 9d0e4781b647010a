"""Several in-process sipswitch servers with their trunks on one loop network, phones registered
to them, and a scriptable carrier (a phone that challenges REGISTER and INVITE)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sipswitch.config.settings import Settings, load_settings
from sipswitch.pbx.application import Application
from sipswitch.pbx.server import SipServer
from sipswitch.sip.auth import AuthResult, DigestChallenger, compute_ha1, parse_credentials
from sipswitch.sip.clock import LoopClock
from sipswitch.sip.message import Request, make_response
from sipswitch.sip.transaction import ServerTransaction
from sipswitch.sip.transport.base import Address
from sipswitch.sip.transport.loop import LoopNetwork, LoopTransport
from sipswitch.trunk.manager import TrunkManager
from tests.pbx.conftest import PASSWORD, LoopTransports
from tests.pbx.phone import Phone

CARRIER_REALM = "carrier.example"


class Carrier(Phone):
    """A carrier's server: REGISTER and INVITE from ``account`` are challenged (401 / 407) and
    checked; other requests are handled as a phone does (calls answered with ``answer``).
    ``offline`` drops everything; every request is kept in ``received``."""

    def __init__(self, *args: object, account: str, secret: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.account = account
        self.secret = secret
        self.challenger = DigestChallenger(b"c" * 32, CARRIER_REALM, self.layer.clock.wall)
        self.received: list[tuple[Request, Address]] = []
        self.granted = 300
        self.bindings: dict[str, str] = {}
        self.offline = False
        self.challenge_invites = True

    def _authorized(self, request: Request, header: str) -> bool:
        for value in request.headers.get_all(header):
            creds = parse_credentials(value)
            if creds is None or creds.username != self.account:
                continue
            ha1 = compute_ha1(self.account, CARRIER_REALM, self.secret, creds.algorithm)
            if self.challenger.verify(creds, request.method, ha1, request.body) is AuthResult.OK:
                return True
        return False

    def _challenge(self, request: Request, txn: ServerTransaction, status: int) -> None:
        response = make_response(request, status)
        header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
        for value in self.challenger.challenge_values():
            response.headers.add(header, value)
        txn.respond(response)

    def _on_request(self, request: Request, txn: ServerTransaction | None, source: Address) -> None:
        if self.offline:
            return
        self.received.append((request, source))
        if txn is None:
            super()._on_request(request, txn, source)
            return
        if request.method == "REGISTER":
            if not self._authorized(request, "Authorization"):
                self._challenge(request, txn, 401)
                return
            contact = request.headers.get("Contact") or ""
            expires = int(request.headers.get("Expires") or "3600")
            response = make_response(request, 200)
            if expires:
                self.bindings[contact] = contact
                response.headers.add("Contact", f"{contact};expires={self.granted}")
            else:
                self.bindings.pop(contact, None)
            txn.respond(response)
            return
        if request.method == "OPTIONS":
            txn.respond(make_response(request, 200))
            return
        new_call = request.method == "INVITE" and request.to.tag is None
        if new_call and self.challenge_invites:
            if not self._authorized(request, "Proxy-Authorization"):
                self._challenge(request, txn, 407)
                return
        super()._on_request(request, txn, source)

    def requests(self, method: str) -> list[Request]:
        return [r for r, _ in self.received if r.method == method]


class Net:
    """Servers and phones on one loop network, all on the running event loop's clock."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.clock = LoopClock()
        self.network = LoopNetwork(self.clock, latency=0.0005)
        self.servers: list[SipServer] = []
        self.carriers: list[Carrier] = []
        self.cleanups: list[Callable[[], None]] = []
        self._port = 7000

    async def server(
        self,
        name: str,
        address: Address,
        config: str,
        extensions: tuple[str, ...] = (),
        applications: Callable[[Settings], dict[str, Application]] | None = None,
    ) -> SipServer:
        folder = self.tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "sipswitch.toml"
        path.write_text(config + "\n[calls]\nring_timeout = 10.0\n")
        settings = load_settings(path, folder / "data")
        server = SipServer(
            settings,
            out=lambda _: None,
            transports=LoopTransports(self.network, address),  # type: ignore[arg-type]
            trunks=_trunks(settings),
            applications=applications(settings) if applications is not None else None,
            settings_source=lambda: load_settings(path, folder / "data"),
            trunks_factory=_trunks,
        )
        await server.start()
        for number in extensions:
            await server.database.extensions.add(number, PASSWORD, settings.sip.realm)
        assert server.directory is not None
        await server.directory.load()
        self.servers.append(server)
        return server

    def _address(self, host: str) -> Address:
        self._port += 1
        return Address("udp", host, self._port)

    def phone(self, number: str, server: SipServer, host: str = "127.0.0.50") -> Phone:
        address = self._address(host)
        transport = LoopTransport(self.network, address)
        phone = Phone(transport, self.clock, address, number, PASSWORD, _address_of(server))
        transport.attach(phone.layer)
        return phone

    def carrier(
        self, address: Address, server: Address, account: str, secret: str, caller: str
    ) -> Carrier:
        """A carrier at ``address``; the calls it places come from ``caller`` to ``server``."""
        transport = LoopTransport(self.network, address)
        carrier = Carrier(
            transport,
            self.clock,
            address,
            caller,
            "",
            server,
            account=account,
            secret=secret,
        )
        transport.attach(carrier.layer)
        self.carriers.append(carrier)
        return carrier

    async def registered(self, number: str, server: SipServer) -> Phone:
        phone = self.phone(number, server)
        assert (await phone.register()).status == 200
        return phone

    async def stop(self) -> None:
        for server in reversed(self.servers):
            await server.stop()
        self.servers.clear()
        for cleanup in self.cleanups:
            cleanup()
        self.cleanups.clear()


def _trunks(settings: Settings) -> TrunkManager:
    return TrunkManager(settings, retry_min=0.5, retry_max=2.0)


def rewrite(server: SipServer, config: str) -> None:
    """Replace the settings file of a ``Net.server`` (as that writes it) with ``config``."""
    folder = server.settings.data_dir.parent
    (folder / "sipswitch.toml").write_text(config + "\n[calls]\nring_timeout = 10.0\n")


def _address_of(server: SipServer) -> Address:
    transports = server.transports
    assert transports is not None
    address: Address = transports.bound[0]
    return address


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (bounded) until ``predicate`` holds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    network = Net(tmp_path)
    yield network
    await network.stop()
