"""Migration 0004_sched on a database with live instances: each gets a claim (guest memory +
the agent's 256 MiB QEMU overhead, its cores, its disk), terminated ones none, and the
controller's recount turns them into the node's totals; the downgrade goes back cleanly."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic import command
from alembic.config import Config

from corral.controller import placement_claims
from corral.store import Store
from corral.store.db import MIGRATIONS
from corral.store.models import Node

MiB = 1 << 20


def _cfg(store: Store) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", store.sync_url())
    return cfg


async def test_live_instances_are_backfilled_with_their_claims(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = Store(f"sqlite+aiosqlite:///{path}")
    command.upgrade(_cfg(store), "0003")
    db = sqlite3.connect(path)
    db.execute(
        "INSERT INTO accounts (id, name, admin, created_at) VALUES ('1', 'a', 1, '2026-01-01')"
    )
    db.execute(
        "INSERT INTO nodes (id, name, address, state, cpus, memory, accel, accel_reason, "
        "qemu_version, facts, created_at) VALUES ('node-n1', 'n1', 'local', 'up', 2, "
        f"{8 << 30}, 'tcg', '', '7.2', '{{}}', '2026-01-01')"
    )
    db.execute(
        "INSERT INTO images (id, name, version, digest, state, public, arch, kind, description, "
        "default_user, size, virtual_size, created_at, root_device_type) VALUES ('ami-1', 't', "
        "'1', 'd', 'available', 1, 'x86_64', 'busybox', '', 'root', 1, 1, '2026-01-01', "
        "'instance-store')"
    )
    for iid, state, cpus, limit in (
        ("i-1", "running", 2, 0.0),
        ("i-2", "stopped", 1, 0.5),
        ("i-3", "terminated", 1, 0.0),
    ):
        db.execute(
            "INSERT INTO instances (id, account_id, name, image_id, node_id, state, "
            "desired_state, state_reason, instance_type, cpus, cpu_limit, memory, disk_size, "
            "mac, restart_policy, user_data, ssh_keys, restarts, launch_time, "
            "metadata_tokens, metadata_hop_limit, metadata_endpoint) VALUES (?, '1', ?, "
            "'ami-1', 'node-n1', ?, ?, '', '', ?, ?, ?, ?, ?, 'never', x'', '[]', 0, "
            "'2026-01-01', 'optional', 1, 'enabled')",
            (iid, iid, state, state, cpus, limit, 512 * MiB, 1 << 30, f"52:54:00:00:00:0{iid[-1]}"),
        )
    db.commit()
    db.close()
    command.upgrade(_cfg(store), "head")
    db = sqlite3.connect(path)
    got = db.execute(
        "SELECT id, claim_memory, claim_cores, claim_disk FROM instances ORDER BY id"
    ).fetchall()
    db.close()
    assert got == [
        ("i-1", 768 * MiB, 2.0, 1 << 30),
        ("i-2", 768 * MiB, 0.5, 1 << 30),
        ("i-3", 0, 0.0, 0),
    ]
    async with store.write() as s:
        await placement_claims.recount(s)
    async with store.read() as s:
        node = await s.get(Node, "node-n1")
        assert node is not None
        assert (node.claimed_memory, node.claimed_cores, node.claimed_disk) == (
            1536 * MiB,
            2.5,
            2 << 30,
        )
    await store.close()
    command.downgrade(_cfg(store), "0003")
    db = sqlite3.connect(path)
    cols = {r[1] for r in db.execute("PRAGMA table_info(instances)")}
    db.close()
    assert "claim_memory" not in cols
