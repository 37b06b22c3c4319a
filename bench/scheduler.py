"""The scheduler at scale: place 10,000 instances one by one onto 1,000 simulated nodes
through the real placement code (filters, weighers, the claim's conditional UPDATE) and its
database, each placement one write transaction that also inserts the instance and commits.
Baseline, in the same run and database: the same transaction without the scheduler (the
instance inserted onto a node chosen in Python, its claim written unconditionally).

    .venv/bin/python -m bench.scheduler [--db URL] [--nodes 1000] [--instances 10000]

``--db`` defaults to a fresh SQLite file in a temporary directory; a PostgreSQL URL
(``postgresql+psycopg://…``) must name an empty database the script may migrate and fill.
No root, QEMU or network needed: nodes are rows, as a controller sees them."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import update  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from corral.controller import instance_types, placement_claims, scheduler  # noqa: E402
from corral.store import Store  # noqa: E402
from corral.store.models import Account, Image, Instance, Node  # noqa: E402

RESULTS = ROOT / "bench" / "results"
GiB, MiB = 1 << 30, 1 << 20
ZONES = ("corral-1a", "corral-1b", "corral-1c")
TYPES = ("cr1.nano", "cr1.micro", "cr1.small", "cr1.medium", "cr1.large")


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def setup(store: Store, nodes: int) -> None:
    async with store.write() as s:
        s.add(Account(id="000000000001", name="bench", admin=True))
        s.add(
            Image(id="ami-00000000000000001", account_id=None, name="tiny", digest="0" * 64, size=1)
        )
        for i in range(nodes):
            s.add(
                Node(
                    id=f"node-{i:05d}",
                    name=f"n{i:05d}",
                    state="up",
                    cpus=32,
                    memory=128 * GiB,
                    disk=4 << 40,
                    memory_overhead=256 * MiB,
                    memory_reserved=512 * MiB,
                    zone=ZONES[i % len(ZONES)],
                    labels={"disk": "ssd" if i % 4 == 0 else "hdd"},
                )
            )


def request(rng: random.Random, i: int) -> scheduler.Request:
    t = instance_types.get(rng.choice(TYPES))
    return scheduler.Request(
        memory=t.memory,
        cores=t.cores,
        disk=1 * GiB,
        zone=rng.choice(ZONES) if i % 10 == 0 else None,  # one in ten names a zone
        selector={"disk": "ssd"} if i % 20 == 0 else {},  # one in twenty wants ssd
        account_id="000000000001",
    )


def instance(i: int, req: scheduler.Request, tag: str) -> Instance:
    return Instance(
        id=f"i-{tag}{i:016x}",
        account_id="000000000001",
        name=f"{tag}{i}",
        image_id="ami-00000000000000001",
        memory=req.memory,
        cpus=1,
        disk_size=req.disk,
        mac=f"52:54:{ord(tag) % 256:02x}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}",
        state="running",
    )


async def place_all(
    store: Store, count: int, policy: scheduler.Policy
) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU time (ms) of each placement's transaction."""
    rng = random.Random(11)
    times, cpu = [], []
    for i in range(count):
        req = request(rng, i)
        t0, c0 = time.perf_counter(), time.process_time()
        async with store.write() as s:
            got = await scheduler.place(s, req, policy)
            inst = instance(i, req, "a")
            placement_claims.hold(inst, got)
            s.add(inst)
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return times, cpu


async def baseline(store: Store, count: int, nodes: int) -> tuple[list[float], list[float]]:
    """The same write transaction, without choosing: round-robin node, claim added blindly."""
    rng = random.Random(11)
    times, cpu = [], []
    for i in range(count):
        req = request(rng, i)
        node_id = f"node-{i % nodes:05d}"
        t0, c0 = time.perf_counter(), time.process_time()
        async with store.write() as s:
            await s.execute(
                update(Node)
                .where(Node.id == node_id)
                .values(claimed_memory=Node.claimed_memory + req.memory + 256 * MiB)
                .execution_options(synchronize_session=False)
            )
            inst = instance(i, req, "b")
            inst.node_id = node_id
            s.add(inst)
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return times, cpu


def summary(xs: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(xs), 3),
        "p99_ms": round(pct(xs, 0.99), 3),
        "max_ms": round(max(xs), 3),
        "mean_ms": round(statistics.fmean(xs), 3),
        "total_s": round(sum(xs) / 1000, 2),
    }


async def main(url: str, nodes: int, count: int, out: str) -> None:
    store = Store(url)
    await asyncio.to_thread(store.migrate)
    await setup(store, nodes)
    policy = scheduler.Policy()  # the defaults: spread, subset 3, ratios 16 / 1 / 1
    load_start = os.getloadavg()
    placed, placed_cpu = await place_all(store, count, policy)
    base, base_cpu = await baseline(store, count, nodes)
    async with store.read() as s:
        views = await scheduler.nodes(s)
    per_node = sorted(round(v.claimed_memory / (v.memory - v.memory_reserved), 3) for v in views)
    await store.close()
    backend = make_url(url).get_backend_name()
    p, b = summary(placed), summary(base)
    pc, bc = summary(placed_cpu), summary(base_cpu)
    data: dict[str, Any] = {
        "backend": backend,
        "nodes": nodes,
        "instances": count,
        "placement": p,
        "baseline_insert_only": b,
        "placement_cpu": pc,
        "baseline_cpu": bc,
        "placement_minus_baseline_p50_ms": round(p["p50_ms"] - b["p50_ms"], 3),
        "memory_claimed_share_min_median_max": [
            per_node[0],
            per_node[len(per_node) // 2],
            per_node[-1],
        ],
        "machine": {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
        "command": " ".join(["python", "-m", "bench.scheduler", *sys.argv[1:]]),
    }
    text = (
        f"# Scheduler: {count} placements onto {nodes} nodes ({backend})\n\n"
        f"| | p50 | p99 | max | total |\n|---|---|---|---|---|\n"
        f"| placement (filters, weighers, claim, insert, commit) | {p['p50_ms']} ms | "
        f"{p['p99_ms']} ms | {p['max_ms']} ms | {p['total_s']} s |\n"
        f"| baseline: the same insert and commit, no scheduler | {b['p50_ms']} ms | "
        f"{b['p99_ms']} ms | {b['max_ms']} ms | {b['total_s']} s |\n"
        f"| placement, process CPU only | {pc['p50_ms']} ms | {pc['p99_ms']} ms | "
        f"{pc['max_ms']} ms | {pc['total_s']} s |\n"
        f"| baseline, process CPU only | {bc['p50_ms']} ms | {bc['p99_ms']} ms | "
        f"{bc['max_ms']} ms | {bc['total_s']} s |\n\n"
        f"Target: p99 < 5 ms per placement including the claim. Spread kept the nodes' "
        f"claimed memory share between {per_node[0]} and {per_node[-1]} (median "
        f"{per_node[len(per_node) // 2]}). Load average {load_start[0]:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end.\n"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{out}-{backend}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{out}-{backend}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", help="database URL (default: SQLite in a temporary directory)")
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=10000)
    ap.add_argument("--out", default="scheduler", help="results file stem in bench/results")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="corral-bench-sched-") as tmp:
        url = a.db or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        asyncio.run(main(url, a.nodes, a.instances, a.out))
