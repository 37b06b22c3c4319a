"""DescribeInstances of 1,000 instances: Corral on PostgreSQL against Corral on SQLite, in one
run, same client, same machine.

Two fake servers (bench/ec2_api/fake_server.py: the real API, controller and store, the
reconciler at its normal interval) each over fake nodes in a process of their own behind the
agent's real server, reached through the real node client (``--wire``: only the hypervisor is
fake): one on SQLite in its state directory (the all-in-one default), one on a PostgreSQL server
this script starts (tests/postgres.py: initdb in a temporary directory, unix socket only, torn
down after). Both grow to the same number of instances (RunInstances in batches of 100,
alternating), then the measurement runs in rounds that alternate which database goes first, so
load drift on this shared machine hits both alike. Each round measures, per database:

* after a write (the headline): each DescribeInstances follows a CreateTags (untimed) on one
  instance, so no cached answer can serve it;
* polled with nothing changing: Corral's answer cache.

The samples of all rounds are pooled per cell; a "p99" is printed only from 100 samples up,
else the maximum. The ratio is PostgreSQL's over SQLite's.

    sudo .venv/bin/python -m bench.ec2_api.db [--instances 1000] [--rounds 6]
        [--after-write 20] [--polled 60]

Root is needed only for PostgreSQL (initdb runs as the postgres user). Writes
bench/results/ec2_api-db-<date>.{json,md}."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.ec2_api.run import (
    RESULTS,
    ROOT,
    Target,
    _qemus,
    nodes_for,
    start_corral_fake,
    tail,
)

BODY = b"Action=DescribeInstances&Version=2016-11-15"
BACKENDS = ("sqlite", "postgresql")
KINDS = ("after_write", "polled")


def sample(
    t: Target, n: int, cap_s: float, between: Any = None
) -> tuple[list[float], float, int, list[float]]:
    """``n`` closed-loop DescribeInstances (fewer if ``cap_s`` seconds of requests pass):
    their latencies (s), the time spent in them (s), the answer's size, and the server's own
    times (ms) when only these requests reached it (no ``between``)."""
    t.request(BODY)  # warm up (the connection; the cache, for the polled kind)
    mark = t.timings.stat().st_size if t.timings and t.timings.exists() else 0
    lat: list[float] = []
    size = 0
    while len(lat) < n and sum(lat) < cap_s:
        if between is not None:
            between(len(lat))
        t0 = time.perf_counter()
        size = len(t.request(BODY).content)
        lat.append(time.perf_counter() - t0)
    server: list[float] = []
    if t.timings is not None and t.timings.exists() and between is None:
        with open(t.timings) as fh:
            fh.seek(mark)
            server = [float(x) for x in fh.read().split()]
    return lat, sum(lat), size, server


def summarise(lat: list[float], spent: float, server: list[float]) -> dict[str, Any]:
    """Pooled figures of one cell: rate over the time spent in requests, p50, the tail."""
    top, value = tail(lat)
    out: dict[str, Any] = {
        "requests": len(lat),
        "rps": len(lat) / spent,
        "p50_ms": statistics.median(lat) * 1000,
        "top": top,
        "top_ms": value * 1000,
    }
    if server:
        out["server_p50_ms"] = statistics.median(server)
        out["server_top"], out["server_top_ms"] = tail(server)
    return out


def ratios(pg: dict[str, Any], lite: dict[str, Any]) -> dict[str, float]:
    """PostgreSQL over SQLite: throughput (below 1: PostgreSQL serves fewer) and latency
    (above 1: PostgreSQL is slower)."""
    return {
        "rps": pg["rps"] / lite["rps"],
        "p50": pg["p50_ms"] / lite["p50_ms"],
        "top": pg["top_ms"] / lite["top_ms"],
    }


def order(round_no: int) -> tuple[str, ...]:
    """Which database goes first alternates round by round."""
    return BACKENDS if round_no % 2 == 0 else BACKENDS[::-1]


def retagger(t: Target) -> Any:
    """A CreateTags on one instance (the write that empties the answer cache)."""
    first = t.boto.describe_instances(MaxResults=5)["Reservations"][0]["Instances"][0]
    iid = first["InstanceId"]

    def retag(i: int) -> None:
        t.boto.create_tags(Resources=[iid], Tags=[{"Key": "bench", "Value": str(i)}])

    return retag


def pending(t: Target) -> int:
    return sum(
        len(r["Instances"])
        for page in t.boto.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-state-name", "Values": ["pending"]}]
        )
        for r in page["Reservations"]
    )


def states(t: Target) -> dict[str, int]:
    out: dict[str, int] = {}
    for page in t.boto.get_paginator("describe_instances").paginate():
        for r in page["Reservations"]:
            for i in r["Instances"]:
                out[i["State"]["Name"]] = out.get(i["State"]["Name"], 0) + 1
    return out


def grow(
    targets: dict[str, Target], amis: dict[str, str], total: int, batch: int
) -> dict[str, float]:
    """Both databases to ``total`` running instances, ``batch`` launched at once on each (which
    goes first alternating), each batch waited for until nothing is pending: how long each
    database took, summed over its batches, from RunInstances to all running. A launch that
    does not end running (e.g. its writes timed out waiting for the writer) fails the run:
    both listings must hold the same instances."""
    took = dict.fromkeys(BACKENDS, 0.0)
    have = 0
    while have < total:
        k = min(batch, total - have)
        t0: dict[str, float] = {}
        for b in order(have // batch):
            t0[b] = time.perf_counter()
            targets[b].boto.run_instances(
                ImageId=amis[b], MinCount=k, MaxCount=k, InstanceType="cr1.nano"
            )
        left = set(BACKENDS)
        deadline = time.monotonic() + 900
        while left:
            for b in sorted(left):
                if pending(targets[b]) == 0:
                    took[b] += time.perf_counter() - t0[b]
                    left.discard(b)
            if left and time.monotonic() > deadline:
                raise RuntimeError(f"{sorted(left)}: instances still pending after 900 s")
            time.sleep(0.5)
        have += k
        for b in BACKENDS:
            st = states(targets[b])
            if st != {"running": have}:
                raise RuntimeError(
                    f"{b}: after launching {have} instances their states are {st}, not all "
                    "running: a launch failed (see the fake server's log)"
                )
        print(
            f"{have} running on each (" + ", ".join(f"{b} {took[b]:.1f} s" for b in BACKENDS) + ")",
            flush=True,
        )
    return took


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (the fake server writes its stats and stops its nodes' process), then kill."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument(
        "--after-write", type=int, default=20, help="requests per round and database, after a write"
    )
    ap.add_argument(
        "--polled", type=int, default=60, help="requests per round and database, polled"
    )
    ap.add_argument(
        "--batch", type=int, default=50, help="instances launched at once on each database"
    )
    ap.add_argument(
        "--cap", type=float, default=60.0, help="at most this many seconds of requests per cell"
    )
    args = ap.parse_args()
    # a SIGTERM unwinds like an error, through the clean-up below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.path.insert(0, str(ROOT))
    from tests.postgres import PostgresServer

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-db-"))
    results: dict[str, Any] = {
        "command": "python -m bench.ec2_api.db " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "load_before": os.getloadavg(),
            "qemu_processes_before": _qemus(),
        },
        "instances": args.instances,
        "fake_nodes": nodes_for(args.instances),
        "wire": True,
        "rounds": [],
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    targets: dict[str, Target] = {}
    pg = PostgresServer()
    try:
        pg.start()
        results["postgresql_version"] = pg.bindir.parent.name
        urls = {"sqlite": None, "postgresql": pg.url(pg.create_database("corral_bench"))}
        for backend in BACKENDS:
            procs[backend], targets[backend] = start_corral_fake(
                tmp, results["fake_nodes"], wire=True, db=urls[backend], tag=f"corral-{backend}"
            )
        amis = {
            b: t.boto.describe_images(Owners=["corral"])["Images"][0]["ImageId"]
            for b, t in targets.items()
        }
        took = grow(targets, amis, args.instances, args.batch)
        results["launch_batch"] = args.batch
        results["launch_to_running_s"] = took
        print(
            f"{args.instances} instances running on each; their batches took "
            + ", ".join(f"{b} {s:.1f} s" for b, s in took.items()),
            flush=True,
        )
        retag = {b: retagger(t) for b, t in targets.items()}
        pooled: dict[str, dict[str, dict[str, Any]]] = {
            k: {b: {"lat": [], "spent": 0.0, "server": []} for b in BACKENDS} for k in KINDS
        }
        sizes: dict[str, int] = {}
        for r in range(args.rounds):
            rnd: dict[str, Any] = {"round": r, "order": list(order(r)), "load": os.getloadavg()[0]}
            for b in order(r):
                for kind, n, between in (
                    ("after_write", args.after_write, retag[b]),
                    ("polled", args.polled, None),
                ):
                    lat, spent, size, server = sample(targets[b], n, args.cap, between)
                    cell = pooled[kind][b]
                    cell["lat"] += lat
                    cell["spent"] += spent
                    cell["server"] += server
                    sizes[b] = size
                    rnd[f"{b}_{kind}_p50_ms"] = statistics.median(lat) * 1000
            results["rounds"].append(rnd)
            print(
                f"round {r + 1}/{args.rounds} (load {rnd['load']:.2f}): "
                + ", ".join(
                    f"{b} {k} p50 {rnd[f'{b}_{k}_p50_ms']:.1f} ms" for b in BACKENDS for k in KINDS
                ),
                flush=True,
            )
        results["answer_bytes"] = sizes
        for kind in KINDS:
            cells = {
                b: summarise(pooled[kind][b]["lat"], pooled[kind][b]["spent"], [])
                if kind == "after_write"
                else summarise(
                    pooled[kind][b]["lat"], pooled[kind][b]["spent"], pooled[kind][b]["server"]
                )
                for b in BACKENDS
            }
            results[kind] = {
                **cells,
                "ratio_postgresql_over_sqlite": ratios(cells["postgresql"], cells["sqlite"]),
            }
    except BaseException:
        for b in procs:
            log = tmp / f"corral-{b}.log"
            tail_lines = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
            print(f"{b}: the fake server's log ends: {tail_lines}", flush=True)
        raise
    finally:
        for proc in procs.values():
            stop(proc)
        pg.stop()
        results["fake_servers"] = {}
        for b in BACKENDS:
            stats = tmp / f"corral-{b}" / "stats.json"
            if stats.exists():
                results["fake_servers"][b] = json.loads(stats.read_text())
        shutil.rmtree(tmp, ignore_errors=True)
    results["machine"]["load_after"] = os.getloadavg()
    results["machine"]["qemu_processes_after"] = _qemus()
    results["wall_s"] = time.monotonic() - started
    write(results)


def _cell(c: dict[str, Any]) -> str:
    return f"{c['rps']:.1f} | {c['p50_ms']:.1f} | {c['top']} {c['top_ms']:.1f} | {c['requests']}"


def render(results: dict[str, Any]) -> str:
    """The summary, from the results alone."""
    m = results["machine"]
    fake = results.get("fake_servers", {})
    passes = ", ".join(
        f"{b} {fake[b]['reconcile_passes']} passes every {fake[b]['reconcile_interval_s']} s"
        for b in BACKENDS
        if b in fake
    )
    lines = [
        f"# EC2 DescribeInstances on PostgreSQL against SQLite, {results['date']}",
        "",
        f"Command: `{results['command']}` ({results['wall_s'] / 60:.1f} min)  ",
        f"Machine: {m['cpus']} cores, shared; load average (1, 5, 15 min) before "
        f"{', '.join(f'{x:.2f}' for x in m['load_before'])}, after "
        f"{', '.join(f'{x:.2f}' for x in m['load_after'])}; other QEMU processes running "
        f"{m['qemu_processes_before']} before, {m['qemu_processes_after']} after  ",
        f"Each side: the real API, controller and store with {results['instances']} instances "
        f"over {results['fake_nodes']} fake nodes in a process of their own behind the agent's "
        "real server, reached through the real node client over unix sockets (the wire); the "
        f"reconciler at its normal interval ({passes}). SQLite: a file in the state directory "
        f"(the all-in-one default); PostgreSQL {results.get('postgresql_version', '?')}: a "
        "server started by the script (unix socket, fsync off as in the tests), psycopg 3 async.",
        "",
        f"{len(results['rounds'])} rounds, the first database alternating round by round; the "
        "samples of all rounds pooled per cell. One closed-loop keep-alive client, one request "
        'at a time. "top" is the p99 from 100 requests up, else the maximum (named). '
        "Ratios are PostgreSQL's figure over SQLite's: below 1 for req/s and above 1 for "
        "latency mean PostgreSQL is slower.",
        "",
        f"| DescribeInstances, {results['instances']} instances | SQLite req/s | p50 ms | top ms | n "
        "| PostgreSQL req/s | p50 ms | top ms | n | PG/SQLite req/s | PG/SQLite p50 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {
        "after_write": "right after a write (the headline: no cached answer)",
        "polled": "polled, nothing changing (the answer cache)",
    }
    for kind in KINDS:
        row = results[kind]
        q = row["ratio_postgresql_over_sqlite"]
        lines.append(
            f"| {names[kind]} | {_cell(row['sqlite'])} | {_cell(row['postgresql'])} | "
            f"{q['rps']:.2f} | {q['p50']:.2f} |"
        )
    polled = results["polled"]
    if "server_p50_ms" in polled["sqlite"] and "server_p50_ms" in polled["postgresql"]:
        s, p = polled["sqlite"], polled["postgresql"]
        lines += [
            "",
            f"Polled, inside the server: SQLite p50 {s['server_p50_ms']:.1f} ms, "
            f"{s['server_top']} {s['server_top_ms']:.1f} ms; PostgreSQL p50 "
            f"{p['server_p50_ms']:.1f} ms, {p['server_top']} {p['server_top_ms']:.1f} ms.",
        ]
    g = results["launch_to_running_s"]
    lines += [
        "",
        "After each write, every request reads and renders the whole listing "
        f"({results['answer_bytes']['sqlite']} bytes on SQLite, "
        f"{results['answer_bytes']['postgresql']} on PostgreSQL). Growing to "
        f"{results['instances']} running instances before the measurement, "
        f"{results['launch_batch']} launched at once on each database at the same time, each "
        f"batch waited for until running: SQLite {g['sqlite']:.1f} s, PostgreSQL "
        f"{g['postgresql']:.1f} s in all (PG/SQLite {g['postgresql'] / g['sqlite']:.2f}).",
        "",
        "## Rounds (p50 ms, load average over 1 min at the round's start)",
        "",
        "| round | first | load | SQLite after write | PostgreSQL after write | SQLite polled "
        "| PostgreSQL polled |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["rounds"]:
        lines.append(
            f"| {r['round'] + 1} | {r['order'][0]} | {r['load']:.2f} | "
            f"{r['sqlite_after_write_p50_ms']:.1f} | {r['postgresql_after_write_p50_ms']:.1f} | "
            f"{r['sqlite_polled_p50_ms']:.1f} | {r['postgresql_polled_p50_ms']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M")
    (RESULTS / f"ec2_api-db-{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    text = render(results)
    (RESULTS / f"ec2_api-db-{stamp}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
