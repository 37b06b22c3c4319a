"""Security (issue 9): access-key secrets are stored sealed (AES-GCM, longer than the clear
secret: the column widens; the rows are sealed by the controller at start, which holds the
key file the database does not), and images a non-admin account imported or built, which an
older Corral registered as public built-in images, go back to that account, private.

Revision ID: 0004_sec_host
Revises: 0003
Create Date: 2026-12-06 02:30:00
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004_sec_host"
down_revision = "0003"
branch_labels = None
depends_on = None


def _result(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def upgrade() -> None:
    with op.batch_alter_table("access_keys") as batch_op:
        batch_op.alter_column(
            "secret", existing_type=sa.String(length=64), type_=sa.String(length=255)
        )
    bind = op.get_bind()
    admins = {r[0] for r in bind.execute(sa.text("SELECT id FROM accounts WHERE admin"))}
    made: dict[str, set[str | None]] = {}  # image id -> accounts whose builds/imports made it
    ops = bind.execute(
        sa.text(
            "SELECT account_id, result FROM operations WHERE status = 'succeeded' "
            "AND type IN ('image-build', 'image-import') ORDER BY created_at"
        )
    )
    for account_id, result in ops:
        image_id = _result(result).get("image_id")
        if image_id:
            made.setdefault(image_id, set()).add(account_id)
    for image_id, accounts in made.items():
        # an image an admin (or no account) also made stays built-in; otherwise, when a single
        # non-admin account made it, it is that account's
        if len(accounts) != 1 or accounts & (admins | {None}):
            continue
        (owner,) = accounts
        row = bind.execute(
            sa.text("SELECT name, version FROM images WHERE id = :id AND account_id IS NULL"),
            {"id": image_id},
        ).first()
        if row is None:
            continue
        taken = bind.execute(
            sa.text("SELECT 1 FROM images WHERE account_id = :a AND name = :n AND version = :v"),
            {"a": owner, "n": row[0], "v": row[1]},
        ).first()
        if taken is None:
            bind.execute(
                sa.text("UPDATE images SET account_id = :a, public = :p WHERE id = :id"),
                {"a": owner, "p": False, "id": image_id},
            )


def downgrade() -> None:
    # sealed secrets do not fit the old column; a downgrade needs keys made again
    with op.batch_alter_table("access_keys") as batch_op:
        batch_op.alter_column(
            "secret", existing_type=sa.String(length=255), type_=sa.String(length=64)
        )
