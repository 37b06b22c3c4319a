"""High availability benchmark, the write path: a guest's write throughput with its disk
replicated synchronously to a second node (a write-blocking mirror into a qemu-storage-daemon
over NBD on the underlay, as `corral run --ha` sets up) against the same guest without, in the
same run, alternating (off, on, off, on, ...) so drift in the machine's load falls on both.

    sudo .venv/bin/python -m bench.ha [--runs 5] [--mib 16]

Two real agents in two host namespaces of a test LAN (tests/integration/test_migration.py's
pair, 192.0.2.11 -> .12). Each sample is busybox `dd if=/dev/zero of=/b bs=1M count=MIB
conv=fsync` in the guest, timed by the guest's /proc/uptime (10 ms steps). Target
(docs/SPEC.md): with replication >= 0.8x the throughput without.

Node death -> answering on the survivor (>= 5 runs, split into detection and boot) is not
measured here yet; tests/integration/test_ha.py shows one failover per suite run."""

from __future__ import annotations

import argparse
import re
import secrets
import time
from typing import Any

from bench.common import machine, median, new_daemon, write_results
from corral.controller import replicas
from corral.images.store import ImageStore
from tests.harness import wait_for
from tests.integration.test_migration import Console, _network, _spec, agent_pair, call

DD = (
    "a=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero of=/b bs=1M count={mib} conv=fsync "
    "2>/dev/null; b=$(cut -d' ' -f1 /proc/uptime); echo DD-$((1+1))-{tag} $a $b"
)


def sample(con: Console, mib: int) -> float:
    """MiB/s of one dd in the guest (the fsync included), timed by the guest's uptime."""
    tag = secrets.token_hex(3)
    before = len(con.text())
    con.type(DD.format(mib=mib, tag=tag))
    done = re.compile(rf"DD-2-{tag} ([\d.]+) ([\d.]+)")  # the typed line has $((1+1))
    m = wait_for(lambda: done.search(con.text()[before:]), 600, what="dd in the guest")
    return mib / (float(m.group(2)) - float(m.group(1)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mib", type=int, default=16)
    args = ap.parse_args()
    data: dict[str, Any] = {"machine": machine(), "mib": args.mib, "samples": []}
    d = new_daemon()
    try:
        d.start()
        d.cli("image", "build", "tiny", timeout=900).ok()
        tiny = next(m for m in ImageStore(d.settings.images_dir).list() if m.name == "tiny")
        disk = int(tiny.root_disk.virtual_size or 0)
        with agent_pair(d.state_dir / "images") as (primary, secondary):
            iid = f"i-bha{secrets.token_hex(4)}"
            for a in (primary, secondary):
                call(a, "network_ensure", spec=_network(a), hosts=[])
            call(primary, "instance_start", spec=_spec(primary, iid, tiny.digest, disk))
            try:
                con = Console(primary, iid)
                wait_for(lambda: "login:" in con.text(), 600, what="a login prompt")
                con.type("root")
                time.sleep(2)
                sample(con, args.mib)  # warm-up, not counted
                for _ in range(args.runs):
                    for mode in ("plain", "replicated"):
                        if mode == "replicated":
                            served = call(
                                secondary,
                                "replica_serve",
                                spec=_spec(secondary, iid, tiny.digest, disk),
                                sizes={},
                                address=secondary.host.address,
                            )
                            call(
                                primary,
                                "replica_mirror",
                                iid=iid,
                                address=served.address,  # type: ignore[attr-defined]
                                port=served.port,  # type: ignore[attr-defined]
                                disks=replicas.mirror_disks(
                                    _spec(primary, iid, tiny.digest, disk),
                                    served,  # type: ignore[arg-type]
                                ),
                            )
                            wait_for(
                                lambda: (
                                    call(primary, "replica_status", iid=iid).state  # type: ignore[attr-defined]
                                    == "in-sync"
                                ),
                                600,
                                what="the replica in sync",
                            )
                        rate = sample(con, args.mib)
                        data["samples"].append({"mode": mode, "mib_s": rate})
                        print(mode, f"{rate:.2f} MiB/s", flush=True)
                        if mode == "replicated":
                            call(primary, "replica_stop", iid=iid)
                            call(secondary, "replica_drop", iid=iid)
            finally:
                call(secondary, "replica_drop", iid=iid)
                call(primary, "instance_destroy", iid=iid, tap="tmig0")
    finally:
        d.teardown()
    write_results("ha", data, summary)


def summary(data: dict[str, Any]) -> str:
    by = {
        m: [s["mib_s"] for s in data["samples"] if s["mode"] == m] for m in ("plain", "replicated")
    }
    plain, repl = median(by["plain"]), median(by["replicated"])
    m = data["machine"]
    return "\n".join(
        [
            "# bench/ha: guest write throughput with synchronous replication vs without",
            "",
            f"`{data['command']}` on {m['host']} ({m['cpus']} cpus, {m['qemu']}), "
            f"{m['time']}, load {m['loadavg_start'][0]:.2f} -> {m['loadavg_end'][0]:.2f}",
            "",
            f"Each sample: `dd bs=1M count={data['mib']} conv=fsync` in a tiny TCG guest, "
            "alternating without and with replication (a write-blocking mirror over NBD "
            "to a qemu-storage-daemon on a second host namespace).",
            "",
            "| mode | samples (MiB/s) | median |",
            "|---|---|---|",
            f"| without | {', '.join(f'{x:.2f}' for x in by['plain'])} | {plain:.2f} |",
            f"| replicated | {', '.join(f'{x:.2f}' for x in by['replicated'])} | {repl:.2f} |",
            "",
            f"Ratio (median replicated / median without): **{repl / plain:.2f}** (target >= 0.8).",
        ]
    )


if __name__ == "__main__":
    main()
