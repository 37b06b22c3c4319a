"""A subnet spanning nodes (issue 12): what crossing nodes over VXLAN costs a guest, against the
same guests' traffic within one node, measured in the same run.

Three joined nodes (tests/cluster.py: the controller on PostgreSQL, mutual TLS, the default
subnet spanning the nodes over VXLAN, controller/overlays.py). ``a`` and ``b`` run on host1,
``c`` on host2.

- **Throughput**: ``a`` sends 16 MiB with busybox ``nc`` to ``b`` (the same node: the subnet's
  bridge) and to ``c`` (across nodes: the VXLAN segment), alternating; a transfer counts only
  if the receiver's ``rx_bytes`` grew by at least its size. Figure: median across / median
  within (target >= 0.9).
- **Latency**: ``ping -c 20 -i 0.2`` from ``a`` to ``b`` and to ``c``, alternating; the average
  round trip of each.
- **First packet**: ``corral run`` of a new instance on host3 (another node than the pinger's)
  against one on host1 (the pinger's own node), alternating: the time from the call until the
  pinger ``a`` first gets an answer from it (so the guest's boot is in both).
- **A security-group change in force**: ``corral sg allow`` and ``revoke`` of a rule of the
  default group (the CLI returns once the nodes enforce it) while the group has members on all
  three nodes, against the same once its members are on one node only (the others removed).

    sudo .venv/bin/python -m bench.net_span [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

from bench.common import machine, median, tail, write_results
from tests.cluster import Cluster, cluster
from tests.harness import WHOLE_CORE
from tests.postgres import PostgresServer

MIB = 16
RX = "cat /sys/class/net/eth0/statistics/rx_bytes"


def _show(c: Cluster, name: str) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(c.cli("show", name, "--json").ok().out)
    return shown


def _run(c: Cluster, name: str, host: str) -> None:
    c.cli("run", "tiny", *WHOLE_CORE, "--name", name, "--memory", "160M", "--node", host).ok()


def _mbit(c: Cluster, src: str, dst: str, addr: str, port: int) -> float:
    """One transfer of MIB MiB from ``src`` to ``dst`` (at ``addr``): Mbit/s."""
    for attempt in range(3):
        p = port + attempt * 1000
        # busybox nc quits when its stdin ends: the listener's stdin is a long sleep
        before = int(
            c.ssh(
                dst,
                f"setsid sh -c 'sleep 600 | nc -l -p {p} > /dev/null' </dev/null >/dev/null 2>&1 "
                f"& sleep 0.5; {RX}",
            )
            .ok()
            .out.split()[-1]
        )
        out = c.ssh(
            src,
            f"time -p timeout 60 sh -c 'dd if=/dev/zero bs=64k count={MIB * 16} 2>/dev/null "
            f"| nc {addr} {p}'",
            timeout=120,
        )
        after = int(c.ssh(dst, f"sleep 1; {RX}").ok().out.split()[-1])
        real = next((ln for ln in (out.out + out.err).splitlines() if ln.startswith("real")), "")
        if out.rc == 0 and real and after - before >= MIB << 20:
            return MIB * 8 / float(real.split()[1])
    raise RuntimeError(f"three transfers {src} -> {dst} failed: {out.err}")


def _rtt_ms(c: Cluster, src: str, addr: str) -> float:
    out = c.ssh(src, f"ping -c 20 -i 0.2 -W 2 {addr}", timeout=60).ok().out
    m = re.search(r"min/avg/max = [\d.]+/([\d.]+)/", out)
    if m is None:
        raise RuntimeError(f"no round trips from {src} to {addr}: {out[-400:]}")
    return float(m.group(1))


def _first_packet(c: Cluster, name: str, host: str) -> float:
    """Seconds from `corral run` of ``name`` on ``host`` until ``a`` gets its first answer."""
    t0 = time.monotonic()
    _run(c, name, host)
    addr = _show(c, name)["private_ip"]
    c.ssh("a", f"until ping -c 1 -W 1 {addr} >/dev/null; do :; done", timeout=600).ok()
    took = time.monotonic() - t0
    c.cli("rm", name, timeout=300).ok()
    return took


def _rule_changes(c: Cluster, n: int) -> list[float]:
    """Seconds per `corral sg allow` / `revoke` of one rule (in force when the CLI returns)."""
    out = []
    for i in range(n):
        verb = "allow" if i % 2 == 0 else "revoke"
        t0 = time.monotonic()
        c.cli("sg", verb, "default", "--proto", "tcp", "--port", "7777", "--cidr",
              "203.0.113.0/24").ok()  # fmt: skip
        out.append(time.monotonic() - t0)
    if n % 2:
        c.cli("sg", "revoke", "default", "--proto", "tcp", "--port", "7777", "--cidr",
              "203.0.113.0/24").ok()  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rules", type=int, default=20, help="rule changes per placement")
    args = ap.parse_args()
    data: dict[str, Any] = {"machine": machine(), "megabytes_per_transfer": MIB}
    with PostgresServer() as pg, pg.database() as url, cluster(url, 3) as c:
        c.cli("image", "build", "tiny", timeout=900).ok()
        for name, host in (("a", "host1"), ("b", "host1"), ("c", "host2")):
            _run(c, name, host)
        addr = {n: str(_show(c, n)["private_ip"]) for n in ("b", "c")}
        c.ssh("a", f"ping -c 3 -W 5 {addr['b']} && ping -c 3 -W 5 {addr['c']}", wait=600).ok()
        c.ssh("b", "true", wait=600).ok()
        c.ssh("c", "true", wait=600).ok()
        within, across, rtt_within, rtt_across = [], [], [], []
        for i in range(args.runs):
            within.append(_mbit(c, "a", "b", addr["b"], 5001 + 2 * i))
            across.append(_mbit(c, "a", "c", addr["c"], 5002 + 2 * i))
            rtt_within.append(_rtt_ms(c, "a", addr["b"]))
            rtt_across.append(_rtt_ms(c, "a", addr["c"]))
            print(json.dumps({"run": i + 1, "within_mbit": within[-1], "across_mbit": across[-1],
                              "rtt_within_ms": rtt_within[-1],
                              "rtt_across_ms": rtt_across[-1]}), flush=True)  # fmt: skip
        first_same, first_other = [], []
        for i in range(max(2, args.runs // 2)):
            first_same.append(_first_packet(c, f"fs{i}", "host1"))
            first_other.append(_first_packet(c, f"fo{i}", "host3"))
            print(json.dumps({"first_same_s": first_same[-1], "first_other_s": first_other[-1]}),
                  flush=True)  # fmt: skip
        _run(c, "d", "host3")  # the default group now has members on all three nodes
        c.ssh("d", "true", wait=600).ok()
        spread = _rule_changes(c, args.rules)
        c.cli("rm", "c", "d", timeout=300).ok()  # members on host1 only
        local = _rule_changes(c, args.rules)
        c.cli("rm", "a", "b", timeout=300)
    data.update(
        within_mbit=within,
        across_mbit=across,
        throughput_ratio=median(across) / median(within),
        rtt_within_ms=rtt_within,
        rtt_across_ms=rtt_across,
        rtt_ratio=median(rtt_across) / median(rtt_within),
        first_packet_same_node_s=first_same,
        first_packet_other_node_s=first_other,
        first_packet_ratio=median(first_other) / median(first_same),
        rule_change_three_nodes_s=spread,
        rule_change_one_node_s=local,
        target="guest<->guest throughput across nodes >= 0.9x within one node",
    )

    def summary(x: dict[str, Any]) -> str:
        m = x["machine"]

        def ms(xs: list[float]) -> str:
            t, v = tail(xs)
            return f"p50 {median(xs) * 1000:.0f} ms, {t} {v * 1000:.0f} ms ({len(xs)})"

        return (
            "# A subnet spanning nodes: across nodes (VXLAN) against within one node\n\n"
            f"`{x['command']}` on {m['host']} ({m['cpus']} CPUs, {m['qemu']}, TCG); load "
            f"average {m['loadavg_start']} at start, {m['loadavg_end']} at end.\n\n"
            "Three joined nodes; guests a and b on host1, c on host2, in the default subnet.\n\n"
            "| figure | within one node | across nodes | across / within |\n"
            "|---|---|---|---|\n"
            f"| TCP throughput a -> peer (median Mbit/s, {MIB} MiB per transfer) | "
            f"{median(x['within_mbit']):.1f} | {median(x['across_mbit']):.1f} | "
            f"**{x['throughput_ratio']:.3f}** (target >= 0.9) |\n"
            f"| ping round trip a -> peer (median of averages, ms) | "
            f"{median(x['rtt_within_ms']):.2f} | {median(x['rtt_across_ms']):.2f} | "
            f"{x['rtt_ratio']:.2f} |\n"
            f"| `corral run` -> first answer to a's ping (median s) | "
            f"{median(x['first_packet_same_node_s']):.1f} | "
            f"{median(x['first_packet_other_node_s']):.1f} | {x['first_packet_ratio']:.2f} |\n\n"
            "Samples: throughput within "
            + ", ".join(f"{v:.1f}" for v in x["within_mbit"])
            + "; across "
            + ", ".join(f"{v:.1f}" for v in x["across_mbit"])
            + " Mbit/s. The first-packet times include the new guest's boot under TCG.\n\n"
            "A security-group rule change (`corral sg allow` / `revoke`, in force on the nodes "
            "when it returns, the CLI's start-up included): members on all three nodes "
            f"{ms(x['rule_change_three_nodes_s'])}; members on one node "
            f"{ms(x['rule_change_one_node_s'])}.\n"
        )

    write_results("net-span", data, summary, module="bench.net_span")


if __name__ == "__main__":
    main()
