"""Extensions: CRUD, HA1-only credentials, validation and limits, on both backends."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from sipswitch.store import (
    Binding,
    Database,
    ExtensionExists,
    ExtensionNotFound,
    InvalidExtension,
    compute_ha1,
)
from sipswitch.store.schema import extensions


def test_compute_ha1_matches_rfc_2617_example() -> None:
    ha1 = compute_ha1("Mufasa", "testrealm@host.com", "Circle Of Life", "MD5")
    assert ha1 == "939e7578ed9e3c518a452acee763bce9"


def test_compute_ha1_sha256_and_unknown_algorithm() -> None:
    expected = hashlib.sha256(b"100:r:pw").hexdigest()
    assert compute_ha1("100", "r", "pw", "SHA-256") == expected
    assert compute_ha1("100", "r", "pw", "sha-256") == expected
    with pytest.raises(ValueError):
        compute_ha1("100", "r", "pw", "SHA-512-256")


async def test_add_get_keeps_only_digests(db: Database) -> None:
    added = await db.extensions.add("100", "s3cret-Pass", "pbx", display_name="Alice", max_calls=2)
    fetched = await db.extensions.get("100")
    assert fetched == added
    assert fetched is not None
    assert fetched.ha1_md5 == compute_ha1("100", "pbx", "s3cret-Pass", "MD5")
    assert fetched.ha1_sha256 == compute_ha1("100", "pbx", "s3cret-Pass", "SHA-256")
    assert fetched.display_name == "Alice"
    assert (fetched.max_calls, fetched.max_outgoing_calls) == (2, None)
    assert fetched.enabled
    async with db.engine.connect() as conn:
        row = (await conn.execute(select(extensions))).one()
    assert not any("s3cret-Pass" in str(value) for value in row)
    assert await db.extensions.get("101") is None


async def test_duplicate_number_is_refused(db: Database) -> None:
    await db.extensions.add("100", "a", "r")
    with pytest.raises(ExtensionExists):
        await db.extensions.add("100", "b", "r")
    ext = await db.extensions.get("100")
    assert ext is not None and ext.ha1_md5 == compute_ha1("100", "r", "a")


@pytest.mark.parametrize(
    "number", ["", "a b", "1" * 33, "100;DROP", "ext\u00e9", "100\n", "sip:100"]
)
async def test_bad_numbers_are_refused(db: Database, number: str) -> None:
    with pytest.raises(InvalidExtension):
        await db.extensions.add(number, "pw", "r")
    assert await db.extensions.list() == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"password": ""},
        {"password": "x" * 257},
        {"display_name": "n" * 65},
        {"display_name": "bad\nname"},
        {"max_calls": -1},
        {"max_outgoing_calls": True},
        {"realm": ""},
    ],
)
async def test_bad_fields_are_refused(db: Database, kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"number": "100", "password": "pw", "realm": "r"} | kwargs
    with pytest.raises(InvalidExtension):
        await db.extensions.add(**args)  # type: ignore[arg-type]


async def test_accepted_number_forms(db: Database) -> None:
    for number in ("1", "1" * 32, "alice.smith", "front-desk_2"):
        await db.extensions.add(number, "pw", "r")
    assert len(await db.extensions.list()) == 4


async def test_list_is_in_natural_order(db: Database) -> None:
    for number in ("1000", "reception", "101", "99", "100"):
        await db.extensions.add(number, "pw", "r")
    assert [e.number for e in await db.extensions.list()] == [
        "99", "100", "101", "1000", "reception"
    ]


async def test_set_changes_only_what_is_given(db: Database) -> None:
    await db.extensions.add("100", "old", "r", display_name="A", max_calls=3, max_outgoing_calls=1)
    ext = await db.extensions.set("100", password="new")
    assert ext.ha1_md5 == compute_ha1("100", "r", "new")
    assert ext.ha1_sha256 == compute_ha1("100", "r", "new", "SHA-256")
    assert (ext.display_name, ext.max_calls, ext.max_outgoing_calls) == ("A", 3, 1)

    ext = await db.extensions.set("100", max_calls=None, enabled=False)
    assert (ext.max_calls, ext.max_outgoing_calls, ext.enabled) == (None, 1, False)
    ext = await db.extensions.set("100", max_outgoing_calls=0, display_name="")
    assert (ext.max_outgoing_calls, ext.display_name) == (0, "")
    assert await db.extensions.get("100") == ext


async def test_realm_change_needs_the_password(db: Database) -> None:
    await db.extensions.add("100", "pw", "old-realm")
    with pytest.raises(InvalidExtension, match="realm"):
        await db.extensions.set("100", realm="new-realm")
    same = await db.extensions.set("100", realm="old-realm", display_name="x")
    assert same.realm == "old-realm"
    moved = await db.extensions.set("100", realm="new-realm", password="pw2")
    assert moved.realm == "new-realm"
    assert moved.ha1_md5 == compute_ha1("100", "new-realm", "pw2")


async def test_set_unknown_extension(db: Database) -> None:
    with pytest.raises(ExtensionNotFound):
        await db.extensions.set("404", enabled=False)


async def test_remove_deletes_extension_and_its_bindings(db: Database) -> None:
    await db.extensions.add("100", "pw", "r")
    await db.extensions.add("101", "pw", "r")
    bindings = [
        Binding(aor, f"sip:{aor}@10.0.0.1", f"<sip:{aor}@10.0.0.1>", 2e9, 1.0, "c", 1,
                "udp", "10.0.0.1", 5060)
        for aor in ("100", "101")
    ]  # fmt: skip
    await db.bindings.apply(bindings, [])
    assert await db.extensions.remove("100") is True
    assert await db.extensions.remove("100") is False
    assert await db.extensions.get("100") is None
    assert [b.aor for b in await db.bindings.load_unexpired(0)] == ["101"]
