"""Per-extension call features: forwarding, timeouts, call duration and voicemail.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_COLUMNS = (
    ("forward_always", sa.String(32)),
    ("forward_busy", sa.String(32)),
    ("forward_no_answer", sa.String(32)),
    ("forward_unreachable", sa.String(32)),
    ("no_answer_timeout", sa.Integer),
    ("max_call_duration", sa.Integer),
    ("voicemail_pin", sa.String(16)),
)


def upgrade() -> None:
    with op.batch_alter_table("extensions") as batch:
        for name, kind in _COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))
        batch.add_column(
            sa.Column("voicemail", sa.Boolean, nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("extensions") as batch:
        batch.drop_column("voicemail")
        for name, _kind in reversed(_COLUMNS):
            batch.drop_column(name)
