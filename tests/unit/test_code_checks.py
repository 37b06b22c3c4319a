"""The code stays as the house style says: `scripts/check` (ruff check, ruff format --check,
mypy over corral, tests and bench) passes.

The tools are pinned in pyproject's ``test`` extra, so the verdict is the same on every machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_scripts_check_passes() -> None:
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(
        [str(ROOT / "scripts" / "check")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
