"""The fence guard: a small process beside the node agent that kills the node's HA QEMUs when
the agent stops moving their deadline (it hung, or died, while the node may be cut off). It
reads ``<fence dir>/guard.json`` (written by ``corral.node.fence``) every 100 ms; it imports
nothing of Corral's but the standard library, so it stays small and keeps working when the
agent's process is wedged. With ``--watchdog /dev/watchdog`` (softdog, or a hardware one) it
also feeds the kernel's watchdog while its own loop runs, so a hung guard resets the host.

It ends when its agent is gone and nothing is left to guard, or on SIGTERM (a clean agent stop,
or a new agent taking over the state directory)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

POLL = 0.1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_time(pid: int) -> float | None:
    """The process's start (seconds since the epoch), as psutil computes it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return int(line.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return None


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} guard[{os.getpid()}]: {message}", flush=True)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def kill_due(data: dict[str, Any], now: float) -> list[int]:
    """Kill the listed QEMUs whose deadline passed (a pid whose start time differs is another
    process by now: left alone). Returns the pids signalled."""
    deadline = data.get("deadline")
    if deadline is None or now < float(deadline):
        return []
    killed = []
    for pid, started in data.get("pids", []):
        st = _start_time(int(pid))
        if st is None or abs(st - float(started)) > 1.0:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
            killed.append(int(pid))
    return killed


def main(argv: list[str]) -> int:
    fence_dir = Path(argv[0])
    watchdog_path = argv[2] if len(argv) > 2 and argv[1] == "--watchdog" else ""
    stop = False

    def _term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _term)
    dog = None
    if watchdog_path:
        dog = open(watchdog_path, "wb", buffering=0)
        _log(f"feeding {watchdog_path}")
    _log(f"guarding {fence_dir}")
    done: set[int] = set()
    try:
        while not stop:
            data = _read(fence_dir / "guard.json") or {}
            for pid in kill_due(data, time.monotonic()):
                if pid not in done:
                    _log(f"deadline passed without the agent: killed HA QEMU pid {pid}")
                    done.add(pid)
            if dog is not None:
                dog.write(b"1")
            agent = int(data.get("agent") or 0)
            if agent and not _alive(agent):
                deadline = data.get("deadline")
                left = [p for p, _ in data.get("pids", []) if _alive(int(p))]
                if deadline is None or not left:
                    _log("the agent is gone and nothing is left to guard")
                    break
            time.sleep(POLL)
    finally:
        if dog is not None:
            dog.write(b"V")  # the magic close: a clean stop disarms the watchdog
            dog.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
