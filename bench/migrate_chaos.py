"""Live migration under faults (issue 13, part 3): every phase of a `corral migrate` hit by
every fault, one migration each, and what is left afterwards checked.

Three joined nodes (tests/cluster.py: the controller on PostgreSQL, mTLS, the default subnet
over VXLAN). One tiny guest ``w`` runs a writer (numbered, checksummed, fsynced records, each
acknowledged on its serial line) and moves back and forth between host1 and host2; host3 is
there so that a node stays besides the two. To make each phase long enough to be hit, the
guest first writes 48 MiB to its disk (the mirror has that to copy) and the source's underlay
link is held to 40 Mbit/s while the migration runs.

Phases: ``preparing``, ``mirroring``, ``migrating``, ``switching`` (seen by a watcher polling
the operation every 50 ms from the controller's namespace). Faults, injected at the first sight
of the phase:

- ``controller``: the controller SIGKILLed, started again 2 s later (it resumes the operation);
- ``source`` / ``destination``: that node's agent SIGKILLed, started again 3 s later (its QEMU
  processes run on: they are not its children);
- ``link``: the destination's underlay link down for 6 s (longer than the lease's 5 s: the
  node is unreachable for a while, not dead), then up;
- ``none``: nothing (the baseline: is a finding the fault's or the migration's?);
- ``source-before``: the source's agent SIGKILLed and started again as for ``source``, but
  before the migration is asked for (the phase is ignored): is a finding after ``source`` the
  agent's restart, which this repeats, or the fault's timing within the migration? (It was
  the restart: such migrations corrupted guests, so the agent now refuses to migrate a QEMU
  it adopted, reason ``qemu-adopted``, and this fault now shows that refusal's rollback.)
- ``restart-only``: that restart and no migration at all: the guest checked (kernel, records,
  memory) 20 s after its agent came back (does the restart alone harm the guest?).

Each run also records whether the guest's kernel reported a BUG or an oops on its serial line
since the run began (``guest_bug``), and whether 32 MiB of random bytes the guest keeps in RAM
(a tmpfs file, written once before the first run) still has the checksum it had then
(``memory_intact``: guest memory moved wrong shows there even when the kernel does not trip).

After the operation ended (or 300 s), per run: the operation's outcome and reason; which node
the store says, and where a QEMU of the guest runs (by its run directory on each node):
exactly one, there; the guest's check of its records (every acknowledged one on the disk where
it runs, none bad); nothing of it left on the other node (instance directory, tap). The phase
the fault actually hit is recorded beside the one aimed at (the operation's message when the
fault went in).

    sudo .venv/bin/python -m bench.migrate_chaos [--faults controller,source,destination,link]
        [--phases preparing,mirroring,migrating,switching]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from typing import Any

from bench.common import machine, write_results
from corral.config import Settings
from corral.controller.instances import tap_name
from tests.cluster import Cluster, bench_cluster
from tests.harness import PYTHON, _pids_matching, wait_for
from tests.integration.test_ha import Console, _acked, _node_ids, _show, check, start_writer

PHASES = ["preparing", "mirroring", "migrating", "switching"]
FAULTS = ["controller", "source", "destination", "link", "none", "source-before", "restart-only"]
RATE = "40mbit"  # the source's underlay while a migration runs
END = 300.0  # seconds an operation gets to end after its fault

# polls one operation from the controller's namespace and prints each new message
WATCH = """
import sys, time
from corral.client import Client, find_credentials
c = Client(find_credentials(None, None))
last = None
while True:
    try:
        o = c.operation_show(sys.argv[1])
        line = f"{o.status}|{o.message}"
    except Exception as err:
        line = f"error|{err}"
    if line != last:
        print(line, flush=True)
        last = line
        if line.split("|")[0] in ("succeeded", "failed", "cancelled"):
            break
    time.sleep(0.05)
"""


OP = """
import sys
from corral.client import Client, find_credentials
print(Client(find_credentials(None, None)).operation_show(sys.argv[1]).model_dump_json())
"""


def _api(c: Cluster, script: str, *args: str) -> str | None:
    """A snippet run with the admin's client where the API is (the outside namespace): its
    output, None when it failed (the controller not answering)."""
    r = subprocess.run(
        ["ip", "netns", "exec", c.lan.outside, PYTHON, "-c", script, *args],
        capture_output=True,
        text=True,
        env=c.env(),
        timeout=60,
    )
    return r.stdout if r.returncode == 0 else None


def _op(c: Cluster, op_id: str) -> dict[str, Any] | None:
    """The operation as the API shows it; None while the controller does not answer."""
    out = _api(c, OP, op_id)
    return dict(json.loads(out)) if out is not None else None


EVENTS = """
import sys
from corral.client import Client, find_credentials
for e in Client(find_credentials(None, None)).operation_events(sys.argv[1]):
    print(e.model_dump_json())
"""


def _events(c: Cluster, op_id: str) -> list[str]:
    out = _api(c, EVENTS, op_id) or ""
    return [json.loads(x).get("message", "") for x in out.splitlines() if x.strip()]


def _bug(text: str) -> bool:
    return any(w in text for w in ("BUG:", "Oops", "kernel BUG", "end trace"))


def _ns(c: Cluster, host: str) -> str:
    return Settings(state_dir=c.agents[host].state_dir).namespace


def _qemus(c: Cluster, iid: str) -> dict[str, int]:
    """QEMU processes of the guest per node (by the run directory on their command line)."""
    out = {}
    for host in c.agents:
        pids = _pids_matching(f"/run/corral/{_ns(c, host)}/{iid}/")
        out[host] = sum(1 for p in pids if b"qemu-system" in _cmd(p))
    return out


def _cmd(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def _leftovers(c: Cluster, host: str, iid: str) -> list[str]:
    left = []
    if (c.agents[host].state_dir / "instances" / iid).exists():
        left.append("instance directory")
    links = subprocess.run(
        ["ip", "-n", _ns(c, host), "link", "show", tap_name(iid)], capture_output=True
    )
    if links.returncode == 0:
        left.append("tap")
    return left


def _inject(c: Cluster, fault: str, src: str, dst: str) -> None:
    if fault == "controller":
        c.kill9()
        time.sleep(2)
        c.start()
    elif fault in ("source", "destination", "source-before"):
        agent = c.agents[dst if fault == "destination" else src]
        agent.kill9()
        time.sleep(3)
        agent.restart()
    elif fault == "none":  # the baseline: the same migration, nothing done to it
        pass
    elif fault == "link":
        host = next(h for h in c.lan.hosts if h.name == dst)
        host.exec("ip", "link", "set", "eth0", "down")
        time.sleep(6)
        host.exec("ip", "link", "set", "eth0", "up")
    else:
        raise ValueError(fault)


def _restart_only(c: Cluster, names: dict[str, str]) -> dict[str, Any]:
    """The agent of w's node killed and started again; no migration; w checked after."""
    s = _show(c, "w")
    iid, node = str(s["id"]), names[s["node"]]
    con = Console(c.agents[node], iid)
    at = len(con.text())
    _inject(c, "source", node, node)
    time.sleep(5)
    wait_for(lambda: c.node(node).get("state") == "ready", 120, what=f"{node} ready again")
    time.sleep(20)  # the guest runs on under the new agent a while
    qemus = _qemus(c, iid)
    out: dict[str, Any] = {
        **dict(phase="-", fault="restart-only", hit="no migration", status="-", reason=""),
        **dict(message="", ended_s=0.0, store_node=node, qemus=qemus),
        "from": node,
        "to": node,
        "one_copy": qemus.get(node) == 1 and sum(qemus.values()) == 1,
    }
    try:
        m = check(con)
    except AssertionError:
        out.update(state="running, not answering", memory_intact=None)
        out.update(console_tail=con.text()[-6000:], guest_bug=_bug(con.text()))
        return out
    out.update(state="running", acked=_acked(con.text()), on_disk=int(m.group(1)))
    out.update(bad=int(m.group(2)), mac_kept=m.group(3) == s["mac"], left_on_other=[])
    out.update(memory_intact=_memory_intact(con), guest_bug=_bug(con.text()[at:]))
    return out


def _one(c: Cluster, names: dict[str, str], phase: str, fault: str) -> dict[str, Any]:
    s = _show(c, "w")
    iid, src = str(s["id"]), names[s["node"]]
    dst = "host2" if src == "host1" else "host1"
    srchost = next(h for h in c.lan.hosts if h.name == src)
    acked_before = max(_acked(Console(c.agents[h], iid).text()) for h in ("host1", "host2"))
    console_at = {h: len(Console(c.agents[h], iid).text()) for h in ("host1", "host2")}
    shaped = srchost.exec(
        *("tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", RATE),
        *("burst", "64kb", "latency", "400ms"),
    )
    assert shaped.returncode == 0, shaped.stderr
    if fault == "source-before":  # the agent restarted, then a migration with nothing done to it
        _inject(c, fault, src, dst)
        time.sleep(5)  # the controller's next heartbeat reaches the new agent
        wait_for(lambda: c.node(src).get("state") == "ready", 120, what=f"{src} ready again")
    requested = c.cli("migrate", "w", "--to", dst, "--no-wait").ok().out
    op_id = next(w.strip(";()`") for w in requested.split() if w.startswith("op-"))
    watcher = subprocess.Popen(
        ["ip", "netns", "exec", c.lan.outside, PYTHON, "-c", WATCH, op_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=c.env(),
    )
    hit, seen = "", []
    try:
        assert watcher.stdout is not None
        for line in watcher.stdout:
            status, _, message = line.rstrip("\n").partition("|")
            seen.append(message[:80])
            if status in ("succeeded", "failed", "cancelled"):
                break
            if message.startswith(phase) and fault != "source-before":
                hit = message[:120]
                break
    finally:
        watcher.kill()
        watcher.wait(10)
    t0 = time.monotonic()
    seen_acked = [acked_before]

    def acked_now() -> int:
        """The highest record acknowledged on either node's serial line so far (a source's
        log goes with its copy at the end: read it while it is there)."""
        got = max(_acked(Console(c.agents[h], iid).text()) for h in ("host1", "host2"))
        seen_acked[0] = max(seen_acked[0], got)
        return seen_acked[0]

    if fault == "source-before":
        hit = "before the request"
    elif hit:
        _inject(c, fault, src, dst)
    srchost.exec("tc", "qdisc", "del", "dev", "eth0", "root")

    def ended() -> dict[str, Any] | None:
        acked_now()
        o = _op(c, op_id)
        return o if o and o["status"] in ("succeeded", "failed", "cancelled") else None

    done = wait_for(ended, END, interval=0.5, what=f"the operation {op_id} to end")
    took = round(time.monotonic() - t0, 1)
    acked_now()
    out: dict[str, Any] = {
        "phase": phase,
        "fault": fault,
        "from": src,
        "to": dst,
        "hit": hit or f"missed (saw: {seen[-3:]})",
        "status": done["status"],
        "reason": (done.get("error") or {}).get("code") or "",
        "message": ((done.get("error") or {}).get("message") or "")[:200],
        "ended_s": took,
    }
    # the reconciler's pass after a restart may still be tidying: give it a moment
    try:
        wait_for(lambda: _show(c, "w")["state"] == "running", 120, what="w running")
    except AssertionError:
        out["state"] = _show(c, "w")["state"]
        out["qemus"] = _qemus(c, iid)
        out["one_copy"] = False
        return out
    time.sleep(3)
    where = names[_show(c, "w")["node"]]
    qemus = _qemus(c, iid)
    con = Console(c.agents[where], iid)
    acked = acked_now()
    try:
        m = check(con)
    except AssertionError:
        # a finding: keep what the guest said, where it runs, and what the operation did
        out.update(state="running, not answering", store_node=where, qemus=qemus)
        out["one_copy"] = qemus.get(where) == 1 and sum(qemus.values()) == 1
        out["memory_intact"] = None
        out["console_tail"] = con.text()[-6000:]
        out["guest_bug"] = _bug(con.text())
        out["events"] = _events(c, op_id)
        return out
    other = dst if where == src else src
    out["guest_bug"] = _bug(con.text()[console_at.get(where, 0) if where == src else 0 :])
    out.update(
        state="running",
        store_node=where,
        qemus=qemus,
        one_copy=qemus.get(where) == 1 and sum(qemus.values()) == 1,
        acked=acked,
        on_disk=int(m.group(1)),
        bad=int(m.group(2)),
        mac_kept=m.group(3) == s["mac"],
        left_on_other=_leftovers(c, other, iid),
        memory_intact=_memory_intact(con),
    )
    return out


PATTERN = (
    "mkdir -p /m; mount -t tmpfs -o size=40m tmpfs /m; "
    "dd if=/dev/urandom of=/m/pat bs=1M count=32 2>/dev/null; md5sum /m/pat > /pat.md5; "
    "echo PAT-$((40+2))"
)


def _memory_intact(con: Console) -> bool | None:
    """The guest's 32 MiB in RAM against the checksum taken before the first run (None: the
    guest never answered)."""
    for _ in range(3):
        mark = len(con.text())
        # both answers computed by the guest: the echo of the typed line must not match
        con.type(
            "md5sum -c /pat.md5 >/dev/null 2>&1 && echo MEM-$((1+1))OK || echo MEM-$((3+3))BAD"
        )
        try:
            found = wait_for(
                lambda b=mark: re.search(r"MEM-(2OK|6BAD)", con.text()[b:]), 60, what="the check"
            )
            return bool(found.group(1) == "2OK")
        except AssertionError:
            continue
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--repeat", type=int, default=1, help="runs per phase and fault")
    args = ap.parse_args()
    faults, phases = args.faults.split(","), args.phases.split(",")
    for x in faults:
        if x not in FAULTS:
            sys.exit(f"--faults: {x!r} is not one of {', '.join(FAULTS)}")
    for x in phases:
        if x not in PHASES:
            sys.exit(f"--phases: {x!r} is not one of {', '.join(PHASES)}")
    data: dict[str, Any] = {"machine": machine(), "rate": RATE, "runs": []}
    settings = {"reconcile_interval": 1.0}
    with bench_cluster(3, settings) as c:
        c.cli("run", "tiny", "--name", "w", "--node", "host1", "--memory", "128M").ok()
        names = _node_ids(c)
        s = _show(c, "w")
        con = Console(c.agents["host1"], str(s["id"]))
        wait_for(lambda: "login:" in con.text(), 600, what="the login prompt")
        con.type("root")
        wait_for(lambda: "~ #" in con.text(), 120, what="the guest's shell")
        con.type("dd if=/dev/urandom of=/big bs=1M count=48 2>/dev/null; sync; echo BIG-DONE")
        wait_for(lambda: "BIG-DONE" in con.text(), 300, what="the 48 MiB written")
        con.type(PATTERN)
        wait_for(lambda: "PAT-42" in con.text(), 300, what="the 32 MiB pattern in RAM")
        start_writer(con)
        combos = [(p, f) for p in phases for f in faults for _ in range(args.repeat)]
        for phase, fault in combos:
            run = (
                _restart_only(c, names) if fault == "restart-only" else _one(c, names, phase, fault)
            )
            print(json.dumps(run), flush=True)
            data["runs"].append(run)
            if run["state"] != "running":  # a finding: stop here, with what it left
                break
    name = {
        "none": "migrate-chaos-baseline",
        "source-before": "migrate-chaos-restart",
        "restart-only": "migrate-chaos-restart-only",
    }.get(",".join(faults), "migrate-chaos")
    write_results(name, data, summary, module="bench.migrate_chaos")


def summary(data: dict[str, Any]) -> str:
    m = data["machine"]
    runs = data["runs"]
    rows = "\n".join(
        f"| {r['phase']} | {r['fault']} | {r['from']} -> {r['to']} | {r['hit'][:40]} | "
        f"{r['status']} {r['reason']}{' GUEST KERNEL BUG' if r.get('guest_bug') else ''} | "
        f"{r.get('store_node', r['state'])} | "
        f"{'yes' if r['one_copy'] else 'NO ' + json.dumps(r['qemus'])} | "
        f"{r.get('acked', '-')} / {r.get('on_disk', '-')} / {r.get('bad', '-')} | "
        f"{', '.join(r.get('left_on_other', [])) or '-'} | "
        f"{_intact(r.get('memory_intact', 'not checked'))} |"
        for r in runs
    )
    hit = sum(1 for r in runs if not r["hit"].startswith("missed"))
    bad = [
        r
        for r in runs
        if r["state"] != "running"
        or r.get("guest_bug")
        or not r["one_copy"]
        or r["on_disk"] < r["acked"]
        or r["bad"]
        or r["left_on_other"]
        or r.get("memory_intact") is False
    ]
    return (
        "# Live migration under faults\n\n"
        f"`{data['command']}` on {m['host']} ({m['cpus']} CPUs, {m['qemu']}); load average "
        f"{m['loadavg_start']} at start, {m['loadavg_end']} at end. The source's underlay held "
        f"to {data['rate']} during each migration; a 128 MiB tiny guest with 48 MiB written "
        "to its disk and a writer running.\n\n"
        "| phase | fault | move | hit at | outcome | store says | one QEMU, there | "
        "acked / on disk / bad | left on the other node | 32 MiB in RAM intact |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
        f"{rows}\n\n"
        f"{len(runs)} runs, {hit} faults injected in the phase aimed at; runs with two copies, "
        f"a lost or bad record, a guest kernel BUG, memory changed, or leftovers: {len(bad)}."
    )


def _intact(v: object) -> str:
    if v is None:
        return "no answer"
    return "yes" if v is True else "**NO**" if v is False else str(v)


if __name__ == "__main__":
    main()
