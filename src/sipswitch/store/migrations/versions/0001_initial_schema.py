"""Initial schema: extensions, bindings, cdr and meta.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "extensions",
        sa.Column("number", sa.String(32), primary_key=True),
        sa.Column("display_name", sa.String(64), nullable=False),
        sa.Column("realm", sa.String(128), nullable=False),
        sa.Column("ha1_md5", sa.String(32), nullable=False),
        sa.Column("ha1_sha256", sa.String(64), nullable=False),
        sa.Column("max_calls", sa.Integer, nullable=True),
        sa.Column("max_outgoing_calls", sa.Integer, nullable=True),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "bindings",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("aor", sa.String(32), nullable=False),
        sa.Column("contact_uri", sa.Text, nullable=False),
        sa.Column("contact_value", sa.Text, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("q", sa.Float, nullable=False),
        sa.Column("call_id", sa.Text, nullable=False),
        sa.Column("cseq", sa.BigInteger, nullable=False),
        sa.Column("transport", sa.String(8), nullable=False),
        sa.Column("source_host", sa.String(64), nullable=False),
        sa.Column("source_port", sa.Integer, nullable=False),
        sa.Column("user_agent", sa.Text, nullable=False),
        sa.Column("instance_id", sa.Text, nullable=True),
        sa.Column("reg_id", sa.Integer, nullable=True),
        sa.UniqueConstraint("aor", "contact_uri", name="uq_bindings_aor_contact"),
    )
    op.create_index("ix_bindings_expires_at", "bindings", ["expires_at"])
    op.create_table(
        "cdr",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("call_id", sa.Text, nullable=False),
        sa.Column("caller", sa.Text, nullable=False),
        sa.Column("callee", sa.Text, nullable=False),
        sa.Column("start_time", sa.Float, nullable=False),
        sa.Column("answer_time", sa.Float, nullable=True),
        sa.Column("end_time", sa.Float, nullable=False),
        sa.Column("duration", sa.Float, nullable=False),
        sa.Column("billable_seconds", sa.Integer, nullable=False),
        sa.Column("disposition", sa.String(16), nullable=False),
        sa.Column("sip_status", sa.Integer, nullable=False),
        sa.Column("hangup_side", sa.String(8), nullable=False),
    )
    op.create_index("ix_cdr_day", "cdr", ["day"])
    op.create_index("ix_cdr_start_time", "cdr", ["start_time"])
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("meta")
    op.drop_index("ix_cdr_start_time", table_name="cdr")
    op.drop_index("ix_cdr_day", table_name="cdr")
    op.drop_table("cdr")
    op.drop_index("ix_bindings_expires_at", table_name="bindings")
    op.drop_table("bindings")
    op.drop_table("extensions")
