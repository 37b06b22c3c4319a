"""Boot benchmark: API call -> SSH answering for a Corral instance, against a raw
qemu-system with the same kernel, initramfs, disk layering and network (Corral's own namespace,
bridge, dnsmasq and metadata service) started by the benchmark itself, runs interleaved.
Also: instance disk creation from a 1 GiB and a 10 GiB image, against a full copy.

    sudo .venv/bin/python -m bench.boot [--runs 7]

Each boot's guest console gives its own clock (seconds since the guest kernel started) at
userspace, network configured (udhcpc's lease) and sshd started, so a fixed timer in the
guest would show as a phase that does not vary; they are in boot.json per run.

Targets (docs/SPEC.md): Corral <= 1.15x raw; disk creation < 100 ms and independent of size."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

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
from corral.node.storage import overlays

PHASES = {
    "userspace": re.compile(r"corral-tiny: userspace up at ([\d.]+) s"),
    "network": re.compile(r"corral-tiny: network configured at ([\d.]+) s"),
    "sshd": re.compile(r"corral-tiny: sshd started at ([\d.]+) s"),
}


def phases(console: str) -> dict[str, float]:
    """The guest's own clock at each boot phase, from its console."""
    out = {}
    for name, rx in PHASES.items():
        m = rx.search(console)
        if m:
            out[name] = float(m.group(1))
    return out


def boot_runs(runs: int) -> dict[str, Any]:
    d = new_daemon()
    work = Path(tempfile.mkdtemp(prefix="corral-bench-", dir="/var/tmp"))
    try:
        d.start()
        d.cli("image", "build", "tiny", timeout=900).ok()
        c = d.client()
        ns = d.settings.namespace
        corral_s: list[float] = []
        raw_s: list[float] = []
        corral_phases: list[dict[str, float]] = []
        raw_phases: list[dict[str, float]] = []
        for i in range(runs):
            order = ("corral", "raw") if i % 2 == 0 else ("raw", "corral")
            for kind in order:
                if kind == "corral":
                    t0 = time.monotonic()
                    acc = c.instance_run(models.InstanceCreate(image="tiny", name=f"bc{i}"))
                    ip = acc.instance.private_ip
                    assert ip
                    t1 = ssh_banner_at(ns, ip, t0 + 120)
                    corral_s.append(t1 - t0)
                    corral_phases.append(phases(c.instance_console_output(acc.instance.id)))
                    wait(c, c.instance_terminate(acc.instance.id, force=True))
                else:
                    launch, inst, _ = raw_guest(d, f"br{i}", work)
                    t0 = time.monotonic()
                    proc = launch()
                    try:
                        assert inst.private_ip
                        t1 = ssh_banner_at(ns, inst.private_ip, t0 + 120)
                        raw_s.append(t1 - t0)
                    finally:
                        proc.kill()
                        proc.wait(10)
                    raw_phases.append(phases((work / f"br{i}.log").read_text(errors="replace")))
                    wait(c, c.instance_terminate(inst.id, force=True))
            print(
                f"run {i + 1}/{runs}: corral {corral_s[-1]:.2f} s, raw {raw_s[-1]:.2f} s",
                flush=True,
            )
        return {
            "corral_s": corral_s,
            "raw_s": raw_s,
            "corral_median": median(corral_s),
            "raw_median": median(raw_s),
            "ratio": median(corral_s) / median(raw_s),
            "corral_guest_phases": corral_phases,
            "raw_guest_phases": raw_phases,
        }
    finally:
        d.teardown()
        shutil.rmtree(work, ignore_errors=True)


def disk_runs(repeats: int = 20) -> dict[str, object]:
    """Overlay creation from a 1 GiB and a 10 GiB image (both full of data), against copying
    the image (what a cloud without layering does)."""
    work = Path(tempfile.mkdtemp(prefix="corral-bench-disk-", dir="/var/tmp"))
    out: dict[str, object] = {}
    try:
        for gib in (1, 10):
            base = work / f"base{gib}.qcow2"
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(base), f"{gib}G"], check=True
            )
            # fill the image with data so a copy has real work to do
            writes = [a for g in range(gib) for a in ("-c", f"write -P 0x5a {g}G 1G")]
            subprocess.run(
                ["qemu-io", "-f", "qcow2", *writes, str(base)], check=True, capture_output=True
            )
            times = []
            for r in range(repeats):
                disk = work / f"o{gib}-{r}.qcow2"
                t0 = time.perf_counter()
                asyncio.run(overlays.create(disk, base, "qcow2", gib << 30))
                times.append(time.perf_counter() - t0)
                disk.unlink()
            copies = []
            for _ in range(2):
                t0 = time.perf_counter()
                shutil.copyfile(base, work / "copy.qcow2")
                os.sync()
                copies.append(time.perf_counter() - t0)
                (work / "copy.qcow2").unlink()
            out[f"{gib}G"] = {
                "overlay_ms": [round(t * 1000, 2) for t in times],
                "overlay_median_ms": median(times) * 1000,
                "copy_median_ms": median(copies) * 1000,
                "copy_over_overlay": median(copies) / median(times),
            }
            base.unlink()
        o1 = out["1G"]["overlay_median_ms"]  # type: ignore[index]
        o10 = out["10G"]["overlay_median_ms"]  # type: ignore[index]
        out["size_ratio_10G_over_1G"] = o10 / o1
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def phase(b: dict[str, Any], name: str) -> str:
    def med(rows: list[dict[str, float]]) -> str:
        xs = [r[name] for r in rows if name in r]
        return f"{median(xs):.2f}" if xs else "?"

    return f"{med(b['corral_guest_phases'])} / {med(b['raw_guest_phases'])} s"


def spread(xs: list[float]) -> str:
    return f"{(max(xs) - min(xs)) * 1000:.0f} ms" if xs else "?"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    info = machine()
    boot = boot_runs(args.runs)
    disk = disk_runs()
    data = {"machine": info, "boot": boot, "disk": disk}
    b, dd = boot, disk
    summary = "\n".join(
        [
            "# bench/boot",
            "",
            f"Measured {info['time']} on {info['cpus']} CPUs, {info['qemu']}; load average at start "
            f"{info['loadavg_start'][0]:.2f} (see boot.json for the end).",
            "",
            f"API call -> SSH banner, median of {args.runs} (interleaved):",
            f"- Corral: {b['corral_median']:.2f} s; raw qemu-system (same kernel, initramfs, disk "
            f"layering, network): {b['raw_median']:.2f} s; ratio {b['ratio']:.3f} (target <= 1.15)",
            f"- the guest's own clock (median, Corral / raw): userspace "
            f"{phase(b, 'userspace')}, network configured {phase(b, 'network')}, sshd started "
            f"{phase(b, 'sshd')}; spread of API call -> SSH banner: Corral "
            f"{spread(b['corral_s'])}, raw {spread(b['raw_s'])}",
            "",
            "Instance disk creation (qcow2 overlay), median of 20:",
            f"- 1 GiB image: {dd['1G']['overlay_median_ms']:.1f} ms (a full copy: "  # type: ignore[index]
            f"{dd['1G']['copy_median_ms']:.0f} ms, {dd['1G']['copy_over_overlay']:.0f}x slower)",  # type: ignore[index]
            f"- 10 GiB image: {dd['10G']['overlay_median_ms']:.1f} ms (a full copy: "  # type: ignore[index]
            f"{dd['10G']['copy_median_ms']:.0f} ms, {dd['10G']['copy_over_overlay']:.0f}x slower)",  # type: ignore[index]
            f"- 10 GiB / 1 GiB overlay time: {dd['size_ratio_10G_over_1G']:.2f} (independent of size "
            "when ~1); target < 100 ms",
            "",
            f"Rerun: `sudo .venv/bin/python -m bench.boot --runs {args.runs}`",
        ]
    )
    write_results("boot", data, summary)


if __name__ == "__main__":
    main()
