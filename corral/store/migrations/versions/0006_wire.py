"""nodes: where the controller stands in each node's event log (epoch and last sequence number)

Revision ID: 0004_wire
Revises: 0004_sched
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_wire"
down_revision = "0004_sched"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch_op:
        batch_op.add_column(
            sa.Column("event_epoch", sa.String(32), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("event_seq", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch_op:
        batch_op.drop_column("event_seq")
        batch_op.drop_column("event_epoch")
