"""Small key/value facts about the database itself (e.g. whether defaults were seeded)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from sipswitch.store import schema
from sipswitch.store.dialect import insert_for


class MetaStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def get(self, key: str) -> str | None:
        async with self._engine.connect() as conn:
            value = await conn.scalar(select(schema.meta.c.value).where(schema.meta.c.key == key))
        return value

    async def set(self, key: str, value: str) -> None:
        insert = insert_for(self._engine, schema.meta)
        statement = insert.values(key=key, value=value).on_conflict_do_update(
            index_elements=[schema.meta.c.key], set_={"value": insert.excluded.value}
        )
        async with self._engine.begin() as conn:
            await conn.execute(statement)
