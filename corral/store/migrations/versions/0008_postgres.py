"""Claims in the database: named locks with an owner and a lease; operations record the
controller running them and its lease (so another controller can take over).

Revision ID: 0004_postgres
Revises: 0004_ec2_clients
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from corral.store.models import UTCDateTime

revision = "0004_postgres"
down_revision = "0004_ec2_clients"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "claims",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("token", sa.String(length=32), nullable=False),
        sa.Column("acquired_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    with op.batch_alter_table("claims") as batch_op:
        batch_op.create_index(batch_op.f("ix_claims_expires_at"), ["expires_at"], unique=False)
    with op.batch_alter_table("operations") as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("lease_expires_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("operations") as batch_op:
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("owner")
    with op.batch_alter_table("claims") as batch_op:
        batch_op.drop_index(batch_op.f("ix_claims_expires_at"))
    op.drop_table("claims")
