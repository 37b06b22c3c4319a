"""Node join tokens (`corral node token` / `corral node join`): their hashes, expiry and use.

Revision ID: 0009_cluster
Revises: 0004_postgres
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from corral.store.models import UTCDateTime

revision = "0009_cluster"
down_revision = "0004_postgres"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "join_tokens",
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=True),
        sa.Column("used_by", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("hash"),
    )


def downgrade() -> None:
    op.drop_table("join_tokens")
