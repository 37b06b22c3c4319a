"""vpcns: a VPC network's transit link to its node's namespace (issue 12, networks.transit).

Revision ID: 0016_vpcns
Revises: 0012_ha
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_vpcns"
down_revision = "0012_ha"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("networks") as b:
        b.add_column(sa.Column("transit", sa.String(43), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("networks") as b:
        b.drop_column("transit")
