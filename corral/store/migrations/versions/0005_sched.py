"""scheduler: nodes learn zone, labels, cordon, architecture, disk, QEMU's memory overhead,
reserved memory and claimed totals; instances carry their claim and placement group; placement
groups. Live instances are backfilled with a claim (guest memory + 256 MiB, the agent's QEMU
overhead at this revision); the controller recounts node totals from them at start.

Revision ID: 0004_sched
Revises: 0004_sec_host
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from corral.store.models import UTCDateTime

revision = "0004_sched"
down_revision = "0004_sec_host"
branch_labels = None
depends_on = None

NODE_COLUMNS = (
    "claimed_disk",
    "claimed_cores",
    "claimed_memory",
    "memory_reserved",
    "memory_overhead",
    "disk",
    "arch",
    "cordoned",
    "labels",
    "zone",
)


def upgrade() -> None:
    with op.batch_alter_table("nodes") as b:
        b.add_column(sa.Column("zone", sa.String(64), nullable=False, server_default=""))
        b.add_column(sa.Column("labels", sa.JSON(), nullable=False, server_default="{}"))
        b.add_column(sa.Column("cordoned", sa.Boolean(), nullable=False, server_default=sa.false()))
        b.add_column(sa.Column("arch", sa.String(16), nullable=False, server_default="x86_64"))
        b.add_column(sa.Column("disk", sa.BigInteger(), nullable=False, server_default="0"))
        for col in ("memory_overhead", "memory_reserved", "claimed_memory", "claimed_disk"):
            b.add_column(sa.Column(col, sa.BigInteger(), nullable=False, server_default="0"))
        b.add_column(sa.Column("claimed_cores", sa.Float(), nullable=False, server_default="0"))
    with op.batch_alter_table("instances") as b:
        b.add_column(sa.Column("placement_group_id", sa.String(32), nullable=True))
        b.add_column(sa.Column("claim_memory", sa.BigInteger(), nullable=False, server_default="0"))
        b.add_column(sa.Column("claim_cores", sa.Float(), nullable=False, server_default="0"))
        b.add_column(sa.Column("claim_disk", sa.BigInteger(), nullable=False, server_default="0"))
        b.create_index("ix_instances_placement_group_id", ["placement_group_id"], unique=False)
    op.execute(
        "UPDATE instances SET claim_memory = memory + 268435456, "
        "claim_cores = CASE WHEN cpu_limit > 0 THEN cpu_limit ELSE cpus END, "
        "claim_disk = disk_size WHERE state != 'terminated'"
    )
    op.create_table(
        "placement_groups",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(12), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("strategy", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "name"),
    )
    with op.batch_alter_table("placement_groups") as b:
        b.create_index("ix_placement_groups_account_id", ["account_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("placement_groups") as b:
        b.drop_index("ix_placement_groups_account_id")
    op.drop_table("placement_groups")
    with op.batch_alter_table("instances") as b:
        b.drop_index("ix_instances_placement_group_id")
        for col in ("claim_disk", "claim_cores", "claim_memory", "placement_group_id"):
            b.drop_column(col)
    with op.batch_alter_table("nodes") as b:
        for col in NODE_COLUMNS:
            b.drop_column(col)
