"""instances: a network bandwidth cap and EC2 instance metadata options

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch_op:
        batch_op.add_column(sa.Column("net_limit_mbit", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column("metadata_tokens", sa.String(16), nullable=False, server_default="optional")
        )
        batch_op.add_column(
            sa.Column("metadata_hop_limit", sa.Integer(), nullable=False, server_default="1")
        )
        batch_op.add_column(
            sa.Column("metadata_endpoint", sa.String(16), nullable=False, server_default="enabled")
        )


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch_op:
        for col in ("metadata_endpoint", "metadata_hop_limit", "metadata_tokens", "net_limit_mbit"):
            batch_op.drop_column(col)
