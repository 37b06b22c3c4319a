"""surplus: the unlimited CPU credits' surplus as last metered (issue 14, metering.advance).

Revision ID: 0017_surplus
Revises: 0016_vpcns
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017_surplus"
down_revision = "0016_vpcns"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_meters") as b:
        b.add_column(sa.Column("cpu_surplus", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_meters") as b:
        b.drop_column("cpu_surplus")
