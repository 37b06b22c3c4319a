"""Confining one instance's QEMU: the launcher's plan for a start (its uid, jail, descriptors)
and what /proc shows of a running one (for `corral show` and `corral doctor`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from corral.fsutil import atomic_write, proc_cmdline
from corral.node.driver import cgroups, jail, qemu
from corral.node.spec import Confinement, InstanceSpec


def plan(
    instances_dir: Path,
    spec: InstanceSpec,
    paths: qemu.Paths,
    qemu_argv: list[str],
    fds: qemu.Fds,
    accel: str,
    boot: list[Path | None],
) -> list[str]:
    """Write the launcher's plan for this start; returns the launcher's command line."""
    uid = jail.uid_for(instances_dir, spec.id)
    paths.run.mkdir(parents=True, exist_ok=True)
    os.chown(paths.run, uid, uid)
    os.chmod(paths.run, 0o700)
    paths.jail.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(paths.console_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    os.chown(paths.console_log, uid, uid)
    for disk in fds.specs:  # QEMU gets its disks open; by path they are root's alone
        if disk.write:
            os.chmod(disk.path, 0o600)
    devices, groups = list(jail.DEVICES), []
    if accel == "kvm" and os.path.exists("/dev/kvm"):
        devices.append("kvm")
        groups.append(os.stat("/dev/kvm").st_gid)
    plan = jail.Plan(
        root=str(paths.jail),
        uid=uid,
        gid=uid,
        groups=groups,
        devices=devices,
        binds=[str(paths.run), str(paths.console_log)],
        readonly=[str(p) for p in boot if p is not None],
        fds=fds.specs,
        tap=spec.tap,
        tap_fd=fds.tap_fd,
        argv=qemu_argv,
    )
    atomic_write(paths.plan, plan.model_dump_json(indent=2), mode=0o600)
    return [sys.executable, "-m", "corral.node.driver.jail", str(paths.plan)]


def observe(pid: int, paths: qemu.Paths, group: cgroups.Group) -> Confinement:
    """How QEMU ``pid`` is confined, read from /proc (what it is, not what was meant)."""
    status: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    argv = proc_cmdline(pid)
    sandbox = argv[argv.index("-sandbox") + 1] if "-sandbox" in argv else ""
    own_ns = os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    in_groups = [
        line.split(":", 2)[1]
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        if line.endswith(str(group.rel))
    ]
    limits = cgroups.confinement()
    return Confinement(
        pid=pid,
        uid=int(status["Uid"].split()[1]),
        gid=int(status["Gid"].split()[1]),
        groups=[int(g) for g in status.get("Groups", "").split()],
        capabilities=status.get("CapEff", "").lstrip("0") or "0",
        seccomp={"0": "off", "1": "strict", "2": "filter"}.get(status.get("Seccomp", ""), "?"),
        no_new_privs=status.get("NoNewPrivs") == "1",
        sandbox=sandbox,
        jail=str(paths.jail) if own_ns else "",
        own_mount_namespace=own_ns,
        cgroup=f"{group.rel} ({', '.join(c or 'unified' for c in in_groups) or 'none'})",
        devices=limits["devices"],
        block_io=limits["block_io"],
    )
