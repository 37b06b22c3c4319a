"""EC2 as clients use it: the domain an elastic address was allocated for; an instance's
termination protection, shutdown behaviour, monitoring and source/destination check; the client
token a volume was created with.

Revision ID: 0004_ec2_clients
Revises: 0004_wire
Create Date: 2026-12-06 02:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_ec2_clients"
down_revision = "0004_wire"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("volumes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("client_token", sa.String(length=64), nullable=True))
    with op.batch_alter_table("elastic_addresses", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("domain", sa.String(length=16), nullable=False, server_default="vpc")
        )
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "disable_api_termination", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )
        batch_op.add_column(
            sa.Column(
                "shutdown_behavior", sa.String(length=16), nullable=False, server_default="stop"
            )
        )
        batch_op.add_column(
            sa.Column("monitoring", sa.String(length=16), nullable=False, server_default="disabled")
        )
        batch_op.add_column(
            sa.Column("source_dest_check", sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("source_dest_check")
        batch_op.drop_column("monitoring")
        batch_op.drop_column("shutdown_behavior")
        batch_op.drop_column("disable_api_termination")
    with op.batch_alter_table("elastic_addresses", schema=None) as batch_op:
        batch_op.drop_column("domain")
    with op.batch_alter_table("volumes", schema=None) as batch_op:
        batch_op.drop_column("client_token")
