"""Extensions (local users): numbers, digest HA1s and call limits."""

from __future__ import annotations

import builtins
import re
import secrets
import time
from dataclasses import dataclass
from types import EllipsisType
from typing import Any

from sqlalchemy import Row, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sipswitch.store import schema
from sipswitch.store.credentials import compute_ha1
from sipswitch.store.dialect import insert_for
from sipswitch.store.errors import ExtensionExists, ExtensionNotFound, InvalidExtension

NUMBER_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,32}")
MAX_PASSWORD_LENGTH = 256
MAX_CALL_LIMIT = 100_000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Extension:
    number: str
    display_name: str
    realm: str
    ha1_md5: str
    ha1_sha256: str
    max_calls: int | None
    max_outgoing_calls: int | None
    enabled: bool
    forward_always: str | None = None
    forward_busy: str | None = None
    forward_no_answer: str | None = None
    forward_unreachable: str | None = None
    no_answer_timeout: int | None = None
    max_call_duration: int | None = None
    voicemail: bool = False
    voicemail_pin: str | None = None
    forward_media: bool = False  # relay this extension's RTP through the server


FORWARD_KINDS = ("always", "busy", "no_answer", "unreachable")


def validate_number(number: str) -> str:
    if not isinstance(number, str) or not NUMBER_PATTERN.fullmatch(number):
        raise InvalidExtension(
            f"invalid extension number {number!r}: use 1 to 32 letters, digits, '.', '_' or '-'"
        )
    return number


def validate_display_name(name: str) -> str:
    if len(name) > schema.DISPLAY_NAME_LENGTH or _CONTROL.search(name):
        raise InvalidExtension(
            f"invalid display name: at most {schema.DISPLAY_NAME_LENGTH} characters, "
            "no control characters"
        )
    return name


def validate_realm(realm: str) -> str:
    if not realm or len(realm) > schema.REALM_LENGTH or _CONTROL.search(realm) or '"' in realm:
        raise InvalidExtension(f"invalid realm {realm!r}")
    return realm


def validate_password(password: str) -> str:
    if not password or len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidExtension(f"the password must be 1 to {MAX_PASSWORD_LENGTH} characters")
    return password


def validate_limit(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CALL_LIMIT:
        raise InvalidExtension(f"{what} must be 0 to {MAX_CALL_LIMIT}, or unlimited")
    return value


def validate_limit_pair(max_calls: int | None, max_outgoing_calls: int | None) -> None:
    """Outgoing calls are a share of all calls: the outgoing limit cannot be the larger one."""
    if max_calls is not None and max_outgoing_calls is not None and max_outgoing_calls > max_calls:
        raise InvalidExtension(
            f"max outgoing calls ({max_outgoing_calls}) cannot exceed max concurrent calls "
            f"({max_calls}): outgoing calls count toward the concurrent limit"
        )


def _hashes(number: str, realm: str, password: str) -> dict[str, str]:
    return {
        "ha1_md5": compute_ha1(number, realm, password, "MD5"),
        "ha1_sha256": compute_ha1(number, realm, password, "SHA-256"),
    }


def validate_forward(target: str | None) -> str | None:
    """A forwarding target is a number (extension, group, or anything the dial plan routes)."""
    if target is None:
        return None
    if not _FORWARD_TARGET.fullmatch(target):
        raise InvalidExtension(f"forwarding target {target!r} must be 1 to 32 digits, * or #")
    return target


def validate_seconds(value: int | None, what: str, low: int, high: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidExtension(f"{what} must be {low} to {high} seconds, or none")
    return value


def validate_pin(pin: str | None) -> str | None:
    if pin is None:
        return None
    if not (pin.isdigit() and pin.isascii() and 4 <= len(pin) <= 16):
        raise InvalidExtension("a voicemail PIN is 4 to 16 digits")
    return pin


_FORWARD_TARGET = re.compile(r"[0-9*#+]{1,32}")


def _feature_values(features: dict[str, Any]) -> dict[str, Any]:
    """Validate call-feature changes given to ``ExtensionStore.set``."""
    values: dict[str, Any] = {}
    for kind in FORWARD_KINDS:
        key = f"forward_{kind}"
        if key in features:
            values[key] = validate_forward(features[key])
    if "no_answer_timeout" in features:
        values["no_answer_timeout"] = validate_seconds(
            features["no_answer_timeout"], "no-answer timeout", 5, 600
        )
    if "max_call_duration" in features:
        values["max_call_duration"] = validate_seconds(
            features["max_call_duration"], "max call duration", 10, 7 * 86400
        )
    if "voicemail" in features:
        values["voicemail"] = bool(features["voicemail"])
    if "voicemail_pin" in features:
        values["voicemail_pin"] = validate_pin(features["voicemail_pin"])
    if "forward_media" in features:
        values["forward_media"] = bool(features["forward_media"])
    unknown = set(features) - set(values)
    if unknown:
        raise InvalidExtension(f"unknown extension settings: {', '.join(sorted(unknown))}")
    return values


def _from_row(row: Row[Any]) -> Extension:
    return Extension(
        forward_always=row.forward_always,
        forward_busy=row.forward_busy,
        forward_no_answer=row.forward_no_answer,
        forward_unreachable=row.forward_unreachable,
        no_answer_timeout=row.no_answer_timeout,
        max_call_duration=row.max_call_duration,
        voicemail=bool(row.voicemail),
        voicemail_pin=row.voicemail_pin,
        forward_media=bool(row.forward_media),
        number=row.number,
        display_name=row.display_name,
        realm=row.realm,
        ha1_md5=row.ha1_md5,
        ha1_sha256=row.ha1_sha256,
        max_calls=row.max_calls,
        max_outgoing_calls=row.max_outgoing_calls,
        enabled=bool(row.enabled),
    )


def _natural_key(ext: Extension) -> tuple[int, int, str]:
    return (0, int(ext.number), ext.number) if ext.number.isdigit() else (1, 0, ext.number)


VERSION_KEY = "extensions_version"


async def touch_version(conn: AsyncConnection) -> None:
    """Record that the extension table changed (inside the changing transaction), so a running
    server reloads its in-memory copy."""
    insert = insert_for(conn.engine, schema.meta)
    await conn.execute(
        insert.values(key=VERSION_KEY, value=secrets.token_hex(8)).on_conflict_do_update(
            index_elements=[schema.meta.c.key], set_={"value": insert.excluded.value}
        )
    )


class ExtensionStore:
    """Create, read, change and remove extensions; passwords are kept only as HA1s."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def get(self, number: str) -> Extension | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(schema.extensions).where(schema.extensions.c.number == number)
                )
            ).first()
        return _from_row(row) if row is not None else None

    async def list(self) -> list[Extension]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(schema.extensions))).all()
        return sorted((_from_row(row) for row in rows), key=_natural_key)

    async def version(self) -> str:
        """Changes whenever an extension is added, changed or removed ("" before any)."""
        async with self._engine.connect() as conn:
            value = await conn.scalar(
                select(schema.meta.c.value).where(schema.meta.c.key == VERSION_KEY)
            )
        return value or ""

    async def snapshot(self) -> tuple[str, builtins.list[Extension]]:
        """The version and every extension, read in one transaction."""
        async with self._engine.connect() as conn:
            value = await conn.scalar(
                select(schema.meta.c.value).where(schema.meta.c.key == VERSION_KEY)
            )
            rows = (await conn.execute(select(schema.extensions))).all()
        return value or "", [_from_row(row) for row in rows]

    async def add(
        self,
        number: str,
        password: str,
        realm: str,
        display_name: str = "",
        max_calls: int | None = None,
        max_outgoing_calls: int | None = None,
    ) -> Extension:
        async with self._engine.begin() as conn:
            return await add_extension(
                conn, number, password, realm, display_name, max_calls, max_outgoing_calls
            )

    async def set(
        self,
        number: str,
        *,
        password: str | None = None,
        realm: str | EllipsisType = ...,
        display_name: str | None = None,
        max_calls: int | None | EllipsisType = ...,
        max_outgoing_calls: int | None | EllipsisType = ...,
        enabled: bool | None = None,
        **features: Any,
    ) -> Extension:
        """Change the given fields; ``...`` (or None where None has no meaning) keeps a field.

        The HA1s depend on the realm, so a new realm needs the password too. ``features`` sets
        call features: ``forward_always``, ``forward_busy``, ``forward_no_answer``,
        ``forward_unreachable`` (a number, None clears), ``no_answer_timeout`` and
        ``max_call_duration`` (seconds, None clears), ``voicemail`` and ``voicemail_pin``.
        """
        values: dict[str, Any] = {}
        if display_name is not None:
            values["display_name"] = validate_display_name(display_name)
        if not isinstance(max_calls, EllipsisType):
            values["max_calls"] = validate_limit(max_calls, "max_calls")
        if not isinstance(max_outgoing_calls, EllipsisType):
            values["max_outgoing_calls"] = validate_limit(max_outgoing_calls, "max_outgoing_calls")
        if enabled is not None:
            values["enabled"] = bool(enabled)
        values.update(_feature_values(features))
        if password is not None:
            validate_password(password)
        table = schema.extensions
        async with self._engine.begin() as conn:
            row = (await conn.execute(select(table).where(table.c.number == number))).first()
            if row is None:
                raise ExtensionNotFound(number)
            new_realm = row.realm if isinstance(realm, EllipsisType) else validate_realm(realm)
            if password is not None:
                values["realm"] = new_realm
                values.update(_hashes(number, new_realm, password))
            elif new_realm != row.realm:
                raise InvalidExtension(
                    "changing the realm needs the password: the stored digests depend on it"
                )
            validate_limit_pair(
                values.get("max_calls", row.max_calls),
                values.get("max_outgoing_calls", row.max_outgoing_calls),
            )
            if values:
                await conn.execute(update(table).where(table.c.number == number).values(values))
                row = (await conn.execute(select(table).where(table.c.number == number))).one()
                await touch_version(conn)
        return _from_row(row)

    async def remove(self, number: str) -> bool:
        """Delete the extension and its registrations; False if it did not exist."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(schema.extensions).where(schema.extensions.c.number == number)
            )
            await conn.execute(delete(schema.bindings).where(schema.bindings.c.aor == number))
            await touch_version(conn)
        return result.rowcount > 0


async def add_extension(
    conn: AsyncConnection,
    number: str,
    password: str,
    realm: str,
    display_name: str = "",
    max_calls: int | None = None,
    max_outgoing_calls: int | None = None,
) -> Extension:
    """Insert an extension inside the caller's transaction."""
    values: dict[str, Any] = {
        "number": validate_number(number),
        "display_name": validate_display_name(display_name),
        "realm": validate_realm(realm),
        "max_calls": validate_limit(max_calls, "max_calls"),
        "max_outgoing_calls": validate_limit(max_outgoing_calls, "max_outgoing_calls"),
        "enabled": True,
        "created_at": time.time(),
        **_hashes(number, realm, validate_password(password)),
    }
    validate_limit_pair(values["max_calls"], values["max_outgoing_calls"])
    table = schema.extensions
    # A savepoint keeps a duplicate from aborting the caller's whole transaction on PostgreSQL.
    try:
        async with conn.begin_nested():
            await conn.execute(table.insert().values(values))
    except IntegrityError:
        raise ExtensionExists(number) from None
    await touch_version(conn)
    del values["created_at"]
    return Extension(**values)
