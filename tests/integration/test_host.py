"""What the host sees: each QEMU in its own cgroup with the instance's limits, in Corral's
namespace; a QEMU the store does not know is reported, not touched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from corral.node.driver import cgroups
from tests.harness import Daemon, wait_for


def test_qemu_runs_in_its_own_cgroup_with_the_instance_limits(corral: Daemon) -> None:
    corral.cli("run", "tiny", "--name", "limits1", "--memory", "192M", "--cpus", "1").ok()
    info = json.loads(corral.cli("show", "limits1", "--json").ok().out)
    ns = corral.settings.namespace
    group = f"corral/{ns}/{info['id']}"
    assert group in Path(f"/proc/{info['pid']}/cgroup").read_text()
    if cgroups.is_v2():
        base = Path("/sys/fs/cgroup") / group
        assert int((base / "memory.max").read_text()) == (192 + 256) << 20
        assert (base / "cpu.max").read_text().split()[0] == "100000"
    else:
        mem = Path("/sys/fs/cgroup/memory") / group / "memory.limit_in_bytes"
        assert int(mem.read_text()) == (192 + 256) << 20
        quota = Path("/sys/fs/cgroup/cpu") / group / "cpu.cfs_quota_us"
        assert int(quota.read_text()) == 100000
    # and in Corral's network namespace, not the host's
    assert Path(f"/proc/{info['pid']}/ns/net").resolve() != Path("/proc/self/ns/net").resolve()
    corral.cli("rm", "--force", "limits1").ok()
    gone = Path("/sys/fs/cgroup") / ("" if cgroups.is_v2() else "memory") / group
    wait_for(lambda: not gone.exists(), 10, what="the cgroup to be removed")


def test_a_qemu_the_store_does_not_know_is_reported_as_a_stray(corral: Daemon) -> None:
    run_root = f"/run/corral/{corral.settings.namespace}"
    fake_id = "i-0000000000000dead"
    # anything whose command line names a QMP socket under Corral's run directory looks like
    # one of its QEMUs; this one is a sleeping Python
    stray = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; time.sleep(120)",
            "-qmp",
            f"unix:{run_root}/{fake_id}/qmp.sock,server=on,wait=off",
        ]
    )
    try:

        def reported() -> bool:
            nodes = corral.client().node_list()
            return any(fake_id in s for n in nodes for s in n.strays)

        wait_for(reported, 30, what="the stray to be reported")
        doctor = corral.cli("doctor")
        assert fake_id in doctor.out and doctor.rc == 1
        assert stray.poll() is None  # reported, never killed
    finally:
        stray.kill()
        stray.wait()
