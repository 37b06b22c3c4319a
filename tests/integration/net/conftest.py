"""A daemon whose namespace has an uplink to a namespace standing for the outside world."""

from __future__ import annotations

import json
import select
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.harness import Daemon, new_daemon, outside_namespace


@dataclass
class Uplinked:
    corral: Daemon
    outside: str  # the outside world's namespace

    def outside_exec(
        self, *argv: str, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.outside, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )

    def listener(self, code: str) -> Listener:
        return Listener(self.outside, code)


class Listener:
    """A Python program in the outside namespace that prints READY once its socket is bound,
    then one JSON line with what it saw. Started only when READY has been read, so a test never
    sends before it listens, and a listener that died is an error, never "nothing arrived"."""

    def __init__(self, outside: str, code: str, ready_within: float = 30) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", outside, "python3", "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if line.strip() == "READY":
                    return
                break
            if self.proc.poll() is not None:
                break
        self.proc.kill()
        _, err = self.proc.communicate(timeout=10)
        raise RuntimeError(f"the outside listener did not start: {err[-1000:]}")

    def result(self, timeout: float = 90) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0 or not out.strip():
            raise RuntimeError(f"the outside listener failed ({self.proc.returncode}): {err}")
        got: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return got


@pytest.fixture(scope="session")
def uplinked() -> Iterator[Uplinked]:
    with outside_namespace() as outside:
        d = new_daemon(CORRAL_UPLINK=f"netns:{outside}")
        try:
            d.start()
            d.cli("image", "build", "tiny", timeout=900).ok()
            yield Uplinked(d, outside)
        finally:
            d.teardown()
