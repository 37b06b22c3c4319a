"""One real daemon shared by the integration tests of a session, with the tiny image built."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import Daemon, new_daemon


@pytest.fixture(scope="session")
def corral() -> Iterator[Daemon]:
    d = new_daemon()
    try:
        d.start()
        d.cli("image", "build", "tiny", timeout=900).ok()
        yield d
    finally:
        d.teardown()
