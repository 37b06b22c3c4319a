"""One QEMU process under the agent's watch: launch or adopt it, keep its QMP link, notice its
exit (and why), and stop it with a ladder: ask the guest, then QMP ``quit``, SIGTERM, SIGKILL.

QEMU runs in a session of its own, so it outlives the agent; a restarted agent finds it again by
its pid file and QMP socket. The exit watch is a pidfd, which works whether or not QEMU is the
agent's child; when it is, the exit status says how it ended (e.g. killed by SIGKILL)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from corral.errors import CorralError, EnvironmentProblem
from corral.fsutil import atomic_write, pid_alive, proc_cmdline, read_pidfile
from corral.node.driver import cgroups
from corral.node.driver.qemu import Paths, is_ours
from corral.node.driver.qmp import Qmp, QmpUnavailable
from corral.node.net import netns
from corral.node.spec import LAUNCH_FAILED, ExitInfo

log = logging.getLogger(__name__)

ExitCallback = Callable[[str, ExitInfo], Awaitable[None] | None]
CONSOLE_LOG_MAX = 8 << 20
POWERDOWN_REPEAT = 3.0


class LaunchFailed(CorralError):
    reason = LAUNCH_FAILED


def find_pid(paths: Paths) -> int | None:
    """The pid of this instance's QEMU if it runs (pid file checked against /proc)."""
    pid = read_pidfile(paths.pidfile)
    if pid and pid_alive(pid) and is_ours(proc_cmdline(pid), paths):
        return pid
    return None


def read_exit(paths: Paths) -> ExitInfo | None:
    try:
        return ExitInfo.model_validate_json(paths.exit.read_bytes())
    except (FileNotFoundError, ValueError):
        return None


class Machine:
    def __init__(
        self,
        instance_id: str,
        paths: Paths,
        cgroup: cgroups.Group | None,
        on_exit: ExitCallback | None,
    ) -> None:
        self.id = instance_id
        self.paths = paths
        self.cgroup = cgroup
        self.on_exit = on_exit
        self.pid: int | None = None
        self.qmp: Qmp | None = None
        self.exit: ExitInfo | None = None
        self._requested = False
        self._guest_shutdown = False
        self._exited = asyncio.Event()
        self._reset = asyncio.Event()
        self._events_task: asyncio.Task[None] | None = None
        self._cleanup_task: asyncio.Task[None] | None = None  # kept so it is not collected
        self._pidfd: int | None = None
        self._popen: subprocess.Popen[bytes] | None = None

    # -- start -----------------------------------------------------------------------------
    @classmethod
    async def launch(
        cls,
        instance_id: str,
        argv: list[str],
        paths: Paths,
        *,
        namespace: str,
        cgroup: cgroups.Group | None,
        limits: cgroups.Limits | None,
        on_exit: ExitCallback | None,
    ) -> Machine:
        paths.run.mkdir(parents=True, exist_ok=True)
        for stale in (paths.pidfile, paths.qmp, paths.qmp_debug, paths.console):
            stale.unlink(missing_ok=True)
        paths.exit.unlink(missing_ok=True)
        log_ = paths.console_log
        if log_.exists() and log_.stat().st_size > CONSOLE_LOG_MAX:
            os.replace(log_, log_.with_suffix(".log.1"))
        if cgroup is not None and limits is not None:
            await asyncio.to_thread(cgroup.create, limits)
        popen = await asyncio.to_thread(_spawn, argv, namespace, cgroup, paths.qemu_log)
        machine = cls(instance_id, paths, cgroup, on_exit)
        machine._popen = popen
        await machine._attach(popen.pid)
        if not machine.running or machine.qmp is None:
            machine.on_exit = None  # the caller hears of this failure by the exception
            if machine.running:
                await machine.stop(0, force=True)
            raise LaunchFailed(f"QEMU for {instance_id} failed to start: {_tail(paths.qemu_log)}")
        return machine

    @classmethod
    async def adopt(
        cls,
        instance_id: str,
        pid: int,
        paths: Paths,
        cgroup: cgroups.Group | None,
        on_exit: ExitCallback | None,
    ) -> Machine:
        machine = cls(instance_id, paths, cgroup, on_exit)
        await machine._attach(pid)
        return machine

    async def _attach(self, pid: int) -> None:
        self.pid = pid
        loop = asyncio.get_running_loop()
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._on_exit()
            return
        loop.add_reader(self._pidfd, self._on_exit)
        qmp = Qmp(self.paths.qmp, f"corral-{self.id}")
        connect = asyncio.create_task(qmp.connect(timeout=30))
        exited = asyncio.create_task(self._exited.wait())
        done, _ = await asyncio.wait({connect, exited}, return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        if connect not in done:
            connect.cancel()
            with contextlib.suppress(asyncio.CancelledError, QmpUnavailable):
                await connect
            return
        try:
            connect.result()
        except QmpUnavailable as err:
            log.warning("%s: %s", self.id, err)
            return
        self.qmp = qmp
        self._events_task = asyncio.create_task(self._watch_events(), name=f"qmp-events-{self.id}")
        with contextlib.suppress(QmpUnavailable):
            if await self.qmp.status() == "shutdown":
                # the guest powered off while nobody watched: finish what it asked for
                self._guest_shutdown = True
                await self.qmp.quit()

    async def _watch_events(self) -> None:
        assert self.qmp is not None
        try:
            async for event in self.qmp.events():
                name = event.get("event")
                data = event.get("data") or {}
                if name == "SHUTDOWN" and data.get("guest"):
                    self._guest_shutdown = True
                    if not self._requested:
                        log.info("%s: guest powered off (%s)", self.id, data.get("reason"))
                    asyncio.get_running_loop().call_soon(
                        lambda: asyncio.ensure_future(self._quit_quietly())
                    )
                elif name == "RESET":
                    self._reset.set()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the link dropped: the exit watch takes it from here
            log.debug("%s: QMP events ended: %s", self.id, err)

    async def _quit_quietly(self) -> None:
        if self.qmp is not None:
            with contextlib.suppress(QmpUnavailable):
                await self.qmp.quit()

    # -- exit ------------------------------------------------------------------------------
    def _on_exit(self) -> None:
        if self._exited.is_set():
            return
        loop = asyncio.get_running_loop()
        detail = ""
        if self._pidfd is not None:
            loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._popen is not None:
            # our child (not adopted): reap it and learn how it ended
            try:
                rc = self._popen.wait(timeout=1)
                detail = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
            except (subprocess.TimeoutExpired, ValueError):
                pass
        if self._requested:
            reason = "requested"
        elif self._guest_shutdown:
            reason = "guest-shutdown"
        else:
            reason = "crashed"
            detail = detail or "QEMU exited unexpectedly"
        self.exit = ExitInfo(reason=reason, detail=detail, time=time.time())
        with contextlib.suppress(OSError):
            atomic_write(self.paths.exit, self.exit.model_dump_json())
        self._exited.set()
        if self._events_task is not None:
            self._events_task.cancel()
        self._cleanup_task = loop.create_task(self._after_exit())

    async def _after_exit(self) -> None:
        if self.qmp is not None:
            await self.qmp.close()
        if self.cgroup is not None:
            await asyncio.to_thread(self.cgroup.remove)
        for p in (self.paths.pidfile, self.paths.qmp, self.paths.qmp_debug, self.paths.console):
            p.unlink(missing_ok=True)
        if self.on_exit is not None and self.exit is not None:
            res = self.on_exit(self.id, self.exit)
            if asyncio.iscoroutine(res):
                await res

    @property
    def adopted(self) -> bool:
        """Found running by an agent after a restart (``adopt``), not launched (and so not
        reaped) by this one."""
        return self._popen is None

    @property
    def running(self) -> bool:
        return not self._exited.is_set()

    async def wait(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._exited.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def status(self) -> str:
        if not self.running:
            return "exited"
        if self.qmp is None:
            return "unknown"
        try:
            return await self.qmp.status()
        except QmpUnavailable:
            return "unknown"

    # -- stop and reboot -------------------------------------------------------------------
    async def stop(self, timeout: float, force: bool = False) -> ExitInfo:
        """Ask the guest to power off (ACPI); after ``timeout`` (or at once with ``force``),
        QMP quit, then SIGTERM, then SIGKILL. Always returns once QEMU is gone."""
        self._requested = True
        if self.running and not force and self.qmp is not None:
            try:
                # a guest that is still booting misses the button: press it again now and then
                loop = asyncio.get_running_loop()
                deadline = loop.time() + timeout
                while self.running and loop.time() < deadline:
                    await self.qmp.powerdown()
                    await self.wait(min(POWERDOWN_REPEAT, max(deadline - loop.time(), 0)))
            except QmpUnavailable as err:
                log.info("%s: ACPI power-down failed (%s); forcing", self.id, err)
        if self.running and self.qmp is not None:
            await self._quit_quietly()
            await self.wait(5)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self.running:
                break
            if self.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, sig)
            await self.wait(5)
        if self.running:
            raise CorralError(f"QEMU pid {self.pid} of {self.id} did not exit after SIGKILL")
        assert self.exit is not None
        return self.exit

    async def reboot(self, timeout: float) -> str:
        """Ctrl-Alt-Del to the guest; if it has not reset within ``timeout``, a hard reset."""
        if self.qmp is None or not self.running:
            raise CorralError(f"{self.id} is not running")
        self._reset.clear()
        await self.qmp.ctrl_alt_del()
        try:
            await asyncio.wait_for(self._reset.wait(), timeout)
            return "guest"
        except TimeoutError:
            await self.qmp.reset()
            return "reset"

    async def detach(self) -> None:
        """Let go of QEMU without stopping it (agent shutdown)."""
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._events_task is not None:
            self._events_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._events_task
        if self.qmp is not None:
            await self.qmp.close()


def _spawn(
    argv: list[str], namespace: str, cgroup: cgroups.Group | None, logfile: Path
) -> subprocess.Popen[bytes]:
    """Start QEMU in ``namespace`` and ``cgroup``, in a session of its own (blocking)."""
    enter = netns.preexec(namespace)
    cg_fds = cgroup.preexec() if cgroup is not None else []

    def preexec() -> None:
        cgroups.join(cg_fds)
        enter()

    try:
        with open(logfile, "ab") as out:
            return subprocess.Popen(
                argv,
                preexec_fn=preexec,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
    except FileNotFoundError as err:
        raise EnvironmentProblem(f"{argv[0]} is not installed; run scripts/setup") from err
    finally:
        os.close(enter.fd)  # type: ignore[attr-defined]
        for fd in cg_fds:
            os.close(fd)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "no output"
    return " / ".join(text[-lines:]) or "no output"
