"""What the benchmarks share: a daemon of their own, timing helpers, the results file."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from corral.node.net import netns  # noqa: E402
from tests.harness import Daemon, new_daemon  # noqa: E402

RESULTS = ROOT / "bench" / "results"

__all__ = ["Daemon", "median", "new_daemon", "ssh_banner_at", "write_results", "machine"]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


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
        "qemu": subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                               text=True).stdout.splitlines()[0],
        "loadavg_start": os.getloadavg(),
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def write_results(name: str, data: dict[str, Any], summary: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data["machine"]["loadavg_end"] = os.getloadavg()
    data["command"] = " ".join(["python", "-m", f"bench.{name}", *sys.argv[1:]])
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(summary + "\n")
    print(summary)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
