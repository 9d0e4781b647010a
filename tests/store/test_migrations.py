"""Schema migrations: an empty database reaches head, reopening is a no-op, models match."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from sipswitch.store import Database, StoreError
from sipswitch.store.database import MIGRATIONS_DIR
from sipswitch.store.schema import metadata


def head_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def _schema_diff(conn: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(conn), metadata))


async def test_empty_database_is_migrated_to_head(db_url: str, data_dir: Path) -> None:
    db = Database(db_url, data_dir=data_dir)
    try:
        await db.open()
        assert await db.revision() == head_revision()
        async with db.engine.connect() as conn:
            tables = await conn.run_sync(_tables)
        assert {"extensions", "bindings", "cdr", "meta", "alembic_version"} <= tables
    finally:
        await db.close()


async def test_migrations_create_exactly_the_models(db: Database) -> None:
    async with db.engine.connect() as conn:
        assert await conn.run_sync(_schema_diff) == []


async def test_reopening_keeps_data_and_revision(db_url: str, data_dir: Path) -> None:
    first = Database(db_url, data_dir=data_dir)
    await first.open()
    await first.extensions.add("100", "secret", "r")
    await first.open()  # twice on the same handle is harmless too
    await first.close()
    async with Database(db_url, data_dir=data_dir) as second:
        assert await second.revision() == head_revision()
        assert [e.number for e in await second.extensions.list()] == ["100"]


async def test_concurrent_first_opens_both_succeed(db_url: str, data_dir: Path) -> None:
    handles = [Database(db_url, data_dir=data_dir) for _ in range(2)]
    try:
        await asyncio.gather(*(h.open() for h in handles))
        assert [await h.revision() for h in handles] == [head_revision()] * 2
    finally:
        for handle in handles:
            await handle.close()


async def test_database_from_a_newer_release_is_refused(db: Database, db_url: str) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_future'"))
    other = Database(db_url)
    try:
        with pytest.raises(StoreError, match="cannot migrate"):
            await other.open()
    finally:
        await other.close()


async def test_sqlite_is_wal_with_normal_sync(tmp_path: Path) -> None:
    async with Database(f"sqlite+aiosqlite:///{tmp_path / 'a' / 'b' / 's.db'}") as db:
        async with db.engine.connect() as conn:
            journal = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
            synchronous = (await conn.execute(text("PRAGMA synchronous"))).scalar()
        assert journal == "wal"
        assert synchronous == 1  # NORMAL
        # the CDR directory defaults to the directory of the database file
        assert db.data_dir == tmp_path / "a" / "b"


def test_unsupported_urls_are_refused() -> None:
    with pytest.raises(StoreError):
        Database("mysql+aiomysql://h/db")
    with pytest.raises(StoreError):
        Database("not a url")
