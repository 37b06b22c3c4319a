"""vpcnet: VXLAN segments spanning nodes and their VNIs.

Revision ID: 0012_vpcnet
Revises: 0009_vpc
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from corral.store.models import UTCDateTime

revision = "0012_vpcnet"
down_revision = "0012_fence"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "overlay_segments",
        sa.Column("key", sa.String(96), nullable=False),
        sa.Column("vni", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
        sa.UniqueConstraint("vni"),
    )


def downgrade() -> None:
    op.drop_table("overlay_segments")
