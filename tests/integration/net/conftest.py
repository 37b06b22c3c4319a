"""A daemon whose namespace has an uplink to a namespace standing for the outside world."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

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
