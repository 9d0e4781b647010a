"""Default extensions created on the very first start, so a new server is usable at once."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from sipswitch.store import schema
from sipswitch.store.dialect import insert_for
from sipswitch.store.errors import ExtensionExists
from sipswitch.store.extensions import add_extension

if TYPE_CHECKING:
    from sipswitch.store.database import Database

DEFAULT_NUMBERS = ("100", "101", "102")
SEEDED_KEY = "defaults_seeded"


def generate_password() -> str:
    """A random password of 16 URL-safe characters."""
    return secrets.token_urlsafe(12)


async def seed_default_extensions(db: Database, realm: str) -> list[tuple[str, str]]:
    """Create extensions 100-102 once per database; return ``(number, password)`` pairs to
    show once, or ``[]`` if seeding already happened. Existing numbers are left alone."""
    insert = insert_for(db.engine, schema.meta)
    claim = insert.values(key=SEEDED_KEY, value="1").on_conflict_do_nothing(
        index_elements=[schema.meta.c.key]
    )
    created: list[tuple[str, str]] = []
    async with db.engine.begin() as conn:
        # Claiming the flag first makes concurrent first starts seed exactly once.
        if (await conn.execute(claim)).rowcount == 0:
            return []
        for number in DEFAULT_NUMBERS:
            password = generate_password()
            try:
                await add_extension(conn, number, password, realm)
            except ExtensionExists:
                continue
            created.append((number, password))
    return created
