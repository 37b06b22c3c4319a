"""Running commands inside an image's root tree: the kernel file systems and the build caches
mounted in, services kept from starting, every mount undone on the way out (also on errors)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from corral.errors import CorralError
from corral.proc import CommandFailed, run

POLICY_RC = "#!/bin/sh\n# corral image build: no services start in the chroot\nexit 101\n"


def _umount(target: Path) -> None:
    # lazy as a last resort: a stuck mount must not keep the staging directory alive
    if subprocess.run(["umount", str(target)], capture_output=True, timeout=60).returncode:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=60)


@contextlib.contextmanager
def mounted(argv: Sequence[str], target: Path) -> Iterator[Path]:
    """``mount argv… target`` for the duration of the block."""
    target.mkdir(parents=True, exist_ok=True)
    run(["mount", *argv, str(target)], timeout=60)
    try:
        yield target
    finally:
        _umount(target)


class Chroot:
    """A root tree with /proc, /sys, /dev and the apt caches mounted while in use."""

    def __init__(
        self, root: Path, env: Mapping[str, str], binds: Mapping[str, Path] | None = None
    ) -> None:
        self.root = root
        self.env = dict(env)
        self.binds = dict(binds or {})
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Chroot:
        try:
            self._stack.enter_context(mounted(["-t", "proc", "proc"], self.root / "proc"))
            self._stack.enter_context(mounted(["--bind", "/sys"], self.root / "sys"))
            self._stack.enter_context(mounted(["--bind", "/dev"], self.root / "dev"))
            self._stack.enter_context(mounted(["--bind", "/dev/pts"], self.root / "dev/pts"))
            self._stack.enter_context(mounted(["-t", "tmpfs", "tmpfs"], self.root / "run"))
            self._stack.enter_context(mounted(["-t", "tmpfs", "tmpfs"], self.root / "tmp"))
            self._resolver()
            for inside, outside in sorted(self.binds.items()):
                outside.mkdir(parents=True, exist_ok=True)
                self._stack.enter_context(
                    mounted(["--bind", str(outside)], self.root / inside.lstrip("/"))
                )
            policy = self.root / "usr/sbin/policy-rc.d"
            policy.write_text(POLICY_RC)
            policy.chmod(0o755)
            self._stack.callback(policy.unlink, missing_ok=True)
        except BaseException:
            self._stack.close()
            raise
        return self

    def _resolver(self) -> None:
        """The host's DNS resolver configuration for apt in the chroot, also where an image
        using systemd-resolved points /etc/resolv.conf (into /run, a tmpfs here)."""
        host = Path("/etc/resolv.conf").read_text() if Path("/etc/resolv.conf").exists() else ""
        stub = self.root / "run/systemd/resolve"
        stub.mkdir(parents=True, exist_ok=True)
        for name in ("stub-resolv.conf", "resolv.conf"):
            (stub / name).write_text(host)

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def run(self, argv: Sequence[str], timeout: float = 1800) -> str:
        return run(["chroot", str(self.root), *argv], env=self.env, timeout=timeout)

    def stream(
        self, argv: Sequence[str], on_line: Callable[[str], None], timeout: float = 1800
    ) -> None:
        """Run a command in the chroot, handing each output line to ``on_line``."""
        stream_lines(["chroot", str(self.root), *argv], on_line, env=self.env, timeout=timeout)


def stream_lines(
    argv: Sequence[str],
    on_line: Callable[[str], None],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 1800,
) -> None:
    """Run ``argv`` and hand each line of its output to ``on_line`` (for progress)."""
    import time

    deadline = time.monotonic() + timeout
    tail: list[str] = []
    proc = subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=dict(env) if env else None,
        text=True,
        errors="replace",
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            tail = ([*tail, line.rstrip()])[-20:]
            on_line(line.rstrip())
            if time.monotonic() > deadline:
                raise CorralError(f"`{' '.join(argv)}` did not finish within {timeout:.0f} s")
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if rc != 0:
        raise CommandFailed(argv, rc, "\n".join(tail))


def host_env(epoch: int) -> dict[str, str]:
    """The environment for package scripts: no questions, fixed time stamps, plain locale."""
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "DEBIAN_FRONTEND": "noninteractive",
        "DEBCONF_NONINTERACTIVE_SEEN": "true",
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
        "SOURCE_DATE_EPOCH": str(epoch),
        "HOME": "/root",
        "TMPDIR": "/tmp",
        "TERM": os.environ.get("TERM", "dumb"),
    }
