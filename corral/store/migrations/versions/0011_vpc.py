"""vpc: VPCs, subnets and internet gateways per account; an instance's subnet.

Revision ID: 0009_vpc
Revises: 0009_fair
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from corral.store.models import UTCDateTime

revision = "0009_vpc"
down_revision = "0009_fair"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vpcs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(12), nullable=False),
        sa.Column("cidr", sa.String(43), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("dns_support", sa.Boolean(), nullable=False),
        sa.Column("dns_hostnames", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("vpcs") as b:
        b.create_index("ix_vpcs_account_id", ["account_id"], unique=False)
    op.create_table(
        "subnets",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(12), nullable=False),
        sa.Column("vpc_id", sa.String(32), nullable=False),
        sa.Column("cidr", sa.String(43), nullable=False),
        sa.Column("zone", sa.String(64), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("map_public_ip", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.ForeignKeyConstraint(["vpc_id"], ["vpcs.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("subnets") as b:
        b.create_index("ix_subnets_account_id", ["account_id"], unique=False)
        b.create_index("ix_subnets_vpc_id", ["vpc_id"], unique=False)
    op.create_table(
        "internet_gateways",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(12), nullable=False),
        sa.Column("vpc_id", sa.String(32), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("internet_gateways") as b:
        b.create_index("ix_internet_gateways_account_id", ["account_id"], unique=False)
        b.create_index("ix_internet_gateways_vpc_id", ["vpc_id"], unique=False)
    with op.batch_alter_table("instances") as b:
        b.add_column(sa.Column("subnet_id", sa.String(32), nullable=True))
        b.create_index("ix_instances_subnet_id", ["subnet_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("instances") as b:
        b.drop_index("ix_instances_subnet_id")
        b.drop_column("subnet_id")
    for table in ("internet_gateways", "subnets", "vpcs"):
        op.drop_table(table)
