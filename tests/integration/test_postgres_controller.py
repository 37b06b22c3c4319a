"""`corral up --db postgresql://…`: the whole daemon on PostgreSQL (a server this test session
starts: initdb in a temporary directory, unix socket only). The schema is migrated at start, a
real instance runs, and after `kill -9` of the daemon the restarted one finds everything in the
database and re-adopts the same QEMU."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest
from alembic.script import ScriptDirectory

from corral.store.db import MIGRATIONS
from tests.harness import Daemon, new_daemon
from tests.postgres import PostgresServer


@pytest.fixture
def pg_daemon(postgres_server: PostgresServer) -> Iterator[tuple[Daemon, str, str]]:
    name = postgres_server.create_database()  # empty: `corral up` migrates it
    d = new_daemon()
    try:
        yield (
            d,
            postgres_server.url(name),
            f"host={postgres_server.socket_dir} user=corral dbname={name}",
        )
    finally:
        d.teardown()
        postgres_server.drop_database(name)


def test_the_daemon_runs_on_postgresql_and_resumes_from_it_after_kill_9(
    pg_daemon: tuple[Daemon, str, str],
) -> None:
    d, url, dsn = pg_daemon
    d.start(extra=["--db", url])
    assert not (d.state_dir / "corral.db").exists()  # nothing went to SQLite
    d.cli("image", "build", "tiny", timeout=900).ok()
    d.cli("run", "tiny", "--name", "pg1", "--memory", "256M", timeout=600).ok()
    info = json.loads(d.cli("show", "pg1", "--json").ok().out)
    assert info["state"] == "running" and info["private_ip"] and info["pid"]
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT state, private_ip, pid FROM instances WHERE name = 'pg1'"
        ).fetchone()
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert row == ("running", info["private_ip"], info["pid"])
    # the schema is at the newest migration (whichever that is now)
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert version is not None and version[0] == head

    d.kill9()
    d.start(extra=["--db", url])
    again = json.loads(d.cli("show", "pg1", "--json").ok().out)
    assert (again["state"], again["pid"], again["private_ip"]) == (
        "running",
        info["pid"],
        info["private_ip"],
    )
    assert "pg1" in d.ssh("pg1", "hostname").ok().out
    d.cli("rm", "pg1").ok()
    with psycopg.connect(dsn) as conn:
        state = conn.execute("SELECT state FROM instances WHERE name = 'pg1'").fetchone()
        claims = conn.execute("SELECT count(*) FROM claims").fetchone()
    assert state == ("terminated",)
    assert claims == (0,)  # every lock taken for the instance's operations was handed back
