"""Registrations: batched writes in one transaction, reload after restart, expiry purge."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from sipswitch.store import Binding, Database

NOW = 1_700_000_000.0


def binding(aor: str, n: int, expires_at: float = NOW + 3600, **changes: object) -> Binding:
    base = Binding(
        aor=aor,
        contact_uri=f"sip:{aor}@192.0.2.{n}:5060;transport=udp",
        contact_value=f'"Phone {n}" <sip:{aor}@192.0.2.{n}:5060;transport=udp>;expires=3600',
        expires_at=expires_at,
        q=0.5,
        call_id=f"call-{aor}-{n}@192.0.2.{n}",
        cseq=n,
        transport="udp",
        source_host=f"192.0.2.{n}",
        source_port=5060 + n,
        user_agent="Phone/1.0",
        instance_id=f'"<urn:uuid:00000000-0000-0000-0000-{n:012d}>"',
        reg_id=1,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def key(b: Binding) -> tuple[str, str]:
    return (b.aor, b.contact_uri)


async def test_group_commit_of_many_changes(db: Database) -> None:
    first = [binding(aor, n) for aor in ("100", "101", "102") for n in range(1, 4)]
    await db.bindings.apply(first, [])
    assert sorted(map(key, await db.bindings.load_unexpired(NOW))) == sorted(map(key, first))

    refreshed = dataclasses.replace(first[0], expires_at=NOW + 60, cseq=99, q=1.0, reg_id=None)
    gone = [key(first[1]), key(first[4]), ("100", "sip:never-registered@x")]
    added = binding("103", 7)
    await db.bindings.apply([refreshed, added], gone)

    live = {key(b): b for b in await db.bindings.load_unexpired(NOW)}
    expected = {key(b) for b in first} - {key(first[1]), key(first[4])} | {key(added)}
    assert set(live) == expected
    assert live[key(refreshed)] == refreshed
    assert live[key(added)] == added


async def test_nullable_fields_round_trip(db: Database) -> None:
    plain = binding("100", 1, instance_id=None, reg_id=None, user_agent="")
    await db.bindings.apply([plain], [])
    assert await db.bindings.load_unexpired(NOW) == [plain]


async def test_last_change_of_a_contact_in_a_batch_wins(db: Database) -> None:
    older, newer = binding("100", 1, cseq=1), binding("100", 1, cseq=2)
    await db.bindings.apply([older, newer], [])
    assert [b.cseq for b in await db.bindings.load_unexpired(NOW)] == [2]


async def test_a_failing_batch_changes_nothing(db: Database) -> None:
    keep = binding("100", 1)
    await db.bindings.apply([keep], [])
    broken = binding("101", 2, call_id=None)  # NOT NULL violation
    with pytest.raises(IntegrityError):
        await db.bindings.apply([binding("101", 1), broken], [key(keep)])
    assert await db.bindings.load_unexpired(NOW) == [keep]


async def test_empty_batch_is_a_no_op(db: Database) -> None:
    await db.bindings.apply([], [])
    assert await db.bindings.load_unexpired(0) == []


async def test_bindings_survive_closing_and_reopening(db_url: str, data_dir: Path) -> None:
    stored = [binding("100", 1), binding("100", 2, q=1.0), binding("200", 3, NOW - 1)]
    async with Database(db_url, data_dir=data_dir) as db:
        await db.bindings.apply(stored, [])
    async with Database(db_url, data_dir=data_dir) as db:
        live = await db.bindings.load_unexpired(NOW)
    # unexpired only, ordered by AOR then highest q first
    assert live == [stored[1], stored[0]]


async def test_purge_expired(db: Database) -> None:
    rows = [binding("100", 1, NOW - 10), binding("100", 2, NOW), binding("100", 3, NOW + 1)]
    await db.bindings.apply(rows, [])
    assert await db.bindings.purge_expired(NOW) == 2
    assert await db.bindings.purge_expired(NOW) == 0
    assert await db.bindings.load_unexpired(0) == [rows[2]]
