"""fence: instances' generation (and HA flag), the controller lock's epoch row.

The HA flag is also added by the ``ha`` branch's 0012_ha with the same definition; whichever
runs second finds it and leaves it.

Revision ID: 0012_fence
Revises: 0009_vpc
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from corral.store.models import UTCDateTime

revision = "0012_fence"
down_revision = "0009_vpc"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as b:
        # ``ha`` is also what 0012_ha's replicas are for; it comes first here, where fencing
        # reads it
        b.add_column(sa.Column("ha", sa.Boolean(), nullable=False, server_default=sa.false()))
        b.add_column(sa.Column("generation", sa.Integer(), nullable=False, server_default="1"))
    op.create_table(
        "controller_epoch",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("since", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("controller_epoch")
    with op.batch_alter_table("instances") as b:
        b.drop_column("generation")
        b.drop_column("ha")
