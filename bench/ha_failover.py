"""High availability benchmark, node death: an HA guest's node dies (its agent and QEMU
SIGKILLed, its link down) and the guest comes back on its secondary, over ``--runs`` deaths in
one cluster (tests/cluster.py: three host namespaces, controller on PostgreSQL, mTLS). After
each death the dead node comes back (link up, agent restarted) and the next run kills the
guest's new primary.

    sudo .venv/bin/python -m bench.ha_failover [--runs 5]

Per run, from the kill: **detection** (until the controller logged the node dead and the
failover started: the agent's lease in PostgreSQL expires ``lease_timeout`` after its last
renewal, then ``fence_margin`` more, the time the cut-off node's guard has to kill its HA guests
first; the defaults 5 s + 3 s, read from the settings and recorded), **start** (until
the record says it runs on the survivor: the replica promoted, QEMU started), **boot** (until
the guest's login prompt on the survivor's serial line: the guest's own boot, TCG here).
Also: acknowledged records of a writer in the guest against those on the survivor's disk.
Target (docs/SPEC.md): node death -> answering < 15 s."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import time
from typing import Any

from bench.common import machine, median, write_results
from corral.config import Settings
from tests.cluster import bench_cluster
from tests.harness import wait_for
from tests.integration.test_ha import Console, _acked, _node_ids, _show, check, start_writer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    defaults = Settings()
    data: dict[str, Any] = {
        "machine": machine(),
        "lease_timeout": defaults.lease_timeout,
        "fence_margin": defaults.fence_margin,
        "runs": [],
    }
    settings = {"reconcile_interval": 1.0}
    with bench_cluster(3, settings) as c:
        c.cli("run", "tiny", "--name", "hav", "--ha", "--node", "host1", "--memory", "128M").ok()
        names = _node_ids(c)
        hosts = {h.name: h for h in c.lan.hosts}
        for n in range(args.runs):
            run = _run(c, names, hosts, login=n == 0)
            print(json.dumps(run), flush=True)
            data["runs"].append(run)
    write_results("ha-failover", data, summary, module="bench.ha_failover")


def _run(c: Any, names: dict[str, str], hosts: dict[str, Any], login: bool) -> dict[str, Any]:
    """One death of the guest's node, and its return."""
    s = wait_for(
        lambda: (x := _show(c, "hav"))["replica_state"] == "in-sync" and x,
        600,
        what="the replica in sync",
    )
    where = names[s["node"]]
    con = Console(c.agents[where], s["id"])
    if login:
        wait_for(lambda: "login:" in con.text(), 600, what="the login prompt")
        con.type("root")
    wait_for(lambda: "~ #" in con.text(), 120, what="the guest's shell")
    con.type("rm -rf /w.log /w.lock")  # the last run's (its writer died with its QEMU)
    start_writer(con)
    wait_for(lambda: _acked(con.text()) >= 5, 300, what="the writer's records")
    c.agents[where].kill9()
    os.kill(int(s["pid"]), signal.SIGKILL)
    hosts[where].exec("ip", "link", "set", "eth0", "down")
    t0 = time.time()
    acked = _acked(con.text())
    moved = wait_for(
        lambda: (x := _show(c, "hav"))["node"] != s["node"] and x["state"] == "running" and x,
        300,
        what="running on the survivor",
    )
    t_start = time.time()
    survivor = names[moved["node"]]
    scon = Console(c.agents[survivor], s["id"])
    before = len(scon.text())
    wait_for(lambda: "login:" in scon.text()[before:], 600, what="the login on the survivor")
    t_boot = time.time()
    scon.type("root")
    wait_for(lambda: "~ #" in scon.text()[before:], 120, what="the shell on the survivor")
    m = check(scon)
    detected = _failover_logged(c, t0)
    # the dead node returns (its stale copy is not started: the record moved)
    hosts[where].exec("ip", "link", "set", "eth0", "up")
    c.agents[where].restart()
    wait_for(lambda: c.node(where).get("state") == "ready", 300, what="node back")
    return {
        "from": where,
        "to": survivor,
        "detection_s": round(detected - t0, 2) if detected else None,
        "start_s": round(t_start - t0, 2),
        "answering_s": round(t_boot - t0, 2),
        "acked": acked,
        "on_disk": int(m.group(1)),
        "bad": int(m.group(2)),
    }


LOGGED = re.compile(r"^(\S+ \S+) WARNING corral\.controller\.replicas: node \S+ is dead", re.M)


def _failover_logged(c: Any, after: float) -> float | None:
    """When the controller logged the failover (its local clock, this machine's)."""
    text = (c.base / "controller.log").read_text(errors="replace")
    for stamp in LOGGED.findall(text):
        at = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if at >= after - 1:
            return at
    return None


def summary(data: dict[str, Any]) -> str:
    runs = data["runs"]
    m = data["machine"]

    def col(k: str) -> str:
        xs = [r[k] for r in runs if r.get(k) is not None]
        return f"{median(xs):.1f} / {max(xs):.1f}" if xs else "-"

    lost = sum(max(0, r["acked"] - r["on_disk"]) for r in runs)
    lines = [
        "# bench/ha_failover: node death -> the HA guest answering on its secondary",
        "",
        f"`{data['command']}` on {m['host']} ({m['cpus']} cpus, {m['qemu']}), {m['time']}, "
        f"load {m['loadavg_start'][0]:.2f} -> {m['loadavg_end'][0]:.2f}; lease_timeout "
        f"{data['lease_timeout']} s + fence_margin {data['fence_margin']} s (the defaults), "
        "3 nodes, TCG",
        "",
        "| run | from -> to | detection s | record moved s | login prompt s | acked / on disk |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs, 1):
        lines.append(
            f"| {i} | {r['from']} -> {r['to']} | {r['detection_s']} | {r['start_s']} | "
            f"{r['answering_s']} | {r['acked']} / {r['on_disk']} |"
        )
    lines += [
        "",
        f"Median / max over {len(runs)} runs: detection {col('detection_s')} s, record moved "
        f"{col('start_s')} s, answering (login prompt) {col('answering_s')} s. Acknowledged "
        f"records lost: {lost}. All times from the kill.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
