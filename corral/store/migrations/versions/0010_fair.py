"""Quotas per account (overrides of the settings' defaults), usage records (metering), and
an instance's CPU baseline and credit mode, a volume's Iops and Throughput.

Revision ID: 0009_fair
Revises: 0009_cluster
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from corral.store.models import UTCDateTime

revision = "0009_fair"
down_revision = "0009_cluster"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "account_quotas",
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("resource", sa.String(length=32), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("account_id", "resource"),
    )
    op.create_table(
        "usage_records",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("resource_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("time", UTCDateTime(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("usage_records") as batch_op:
        batch_op.create_index("ix_usage_records_account_id", ["account_id"], unique=False)
        batch_op.create_index("ix_usage_records_resource_id", ["resource_id"], unique=False)
        batch_op.create_index("ix_usage_records_time", ["time"], unique=False)

    with op.batch_alter_table("instances") as batch_op:
        batch_op.add_column(
            sa.Column("cpu_baseline", sa.Float(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column(
                "cpu_credits", sa.String(length=16), nullable=False, server_default="standard"
            )
        )
    with op.batch_alter_table("volumes") as batch_op:
        batch_op.add_column(sa.Column("iops", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("throughput", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("volumes") as batch_op:
        batch_op.drop_column("throughput")
        batch_op.drop_column("iops")
    with op.batch_alter_table("instances") as batch_op:
        batch_op.drop_column("cpu_credits")
        batch_op.drop_column("cpu_baseline")
    op.drop_table("usage_records")
    op.drop_table("account_quotas")
