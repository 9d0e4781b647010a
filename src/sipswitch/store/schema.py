"""Table definitions used by the stores; the migrations in ``migrations/`` create them."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

NUMBER_LENGTH = 32
DISPLAY_NAME_LENGTH = 64
REALM_LENGTH = 128

metadata = MetaData()

extensions = Table(
    "extensions",
    metadata,
    Column("number", String(NUMBER_LENGTH), primary_key=True),
    Column("display_name", String(DISPLAY_NAME_LENGTH), nullable=False, default=""),
    Column("realm", String(REALM_LENGTH), nullable=False),
    Column("ha1_md5", String(32), nullable=False),
    Column("ha1_sha256", String(64), nullable=False),
    Column("max_calls", Integer, nullable=True),
    Column("max_outgoing_calls", Integer, nullable=True),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created_at", Float, nullable=False),
    # Call features (migration 0002).
    Column("forward_always", String(NUMBER_LENGTH), nullable=True),
    Column("forward_busy", String(NUMBER_LENGTH), nullable=True),
    Column("forward_no_answer", String(NUMBER_LENGTH), nullable=True),
    Column("forward_unreachable", String(NUMBER_LENGTH), nullable=True),
    Column("no_answer_timeout", Integer, nullable=True),
    Column("max_call_duration", Integer, nullable=True),
    Column("voicemail_pin", String(16), nullable=True),
    Column("voicemail", Boolean, nullable=False, default=False, server_default=false()),
    # Media relay (migration 0003).
    Column("forward_media", Boolean, nullable=False, default=False, server_default=false()),
)

bindings = Table(
    "bindings",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("aor", String(NUMBER_LENGTH), nullable=False),
    Column("contact_uri", Text, nullable=False),
    Column("contact_value", Text, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("q", Float, nullable=False),
    Column("call_id", Text, nullable=False),
    Column("cseq", BigInteger, nullable=False),
    Column("transport", String(8), nullable=False),
    Column("source_host", String(64), nullable=False),
    Column("source_port", Integer, nullable=False),
    Column("user_agent", Text, nullable=False, default=""),
    Column("instance_id", Text, nullable=True),
    Column("reg_id", Integer, nullable=True),
    UniqueConstraint("aor", "contact_uri", name="uq_bindings_aor_contact"),
    Index("ix_bindings_expires_at", "expires_at"),
)

cdr = Table(
    "cdr",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("day", String(10), nullable=False),
    Column("call_id", Text, nullable=False),
    Column("caller", Text, nullable=False),
    Column("callee", Text, nullable=False),
    Column("start_time", Float, nullable=False),
    Column("answer_time", Float, nullable=True),
    Column("end_time", Float, nullable=False),
    Column("duration", Float, nullable=False),
    Column("billable_seconds", Integer, nullable=False),
    Column("disposition", String(16), nullable=False),
    Column("sip_status", Integer, nullable=False),
    Column("hangup_side", String(8), nullable=False),
    Index("ix_cdr_day", "day"),
    Index("ix_cdr_start_time", "start_time"),
)

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
