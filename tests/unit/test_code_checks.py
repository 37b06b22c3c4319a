"""The code stays as the house style says: ruff's lint rules and mypy's types pass.

Both tools are pinned in pyproject's ``test`` extra, so the verdict is the same on every machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tool(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_ruff_finds_nothing() -> None:
    done = _tool("ruff", "check", "corral", "tests", "bench")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_finds_nothing() -> None:
    done = _tool("mypy", "corral")
    assert done.returncode == 0, done.stdout + done.stderr
