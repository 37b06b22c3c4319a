"""What the benchmarks share: a daemon of their own, timing helpers, the results file."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corral.node.net import netns  # noqa: E402
from tests.harness import Daemon, new_daemon  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def _end_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


# a benchmark stopped with SIGTERM (`timeout`, kill) runs its `finally` blocks: its daemon, VMs,
# namespaces and probes are cleaned up as on any other failure (the default action ended the
# process at once and left them)
signal.signal(signal.SIGTERM, _end_on_sigterm)

__all__ = [
    "Daemon",
    "machine",
    "median",
    "new_daemon",
    "raw_guest",
    "ssh_banner_at",
    "tail",
    "write_results",
]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def tail(xs: list[float]) -> tuple[str, float]:
    """The top of a distribution as far as the samples can show it: ("p99", value) from 100
    samples up, else ("max", the largest). A "p99" of 20 samples would be their maximum."""
    s = sorted(xs)
    if not s:
        return "max", float("nan")
    if len(s) >= 100:
        return "p99", s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]
    return "max", s[-1]


def ssh_banner_at(namespace: str, address: str, deadline: float, interval: float = 0.02) -> float:
    """Poll ``address:22`` inside ``namespace`` until it sends an SSH banner; the time it did."""
    while time.monotonic() < deadline:
        sock = netns.socket_in(namespace)
        sock.settimeout(1.0)
        try:
            sock.connect((address, 22))
            if sock.recv(4).startswith(b"SSH-"):
                return time.monotonic()
        except OSError:
            pass
        finally:
            sock.close()
        time.sleep(interval)
    raise TimeoutError(f"no SSH banner from {address} in {namespace}")


def machine() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "qemu": subprocess.run(
            ["qemu-system-x86_64", "--version"], capture_output=True, text=True
        ).stdout.splitlines()[0],
        "loadavg_start": os.getloadavg(),
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def write_results(
    name: str,
    data: dict[str, Any],
    summary: str | Callable[[dict[str, Any]], str],
    module: str = "",
) -> Path:
    """Write bench/results/NAME.json and NAME.md; the command recorded is the one that ran
    (``module`` defaults to bench.NAME). ``summary`` may be a function of the data, called
    once the command and the end load are in it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    data["machine"]["loadavg_end"] = os.getloadavg()
    data["command"] = " ".join(["python", "-m", module or f"bench.{name}", *sys.argv[1:]])
    if callable(summary):
        summary = summary(data)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(summary + "\n")
    print(summary)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raw_argv(
    kernel: Path, initrd: Path, cmdline: str, disk: Path, tap: str, mac: str, console: Path
) -> list[str]:
    """What one would type to boot the tiny image by hand, with the devices Corral gives it."""
    return [
        "qemu-system-x86_64",
        "-machine",
        "pc",
        "-accel",
        "tcg,tb-size=32",
        "-cpu",
        "max",
        "-smp",
        "1",
        "-m",
        "256M",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        cmdline,
        "-drive",
        f"file={disk},if=none,id=root,format=qcow2,discard=unmap,cache=writeback",
        "-device",
        "virtio-blk-pci,drive=root",
        "-netdev",
        f"tap,id=net0,ifname={tap},script=no,downscript=no",
        "-device",
        f"virtio-net-pci,netdev=net0,mac={mac}",
        "-object",
        "rng-random,id=rng0,filename=/dev/urandom",
        "-device",
        "virtio-rng-pci,rng=rng0",
        "-serial",
        f"file:{console}",
    ]


def wait(c: Any, acc: Any) -> None:
    op = acc.operation
    while op is not None and op.status not in ("succeeded", "failed", "cancelled"):
        op = c.operation_wait(op.id, timeout=60)
    if op is not None and op.status != "succeeded":
        raise RuntimeError(f"operation {op.id} {op.status}: {op.error}")


def raw_guest(d: Daemon, name: str, work: Path) -> tuple[Any, Any, Any]:
    """A raw QEMU booting the tiny image on Corral's bridge. An instance record (stopped before
    QEMU starts) gives it an address that DHCP and the metadata service know; the disk is a
    fresh overlay, as an instance's is. Returns (launch, instance, client): call launch() to
    start QEMU and get its Popen."""
    import asyncio

    from corral import models
    from corral.images.store import ImageStore
    from corral.node.storage import overlays

    c = d.client()
    store = ImageStore(d.settings.images_dir)
    tiny = next(m for m in store.list() if m.name == "tiny")
    kernel, initrd = store.kernel_path(tiny), store.initrd_path(tiny)
    assert kernel and initrd
    acc = c.instance_run(models.InstanceCreate(image="tiny", name=name))
    wait(c, acc)
    wait(c, c.instance_stop(acc.instance.id, force=True))
    inst = acc.instance
    disk = work / f"{name}.qcow2"
    asyncio.run(
        overlays.create(disk, store.root_disk_path(tiny), "qcow2", tiny.root_disk.virtual_size or 0)
    )
    argv = raw_argv(
        kernel, initrd, tiny.cmdline, disk, "t" + inst.id[2:14], inst.mac, work / f"{name}.log"
    )

    def launch() -> subprocess.Popen[bytes]:
        return popen_in(d.settings.namespace, argv)

    return launch, inst, c


def popen_in(namespace: str, argv: list[str]) -> subprocess.Popen[bytes]:
    """``argv`` started inside network namespace ``namespace``, its output discarded."""
    enter = netns.preexec(namespace)
    try:
        return subprocess.Popen(
            argv,
            preexec_fn=enter,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    finally:
        os.close(enter.fd)  # type: ignore[attr-defined]
