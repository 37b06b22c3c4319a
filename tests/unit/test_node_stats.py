"""The agent's CPU counter readers: cgroup v2's cpu.stat, v1's cpuacct.usage (where cpuacct
shares the cpu hierarchy), and None where neither exists (the caller then reads the QEMU
process's own times) — on a cgroup tree laid out in a temp dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.node import stats
from corral.node.driver import cgroups


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(cgroups, "ROOT", tmp_path)
    return tmp_path


def test_v2_reads_usage_usec(root: Path) -> None:
    g = cgroups.Group("corral/ns", "i-1")
    (root / g.rel).mkdir(parents=True)
    (root / g.rel / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    assert stats.cgroup_cpu_seconds(g) == 2.5


def test_v1_reads_cpuacct_usage_in_the_cpu_hierarchy(root: Path) -> None:
    g = cgroups.Group("corral/ns", "i-1")
    (root / "cpu" / g.rel).mkdir(parents=True)
    (root / "cpu" / g.rel / "cpuacct.usage").write_text("1500000000\n")
    assert stats.cgroup_cpu_seconds(g) == 1.5


def test_no_cpu_accounting_is_none_and_the_process_times_stand_in(root: Path) -> None:
    g = cgroups.Group("corral/ns", "i-1")
    (root / "cpu" / g.rel).mkdir(parents=True)  # v1 cpu without cpuacct (this host's layout)
    assert stats.cgroup_cpu_seconds(g) is None
    own = stats.process_cpu_seconds(os.getpid())
    assert own is not None and own > 0
    assert stats.process_cpu_seconds(2**22 + 7) is None  # no such process
