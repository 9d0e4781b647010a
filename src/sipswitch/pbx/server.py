"""The running server: opens the store, binds the transports (TLS too when configured), wires
the security gate and the handlers, reloads TLS certificates on SIGHUP and when their files
change, and shuts down cleanly on SIGTERM (no new calls, transactions finish, registrations and
CDRs flushed). External lines and trunks come in as a ``Trunks`` service (``trunk.manager``):
resolved and allow-listed before the security gate is built, started once the transports are
up, stopped (lines unregistered) before they close. SIGHUP also reloads the settings file: its
groups, dial plan and lists apply to new calls, other changes are logged as needing a restart."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import secrets
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..config.errors import ConfigError
from ..config.settings import Settings
from ..media.relay_backend import RelayBackend
from ..sip.clock import Clock, LoopClock
from ..sip.dialog import set_call_id_prefix
from ..sip.message import Request
from ..sip.transaction import ServerTransaction
from ..sip.transport.base import Address
from ..sip.transport.certs import (
    CertificateError,
    CertificateFiles,
    ServerCertificates,
    build_client_context,
)
from ..sip.transport.manager import TransportManager
from ..sip.transport.steering import call_id_prefix, owner_of_aor
from ..sip.transport.tls import TlsTransport
from ..store import Database, seed_default_extensions
from .application import Application
from .b2bua import CallManager, TrunkService
from .cdr import CdrRecorder
from .core import ALLOW_HEADER, PbxCore, log
from .directory import ExtensionDirectory
from .keepalive import NatKeepalive, stream_connections
from .limits import CallLimits
from .location import LocationService
from .media_path import open_relay
from .registrar import Registrar
from .routing import Router, ToApplication
from .security import AllowList, SecurityGate
from .shared_counts import SharedCounts
from .workers import WorkerLink, WorkerPool, WorkerSpec, WorkerTransports, media_share

SHUTDOWN_GRACE = 3.0
EXPIRY_SWEEP_INTERVAL = 30.0
CERTIFICATE_CHECK_INTERVAL = 5.0
COUNTS_FILE = "call-counts"  # in the data directory: call limit counts shared by the workers
PID_FILE = "sipswitch.pid"  # in the data directory while ``serve`` runs (``sipswitch reload``)
# Settings a reload applies to the next call; every other one needs a restart.
RELOADABLE = ("groups", "dialplan", "lists")


class Trunks(TrunkService, Protocol):
    """A trunk service with its life cycle (``trunk.manager.TrunkManager``)."""

    async def resolve(self) -> list[str]: ...

    def start(self, core: PbxCore, counter: CallLimits) -> None: ...

    async def stop(self) -> None: ...

    # With worker processes: the primary's trunks say where calls go, the workers' follow.
    on_change: Callable[[], None] | None

    def destinations(self) -> dict[str, Address | None]: ...

    def follow(self, destinations: dict[str, Address | None]) -> None: ...

    def recognise_tls_by(self, identities: Callable[[Address], frozenset[str]]) -> None: ...


class SipServer:
    """Everything one sipswitch process runs; ``start``/``stop`` for tests, ``run`` for serve."""

    def __init__(
        self,
        settings: Settings,
        out: Callable[[str], None] = print,
        transports: TransportManager | None = None,
        applications: dict[str, Application] | None = None,
        trunks: Trunks | None = None,
        settings_source: Callable[[], Settings] | None = None,
        trunks_factory: Callable[[Settings], Trunks] | None = None,
        worker: WorkerSpec | None = None,
        worker_command: list[str] | None = None,
    ) -> None:
        # With [sip] workers > 1: ``worker`` is this process's part when it is a worker;
        # the primary starts the others with ``worker_command`` (``pbx.workers``).
        self.worker = worker
        self.worker_command = worker_command
        self.pool: WorkerPool | None = None
        self.link: WorkerLink | None = None
        self.counts: SharedCounts | None = None  # call limits counted machine-wide (workers)
        settings = self._own_share(settings)
        self.settings = settings
        self.settings_source = settings_source  # reads the settings file again (SIGHUP)
        # Builds the trunk service for new settings: with it, trunks reload without a restart.
        self.trunks_factory = trunks_factory
        self._trunk_reload: asyncio.Task[None] | None = None
        self.applications = applications or {}
        self.trunks = trunks
        self.out = out
        self.database = Database.from_settings(settings)
        self.transports = transports
        self.core: PbxCore | None = None
        self.location: LocationService | None = None
        self.keepalive: NatKeepalive | None = None  # NAT keepalives, reachability of phones
        self.calls: CallManager | None = None
        self.relay: RelayBackend | None = None
        self.cdr: CdrRecorder | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.directory: ExtensionDirectory | None = None
        self.security: SecurityGate | None = None
        self.certificates: ServerCertificates | None = None
        self._certificate_watch: asyncio.Task[None] | None = None

    def _own_share(self, settings: Settings) -> Settings:
        """``settings`` as this process applies them: with workers, its part of the RTP ports."""
        workers = settings.sip.workers
        if workers < 2:
            return settings
        index = self.worker.index if self.worker is not None else 0
        return settings.model_copy(update={"media": media_share(settings.media, index, workers)})

    async def start(self) -> None:
        settings = self.settings
        worker = self.worker
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        await self.database.open()
        if worker is None:
            created = await seed_default_extensions(self.database, settings.sip.realm)
            if created:
                self.out("Created extensions (passwords are shown only this once):")
                for number, password in created:
                    self.out(f"  extension {number}  password {password}")
        if settings.sip.workers > 1:
            # The dialogs this process starts come back to it (``sip.transport.steering``).
            set_call_id_prefix(call_id_prefix(worker.index if worker is not None else 0))
        clock = LoopClock()
        # With workers each process writes the addresses whose REGISTERs it takes, and the
        # primary announces every change to all; a worker gets the whole table from it.
        self.location = LocationService(
            self.database.bindings, clock.wall, owns=self._owns_aor(settings.sip.workers)
        )
        restored = await self.location.load() if worker is None else 0
        self.location.start()
        self.cdr = CdrRecorder(self.database.cdr)
        self.cdr.start()
        if self.transports is None:
            self.transports = TransportManager()
        directory = ExtensionDirectory(self.database.extensions)
        await directory.load()
        directory.start()
        self.directory = directory
        if worker is not None:
            secret: bytes | None = bytes.fromhex(worker.secret)
        else:
            secret = secrets.token_bytes(32) if settings.sip.workers > 1 else None
        core = PbxCore(settings, clock, self.transports, directory, secret=secret)
        self.core = core
        registrar = Registrar(core, self.location)
        self.keepalive = NatKeepalive(
            core.transactions,
            self.location,
            clock,
            settings.nat,
            core.local_address,
            user_agent=settings.sip.user_agent,
            connections=stream_connections(self.transports)
            if isinstance(self.transports, TransportManager)
            else None,
        )
        served = {
            number: ToApplication("ivr", script) for number, script in settings.ivr.numbers.items()
        }
        router = Router(directory, settings.groups, settings.dialplan, settings.lists, served)
        self.calls = CallManager(core, self.location, self.cdr, router, self.database.extensions)
        self.calls.applications.update(self.applications)
        if worker is not None:
            self.counts = SharedCounts.attach(worker.counts, worker.index)
        elif settings.sip.workers > 1:
            self.counts = SharedCounts.create(settings.data_dir / COUNTS_FILE, settings.sip.workers)
        if self.counts is not None:
            self.calls.limits = CallLimits(self.counts)
        self.relay = await open_relay(settings.relay, self.calls.ports, clock)
        self.calls.use_relay(self.relay)
        if worker is not None:
            assert isinstance(self.transports, WorkerTransports)
            self.link = WorkerLink(
                worker,
                self.transports,
                self.location,
                self._reload_from,
                on_peer_unreachable=core.transactions.peer_unreachable,
                on_trunks=self._follow_trunks,
                on_hunt=self.calls.set_hunt_position,
            )
            self.calls.on_hunt_moved = self.link.report_hunt
            self.location.on_replace = self.link.report_bindings
            self.calls.reachable = self.link.reachable_bindings
        elif self.keepalive is not None:
            self.calls.reachable = self.keepalive.reachable_bindings
        core.dialogs = self.calls
        core.handlers = {
            "REGISTER": registrar.handle,
            "INVITE": self.calls.handle_invite,
            "OPTIONS": self._options,
        }
        security_settings = settings.security
        if self.trunks is not None:
            # Trunks are never banned or rate limited.
            allow = [*security_settings.allow, *await self.trunks.resolve()]
            security_settings = security_settings.model_copy(update={"allow": allow})
            self.calls.trunks = self.trunks
            if worker is not None:
                self.trunks.follow({})  # no trunk takes calls before the primary says so
                assert isinstance(self.transports, WorkerTransports)
                self.trunks.recognise_tls_by(self.transports.peer_identities)
        # Bans, rate limits and scanner drops come first, before a transaction is formed.
        security = SecurityGate(security_settings, clock, core.transactions)
        core.security = security
        self.security = security
        if self.link is not None:
            security.on_ban = self.link.report_ban
        self.transports.set_sink(security)
        if isinstance(self.transports, TransportManager):
            self.transports.tcp.admit = security.admit_connection
            # A connection that cannot be set up fails its requests now (503 to the caller,
            # the next trunk), not after Timer B's 32 s.
            self.transports.set_unreachable_handler(core.transactions.peer_unreachable)
        await self.transports.start(
            settings.sip.listen, settings.sip.udp_port, settings.sip.tcp_port
        )
        if settings.tls is not None and worker is None:  # (a worker's TLS is the primary's)
            await self._start_tls(clock, security)
        self._sweeper = asyncio.create_task(self._sweep(), name="binding-expiry")
        if self.link is not None:
            self.link.start()
            return
        self.keepalive.start()
        if self.trunks is not None:
            self.trunks.start(core, self.calls.limits)
        if settings.sip.workers > 1:
            await self._start_workers(secret)
        for address in self.transports.bound:
            self.out(f"listening on {address}")
        self.out(f"sipswitch ready ({restored} registrations restored)")

    async def _start_workers(self, secret: bytes | None) -> None:
        assert self.location is not None and self.security is not None and secret is not None
        if not isinstance(self.transports, TransportManager) or not self.worker_command:
            raise RuntimeError("worker processes need real transports and a worker command")
        self.pool = WorkerPool(
            self.settings,
            self.transports,
            self.location,
            self.keepalive,
            self.security,
            secret,
            self.worker_command,
            counts_path=str(self.counts.path) if self.counts is not None else "",
            on_worker_lost=self.counts.clear_worker if self.counts is not None else None,
            trunks=self.trunks,
            hunt=self.calls.set_hunt_position if self.calls is not None else None,
        )
        if self.calls is not None:
            self.calls.on_hunt_moved = self.pool.hunt_moved
        await self.pool.start()

    def _owns_aor(self, workers: int) -> Callable[[str], bool] | None:
        if workers < 2:
            return None
        index = self.worker.index if self.worker is not None else 0
        return lambda aor: owner_of_aor(aor, workers) == index

    def _follow_trunks(self, destinations: dict[str, Address | None]) -> None:
        if self.trunks is not None:
            self.trunks.follow(destinations)

    def _reload_from(self, settings: Settings) -> None:
        """A worker: the primary took new settings; take them the same way."""
        self.settings_source = lambda: settings
        self.reload_settings()

    async def _start_tls(self, clock: Clock, security: SecurityGate) -> None:
        tls = self.settings.tls
        assert tls is not None and self.transports is not None
        data_dir = self.settings.data_dir
        cert, key = tls.path(tls.cert, data_dir), tls.path(tls.key, data_dir)
        assert cert is not None and key is not None
        files = CertificateFiles(cert, key, tls.path(tls.chain, data_dir))
        self.certificates = ServerCertificates(files)
        transport = TlsTransport(
            self.certificates,
            clock=clock,
            client_context=build_client_context(tls.path(tls.ca_file, data_dir), files),
            handshake_timeout=tls.handshake_timeout,
            max_connections_per_host=tls.max_connections_per_source,
            verify_clients=tls.verify_clients == "optional",
            client_ca=tls.path(tls.ca_file, data_dir),
        )
        transport.admit = security.admit_connection
        await self.transports.start_tls(transport, self.settings.sip.listen, tls.port)
        self._certificate_watch = asyncio.create_task(
            self._watch_certificates(), name="certificate-watch"
        )

    def reload_certificates(self) -> bool:
        """Load the TLS certificate files again (SIGHUP); connections already up keep theirs."""
        if self.certificates is None:
            return False
        return self.certificates.reload()

    def reload(self) -> None:
        """SIGHUP: the TLS certificates and the settings file again."""
        self.reload_certificates()
        self.reload_settings()

    def reload_settings(self) -> bool:
        """Read the settings again (``settings_source``). Valid: the groups, dial plan and lists
        apply from the next call on (calls in progress keep theirs), and any other setting that
        changed is logged as needing a restart. Invalid: each error is logged with its file and
        line and the settings in use stay. True when new settings were taken."""
        if self.settings_source is None or self.calls is None:
            return False
        try:
            read = self.settings_source()
            new = self._own_share(read)
        except ConfigError as exc:
            for issue in exc.issues:
                log.error("settings not reloaded, the previous ones stay in use: %s", issue)
            return False
        except Exception:
            log.exception("settings not reloaded, the previous ones stay in use")
            return False
        old = self.settings
        reloadable = {*RELOADABLE, "trunks"} if self.trunks_factory is not None else set(RELOADABLE)
        for key in _changed_keys(
            old.model_dump(exclude=reloadable), new.model_dump(exclude=reloadable), ""
        ):
            log.warning("setting %s changed: it needs a restart to apply", key)
        replace_trunks = "trunks" in reloadable and new.trunks != old.trunks
        if not replace_trunks:  # (a new trunk service checks the dial plan as it resolves)
            trunks = {trunk.name for trunk in old.trunks}
            for rule in new.dialplan:
                name = rule.target.removeprefix("trunk:")
                if rule.target.startswith("trunk:") and name not in trunks:
                    log.warning(
                        "dial plan prefix %r names trunk %s, which is not configured: such "
                        "calls get 503",
                        rule.prefix,
                        name,
                    )
        self.calls.router.configure(new.groups, new.dialplan, new.lists)
        if self.pool is not None:
            self.pool.reload(read)
        if replace_trunks:
            previous = self._trunk_reload
            self._trunk_reload = asyncio.ensure_future(self._replace_trunks(new, previous))
        self.settings = old.model_copy(update={key: getattr(new, key) for key in reloadable})
        log.info(
            "settings reloaded: %d groups, %d dial plan rules and the caller lists apply to new "
            "calls",
            len(new.groups),
            len(new.dialplan),
        )
        return True

    async def _replace_trunks(
        self, settings: Settings, previous: asyncio.Task[None] | None
    ) -> None:
        """Swap the trunk service for one built from ``settings``: the old one stops (its lines
        unregister), the new one resolves, is trusted by the security gate and starts (its
        lines register). Calls in progress keep their trunk's settings."""
        if previous is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await previous
        assert self.trunks_factory is not None
        core, calls, security = self.core, self.calls, self.security
        if core is None or calls is None or security is None or not core.accepting_calls:
            return
        new = self.trunks_factory(settings)
        try:
            trusted = await new.resolve()
            if self.trunks is not None and self.worker is None:  # (a worker's never started)
                await self.trunks.stop()
            security.allow = AllowList([*self.settings.security.allow, *trusted])
            self.trunks = new
            calls.trunks = new
            if self.link is not None:  # a worker: the primary's new trunks say where calls go
                new.follow(self.link.trunks)
                new.recognise_tls_by(self.link.transports.peer_identities)
            else:
                new.start(core, calls.limits)
                if self.pool is not None:
                    self.pool.follow_trunks(new)
        except Exception:
            log.exception("trunks not reloaded")
            return
        log.info("trunks reloaded: %d configured", len(settings.trunks))

    async def _watch_certificates(self) -> None:
        assert self.certificates is not None
        while True:
            await asyncio.sleep(CERTIFICATE_CHECK_INTERVAL)
            self.certificates.check()

    def _options(self, request: Request, txn: ServerTransaction, source: Address) -> None:
        assert self.core is not None
        self.core.respond(
            txn,
            200,
            headers={"Allow": ALLOW_HEADER, "Accept": "application/sdp", "Supported": "path"},
        )

    async def _sweep(self) -> None:
        assert self.location is not None
        while True:
            await asyncio.sleep(EXPIRY_SWEEP_INTERVAL)
            self.location.remove_expired()

    async def stop(self) -> None:
        core, calls = self.core, self.calls
        # Workers finish their calls meanwhile; the primary's sockets stay open until they are
        # gone (they send TCP through it).
        workers_stopped = asyncio.ensure_future(self.pool.stop()) if self.pool else None
        if core is not None:
            core.accepting_calls = False
            await core.drain(SHUTDOWN_GRACE)
        if calls is not None:
            calls.hangup_all()
            await asyncio.sleep(0.2)  # let the BYEs and final responses leave
        if self._trunk_reload is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._trunk_reload
        if self.trunks is not None and core is not None and self.worker is None:
            await self.trunks.stop()
        for task in (self._sweeper, self._certificate_watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.keepalive is not None:
            self.keepalive.stop()
        if self.directory is not None:
            await self.directory.close()
        if self.location is not None:
            await self.location.close()
        if self.cdr is not None:
            await self.cdr.close()
        if workers_stopped is not None:
            await workers_stopped
        if self.link is not None:
            self.link.close()
        if self.transports is not None:
            await self.transports.stop()
        if self.relay is not None:
            await self.relay.close()
        await self.database.close()
        if self.counts is not None:
            self.counts.close()


def _changed_keys(old: Any, new: Any, name: str) -> list[str]:
    """The dotted names of the settings that differ between two ``model_dump()`` trees."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            changed
            for key in sorted(old.keys() | new.keys())
            for changed in _changed_keys(old.get(key), new.get(key), f"{name}.{key}".lstrip("."))
        ]
    return [] if old == new else [name]


def _write_pid_file(path: Path) -> None:
    """``sipswitch reload`` finds the running server by this file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        temporary.write_text(f"{os.getpid()}\n")
        temporary.replace(path)
    except OSError as exc:
        log.warning("cannot write %s (%s): sipswitch reload will not find this server", path, exc)


def _remove_pid_file(path: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():  # not another server's
            path.unlink()


async def serve(
    settings: Settings,
    applications: dict[str, Application] | None = None,
    trunks: Trunks | None = None,
    settings_source: Callable[[], Settings] | None = None,
    trunks_factory: Callable[[Settings], Trunks] | None = None,
    worker_command: list[str] | None = None,
) -> int:
    """Run until SIGTERM or SIGINT; return the process exit code. SIGHUP reloads the TLS
    certificates and, with ``settings_source``, the settings (trunks too with
    ``trunks_factory``). With ``[sip] workers`` > 1 the workers are started with
    ``worker_command``."""
    server = SipServer(
        settings,
        applications=applications,
        trunks=trunks,
        settings_source=settings_source,
        trunks_factory=trunks_factory,
        worker_command=worker_command,
    )
    # Signals are handled, and the pid file is there, from the first moment: worker processes
    # make the start take a while, and a server already answering must not die of a SIGHUP.
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, server.reload)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    pid_file = settings.data_dir / PID_FILE
    _write_pid_file(pid_file)
    try:
        stop = await _started(server)
        if stop is None:
            return 1
        sys.stdout.flush()
        await stop.wait()
        log.info("shutting down")
        await server.stop()
    finally:
        _remove_pid_file(pid_file)
    log.info("stopped")
    return 0


async def serve_worker(
    spec: WorkerSpec,
    applications: dict[str, Application],
    trunks: Trunks | None = None,
    trunks_factory: Callable[[Settings], Trunks] | None = None,
) -> int:
    """Run worker process ``spec.index`` until SIGTERM (the primary's, or its death's)."""
    settings = Settings.model_validate_json(spec.settings)
    server = SipServer(
        settings,
        out=lambda line: None,
        transports=WorkerTransports(spec),
        applications=applications,
        trunks=trunks,
        trunks_factory=trunks_factory,
        worker=spec,
    )
    # Reloads come from the primary; a SIGHUP sent to the whole process group is not for us.
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lambda: None)
    stop = await _started(server)
    if stop is None:
        return 1
    await stop.wait()
    await server.stop()
    return 0


async def _started(server: SipServer) -> asyncio.Event | None:
    """Start ``server``; the event SIGTERM and SIGINT set (also when they come during the
    start), or None when it could not start."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except (OSError, CertificateError, RuntimeError) as exc:
        log.error("cannot start: %s", exc)
        await server.stop()
        return None
    # Everything allocated at start-up lives for the whole run: keep it out of the collector's
    # scans, and collect young objects less often (fewer pauses under load).
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)
    return stop
