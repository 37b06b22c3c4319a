"""API call → SSH for an instance on a remote (joined) node against all-in-one, in the same run.

Both sides through the CLI, timed the same way: from `corral run tiny` (the API call) until the
guest's SSH server greets through the API's port stream (`corral tunnel NAME 22`, what `corral
ssh` uses). The SSH *banner*, not a login: instances on joined nodes get no metadata yet (no
key). The remote side is tests/cluster.py's cluster (controller on PostgreSQL in a namespace,
one joined agent); the all-in-one side is tests/harness.py's daemon. Runs alternate.

    sudo .venv/bin/python -m bench.cluster_ssh [--runs 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable

from bench.common import machine, median, new_daemon, write_results
from tests.cluster import cluster
from tests.postgres import PostgresServer

DEADLINE = 600.0


def _timed(run: Callable[..., subprocess.CompletedProcess[bytes]], name: str) -> float:
    t0 = time.monotonic()
    r = run("run", "tiny", "--name", name, "--memory", "192M")
    if r.returncode != 0:
        raise RuntimeError(f"run {name} failed: {r.stderr.decode(errors='replace')}")
    while time.monotonic() - t0 < DEADLINE:
        out = run("tunnel", name, "22", input=b"").stdout
        if out.startswith(b"SSH-2.0-"):
            return time.monotonic() - t0
        time.sleep(0.2)
    raise RuntimeError(f"{name}: no SSH banner within {DEADLINE} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    info = machine()
    local: list[float] = []
    remote: list[float] = []
    d = new_daemon()
    try:
        d.start()
        d.cli("image", "build", "tiny", timeout=900).ok()

        def aio(*argv: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                [sys.executable, "-m", "corral", *argv],
                capture_output=True, env=d.env(), timeout=DEADLINE, input=input,
            )  # fmt: skip

        with PostgresServer() as pg, pg.database() as url, cluster(url, 1) as c:
            c.cli("image", "build", "tiny", timeout=900).ok()

            def far(*argv: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
                return subprocess.run(
                    ["ip", "netns", "exec", c.lan.outside, sys.executable, "-m", "corral",
                     *argv],
                    capture_output=True, env=c.env(), timeout=DEADLINE, input=input,
                )  # fmt: skip

            for i in range(args.runs):
                order = [("local", aio, local), ("remote", far, remote)]
                if i % 2:
                    order.reverse()
                for kind, run, out in order:
                    name = f"b{kind[0]}{i}"
                    out.append(_timed(run, name))
                    print(f"{kind} run {i}: {out[-1]:.1f} s", flush=True)
                    run("rm", name)
    finally:
        d.teardown()
    ratio = median(remote) / median(local)
    data = {
        "machine": info,
        "runs": args.runs,
        "all_in_one_s": local,
        "remote_node_s": remote,
        "median_all_in_one_s": median(local),
        "median_remote_node_s": median(remote),
        "ratio": ratio,
        "target": "<= 1.05",
    }

    def summary(x: dict[str, object]) -> str:
        m = info
        return (
            "# API call → SSH banner: remote node vs all-in-one\n\n"
            f"`{x['command']}` on {m['host']} ({m['cpus']} CPUs, {m['qemu']}); load average "
            f"{m['loadavg_start']} at start, {m['loadavg_end']} at end (a shared machine).\n\n"
            "| | runs (s) | median (s) |\n|---|---|---|\n"
            f"| all-in-one | {', '.join(f'{v:.1f}' for v in local)} | {median(local):.1f} |\n"
            f"| remote node (joined, mTLS) | {', '.join(f'{v:.1f}' for v in remote)} | "
            f"{median(remote):.1f} |\n\n"
            f"Ratio remote / all-in-one: **{ratio:.2f}** (target ≤ 1.05). The SSH banner through "
            "the API's port stream, not a login (joined nodes serve no metadata yet). Guests "
            "boot under TCG on a loaded machine: boot time dominates and varies run to run."
        )

    write_results("cluster-ssh", data, summary, module="bench.cluster_ssh")


if __name__ == "__main__":
    main()
