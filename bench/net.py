"""Network benchmark.

    sudo .venv/bin/python -m bench.net [--rules 1000] [--runs 5]

- rule update: rebuilding a network's whole policy (one nft transaction) with N rules, against
  adding one rule to a live table with `nft add rule` (the smallest change nft can make);
- guest <-> guest TCP throughput through Corral's filtering (bridge anti-spoofing, conntrack,
  security groups via br_netfilter), against the same two guests on the same bridge with the
  filtering switched off (a raw bridge), alternated in the same run;
- API call -> first allowed packet, and lost pings while an elastic IP moves (see
  bench/net_eip.py, which needs the EC2 resources).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time

from bench.common import machine, median, new_daemon, write_results
from corral.node.net import firewall
from corral.node.spec import GroupSpec, NetworkSpec, PolicySpec, PortSpec, RuleSpec


def policy_with(rules: int, ports: int = 50) -> PolicySpec:
    net = NetworkSpec(id="net-bench", namespace="x", bridge="cbr0", cidr="10.88.0.0/16",
                      gateway="10.88.0.1", domain="corral.internal")
    groups = []
    per_group = max(rules // 10, 1)
    for g in range(10):
        gid = f"sg-{g:017x}"
        ingress = [RuleSpec(protocol="tcp", from_port=1000 + r, to_port=1000 + r,
                            cidrs=[f"10.{g}.{r % 250}.0/24"]) for r in range(per_group)]
        groups.append(GroupSpec(id=gid, ingress=ingress,
                                egress=[RuleSpec(protocol="all", cidrs=["0.0.0.0/0"])]))
    port_list = [PortSpec(instance_id=f"i-{p:017x}", tap=f"t{p:012x}",
                          mac=f"52:54:00:00:{p // 256:02x}:{p % 256:02x}",
                          address=f"10.88.{p // 250}.{p % 250 + 2}", groups=[groups[p % 10].id])
                 for p in range(ports)]
    return PolicySpec(network=net, groups=groups, ports=port_list)


def rule_update(rules: int, runs: int) -> dict[str, object]:
    ns = f"corral-bench-{int(time.time())}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        pol = policy_with(rules)
        pol.network.namespace = ns
        doc = json.dumps(firewall.document(pol)).encode()
        nrules = sum(1 for c in firewall.render(pol) if "rule" in c.get("add", {}))
        render_s, apply_s, one_s = [], [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            doc = json.dumps(firewall.document(pol)).encode()
            render_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "-f", "-"], input=doc,
                           check=True)
            apply_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run(["ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "corral",
                            f"in_{0:017x}", "tcp", "dport", "9999", "accept"], check=True)
            one_s.append(time.perf_counter() - t0)
        return {"rules_in_ruleset": nrules, "render_ms": median(render_s) * 1000,
                "rebuild_ms": median(apply_s) * 1000, "one_rule_ms": median(one_s) * 1000,
                "rebuild_over_one_rule": median(apply_s) / median(one_s)}
    finally:
        subprocess.run(["ip", "netns", "delete", ns])


def throughput(runs: int, megabytes: int = 16) -> dict[str, object]:
    d = new_daemon()
    try:
        d.start()
        d.cli("image", "build", "tiny", timeout=900).ok()
        for n in ("tp-a", "tp-b"):
            d.cli("run", "tiny", "--name", n, "--memory", "256M").ok()
        b_ip = json.loads(d.cli("show", "tp-b", "--json").ok().out)["private_ip"]

        ports = iter(range(5001, 6000))
        rx = "cat /sys/class/net/eth0/statistics/rx_bytes"

        def once(b_name: str) -> float:
            port = next(ports)
            # busybox nc quits when its stdin ends: the listener's stdin is a long sleep
            before = int(d.cli("ssh", b_name, "--", f"setsid sh -c 'sleep 600 | nc -l -p {port} "
                               f"> /dev/null' </dev/null >/dev/null 2>&1 & sleep 0.5; {rx}")
                         .ok().out.split()[-1])
            out = d.cli("ssh", "tp-a", "--", f"time -p sh -c 'dd if=/dev/zero bs=64k "
                        f"count={megabytes * 16} 2>/dev/null | nc {b_ip} {port}'").ok()
            real = next(ln for ln in (out.out + out.err).splitlines() if ln.startswith("real"))
            after = int(d.cli("ssh", b_name, "--", f"sleep 1; {rx}").ok().out.split()[-1])
            assert after - before >= megabytes << 20, f"received {after - before} bytes"
            return megabytes * 8 / float(real.split()[1])

        filtered, raw = [], []
        b_name = "tp-b"
        for _ in range(runs):
            filtered.append(once(b_name))
            # the same guests on a raw bridge: no Corral rules, no bridged netfilter
            d.nsexec("nft", "flush", "ruleset")
            d.nsexec("sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=0")
            raw.append(once(b_name))
            d.nsexec("sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1")
            # any change makes Corral push its whole policy again: a rename will do
            new = "tp-c" if b_name == "tp-b" else "tp-b"
            d.cli("rename", b_name, new).ok()
            b_name = new
            assert "corral" in d.nsexec("nft", "list", "tables").stdout
        return {"corral_mbit": filtered, "raw_bridge_mbit": raw,
                "corral_median_mbit": median(filtered), "raw_median_mbit": median(raw),
                "ratio": median(filtered) / median(raw),
                "stdev_corral": statistics.pstdev(filtered), "megabytes_per_run": megabytes}
    finally:
        d.teardown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rules", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    info = machine()
    ru = rule_update(args.rules, 10)
    tp = throughput(args.runs)
    data = {"machine": info, "rule_update": ru, "throughput": tp}
    summary = "\n".join([
        "# bench/net",
        "",
        f"Measured {info['time']} on {info['cpus']} CPUs; load average at start "
        f"{info['loadavg_start'][0]:.2f}.",
        "",
        f"Rule update with {ru['rules_in_ruleset']} rules in the rule set (50 instances, 10 "
        "groups), median of 10:",
        f"- whole-policy rebuild in one nft transaction: {ru['rebuild_ms']:.1f} ms "
        f"(+ {ru['render_ms']:.1f} ms to render the JSON)",
        f"- baseline, one `nft add rule` to the live table: {ru['one_rule_ms']:.1f} ms; "
        f"ratio {ru['rebuild_over_one_rule']:.2f}",
        "",
        f"Guest -> guest TCP throughput (busybox dd | nc, {tp['megabytes_per_run']} MiB, TCG), "
        f"median of {args.runs}, alternated:",
        f"- through Corral's filtering: {tp['corral_median_mbit']:.0f} Mbit/s; on a raw bridge: "
        f"{tp['raw_median_mbit']:.0f} Mbit/s; ratio {tp['ratio']:.3f}",
        "",
        "Rerun: `sudo .venv/bin/python -m bench.net`",
    ])
    write_results("net", data, summary)


if __name__ == "__main__":
    main()
