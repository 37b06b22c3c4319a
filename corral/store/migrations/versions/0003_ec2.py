"""EC2 resources: tags, security groups and rules, elastic addresses, volumes, snapshots,
image launch permissions; images learn their root device type and origin.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 22:49:07.388738
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from corral.store.models import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "elastic_addresses",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("public_ip", sa.String(length=39), nullable=False),
        sa.Column("instance_id", sa.String(length=32), nullable=True),
        sa.Column("association_id", sa.String(length=32), nullable=True),
        sa.Column("private_ip", sa.String(length=39), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("public_ip"),
    )
    with op.batch_alter_table("elastic_addresses", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_elastic_addresses_account_id"), ["account_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_elastic_addresses_instance_id"), ["instance_id"], unique=False
        )

    op.create_table(
        "security_groups",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "name"),
    )
    with op.batch_alter_table("security_groups", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_security_groups_account_id"), ["account_id"], unique=False
        )

    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("node_id", sa.String(length=32), nullable=True),
        sa.Column("volume_id", sa.String(length=32), nullable=False),
        sa.Column("volume_size", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.Column("image_id", sa.String(length=32), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
        ),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["nodes.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("snapshots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_snapshots_account_id"), ["account_id"], unique=False)

    op.create_table(
        "tags",
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("resource_type", sa.String(length=32), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
        ),
        sa.PrimaryKeyConstraint("resource_id", "key"),
    )
    with op.batch_alter_table("tags", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tags_account_id"), ["account_id"], unique=False)

    op.create_table(
        "volumes",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("node_id", sa.String(length=32), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("volume_type", sa.String(length=16), nullable=False),
        sa.Column("availability_zone", sa.String(length=64), nullable=False),
        sa.Column("snapshot_id", sa.String(length=32), nullable=True),
        sa.Column("instance_id", sa.String(length=32), nullable=True),
        sa.Column("device", sa.String(length=32), nullable=True),
        sa.Column("attach_state", sa.String(length=16), nullable=True),
        sa.Column("attach_time", UTCDateTime(), nullable=True),
        sa.Column("delete_on_termination", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
        ),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["nodes.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("volumes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_volumes_account_id"), ["account_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_volumes_instance_id"), ["instance_id"], unique=False)

    op.create_table(
        "launch_permissions",
        sa.Column("image_id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("image_id", "account_id"),
    )
    with op.batch_alter_table("launch_permissions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_launch_permissions_account_id"), ["account_id"], unique=False
        )

    op.create_table(
        "security_group_rules",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("group_id", sa.String(length=32), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("protocol", sa.String(length=8), nullable=False),
        sa.Column("from_port", sa.Integer(), nullable=True),
        sa.Column("to_port", sa.Integer(), nullable=True),
        sa.Column("cidr", sa.String(length=43), nullable=True),
        sa.Column("source_group_id", sa.String(length=32), nullable=True),
        sa.Column("description", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(["group_id"], ["security_groups.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("security_group_rules", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_security_group_rules_group_id"), ["group_id"], unique=False
        )

    op.create_table(
        "instance_security_groups",
        sa.Column("instance_id", sa.String(length=32), nullable=False),
        sa.Column("group_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["security_groups.id"],
        ),
        sa.ForeignKeyConstraint(["instance_id"], ["instances.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("instance_id", "group_id"),
    )
    with op.batch_alter_table("instance_security_groups", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_instance_security_groups_group_id"), ["group_id"], unique=False
        )

    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "root_device_type",
                sa.String(length=16),
                nullable=False,
                server_default="instance-store",
            )
        )
        batch_op.add_column(sa.Column("root_snapshot_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("source_instance_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("source_instance_id")
        batch_op.drop_column("root_snapshot_id")
        batch_op.drop_column("root_device_type")

    with op.batch_alter_table("instance_security_groups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_instance_security_groups_group_id"))

    op.drop_table("instance_security_groups")
    with op.batch_alter_table("security_group_rules", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_security_group_rules_group_id"))

    op.drop_table("security_group_rules")
    with op.batch_alter_table("launch_permissions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_launch_permissions_account_id"))

    op.drop_table("launch_permissions")
    with op.batch_alter_table("volumes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_volumes_instance_id"))
        batch_op.drop_index(batch_op.f("ix_volumes_account_id"))

    op.drop_table("volumes")
    with op.batch_alter_table("tags", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tags_account_id"))

    op.drop_table("tags")
    with op.batch_alter_table("snapshots", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_snapshots_account_id"))

    op.drop_table("snapshots")
    with op.batch_alter_table("security_groups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_security_groups_account_id"))

    op.drop_table("security_groups")
    with op.batch_alter_table("elastic_addresses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_elastic_addresses_instance_id"))
        batch_op.drop_index(batch_op.f("ix_elastic_addresses_account_id"))

    op.drop_table("elastic_addresses")
