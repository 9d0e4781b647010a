"""The database handle: engine setup (SQLite or PostgreSQL), migrations at open, the stores."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from alembic.util import CommandError
from sqlalchemy import Connection, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from sipswitch.store.bindings import BindingStore
from sipswitch.store.cdr import CdrStore
from sipswitch.store.errors import StoreError
from sipswitch.store.extensions import ExtensionStore
from sipswitch.store.meta import MetaStore

if TYPE_CHECKING:
    from sipswitch.config import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Serialises migrations when several nodes start against one PostgreSQL database.
_MIGRATION_LOCK_KEY = 0x5195_7C4
_SQLITE_BUSY_TIMEOUT_MS = 10_000


class Database:
    """Owns the engine; ``open()`` brings the schema to the newest revision."""

    def __init__(self, url: str, *, data_dir: Path | None = None) -> None:
        try:
            self.url: URL = make_url(url)
        except ArgumentError:
            raise StoreError(f"not a database URL: {url!r}") from None
        backend = self.url.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise StoreError(f"unsupported database {backend!r}: use sqlite or postgresql")
        self.backend = backend
        if data_dir is None:
            data_dir = self._sqlite_dir() or Path("data")
        self.data_dir = data_dir.absolute()
        self.engine: AsyncEngine = create_async_engine(self.url, **self._engine_options())
        if backend == "sqlite":
            _configure_sqlite(self.engine)
        self.extensions = ExtensionStore(self.engine)
        self.bindings = BindingStore(self.engine)
        self.cdr = CdrStore(self.engine, self.data_dir)
        self.meta = MetaStore(self.engine)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls(settings.database_url, data_dir=settings.data_dir)

    def _sqlite_dir(self) -> Path | None:
        if self.backend != "sqlite" or self._sqlite_in_memory():
            return None
        return Path(self.url.database or "").absolute().parent

    def _sqlite_in_memory(self) -> bool:
        return self.url.database in (None, "", ":memory:") or self.url.query.get("mode") == "memory"

    def _engine_options(self) -> dict[str, Any]:
        if self.backend == "sqlite":
            return {"connect_args": {"timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000}}
        return {"pool_pre_ping": True}

    async def open(self) -> None:
        """Create the SQLite directory if needed and migrate the schema to head."""
        sqlite_dir = self._sqlite_dir()
        if sqlite_dir is not None:
            sqlite_dir.mkdir(parents=True, exist_ok=True)
        try:
            async with self.engine.begin() as conn:
                if self.backend == "postgresql":
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                    )
                await conn.run_sync(_upgrade_to_head)
        except CommandError as exc:
            raise StoreError(f"cannot migrate the database: {exc}") from None

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Database:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def revision(self) -> str | None:
        """The schema revision stored in the database (None before the first migration)."""
        async with self.engine.connect() as conn:
            return await conn.run_sync(_current_revision)


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    return config


def _upgrade_to_head(connection: Connection) -> None:
    command.upgrade(_alembic_config(connection), "head")


def _current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL + synchronous=NORMAL survives a killed process; BEGIN IMMEDIATE avoids upgrade
    deadlocks between the server and the command line writing the same file."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
