"""Image benchmark. Deltas of two real Debian updates shipped as Corral's delta (a qcow2 overlay
of the new image on the base, zstd-compressed), against `xdelta3 -9` over the whole disks and
against the whole new image compressed with zstd, all in one run and each checked by applying
it and comparing sha256:

* packages added: debian:12 -> debian-tools:12.1 (four more packages, a file);
* files changed: debian-point:12.0 (Debian 12 without the security suite) -> debian-point:12.1
  (the same upgraded with it, `apt-get dist-upgrade`): binaries and libraries replaced all over
  the system, as a point release or a security update does (bench/recipes/).

xdelta3 runs on one core; so does every zstd here (-T1), so the times compare like with like.
The one exception is the `corral image export` row: Corral's own export, which compresses with
zstd on all cores (threads=-1), as it does for users.
Instances: creation time (API call to a running QEMU) against image size, tiny the baseline.

    sudo .venv/bin/python -m bench.images [--runs 3] [--cases tools,point]

Targets (docs/images.md): the delta no bigger than xdelta3's, made >= 10x faster. The row in
bold is what Corral does (qcow.DELTA_CLUSTER, archive.DELTA_LEVEL); the others show why."""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import machine, median, new_daemon, write_results
from corral import models
from corral.images import archive, qcow
from corral.images.store import ImageStore

HERE = Path(__file__).resolve().parent
TOOLS_RECIPE = HERE.parent / "tests/integration/images/recipes/debian-tools"
CASES: dict[str, tuple[str, str, str, list[str]]] = {
    # name: (base, new, what the update does, recipes to build)
    "tools": (
        "debian:12",
        "debian-tools:12.1",
        "four packages added",
        ["debian", str(TOOLS_RECIPE)],
    ),
    "point": (
        "debian-point:12.0",
        "debian-point:12.1",
        "security updates applied: files changed",
        [str(HERE / "recipes/debian-point"), str(HERE / "recipes/debian-point-upgrade")],
    ),
}


def run_measured(argv: list[str], stdout: Any = subprocess.DEVNULL) -> tuple[float, int]:
    """Run ``argv``; its wall time and peak memory (bytes, from wait4)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {err[-300:]}")
    return elapsed, usage.ru_maxrss * 1024


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def corral_delta(
    base_qcow: Path, new_raw: Path, work: Path, level: int, cluster: int
) -> dict[str, Any]:
    """Corral's delta from two whole disks: an overlay of the new disk on the base (qemu-img
    rebase, safe mode), then zstd. Timed end to end; applied and checked."""
    overlay, packed = work / f"overlay-{cluster}.qcow2", work / f"overlay-{cluster}-{level}.zst"
    overlay.unlink(missing_ok=True)
    start = time.monotonic()
    _, m1 = run_measured(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            f"cluster_size={cluster}",
            "-b",
            str(new_raw),
            "-F",
            "raw",
            str(overlay),
            str(new_raw.stat().st_size),
        ]
    )
    t2, m2 = run_measured(
        [
            "qemu-img",
            "rebase",
            "-q",
            "-f",
            "qcow2",
            "-b",
            str(base_qcow),
            "-F",
            "qcow2",
            str(overlay),
        ]
    )
    with open(packed, "wb") as out:
        t3, m3 = run_measured(["zstd", f"-{level}", "-T1", "-q", "-c", str(overlay)], out)
    total = time.monotonic() - start
    # apply: unpack the overlay, point it at the base, read the result back as a raw disk
    applied, restored = work / "applied.qcow2", work / "restored.raw"
    with open(applied, "wb") as out:
        subprocess.run(["zstd", "-d", "-q", "-c", str(packed)], stdout=out, check=True)
    qcow.set_backing(applied, str(base_qcow))
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(applied), str(restored)], check=True)
    ok = sha256(restored) == sha256(new_raw)
    out_size = packed.stat().st_size
    for p in (applied, restored):
        p.unlink()
    return {
        "size": out_size,
        "seconds": total,
        "memory": max(m1, m2, m3),
        "overlay_size": overlay.stat().st_size,
        "zstd_seconds": t3,
        "rebase_seconds": t2,
        "verified": ok,
    }


def xdelta(base_raw: Path, new_raw: Path, work: Path) -> dict[str, Any]:
    """xdelta3 -9 with a source window as large as xdelta3 allows (the whole image here)."""
    out = work / "xdelta.vcdiff"
    window = min(base_raw.stat().st_size, 1 << 31)
    seconds, memory = run_measured(
        [
            "xdelta3",
            "-9",
            "-f",
            "-e",
            "-B",
            str(window),
            "-s",
            str(base_raw),
            str(new_raw),
            str(out),
        ]
    )
    restored = work / "xrestored.raw"
    run_measured(
        ["xdelta3", "-d", "-f", "-B", str(window), "-s", str(base_raw), str(out), str(restored)]
    )
    ok = sha256(restored) == sha256(new_raw)
    restored.unlink()
    return {"size": out.stat().st_size, "seconds": seconds, "memory": memory, "verified": ok}


def whole(new_qcow: Path, work: Path, level: int) -> dict[str, Any]:
    """The whole new image as shipped without deltas: its standalone qcow2, zstd."""
    out = work / f"whole-{level}.zst"
    with open(out, "wb") as fh:
        seconds, memory = run_measured(["zstd", f"-{level}", "-T1", "-q", "-c", str(new_qcow)], fh)
    return {"size": out.stat().st_size, "seconds": seconds, "memory": memory, "verified": True}


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run by time (sizes do not vary)."""
    out = dict(runs[0])
    out["seconds"] = median([r["seconds"] for r in runs])
    out["runs"] = [round(r["seconds"], 3) for r in runs]
    out["verified"] = all(r["verified"] for r in runs)
    return out


def deltas(
    store: ImageStore, base_digest: str, new_digest: str, runs: int, work: Path
) -> dict[str, Any]:
    base = store.get_manifest(base_digest)
    base_qcow = store.root_disk_path(base)
    new = store.get_manifest(new_digest)
    base_raw, new_raw, new_qcow = work / "base.raw", work / "new.raw", work / "new.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(base_qcow), str(base_raw)], check=True)
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(store.root_disk_path(new)), str(new_raw)],
        check=True,
    )
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(new_raw), str(new_qcow)], check=True)
    results: dict[str, Any] = {
        "image_bytes": new_raw.stat().st_size,
        "image_allocated_bytes": new_raw.stat().st_blocks * 512,
        "stored_overlay_bytes": new.root_disk.size,
    }
    cluster, level = qcow.DELTA_CLUSTER, archive.DELTA_LEVEL
    methods = {
        "xdelta3 -9 (baseline)": lambda: xdelta(base_raw, new_raw, work),
        f"**corral: overlay {cluster >> 10}k clusters + zstd -{level}**": lambda: corral_delta(
            base_qcow, new_raw, work, level, cluster
        ),
        "overlay 64k clusters + zstd -3": lambda: corral_delta(base_qcow, new_raw, work, 3, 65536),
        "overlay 64k clusters + zstd -19": lambda: corral_delta(
            base_qcow, new_raw, work, 19, 65536
        ),
        "overlay 4k clusters + zstd -3": lambda: corral_delta(base_qcow, new_raw, work, 3, 4096),
        "whole image (qcow2) + zstd -3": lambda: whole(new_qcow, work, 3),
    }
    for name, fn in methods.items():
        print(f"  {name} …", flush=True)
        results[name] = best([fn() for _ in range(runs)])
    # what `corral image export --delta-from` does for the stored image: compress its stored
    # overlay (made at build time, no rebase), into an archive; imported and verified elsewhere
    out, other = work / "delta.tar", ImageStore(work / "other-store")
    archive.export(store, base_digest, work / "base.tar")
    archive.import_archive(other, work / "base.tar")
    runs_ = []
    for _ in range(runs):
        start = time.monotonic()
        archive.export(store, new_digest, out, base_digest)
        runs_.append(
            {
                "size": out.stat().st_size,
                "seconds": time.monotonic() - start,
                "memory": 0,
                "verified": True,
            }
        )
    archive.import_archive(other, out)
    other.verify(new_digest)
    results[f"corral image export --delta-from (stored overlay, zstd -{level}, archive)"] = best(
        runs_
    )
    return results


def creation(d: Any, refs: list[str], runs: int) -> dict[str, Any]:
    """API call -> instance running (its disk made, QEMU started), one at a time."""
    c = d.client()
    out: dict[str, Any] = {}
    for ref in refs:
        img = c.image_show(ref)
        times = []
        for i in range(runs):
            name = f"bench-{ref.replace(':', '-').replace('.', '-')}-{i}"
            start = time.monotonic()
            acc = c.instance_run(
                models.InstanceCreate.model_validate({"image": ref, "name": name, "memory": "512M"})
            )
            op = acc.operation
            while op is not None and op.status not in ("succeeded", "failed", "cancelled"):
                op = c.operation_wait(op.id, timeout=60)
            times.append(time.monotonic() - start)
            if op is not None and op.status != "succeeded":
                raise RuntimeError(f"run {ref}: {op.error}")
            c.instance_terminate(name, force=True)
        out[ref] = {
            "image_bytes": img.size,
            "virtual_size": img.virtual_size,
            "seconds": median(times),
            "runs": [round(t, 3) for t in times],
        }
    return out


def delta_table(case: str, d: dict[str, Any], runs: int) -> list[str]:
    base = d["xdelta3 -9 (baseline)"]
    lines = [
        "",
        f"## Deltas, {case}: {d['base']} -> {d['new']} ({d['what']}; "
        f"{d['image_bytes'] >> 20} MiB disk, {d['image_allocated_bytes'] >> 20} MiB used; "
        f"{d['packages_changed']} packages changed or added; the stored overlay is "
        f"{d['stored_overlay_bytes'] / 1e6:.1f} MB)",
        "",
        "Each made from the two whole disks, applied and checked by sha256 (median of "
        f"{runs} runs). Ratios are to xdelta3 -9 in the same run. xdelta3 and zstd -T1 run on "
        "one core; the export row compresses on all cores, as Corral does.",
        "",
        "| method | size | time | memory | size / xdelta3 | speed-up vs xdelta3 | checked |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in d.items():
        if not isinstance(r, dict) or "size" not in r:
            continue
        memory = f"{r['memory'] / 1e6:.0f} MB" if r["memory"] else "(in process)"
        lines.append(
            f"| {name} | {r['size'] / 1e6:.2f} MB | {r['seconds']:.2f} s | "
            f"{memory} | {r['size'] / base['size']:.2f} | "
            f"{base['seconds'] / r['seconds']:.1f}x | {'yes' if r['verified'] else 'NO'} |"
        )
    return lines


def summary(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        "# Image benchmark",
        "",
        f"`{data['command']}` on {m['host']} ({m['cpus']} cores, "
        f"load {m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end), "
        f"{m['time']}.",
    ]
    for case, d in data["deltas"].items():
        lines += delta_table(case, d, data["runs"])
        if not d["packages_changed"]:
            lines += ["", f"**No package changed in case {case}: it measures nothing.**"]
    c = data.get("creation")
    if c:
        tiny = c["tiny:1"]
        lines += [
            "",
            "## Instance creation against image size (API call -> QEMU running)",
            "",
            "| image | image size | disk | time | / tiny |",
            "|---|---:|---:|---:|---:|",
        ]
        for ref, r in c.items():
            lines.append(
                f"| {ref} | {r['image_bytes'] / 1e6:.1f} MB | "
                f"{r['virtual_size'] >> 20} MiB | {r['seconds']:.2f} s | "
                f"{r['seconds'] / tiny['seconds']:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cases", default="tools,point", help="update cases (comma-separated)")
    ap.add_argument("--no-creation", action="store_true", help="skip instance creation")
    args = ap.parse_args()
    cases = args.cases.split(",")
    for tool in ("xdelta3", "zstd", "qemu-img"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: run scripts/setup")
    data: dict[str, Any] = {"machine": machine(), "runs": args.runs, "deltas": {}}
    d = new_daemon()
    work = Path(tempfile.mkdtemp(prefix="corral-bench-images-", dir="/var/tmp"))
    try:
        d.start()
        d.cli("image", "build", "tiny", timeout=900).ok()
        c = d.client()
        store = ImageStore(d.settings.images_dir)
        for case in cases:
            base_ref, new_ref, what, recipes = CASES[case]
            for recipe in recipes:
                print(f"building {recipe} …", flush=True)
                d.cli("image", "build", recipe, timeout=3600).ok()
            base, new = c.image_show(base_ref).digest, c.image_show(new_ref).digest
            print(f"deltas {base_ref} -> {new_ref} …", flush=True)
            cwork = work / case
            cwork.mkdir()
            out = deltas(store, base, new, args.runs, cwork)
            shutil.rmtree(cwork, ignore_errors=True)  # 2 GiB disks: one case at a time
            old_pkgs = store.get_manifest(base).packages
            new_pkgs = store.get_manifest(new).packages
            out.update(
                base=base_ref,
                new=new_ref,
                what=what,
                packages_changed=sum(1 for k, v in new_pkgs.items() if old_pkgs.get(k) != v),
                packages_changed_names=sorted(
                    k for k, v in new_pkgs.items() if old_pkgs.get(k) != v
                )[:200],
            )
            data["deltas"][case] = out
        if not args.no_creation:
            print("instance creation …", flush=True)
            refs = ["tiny:1", *(r for case in cases for r in CASES[case][:2])]
            data["creation"] = creation(d, refs, args.runs)
    finally:
        d.teardown()
        shutil.rmtree(work, ignore_errors=True)
    # a run of some cases only gets a file of its own: images.md stays the whole benchmark's
    name = "images" if set(cases) >= set(CASES) else "images-" + "-".join(cases)
    write_results(name, data, summary, module="bench.images")


if __name__ == "__main__":
    main()
