"""Density benchmark: host memory (RSS) and idle CPU per idle instance, Corral against raw
qemu-system with the same kernel, initramfs and devices, started by the benchmark itself in the
same run; and the daemon's own CPU with 0 and with 10 idle instances.

    sudo .venv/bin/python -m bench.density [--per-kind 3] [--idle 10] [--window 60]

Target (docs/SPEC.md): Corral's RSS and idle CPU per instance <= 1.1x raw."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import (
    machine,
    median,
    new_daemon,
    raw_guest,
    ssh_banner_at,
    wait,
    write_results,
)
from corral import models

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(pids: dict[str, int], window: float) -> dict[str, dict[str, float]]:
    start = {k: cpu_seconds(p) for k, p in pids.items()}
    time.sleep(window)
    return {
        k: {"cpu_percent": 100 * (cpu_seconds(p) - start[k]) / window, "rss_mib": rss_mib(p)}
        for k, p in pids.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-kind", type=int, default=3)
    ap.add_argument("--idle", type=int, default=10)
    ap.add_argument("--window", type=float, default=60)
    ap.add_argument("--settle", type=float, default=20)
    args = ap.parse_args()
    info = machine()
    d = new_daemon()
    work = Path(tempfile.mkdtemp(prefix="corral-bench-density-", dir="/var/tmp"))
    raws: list[subprocess.Popen[bytes]] = []
    try:
        d.start()
        d.cli("image", "build", "tiny", timeout=900).ok()
        c = d.client()
        ns = d.settings.namespace
        daemon_pid = d.proc.pid  # type: ignore[union-attr]

        # the daemon alone
        daemon_idle0 = measure({"daemon": daemon_pid}, args.window)["daemon"]

        # Corral instances and raw QEMUs side by side
        pids: dict[str, int] = {}
        for i in range(args.per_kind):
            acc = c.instance_run(models.InstanceCreate(image="tiny", name=f"dc{i}"))
            wait(c, acc)
            inst = c.instance_show(acc.instance.id)
            assert inst.pid and inst.private_ip
            ssh_banner_at(ns, inst.private_ip, time.monotonic() + 180)
            pids[f"corral{i}"] = inst.pid
        for i in range(args.per_kind):
            launch, inst, _ = raw_guest(d, f"dr{i}", work)
            raws.append(launch())
            assert inst.private_ip
            ssh_banner_at(ns, inst.private_ip, time.monotonic() + 180)
            pids[f"raw{i}"] = raws[-1].pid
        time.sleep(args.settle)
        per = measure(pids, args.window)
        corral_rss = median([v["rss_mib"] for k, v in per.items() if k.startswith("corral")])
        raw_rss = median([v["rss_mib"] for k, v in per.items() if k.startswith("raw")])
        corral_cpu = median([v["cpu_percent"] for k, v in per.items() if k.startswith("corral")])
        raw_cpu = median([v["cpu_percent"] for k, v in per.items() if k.startswith("raw")])
        for p in raws:
            p.kill()
            p.wait(10)
        raws.clear()

        # the daemon with N idle instances
        for i in range(args.per_kind, args.idle):
            wait(c, c.instance_run(models.InstanceCreate(image="tiny", name=f"dc{i}")))
        time.sleep(args.settle + 20)
        running = [i for i in c.instance_list(all=False) if i.state == "running"]
        daemon_idle_n = measure({"daemon": daemon_pid}, args.window)["daemon"]
        data = {
            "machine": info,
            "per_instance": per,
            "corral_rss_mib": corral_rss,
            "raw_rss_mib": raw_rss,
            "rss_ratio": corral_rss / raw_rss,
            "corral_cpu_percent": corral_cpu,
            "raw_cpu_percent": raw_cpu,
            "cpu_ratio": corral_cpu / raw_cpu if raw_cpu else None,
            "daemon_idle_0": daemon_idle0,
            "daemon_idle_n": daemon_idle_n,
            "idle_instances": len(running),
        }
        cpu_ratio = f"{corral_cpu / raw_cpu:.2f}" if raw_cpu else "n/a"
        summary = "\n".join(
            [
                "# bench/density",
                "",
                f"Measured {info['time']} on {info['cpus']} CPUs, {info['qemu']}; load average at "
                f"start {info['loadavg_start'][0]:.2f}. Guests: tiny, 256 MiB, idle, TCG.",
                "",
                f"Per idle instance (median of {args.per_kind} each, {args.window:.0f} s window):",
                f"- RSS: Corral {corral_rss:.0f} MiB, raw qemu {raw_rss:.0f} MiB, ratio "
                f"{corral_rss / raw_rss:.3f} (target <= 1.1)",
                f"- CPU: Corral {corral_cpu:.2f} %, raw qemu {raw_cpu:.2f} %, ratio {cpu_ratio} "
                "(target <= 1.1)",
                "",
                f"Daemon's own CPU: {daemon_idle0['cpu_percent']:.2f} % with no instances, "
                f"{daemon_idle_n['cpu_percent']:.2f} % with {len(running)} idle instances "
                f"(RSS {daemon_idle_n['rss_mib']:.0f} MiB).",
                "",
                "Rerun: `sudo .venv/bin/python -m bench.density`",
            ]
        )
        write_results("density", data, summary)
    finally:
        for p in raws:
            p.kill()
        d.teardown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
