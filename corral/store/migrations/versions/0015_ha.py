"""ha: an instance's high availability (disks replicated to a secondary node).

Revision ID: 0012_ha
Revises: 0012_fair2 (0012_fence adds instances.ha)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_ha"
down_revision = "0012_fair2"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as b:
        b.add_column(sa.Column("secondary_node_id", sa.String(32), nullable=True))
        b.add_column(sa.Column("replica_state", sa.String(16), nullable=False, server_default=""))
        b.add_column(sa.Column("replica_percent", sa.Float(), nullable=False, server_default="0"))
        b.add_column(sa.Column("replica_detail", sa.Text(), nullable=False, server_default=""))
        b.create_index("ix_instances_secondary_node_id", ["secondary_node_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("instances") as b:
        b.drop_index("ix_instances_secondary_node_id")
        for col in (
            "replica_detail",
            "replica_percent",
            "replica_state",
            "secondary_node_id",
        ):
            b.drop_column(col)
