"""Shared test configuration: integration and e2e tests need root and QEMU, and say so; one
PostgreSQL server per session for the tests that run on PostgreSQL."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator

import pytest

from tests.postgres import PostgresServer, binaries


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.fspath)
        if "/integration/" in path:
            item.add_marker(pytest.mark.integration)
        if "/e2e/" in path:
            item.add_marker(pytest.mark.e2e)
    problem = None
    if os.geteuid() != 0:
        problem = "integration tests need root"
    elif shutil.which("qemu-system-x86_64") is None:
        problem = "integration tests need qemu-system-x86_64 (run scripts/setup)"
    if problem and not os.environ.get("CI"):
        skip = pytest.mark.skip(reason=problem)
        for item in items:
            if "integration" in item.keywords or "e2e" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test session (unix socket in a temporary directory), stopped
    and removed at the end, also on failure. Skipped only outside CI when it is not installed."""
    if binaries() is None:
        reason = "PostgreSQL is not installed under /usr/lib/postgresql (scripts/setup installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI must run the PostgreSQL tests")
        pytest.skip(reason)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        # a test run stopped with SIGTERM (e.g. by `timeout`) still tears the server down
        signal.signal(signal.SIGTERM, _interrupt)
    with PostgresServer() as server:
        yield server


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def postgres_template(postgres_server: PostgresServer) -> str:
    """A database at the newest schema; tests get copies (CREATE DATABASE … TEMPLATE)."""
    from corral.store import Store

    name = postgres_server.create_database("corral_template")
    Store(postgres_server.url(name)).migrate()
    return name
