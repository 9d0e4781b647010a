"""Per-extension "forward media stream": relay the extension's RTP through the server.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("extensions") as batch:
        batch.add_column(
            sa.Column("forward_media", sa.Boolean, nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("extensions") as batch:
        batch.drop_column("forward_media")
