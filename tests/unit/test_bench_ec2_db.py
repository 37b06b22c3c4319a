"""The EC2 database benchmark's own logic (bench/ec2_api/db.py, fake_server.py): the database
URL the fake server runs on, how samples are summarised and compared, and that a stopped fake
server cleans up (its nodes' process gone, its stats written). No timings are asserted."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from bench.ec2_api import db, fake_server
from bench.ec2_api.fake_server import bench_settings
from corral.errors import Invalid
from corral.store.db import async_url

ROOT = Path(__file__).resolve().parents[2]


def test_the_fake_server_defaults_to_sqlite_in_its_state_dir(tmp_path: Path) -> None:
    assert bench_settings(tmp_path, 1).database_url == f"sqlite+aiosqlite:///{tmp_path}/corral.db"


def test_the_fake_server_runs_on_the_postgresql_url_it_is_given(tmp_path: Path) -> None:
    url = "postgresql://corral@/corral_bench?host=/tmp/corral-pg-1-x"
    st = bench_settings(tmp_path, 1, url)
    assert st.database_url == url
    # built as `corral up --db` builds it: psycopg 3, async
    assert async_url(st.database_url).startswith("postgresql+psycopg://corral@/corral_bench")


def test_the_fake_server_lifts_the_quotas_a_thousand_instances_need(tmp_path: Path) -> None:
    st = bench_settings(tmp_path, 1)
    assert (st.quota_instances, st.quota_vcpus, st.quota_memory_mib) == (-1, -1, -1)


def test_the_fake_server_refuses_a_database_corral_does_not_speak(tmp_path: Path) -> None:
    with pytest.raises(Invalid) as err:
        bench_settings(tmp_path, 1, "mysql://root@localhost/corral")
    assert err.value.field == "db_url"
    assert "postgresql://" in str(err.value)


def test_a_cell_says_p99_only_from_100_samples() -> None:
    few = db.summarise([i / 1000 for i in range(1, 51)], 2.0, [])
    assert (few["top"], few["top_ms"], few["requests"]) == ("max", 50.0, 50)
    assert few["rps"] == 25.0
    many = db.summarise([i / 1000 for i in range(1, 201)], 10.0, [1.0] * 200)
    assert many["top"] == "p99"
    assert many["top_ms"] == pytest.approx(198.0)
    assert many["server_top"] == "p99"


def test_ratios_are_postgresql_over_sqlite() -> None:
    lite = {"rps": 10.0, "p50_ms": 4.0, "top_ms": 20.0}
    pg = {"rps": 5.0, "p50_ms": 8.0, "top_ms": 30.0}
    assert db.ratios(pg, lite) == {"rps": 0.5, "p50": 2.0, "top": 1.5}


def test_rounds_alternate_which_database_goes_first() -> None:
    assert [db.order(r)[0] for r in range(4)] == ["sqlite", "postgresql"] * 2
    assert all(sorted(db.order(r)) == sorted(db.BACKENDS) for r in range(4))


def _children(pid: int) -> list[int]:
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_a_terminated_fake_server_stops_its_nodes_and_writes_its_stats(tmp_path: Path) -> None:
    """SIGTERM (what a bench's failure path sends) must not end the fake server before its
    clean-up: uvicorn re-raises the signal after serving, which used to kill it there."""
    state = tmp_path / "state"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        fake_server.argv(port, state, wire=True),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        assert "access_key_id" in json.loads(proc.stdout.readline())
        nodes = _children(proc.pid)
        assert len(nodes) == 1  # the fake nodes' process, behind the wire
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert not os.path.exists(f"/proc/{nodes[0]}")
    stats = json.loads((state / "stats.json").read_text())
    assert (stats["database"], stats["wire"]) == ("sqlite", True)
