"""vpc_groups: security groups belong to a VPC (issue 12): ``vpc_id`` ("" the default VPC),
names unique per account and VPC.

Revision ID: 0018_vpc_groups
Revises: 0017_surplus
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018_vpc_groups"
down_revision = "0017_surplus"
branch_labels = None
depends_on = None

# SQLite's copy of the table names its unnamed unique constraint by this convention
_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
_OLD = {
    "sqlite": "uq_security_groups_account_id",
    "postgresql": "security_groups_account_id_name_key",
}
_NEW = "uq_security_groups_vpc_name"


def upgrade() -> None:
    old = _OLD[op.get_bind().dialect.name]
    with op.batch_alter_table("security_groups", naming_convention=_NAMES) as b:
        b.add_column(sa.Column("vpc_id", sa.String(32), nullable=False, server_default=""))
        b.drop_constraint(old, type_="unique")
        b.create_unique_constraint(_NEW, ["account_id", "vpc_id", "name"])


def downgrade() -> None:
    with op.batch_alter_table("security_groups", naming_convention=_NAMES) as b:
        b.drop_constraint(_NEW, type_="unique")
        b.create_unique_constraint(_OLD[op.get_bind().dialect.name], ["account_id", "name"])
        b.drop_column("vpc_id")
