"""Dialect-specific statements shared by the stores (INSERT ... ON CONFLICT)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine


def insert_for(engine: AsyncEngine, table: Table) -> Any:
    """An INSERT that supports ``on_conflict_do_update`` / ``_do_nothing`` on this backend."""
    if engine.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
