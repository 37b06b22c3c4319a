"""Shared test configuration: integration and e2e tests need root and QEMU, and say so."""

from __future__ import annotations

import os
import shutil

import pytest


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
