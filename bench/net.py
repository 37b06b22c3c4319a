"""Network benchmark.

    sudo .venv/bin/python -m bench.net [--rules 1000] [--runs 5]

- rule update: rebuilding a network's whole policy (one nft transaction) with N rules, against
  adding one rule to a live table with `nft add rule` (the smallest change nft can make);
- guest <-> guest TCP throughput through Corral's filtering (bridge anti-spoofing, conntrack,
  security groups via br_netfilter), against the same two guests on the same bridge with the
  filtering switched off (a raw bridge), alternated in the same run;
- API call (AuthorizeSecurityGroupIngress) -> first allowed packet from the outside world to an
  elastic IP, against the same rule added by hand with `nft add rule`;
- pings lost while an elastic IP moves between two instances, pinged every 10 ms (target 0).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import re
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.common import machine, median, new_daemon, tail, write_results
from corral.node.net import firewall
from corral.node.spec import GroupSpec, NetworkSpec, PolicySpec, PortSpec, RuleSpec
from tests.harness import outside_namespace


def policy_with(rules: int, ports: int = 50) -> PolicySpec:
    net = NetworkSpec(
        id="net-bench",
        namespace="x",
        bridge="cbr0",
        cidr="10.88.0.0/16",
        gateway="10.88.0.1",
        domain="corral.internal",
    )
    groups = []
    per_group = max(rules // 10, 1)
    for g in range(10):
        gid = f"sg-{g:017x}"
        ingress = [
            RuleSpec(
                protocol="tcp",
                from_port=1000 + r,
                to_port=1000 + r,
                cidrs=[f"10.{g}.{r % 250}.0/24"],
            )
            for r in range(per_group)
        ]
        groups.append(
            GroupSpec(
                id=gid, ingress=ingress, egress=[RuleSpec(protocol="all", cidrs=["0.0.0.0/0"])]
            )
        )
    port_list = [
        PortSpec(
            instance_id=f"i-{p:017x}",
            tap=f"t{p:012x}",
            mac=f"52:54:00:00:{p // 256:02x}:{p % 256:02x}",
            address=f"10.88.{p // 250}.{p % 250 + 2}",
            groups=[groups[p % 10].id],
        )
        for p in range(ports)
    ]
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
            subprocess.run(
                ["ip", "netns", "exec", ns, "nft", "-j", "-f", "-"], input=doc, check=True
            )
            apply_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "nft",
                    "add",
                    "rule",
                    "inet",
                    "corral",
                    f"in_{0:017x}",
                    "tcp",
                    "dport",
                    "9999",
                    "accept",
                ],
                check=True,
            )
            one_s.append(time.perf_counter() - t0)
        return {
            "rules_in_ruleset": nrules,
            "render_ms": median(render_s) * 1000,
            "rebuild_ms": median(apply_s) * 1000,
            "one_rule_ms": median(one_s) * 1000,
            "rebuild_over_one_rule": median(apply_s) / median(one_s),
        }
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
            for _attempt in range(3):
                port = next(ports)
                # busybox nc quits when its stdin ends: the listener's stdin is a long sleep
                before = int(
                    d.cli(
                        "ssh",
                        b_name,
                        "--",
                        f"setsid sh -c 'sleep 600 | nc -l -p {port} > /dev/null' "
                        f"</dev/null >/dev/null 2>&1 & sleep 0.5; {rx}",
                    )
                    .ok()
                    .out.split()[-1]
                )
                out = d.cli(
                    "ssh",
                    "tp-a",
                    "--",
                    f"time -p timeout 60 sh -c 'dd if=/dev/zero "
                    f"bs=64k count={megabytes * 16} 2>/dev/null | nc {b_ip} {port}'",
                    timeout=120,
                )
                after = int(d.cli("ssh", b_name, "--", f"sleep 1; {rx}").ok().out.split()[-1])
                lines = (out.out + out.err).splitlines()
                real = next((ln for ln in lines if ln.startswith("real")), None)
                if out.rc == 0 and real and after - before >= megabytes << 20:
                    return megabytes * 8 / float(real.split()[1])
            raise RuntimeError(f"three transfers to {b_name} failed: {out.err}")

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
        return {
            "corral_mbit": filtered,
            "raw_bridge_mbit": raw,
            "corral_median_mbit": median(filtered),
            "raw_median_mbit": median(raw),
            "ratio": median(filtered) / median(raw),
            "stdev_corral": statistics.pstdev(filtered),
            "megabytes_per_run": megabytes,
        }
    finally:
        d.teardown()


def _connect_until(ns: str, addr: str, port: int, deadline: float) -> float:
    """Try TCP connects from namespace ``ns`` every 2 ms; the time the first one succeeds."""

    from corral.node.net import netns

    while time.monotonic() < deadline:
        sock = netns.socket_in(ns)
        sock.settimeout(0.05)
        try:
            sock.connect((addr, port))
            return time.monotonic()
        except OSError:
            pass
        finally:
            sock.close()
        time.sleep(0.002)
    raise TimeoutError(f"{addr}:{port} never answered from {ns}")


def policy_and_eip(runs: int, moves: int) -> dict[str, object]:
    import boto3

    with contextlib.ExitStack() as stack:
        outside = stack.enter_context(outside_namespace())
        d = new_daemon(CORRAL_UPLINK=f"netns:{outside}")
        stack.callback(d.teardown)
        d.start()
        d.cli("image", "build", "tiny", timeout=900).ok()
        creds = json.loads((d.state_dir / "admin.credentials").read_text())
        ec2 = boto3.client(
            "ec2",
            endpoint_url=d.url,
            region_name="corral-1",
            aws_access_key_id=creds["access_key_id"],
            aws_secret_access_key=creds["secret_access_key"],
        )
        ids: dict[str, str] = {}
        for n in ("e-a", "e-b"):
            d.cli("run", "tiny", "--name", n, "--memory", "128M").ok()
            ids[n] = json.loads(d.cli("show", n, "--json").ok().out)["id"]
            # each guest serves its instance id over HTTP and marks its ping replies with a TTL
            # of its own, so every answer says which instance gave it
            d.ssh(
                n,
                f"mkdir -p /www && echo {ids[n]} > /www/index.html && httpd -p 8080 -h /www && "
                f"sysctl -q -w net.ipv4.ip_default_ttl={TTL_MARK[n]}",
            ).ok()
        sg = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
        ec2.authorize_security_group_ingress(
            GroupId=sg,
            IpPermissions=[
                {
                    "IpProtocol": "icmp",
                    "FromPort": -1,
                    "ToPort": -1,
                    "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
                }
            ],
        )
        alloc = ec2.allocate_address(Domain="vpc")
        eip = alloc["PublicIp"]
        ec2.associate_address(AllocationId=alloc["AllocationId"], InstanceId=ids["e-a"])
        perm = [
            {
                "IpProtocol": "tcp",
                "FromPort": 8080,
                "ToPort": 8080,
                "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
            }
        ]
        api_s, raw_s = [], []
        ns = d.settings.namespace
        for _ in range(runs):
            t0 = time.monotonic()
            ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=perm)
            api_s.append(_connect_until(outside, eip, 8080, t0 + 10) - t0)
            ec2.revoke_security_group_ingress(GroupId=sg, IpPermissions=perm)
            time.sleep(0.2)
            # the baseline: the same allow, added by hand to the live table
            chain = "gi_" + sg.split("-", 1)[1]
            t0 = time.monotonic()
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "nft",
                    "add",
                    "rule",
                    "inet",
                    "corral",
                    chain,
                    "tcp",
                    "dport",
                    "8080",
                    "accept",
                ],
                check=True,
            )
            raw_s.append(_connect_until(outside, eip, 8080, t0 + 10) - t0)
            # Corral rebuilds its policy on any change, dropping the hand-made rule
            ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=perm)
            ec2.revoke_security_group_ingress(GroupId=sg, IpPermissions=perm)
            time.sleep(0.2)
        api_top, nft_top = tail(api_s), tail(raw_s)
        # the moves' HTTP check (who serves the address afterwards) needs port 8080 open
        ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=perm)
        moves_out = [
            eip_move(
                ec2,
                outside,
                eip,
                alloc["AllocationId"],
                new="e-b" if i % 2 == 0 else "e-a",
                ids=ids,
            )
            for i in range(moves)
        ]
        return {
            "first_packet_api_ms": [x * 1000 for x in api_s],
            "first_packet_nft_ms": [x * 1000 for x in raw_s],
            "samples": runs,
            "api_p50_ms": median(api_s) * 1000,
            f"api_{api_top[0]}_ms": api_top[1] * 1000,
            "nft_p50_ms": median(raw_s) * 1000,
            f"nft_{nft_top[0]}_ms": nft_top[1] * 1000,
            "top": api_top[0],
            "ratio_p50": median(api_s) / median(raw_s),
            "eip_moves": moves,
            "moves": moves_out,
            "lost_pings_per_move": [m["lost"] for m in moves_out],
            "lost_pings_total": sum(m["lost"] for m in moves_out),
            "old_answers_after_switch_total": sum(m["old_after_switch"] for m in moves_out),
            "every_move_switched": all(m["switched"] for m in moves_out),
            "http_after_move_from_new": all(m["http_from_new"] for m in moves_out),
            "longest_gap_ms": max(m["longest_gap_ms"] for m in moves_out),
            "switch_gap_ms": [m["switch_gap_ms"] for m in moves_out],
        }


TTL_MARK = {"e-a": 71, "e-b": 91}  # ip_default_ttl in each guest: a reply's TTL names its sender
REPLY = re.compile(r"^\[(?P<t>[\d.]+)\].* (?:icmp_)?seq=(?P<seq>\d+) ttl=(?P<ttl>\d+)")


def _who(ttl: int) -> str:
    """The instance whose mark a received TTL comes from (marks minus the few routed hops)."""
    return min(TTL_MARK, key=lambda n: TTL_MARK[n] - ttl if TTL_MARK[n] >= ttl else 999)


def eip_move(
    ec2: Any, outside: str, eip: str, allocation: str, new: str, ids: dict[str, str]
) -> dict[str, Any]:
    """Move ``eip`` to ``new`` under a 10 ms ping from the outside world (one ICMP flow, the
    kind conntrack keeps). Each reply's TTL says which instance answered. Result: pings lost,
    the longest time between two replies, the first reply from the new instance, and how many
    replies after it still came from the old one (must be 0)."""
    ping = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            outside,
            "ping",
            "-D",
            "-n",
            "-i",
            "0.01",
            "-c",
            "400",
            "-W",
            "1",
            eip,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert ping.stdout is not None
    lines = []
    for line in ping.stdout:  # the move starts once the address has answered 50 times
        lines.append(line)
        if sum(1 for ln in lines if REPLY.match(ln)) >= 50:
            break
    t_req = time.time()
    ec2.associate_address(AllocationId=allocation, InstanceId=ids[new], AllowReassociation=True)
    t_done = time.time()
    rest, _ = ping.communicate(timeout=60)
    out = "".join(lines) + rest
    replies = [
        (float(m["t"]), int(m["seq"]), _who(int(m["ttl"])))
        for m in (REPLY.match(ln) for ln in out.splitlines())
        if m
    ]
    stats = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert stats, out
    sent, got = int(stats.group(1)), int(stats.group(2))
    first_new = next((i for i, r in enumerate(replies) if r[2] == new), None)
    after = replies[first_new:] if first_new is not None else []
    times = [r[0] for r in replies]
    gaps = [(b - a, a) for a, b in itertools.pairwise(times)]
    longest, longest_at = max(gaps) if gaps else (0.0, t_req)
    # the gap the move itself made: the old instance's last reply -> the new one's first
    switch_gap = replies[first_new][0] - replies[first_new - 1][0] if first_new else None
    http = subprocess.run(
        ["ip", "netns", "exec", outside, "wget", "-q", "-O", "-", "-T", "5", f"http://{eip}:8080/"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "to": new,
        "sent": sent,
        "received": got,
        "lost": sent - got,
        "longest_gap_ms": round(longest * 1000, 1),
        "longest_gap_starts_after_request_ms": round((longest_at - t_req) * 1000, 1),
        "switch_gap_ms": round(switch_gap * 1000, 1) if switch_gap is not None else None,
        "request_s": round(t_done - t_req, 3),
        "switched": first_new is not None,
        "first_new_reply_after_request_ms": round((replies[first_new][0] - t_req) * 1000, 1)
        if first_new is not None
        else None,
        "old_after_switch": sum(1 for r in after if r[2] != new),
        "answers": {n: sum(1 for r in replies if r[2] == n) for n in TTL_MARK},
        "http_from_new": http == ids[new],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rules", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--policy-runs", type=int, default=100, help="100+ for a p99, else max")
    ap.add_argument("--moves", type=int, default=10)
    ap.add_argument(
        "--parts", default="rules,policy,throughput", help="which parts to run (comma-separated)"
    )
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    info = machine()
    data: dict[str, Any] = {"machine": info}
    lines = [
        "# bench/net",
        "",
        f"Measured {info['time']} on {info['cpus']} CPUs; load average at start "
        f"{info['loadavg_start'][0]:.2f} (at the end: see the .json beside this file).",
    ]
    if "rules" in parts:
        ru = data["rule_update"] = rule_update(args.rules, 10)
        lines += [
            "",
            f"Rule update with {ru['rules_in_ruleset']} rules in the rule set (50 instances, 10 "
            "groups), median of 10:",
            f"- whole-policy rebuild in one nft transaction: {ru['rebuild_ms']:.1f} ms "
            f"(+ {ru['render_ms']:.1f} ms to render the JSON)",
            f"- baseline, one `nft add rule` to the live table: {ru['one_rule_ms']:.1f} ms; "
            f"ratio {ru['rebuild_over_one_rule']:.2f}",
        ]
    if "policy" in parts:
        pe = data["policy_and_eip"] = policy_and_eip(args.policy_runs, args.moves)
        top = pe["top"]
        lines += [
            "",
            f"API call -> first allowed packet (outside world -> elastic IP, TCP connect tried "
            f"every 2 ms), {args.policy_runs} runs:",
            f"- AuthorizeSecurityGroupIngress: p50 {pe['api_p50_ms']:.0f} ms, {top} "
            f"{pe[f'api_{top}_ms']:.0f} ms; baseline `nft add rule` by hand: p50 "
            f"{pe['nft_p50_ms']:.0f} ms, {top} {pe[f'nft_{top}_ms']:.0f} ms; ratio at p50 "
            f"{pe['ratio_p50']:.1f}",
            "",
            f"Elastic IP moved {pe['eip_moves']} times between two instances under a 10 ms ping "
            "from the outside world (each guest marks its replies with a TTL of its own, so each "
            "reply names the instance that sent it):",
            f"- pings lost in all: {pe['lost_pings_total']} (per move {pe['lost_pings_per_move']}; "
            "target 0); the old instance's last reply -> the new one's first, per move: "
            f"{pe['switch_gap_ms']} ms; longest time between any two replies: "
            f"{pe['longest_gap_ms']:.0f} ms (replies delayed, not lost, count here)",
            f"- replies from the old instance after the new one first answered: "
            f"{pe['old_answers_after_switch_total']} (target 0); every move switched: "
            f"{pe['every_move_switched']}; HTTP to the address afterwards answered by the new "
            f"instance every time: {pe['http_after_move_from_new']}",
        ]
    if "throughput" in parts:
        tp = data["throughput"] = throughput(args.runs)
        lines += [
            "",
            f"Guest -> guest TCP throughput (busybox dd | nc, {tp['megabytes_per_run']} MiB, "
            f"TCG), median of {args.runs}, alternated:",
            f"- through Corral's filtering: {tp['corral_median_mbit']:.0f} Mbit/s; on a raw "
            f"bridge: {tp['raw_median_mbit']:.0f} Mbit/s; ratio {tp['ratio']:.3f}",
        ]
    lines += ["", "Rerun: `sudo .venv/bin/python -m bench.net " + " ".join(sys.argv[1:]) + "`"]
    # a run of some parts only gets a file of its own: net.md stays the whole benchmark's
    every = {"rules", "policy", "throughput"}
    name = "net" if parts >= every else "net-" + "-".join(sorted(parts & every))
    write_results(name, data, "\n".join(lines), module="bench.net")


if __name__ == "__main__":
    main()
