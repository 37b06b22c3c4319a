"""The QEMU command line for one instance, and the binary's facts (path, version)."""

from __future__ import annotations

import functools
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from corral.errors import EnvironmentProblem
from corral.node.driver import hotplug, jail
from corral.node.spec import InstanceSpec
from corral.proc import need, run

QEMU = "qemu-system-x86_64"
TB_SIZE_MIB = 32  # TCG translation buffer: the default 1 GiB costs ~40 MiB RSS per idle guest


@dataclass(frozen=True)
class Paths:
    """Where one instance's files live: disk and logs in the state directory, sockets and the
    pid file under /run (short paths: unix sockets are limited to 107 bytes)."""

    dir: Path
    run: Path

    @property
    def disk(self) -> Path:
        return self.dir / "disk.qcow2"

    @property
    def spec(self) -> Path:
        return self.dir / "spec.json"

    @property
    def exit(self) -> Path:
        return self.dir / "exit.json"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"

    @property
    def pidfile(self) -> Path:
        return self.run / "qemu.pid"

    @property
    def qmp(self) -> Path:
        return self.run / "qmp.sock"

    @property
    def qmp_debug(self) -> Path:
        return self.run / "qmp-debug.sock"

    @property
    def console(self) -> Path:
        return self.run / "console.sock"

    @property
    def jail(self) -> Path:
        """The mount point of QEMU's jail (an empty directory on the host)."""
        return self.run.with_name(self.run.name + ".jail")

    @property
    def plan(self) -> Path:
        return self.dir / "jail.json"


@dataclass
class Chain:
    """A disk and its backing files, top first: (path, format) each. QEMU gets every layer as
    an open file descriptor, the top writable, the rest read-only."""

    layers: list[tuple[Path, str]]


_configured = QEMU


def configure(name: str) -> None:
    """Use ``name`` (a command or a path) as the QEMU binary from now on (settings.qemu)."""
    global _configured
    _configured = name
    binary.cache_clear()
    version.cache_clear()


@functools.cache
def binary() -> str:
    if "/" in _configured:
        if not os.access(_configured, os.X_OK):
            raise EnvironmentProblem(
                f"QEMU is missing: {_configured} does not exist or is not executable; install "
                "the Debian package qemu-system-x86 (scripts/setup does) or fix CORRAL_QEMU"
            )
        return _configured
    return need(_configured, "qemu-system-x86")


@functools.cache
def version() -> str:
    out = run([binary(), "--version"], timeout=10)
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else out.strip().splitlines()[0]


def system_uuid(instance_id: str) -> str:
    """A stable SMBIOS UUID per instance, starting with "ec2" as EC2's do."""
    u = str(uuid.uuid5(uuid.NAMESPACE_URL, f"corral:{instance_id}"))
    return "ec2" + u[3:]


class Fds:
    """File descriptors QEMU is started with, numbered from 3 in the order asked for; each file
    is its own fd set (``-add-fd``), named by its number."""

    def __init__(self) -> None:
        self.specs: list[jail.FdSpec] = []
        self.args: list[str] = []
        self.tap_fd = 0
        self._next = jail.FIRST_FD

    def fdset(self, path: Path, write: bool, opaque: str) -> str:
        """``/dev/fdset/N`` for ``path``, opened by the launcher as root."""
        num = self._take()
        self.specs.append(jail.FdSpec(path=str(path), fd=num, write=write))
        self.args += ["-add-fd", f"fd={num},set={num},opaque={opaque}"]
        return f"/dev/fdset/{num}"

    def tap(self) -> int:
        """The number of the tap's descriptor (the launcher opens the tap by name)."""
        self.tap_fd = self._take()
        return self.tap_fd

    def _take(self) -> int:
        num = self._next
        self._next += 1
        return num


def root_blockdev(chain: Chain, fds: Fds) -> dict[str, object]:
    """The root disk's block node ``root`` with its whole backing chain spelled out, each layer
    by descriptor (QEMU never opens a backing file by the path in the qcow2 header)."""
    node: dict[str, object] | None = None
    for depth, (path, fmt) in reversed(list(enumerate(chain.layers))):
        top = depth == 0
        layer: dict[str, object] = {
            "driver": fmt,
            "node-name": "root" if top else f"root-b{depth}",
            "file": {
                "driver": "file",
                "filename": fds.fdset(path, top, "root" if top else f"root-b{depth}"),
            },
        }
        if top:
            layer["discard"] = "unmap"
        else:
            layer["read-only"] = True
        if fmt == "qcow2":
            layer["backing"] = node
        node = layer
    assert node is not None
    return node


def argv(
    spec: InstanceSpec,
    paths: Paths,
    *,
    accel: str,
    machine: str,
    kernel: Path | None,
    initrd: Path | None,
    cmdline: str,
    root: Chain,
    volume_dir: Path | None = None,
) -> tuple[list[str], Fds]:
    """QEMU's command line for a jailed, sandboxed start, and the descriptors it expects."""
    fds = Fds()
    mem_mib = max(spec.memory >> 20, 16)
    args = [
        binary(),
        "-name",
        f"guest={spec.name},process=corral:{spec.id}",
        "-uuid",
        system_uuid(spec.id),
        # the SMBIOS serial equal to an "ec2…" system UUID is how cloud-init recognises EC2 and
        # so speaks IMDSv2 (it asks for tokens only there); Corral answers EC2's metadata API
        "-smbios",
        f"type=1,serial={system_uuid(spec.id)}",
        "-machine",
        f"{machine},graphics=off",
        "-sandbox",
        jail.SANDBOX,
    ]
    if accel == "kvm":
        args += ["-accel", "kvm", "-cpu", "host"]
    else:
        # -cpu max brings RDRAND: guests get entropy at once (dropbear starts ~1 s sooner)
        args += ["-accel", f"tcg,tb-size={TB_SIZE_MIB}", "-cpu", "max"]
    args += [
        "-smp",
        str(spec.cpus),
        "-m",
        f"{mem_mib}M",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-shutdown",  # a guest power-off leaves QEMU up in 'shutdown', so the agent sees why
        "-msg",
        "timestamp=on",
    ]
    if kernel is not None:
        args += ["-kernel", str(kernel)]
        if initrd is not None:
            args += ["-initrd", str(initrd)]
        full = " ".join(x for x in (cmdline, spec.cmdline_extra) if x)
        args += ["-append", full]
    args += [
        "-blockdev",
        json.dumps(root_blockdev(root, fds), separators=(",", ":")),
        # with -kernel, bootindex 0 is the kernel loader's; boot from the disk otherwise
        "-device",
        "virtio-blk-pci,drive=root,id=root-disk" + (",bootindex=0" if kernel is None else ""),
    ]
    for vol in spec.volumes if volume_dir is not None else []:
        assert volume_dir is not None
        # the same block node and device as a hot-plug makes (hotplug.py), so either way
        # the volume is unplugged alike; the serial is the volume id without its dash
        path = fds.fdset(volume_dir / f"{vol.id}.qcow2", True, vol.id)
        node = hotplug.blockdev(vol.id, Path(path))
        dev = hotplug.device(vol.id)
        args += [
            "-blockdev",
            json.dumps(node, separators=(",", ":")),
            "-device",
            ",".join([dev["driver"]] + [f"{k}={v}" for k, v in dev.items() if k != "driver"]),
        ]
    args += [
        "-netdev",
        f"tap,id=net0,fd={fds.tap()}",
        "-device",
        f"virtio-net-pci,netdev=net0,mac={spec.mac},id=nic0",
        "-object",
        "rng-builtin,id=rng0",
        "-device",
        "virtio-rng-pci,rng=rng0",
        "-chardev",
        (
            f"socket,id=serial0,path={paths.console},server=on,wait=off,"
            f"logfile={paths.console_log},logappend=on"
        ),
        "-serial",
        "chardev:serial0",
        "-qmp",
        f"unix:{paths.qmp},server=on,wait=off",
        "-qmp",
        f"unix:{paths.qmp_debug},server=on,wait=off",
        "-pidfile",
        str(paths.pidfile),
    ]
    return args[:1] + fds.args + args[1:], fds


def is_ours(cmdline: list[str], paths: Paths) -> bool:
    """True if a process's command line is this instance's QEMU (matched by its QMP socket)."""
    return bool(cmdline) and f"unix:{paths.qmp},server=on,wait=off" in cmdline
