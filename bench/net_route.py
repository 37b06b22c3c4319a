"""Routing between a VPC's subnets (issue 12's distributed router, node/net/router.py): what a
routed path costs a guest, within one node and across nodes, against the same VPC's subnet
crossing nodes at layer 2, all measured in the same run.

Two joined nodes (tests/cluster.py). One VPC (10.90.0.0/16) with subnets 1 and 2:

- ``u`` (subnet 1) and ``v`` (subnet 2) on host1: routed by host1's VPC namespace;
- ``w`` (subnet 2) on host2: ``u`` to ``w`` is routed at host1, over the VPC's router link
  (VXLAN), then at host2;
- ``x`` (subnet 1) on host2: ``u`` to ``x`` crosses at layer 2 on subnet 1's segment (VXLAN,
  no routing): the baseline for a path across nodes.

Figures: TCP throughput (busybox ``nc``, 16 MiB per transfer, alternating; a transfer counts
only if the receiver's ``rx_bytes`` grew by its size) and ping round trips from ``u``; the
ratios routed-across / bridged-across and routed-across / routed-within.

    .venv/bin/python -m bench.net_route [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from bench.common import machine, median, write_results
from bench.net_span import MIB, _mbit, _rtt_ms, _show
from tests.cluster import Cluster, cluster
from tests.harness import WHOLE_CORE
from tests.postgres import PostgresServer

PAIRS = {"routed_within": "v", "routed_across": "w", "bridged_across": "x"}


def _vpc(c: Cluster) -> tuple[str, str]:
    """A VPC with two subnets: their ids."""
    vid = re.search(r"vpc-[0-9a-f]{17}", c.cli("vpc", "create", "10.90.0.0/16").ok().out)
    assert vid is not None
    out = []
    for cidr in ("10.90.1.0/24", "10.90.2.0/24"):
        made = c.cli("subnet", "create", vid.group(0), cidr).ok().out
        sid = re.search(r"subnet-[0-9a-f]{17}", made)
        assert sid is not None
        out.append(sid.group(0))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    data: dict[str, Any] = {"machine": machine(), "megabytes_per_transfer": MIB}
    mbit: dict[str, list[float]] = {k: [] for k in PAIRS}
    rtt: dict[str, list[float]] = {k: [] for k in PAIRS}
    with PostgresServer() as pg, pg.database() as url, cluster(url, 2) as c:
        c.cli("image", "build", "tiny", timeout=900).ok()
        one, two = _vpc(c)
        for name, host, subnet in (
            ("u", "host1", one),
            ("v", "host1", two),
            ("w", "host2", two),
            ("x", "host2", one),
        ):
            c.cli("run", "tiny", *WHOLE_CORE, "--name", name, "--memory", "160M",
                  "--node", host, "--subnet", subnet).ok()  # fmt: skip
        addr = {n: str(_show(c, n)["private_ip"]) for n in PAIRS.values()}
        for n in ("u", *PAIRS.values()):
            c.ssh(n, "true", wait=600).ok()
        c.ssh("u", " && ".join(f"ping -c 3 -W 5 {a}" for a in addr.values()), wait=600).ok()
        for i in range(args.runs):
            for j, (key, peer) in enumerate(PAIRS.items()):
                mbit[key].append(_mbit(c, "u", peer, addr[peer], 6001 + 3 * i + j))
                rtt[key].append(_rtt_ms(c, "u", addr[peer]))
            print(json.dumps({"run": i + 1, **{k: v[-1] for k, v in mbit.items()}}), flush=True)
        c.cli("rm", "u", "v", "w", "x", timeout=300)
    med = {k: median(v) for k, v in mbit.items()}
    data.update(
        mbit=mbit,
        rtt_ms=rtt,
        routed_across_vs_bridged_across=med["routed_across"] / med["bridged_across"],
        routed_across_vs_routed_within=med["routed_across"] / med["routed_within"],
        target="issue 12's: across nodes >= 0.9x of within one node (here for the routed path)",
    )

    def summary(x: dict[str, Any]) -> str:
        m = x["machine"]
        rows = {
            "routed_within": "u (subnet 1) -> v (subnet 2), both on host1: routed once",
            "routed_across": "u (subnet 1, host1) -> w (subnet 2, host2): routed at both nodes",
            "bridged_across": "u (subnet 1, host1) -> x (subnet 1, host2): layer 2, no routing",
        }
        lines = [
            f"| {rows[k]} | {median(x['mbit'][k]):.1f} | {median(x['rtt_ms'][k]):.2f} | "
            + ", ".join(f"{v:.1f}" for v in x["mbit"][k])
            + " |"
            for k in rows
        ]
        return (
            "# Routing between a VPC's subnets, within one node and across nodes\n\n"
            f"`{x['command']}` on {m['host']} ({m['cpus']} CPUs, {m['qemu']}, TCG); load "
            f"average {m['loadavg_start']} at start, {m['loadavg_end']} at end.\n\n"
            "Two joined nodes; one VPC with two subnets; guests u, v on host1 and w, x on "
            "host2.\n\n"
            "| path | TCP Mbit/s (median) | ping ms (median of averages) | samples (Mbit/s) |\n"
            "|---|---|---|---|\n" + "\n".join(lines) + "\n\n"
            f"Routed across nodes / layer 2 across nodes: "
            f"**{x['routed_across_vs_bridged_across']:.3f}**; routed across nodes / routed "
            f"within one node: **{x['routed_across_vs_routed_within']:.3f}** (issue 12's "
            "target for crossing nodes: >= 0.9).\n"
        )

    write_results("net-route", data, summary, module="bench.net_route")


if __name__ == "__main__":
    main()
