"""usage_meters: the last counters (CPU seconds, network bytes) of each running instance that
metering has turned into usage records.

Revision ID: 0012_fair2
Revises: 0009_vpc
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from corral.store.models import UTCDateTime

revision = "0012_fair2"
down_revision = "0012_vpcnet"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_meters",
        sa.Column("instance_id", sa.String(length=32), nullable=False),
        sa.Column("node_id", sa.String(length=32), nullable=False),
        sa.Column("qemu_started", sa.Float(), nullable=False),
        sa.Column("cpu_seconds", sa.Float(), nullable=False),
        sa.Column("net_rx_bytes", sa.BigInteger(), nullable=False),
        sa.Column("net_tx_bytes", sa.BigInteger(), nullable=False),
        sa.Column("time", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("instance_id"),
    )


def downgrade() -> None:
    op.drop_table("usage_meters")
