"""Images on real daemons: the session's shared daemon (tiny built) builds the Debian images
once; a second daemon with its own state directory receives exports."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Daemon, new_daemon

RECIPES = Path(__file__).parent / "recipes"


def image(d: Daemon, ref: str) -> dict[str, Any]:
    """`corral image show REF` as a dict (record and manifest)."""
    out: dict[str, Any] = json.loads(d.cli("image", "show", ref).ok().out)
    return out


@pytest.fixture(scope="session")
def debian(corral: Daemon) -> dict[str, Any]:
    """The built-in debian image, built on the shared daemon (minutes; cached afterwards)."""
    corral.cli("image", "build", "debian", timeout=2400).ok()
    return image(corral, "debian:12")


@pytest.fixture(scope="session")
def tools(corral: Daemon, debian: dict[str, Any]) -> dict[str, Any]:
    """debian-tools: built on debian:12, so stored as a qcow2 overlay on its disk."""
    corral.cli("image", "build", str(RECIPES / "debian-tools"), timeout=1800).ok()
    return image(corral, "debian-tools:12.1")


@pytest.fixture(scope="session")
def other() -> Iterator[Daemon]:
    """A second Corral with its own state directory (another host's image store)."""
    d = new_daemon()
    try:
        d.start()
        yield d
    finally:
        d.teardown()
