"""First-start defaults and the meta table."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sipswitch.store import Database, compute_ha1, seed_default_extensions


async def test_seeding_happens_once(db_url: str, data_dir: Path) -> None:
    async with Database(db_url, data_dir=data_dir) as db:
        created = await seed_default_extensions(db, "pbx")
        assert [number for number, _ in created] == ["100", "101", "102"]
        passwords = [password for _, password in created]
        assert len(set(passwords)) == 3 and all(len(p) >= 12 for p in passwords)
        for number, password in created:
            ext = await db.extensions.get(number)
            assert ext is not None and ext.realm == "pbx"
            assert ext.ha1_md5 == compute_ha1(number, "pbx", password)
        assert await seed_default_extensions(db, "pbx") == []
        # removing a default does not bring it back
        await db.extensions.remove("101")
        assert await seed_default_extensions(db, "pbx") == []
    async with Database(db_url, data_dir=data_dir) as db:
        assert await seed_default_extensions(db, "pbx") == []
        assert [e.number for e in await db.extensions.list()] == ["100", "102"]


async def test_seeding_leaves_existing_numbers_alone(db: Database) -> None:
    await db.extensions.add("101", "mine", "pbx", display_name="kept")
    created = await seed_default_extensions(db, "pbx")
    assert [number for number, _ in created] == ["100", "102"]
    ext = await db.extensions.get("101")
    assert ext is not None and ext.display_name == "kept"
    assert ext.ha1_md5 == compute_ha1("101", "pbx", "mine")


async def test_concurrent_first_starts_seed_once(db_url: str, data_dir: Path) -> None:
    handles = [Database(db_url, data_dir=data_dir) for _ in range(2)]
    try:
        for handle in handles:
            await handle.open()
        results = await asyncio.gather(*(seed_default_extensions(h, "pbx") for h in handles))
        assert sorted(len(result) for result in results) == [0, 3]
        assert len(await handles[0].extensions.list()) == 3
    finally:
        for handle in handles:
            await handle.close()


async def test_meta_get_and_set(db: Database) -> None:
    assert await db.meta.get("k") is None
    await db.meta.set("k", "one")
    await db.meta.set("k", "two")
    assert await db.meta.get("k") == "two"
