"""Lost pings across a live migration between joined nodes (issue 13's target: 0 at a 10 ms
interval), against pings to an instance that does not move, in the same run and the same guest.

Three joined nodes (tests/cluster.py: the controller on PostgreSQL, mutual TLS, the default
subnet spanning the nodes over VXLAN, controller/overlays.py). ``m`` (moves) starts on host1,
``s`` (stays) on host2, the pinger ``p`` on host3. ``p`` pings ``m`` and ``s`` every 10 ms at
once (busybox ``ping -i 0.01``, one process each) while ``corral migrate m --to`` moves ``m``
between host1 and host2, back and forth; each run ends the pings 3 s after the migration and
counts, per target, the requests sent, the replies, and the longest run of missing sequence
numbers (x 10 ms: what the guest saw of the move). The figure is the lost pings to ``m``; the
baseline is the lost pings to ``s`` over the same overlay in the same seconds.

    sudo .venv/bin/python -m bench.migrate_ping [--runs 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import machine, median, write_results
from corral.config import Settings
from corral.controller.instances import tap_name
from tests.cluster import Cluster, cluster
from tests.harness import wait_for
from tests.postgres import PostgresServer

INTERVAL = 0.01
SETTLE = 3.0  # seconds of pings after the migration's end
RTT = re.compile(r"seq=(\d+) ttl=\d+ time=([\d.]+) ms")
SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) packets received")


def _show(c: Cluster, name: str) -> dict[str, Any]:
    return dict(json.loads(c.cli("show", name, "--json").ok().out))


def _node(inst: dict[str, Any]) -> str:
    return str(inst["node"]).removeprefix("node-")


def _pings(target: str, tag: str) -> str:
    """A command starting a ping of ``target`` in ``p`` in a session of its own (it outlives
    the SSH login), its pid in /tmp/TAG.pid."""
    return (
        f"rm -f /tmp/{tag}.out; setsid sh -c 'echo $$ > /tmp/{tag}.pid; "
        f"exec ping -i {INTERVAL} {target}' > /tmp/{tag}.out 2>&1 < /dev/null &"
    )


def _tap(c: Cluster, node: str, iid: str) -> dict[str, int]:
    """The instance's tap on ``node`` (toward the guest is its TX): packets, and drops (a tap
    whose QEMU does not read it yet, the paused destination, drops when its queue is full)."""
    ns = Settings(state_dir=c.agents[node].state_dir).namespace
    out = subprocess.run(
        ["ip", "-n", ns, "-s", "-json", "link", "show", "dev", tap_name(iid)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if out.returncode != 0:
        return {}
    st = json.loads(out.stdout)[0]
    return {
        "tx_packets": st["stats64"]["tx"]["packets"],
        "tx_dropped": st["stats64"]["tx"]["dropped"],
        "qlen": st.get("txqlen", -1),
    }


def _counted(c: Cluster, tag: str) -> dict[str, Any]:
    """Stop the ping (SIGINT: it prints its summary) and count what it saw, with what the
    pinger's kernel dropped at its raw socket (a full receive buffer: busybox ping asks for a
    small one) before it is closed."""
    raw = c.ssh("p", "cat /proc/net/raw").ok().out
    drops = [int(x.split()[-1]) for x in raw.splitlines()[1:] if x.split()[-1:] != ["drops"]]
    c.ssh("p", f"kill -INT $(cat /tmp/{tag}.pid); sleep 1").ok()
    out = c.ssh("p", f"cat /tmp/{tag}.out", timeout=120).ok().out
    seqs = sorted({int(x) for x in re.findall(r"seq=(\d+)", out)})
    m = SUMMARY.search(out)
    if m is None or not seqs:
        raise RuntimeError(f"no ping summary from {tag}: {out[-400:]}")
    sent, got = int(m.group(1)), int(m.group(2))
    gap, at = max(((b - a - 1, a) for a, b in itertools.pairwise(seqs)), default=(0, 0))
    rtt = {int(a): float(b) for a, b in RTT.findall(out)}
    around = [rtt.get(q) for q in range(at - 4, at + gap + 6) if q in rtt]
    return {
        "sent": sent,
        "received": got,
        "lost": sent - got,
        "raw_socket_drops": drops,
        "longest_gap": gap,
        "rtt_max_ms": max(rtt.values(), default=0.0),
        # the replies just before and after the longest gap (ms): a guest slowed before it
        # stops (auto-converge's throttle) shows here as growing times
        "rtt_around_gap_ms": around,
        # where in the ping's own time (s from its first request) the gap and the longest
        # answer (the pause's backlog) fall, to set beside the operation's events
        "gap_at_s": round((at + 1) * INTERVAL, 3),
        "lost_seqs": sorted(set(range(sent)) - set(seqs)),
        "slowest_at_s": round(max(rtt, key=lambda q: rtt[q], default=0) * INTERVAL, 3),
    }


EVENT = re.compile(r"^\s+(\d\d):(\d\d):(\d\d\.\d+) +\S+ +\d+% (.*)$", re.M)


def _phases(c: Cluster, iid: str) -> dict[str, float]:
    """From the newest migration operation's events (the controller's clock): seconds from
    memory moved to the switch-over's start, and the switch-over (both nodes over the wire,
    the record and the networks) until the source's copy is being removed."""
    listed = re.search(
        r"\bop-[0-9a-f]+", c.cli("op", "ls", "--target", iid, "--limit", "1").ok().out
    )
    if listed is None:
        return {"to_switching_s": -1.0, "switch_over_s": -1.0}
    op_id = listed.group(0)
    events = [
        (int(h) * 3600 + int(m) * 60 + float(sec), msg)
        for h, m, sec, msg in EVENT.findall(c.cli("op", "show", op_id).ok().out)
    ]

    def at(prefix: str) -> float:
        return next(t for t, msg in events if msg.startswith(prefix))

    migrating = [t for t, msg in events if msg.startswith("migrating")]
    switching, cleaning = at("switching"), at("removing the source")
    return {
        "to_switching_s": round(switching - migrating[-1], 3) if migrating else -1.0,
        "switch_over_s": round(cleaning - switching, 3),
    }


def _vxlan(ns: str) -> str:
    out = subprocess.run(
        ["ip", "-n", ns, "-d", "-json", "link", "show"], capture_output=True, text=True
    ).stdout
    kinds = {x["ifname"]: x.get("linkinfo", {}).get("info_kind") for x in json.loads(out)}
    return next(name for name, kind in kinds.items() if kind == "vxlan")


def _sniffers(c: Cluster, where: dict[str, tuple[str, str]], into: Path) -> list[Any]:
    """One bench.sniff per (namespace, device), its lines in INTO/<label>.jsonl."""
    into.mkdir(parents=True, exist_ok=True)
    procs = []
    for label, (ns, dev) in where.items():
        argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "bench.sniff", dev,
                str(into / f"{label}.jsonl")]  # fmt: skip
        procs.append(subprocess.Popen(argv, cwd=Path(__file__).parent.parent))
    time.sleep(1.0)
    return procs


def _where_lost(into: Path, labels: list[str], lost: list[int], addr: str) -> dict[str, Any]:
    """For each lost sequence number: the capture points that saw its request and its reply."""
    seen: dict[str, dict[str, set[int]]] = {}
    for label in labels:
        req, rep = set(), set()
        path = into / f"{label}.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            e = json.loads(line)
            if e["type"] == "request" and e["dst"] == addr:
                req.add(e["seq"])
            elif e["type"] == "reply" and e["src"] == addr:
                rep.add(e["seq"])
        seen[label] = {"request": req, "reply": rep}
    return {
        str(q): {
            kind: [label for label in labels if q in seen[label][kind]]
            for kind in ("request", "reply")
        }
        for q in lost
    }


def _timeline(c: Cluster, iid: str, since: float) -> list[tuple[float, str]]:
    """The newest migration operation's events, as seconds after ``since`` (a wall-clock
    time of this host, which is the controller's too)."""
    listed = re.search(
        r"\bop-[0-9a-f]+", c.cli("op", "ls", "--target", iid, "--limit", "1").ok().out
    )
    if listed is None:
        return []
    day = since - since % 86400
    return [
        (round(day + int(h) * 3600 + int(m) * 60 + float(sec) - since, 3), msg[:60])
        for h, m, sec, msg in EVENT.findall(c.cli("op", "show", listed.group(0)).ok().out)
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per migration")
    ap.add_argument(
        "--capture",
        type=Path,
        default=None,
        help="a directory: record the pings to m on both nodes' VXLAN devices and taps and "
        "on the pinger's node (bench/sniff.py), and say where each lost one vanished",
    )
    args = ap.parse_args()
    data: dict[str, Any] = {"machine": machine(), "interval_s": INTERVAL, "runs": []}
    with PostgresServer() as pg, pg.database() as url, cluster(url, 3) as c:
        c.cli("image", "build", "tiny", timeout=900).ok()
        for name, host in (("m", "host1"), ("s", "host2"), ("p", "host3")):
            c.cli("run", "tiny", "--name", name, "--memory", "160M", "--node", host).ok()
        addr = {n: str(_show(c, n)["private_ip"]) for n in ("m", "s")}
        c.ssh("p", f"ping -c 3 -W 5 {addr['m']} && ping -c 3 -W 5 {addr['s']}", wait=600).ok()
        for _n in range(args.runs):
            src = _node(_show(c, "m"))
            dst = "host2" if src == "host1" else "host1"
            ns = {h: Settings(state_dir=c.agents[h].state_dir).namespace for h in c.agents}
            iid = str(_show(c, "m")["id"])
            vx = _vxlan(ns["host3"])  # one VNI: the same name on every node (made when needed)
            points = {
                "pinger_tap": (ns["host3"], tap_name(str(_show(c, "p")["id"]))),
                "pinger_vx": (ns["host3"], vx),
                "src_vx": (ns[src], vx),
                "src_tap": (ns[src], tap_name(iid)),
                "dst_vx": (ns[dst], vx),
                "dst_tap": (ns[dst], tap_name(iid)),
            }
            into = args.capture / f"run{_n + 1}" if args.capture else None
            sniffers = _sniffers(c, points, into) if into else []
            c.ssh("p", _pings(addr["m"], "m") + " " + _pings(addr["s"], "s") + " sleep 1").ok()
            pinged = time.time() - 1.0  # about when the pings started (the command's sleep)
            time.sleep(2.0)  # both pings under way
            t0 = time.monotonic()
            c.cli("migrate", "m", "--to", dst, "--timeout", str(args.timeout), timeout=900).ok()
            took = time.monotonic() - t0
            wait_for(lambda d=dst: _node(_show(c, "m")) == d, 60, what="m on its new node")
            time.sleep(SETTLE)
            run: dict[str, Any] = {
                "from": src,
                "to": dst,
                "dst_tap": _tap(c, dst, str(_show(c, "m")["id"])),
                "migrate_s": round(took, 2),
                "phases": _phases(c, str(_show(c, "m")["id"])),
                "events_s": _timeline(c, str(_show(c, "m")["id"]), pinged),
            }
            moving = run["moving"] = _counted(c, "m")
            run["staying"] = _counted(c, "s")
            for proc in sniffers:
                proc.terminate()
                proc.wait(timeout=30)
            if into is not None:
                seen = run["lost_seen_at"] = _where_lost(
                    into, list(points), moving["lost_seqs"], addr["m"]
                )
                # lost on the way: no reply reached the pinger's tap (its NIC) at all
                run["lost_before_pinger_nic"] = sum(
                    "pinger_tap" not in where["reply"] for where in seen.values()
                )
            print(json.dumps(run), flush=True)
            data["runs"].append(run)
        c.cli("rm", "m", "s", "p", timeout=300)
    runs = data["runs"]
    data["lost_moving"] = [r["moving"]["lost"] for r in runs]
    data["lost_staying"] = [r["staying"]["lost"] for r in runs]
    if args.capture:
        data["lost_before_pinger_nic"] = [r["lost_before_pinger_nic"] for r in runs]
        data["pinger_raw_socket_drops"] = [r["moving"]["raw_socket_drops"] for r in runs]
    data["target"] = "0 lost pings to the moving instance at a 10 ms interval"

    def summary(x: dict[str, Any]) -> str:
        m = x["machine"]
        rows = "\n".join(
            f"| {i + 1} | {r['from']} -> {r['to']} | {r['migrate_s']:.1f} | "
            f"{r['moving']['sent']} / {r['moving']['lost']} / {r['moving']['longest_gap'] * 10} | "
            f"{r['staying']['sent']} / {r['staying']['lost']} / "
            f"{r['staying']['longest_gap'] * 10} |"
            for i, r in enumerate(x["runs"])
        )
        return (
            "# Lost pings across a live migration between joined nodes\n\n"
            f"`{x['command']}` on {m['host']} ({m['cpus']} CPUs, {m['qemu']}); load average "
            f"{m['loadavg_start']} at start, {m['loadavg_end']} at end (a shared machine).\n\n"
            "Pings every 10 ms from a third node's guest to the moving guest and, at the same "
            "time, to a guest that stays (the baseline), over the subnet's VXLAN segment.\n\n"
            "| run | move | `corral migrate` (s) | moving: sent / lost / longest gap (ms) | "
            "staying: sent / lost / longest gap (ms) |\n|---|---|---|---|---|\n"
            f"{rows}\n\n"
            f"Lost pings to the moving guest: {x['lost_moving']} (target 0); to the staying "
            f"one: {x['lost_staying']}. Median `corral migrate`: "
            f"{median([r['migrate_s'] for r in x['runs']]):.1f} s. From the migration "
            "operation's events (the controller's clock), per run: the last progress report "
            "before the switch-over to its start, and the switch-over itself (the source's "
            "mirrors ended and the destination continued over the node wire, the record "
            "moved, the networks synced) in s: "
            + ", ".join(
                f"{r['phases']['to_switching_s']:.3f} + {r['phases']['switch_over_s']:.3f}"
                for r in x["runs"]
            )
            + "."
            + (
                "\n\nWhere the lost ones vanished (`--capture`: every request and reply to "
                "the moving guest recorded on the pinger's tap and VXLAN device and on both "
                "nodes' VXLAN devices and taps, bench/sniff.py): lost before a reply reached "
                f"the pinger's virtual NIC: {x['lost_before_pinger_nic']}; the pinger "
                "guest's raw ICMP sockets' drop counters (/proc/net/raw, before the pings "
                f"stopped; busybox ping asks for a ~7 KiB receive buffer): "
                f"{x['pinger_raw_socket_drops']}."
                if "lost_before_pinger_nic" in x
                else ""
            )
        )

    write_results("migrate-ping", data, summary, module="bench.migrate_ping")


if __name__ == "__main__":
    main()
