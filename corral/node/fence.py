"""Self-fencing on the node (issue 16): the node's lease as the agent sees it, the decision to
kill the node's HA instances when the lease is lost and the node is cut off, and the file the
guard process (``corral.node.guard``) reads, so the HA QEMUs die also when the agent hangs.

The lease. The controller numbers its heartbeats (``seq`` within its ``session``) and tells
each node, in the next heartbeat, the newest one whose renewal the database has recorded
(``confirmed``). The agent notes on its own monotonic clock when each heartbeat reached it; a
confirmed heartbeat that reached it at ``t`` lets it count on its lease until ``t +
fence_after``. The database records a renewal only after the agent answered it, so the
controller's expiry (``recorded + lease_timeout``) is never before ``t + lease_timeout``, and
``fence_after`` is shorter than ``lease_timeout``: the node gives up before the controller's
view of the lease can lapse, and the controller waits a further safety margin on top.

The decision. When the lease has lapsed the agent says hello to its peers: one line to each
peer agent's liveness port (its agent port + 1), which the peer answers from its own event loop
and records ("heard from X, now"), but only for a name its own lease lists as a peer (the
controller's name for X). Only that answer counts: a refusal (the host is up, its agent is
not), a connection the kernel accepts for a hung agent, or a name the peer does not know, are
no answer. Any answer: the node is not cut off, the controller itself is down or cannot reach
the database, and nothing is fenced. No answer from any peer: the node is isolated, the
controller will restart its HA instances elsewhere, and the agent kills them now. A node with
no peers (a cluster of one) never fences: there is nowhere to fail over to.

Why the peers record it. The controller declares a node dead only when no peer has *heard*
from it for ``HEARD_WITHIN`` seconds (``peer_heard``). Each answered hello is what lets a node
keep its HA QEMUs (its guard's deadline moves ``HANG_AFTER`` past it), so a node that has not
been heard from for longer than that has either fenced itself (isolated) or stopped moving its
guard (a hung agent: the guard has killed them). The controller sees exactly the evidence the
node acts on; a hung agent, whose listening socket still takes TCP connections, is not counted
as alive (it used to be: its HA instances were killed by its guard and never restarted).

The guard. The agent writes the guard's deadline and the HA QEMUs' pids (with their start
times, against pid reuse) to ``<state>/fence/guard.json`` about every 250 ms; the guard kills
them when the deadline passes, whatever the agent is doing. The deadline is the fence deadline
plus the time the peer probe needs while the lease is valid, and a couple of seconds ahead while
the controller is down (the agent is still deciding); a hung or dead agent stops moving it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from corral.errors import EnvironmentProblem, WrongState
from corral.fsutil import atomic_write
from corral.node.spec import HANG_AFTER, PROBE_SLACK, PROBE_TIMEOUT

log = logging.getLogger(__name__)

TICK = 0.25  # seconds between the agent's looks at its lease
LIVENESS_OFFSET = 1  # a joined agent's liveness port: its agent port + 1
HELLO = b"corral-alive "
KEEP = 64  # heartbeats remembered (their arrival times)


def check_generation(iid: str, held: int, asked: int) -> None:
    """Refuse a command for an older generation than the one this node holds (the instance
    moved or failed over since the controller that sent it read it)."""
    if asked and held and asked < held:
        raise WrongState(
            f"instance {iid}: stale command (generation {asked}; this node holds generation "
            f"{held}): the instance moved or failed over since; re-read it and ask again",
            resource="instance",
            reason="stale-generation",
        )


def start_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def liveness_address(agent: str) -> tuple[str, int]:
    """A peer agent's ``IP:PORT`` -> where its liveness listener is."""
    host, _, port = agent.rpartition(":")
    return host.strip("[]"), int(port) + LIVENESS_OFFSET


async def hello(address: str, me: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Say hello as ``me`` to the peer agent at ``address`` (``IP:PORT``): True only when the
    peer's own loop answered that it heard us (and knows ``me`` as a peer)."""
    try:
        host, port = liveness_address(address)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError, ValueError):
        return False
    try:
        writer.write(HELLO + me.encode() + b"\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.readline(), timeout)
        return answer.strip() == b"heard"
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@dataclass
class Lease:
    """The lease as this node knows it (monotonic seconds, shared by every process here)."""

    # (controller session, seq) -> when it reached us; each controller numbers its own
    # heartbeats (two may renew at once while one takes over from the other)
    arrived: dict[tuple[str, int], float] = field(default_factory=dict)
    deadline: float | None = None  # fence after this, unless a peer answers
    fence_after: float = 0.0
    peers: list[str] = field(default_factory=list)

    def heard(self, session: str, seq: int, confirmed: int, fence_after: float, now: float) -> None:
        self.arrived[(session, seq)] = now
        if len(self.arrived) > KEEP:
            for old in sorted(self.arrived, key=self.arrived.__getitem__)[:-KEEP]:
                del self.arrived[old]
        self.fence_after = fence_after
        at = self.arrived.get((session, confirmed))
        if fence_after > 0 and at is not None:
            self.deadline = max(self.deadline or 0.0, at + fence_after)

    def lapsed(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


class Fence:
    """The agent's side: lease, decision, guard file. ``ha_pids`` lists the HA QEMUs running
    (instance id -> pid); ``kill`` stops one instance's QEMU (SIGKILL) for the agent."""

    def __init__(
        self,
        state_dir: Path,
        ha_pids: Callable[[], dict[str, int]],
        kill: Callable[[str], object],
        probe: Callable[[str], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dir = state_dir / "fence"
        self.ha_pids = ha_pids
        self.kill = kill
        self.probe = probe or (lambda address: hello(address, self.me))
        self.clock = clock
        self.me = ""  # this agent's IP:PORT as the controller names it (a joined node)
        self.heard: dict[str, float] = {}  # peer (IP:PORT) -> when it last said hello here
        self._liveness: asyncio.Server | None = None
        self.lease = self._load()
        self.fenced: list[str] = []  # instances this node killed (newest fence)
        self.isolated = False
        self._task: asyncio.Task[None] | None = None
        self._guard: subprocess.Popen[bytes] | None = None
        self._watchdog = ""

    @property
    def guard_file(self) -> Path:
        return self.dir / "guard.json"

    @property
    def lease_file(self) -> Path:
        return self.dir / "lease.json"

    def _load(self) -> Lease:
        """A restarted agent keeps the deadline its predecessor had (monotonic time is the
        host's, so it holds across processes; not across a reboot, which kills the QEMUs)."""
        try:
            data = json.loads(self.lease_file.read_text())
            boot = float(data.get("boot", -1))
            if abs(boot - _boot_time()) > 2:
                return Lease()
            return Lease(
                deadline=data.get("deadline"),
                fence_after=float(data.get("fence_after", 0)),
                peers=list(data.get("peers", [])),
            )
        except (OSError, ValueError, TypeError):
            return Lease()

    # -- the controller's heartbeat --------------------------------------------------------
    def heartbeat(
        self, session: str, seq: int, confirmed: int, fence_after: float, peers: list[str]
    ) -> None:
        before = self.lease.deadline
        self.lease.heard(session, seq, confirmed, fence_after, self.clock())
        self.lease.peers = list(peers)
        if fence_after > 0 and self._guard is None and self._task is not None:
            self._guard = start_guard(self.dir, self._watchdog)  # a joined node: guard it
        if self.lease.deadline != before:
            self.isolated = False
            self._save()

    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(
            self.lease_file,
            json.dumps(
                {
                    "deadline": self.lease.deadline,
                    "fence_after": self.lease.fence_after,
                    "peers": self.lease.peers,
                    "boot": _boot_time(),
                }
            ),
        )

    def valid(self) -> bool:
        """Whether this node may start HA work: its lease holds (or fencing is off here)."""
        return self.lease.deadline is None or not self.lease.lapsed(self.clock())

    # -- hellos from peers ------------------------------------------------------------------
    async def listen(self, me: str) -> None:
        """Answer the peers' hellos on this agent's liveness port (``me`` is its ``IP:PORT``)."""
        self.me = me
        host, port = liveness_address(me)
        try:
            self._liveness = await asyncio.start_server(self._answer, host, port)
        except OSError as err:
            raise EnvironmentProblem(
                f"cannot listen for peers' hellos on {host}:{port} ({err.strerror}): a joined "
                f"agent uses its own port + 1 for them; free port {port} or choose another "
                "--listen",
            ) from err

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), PROBE_TIMEOUT)
            name = line.removeprefix(HELLO).strip().decode(errors="replace")
            known = line.startswith(HELLO) and name in self.lease.peers
            if known:
                self.heard[name] = self.clock()
            writer.write(b"heard\n" if known else b"unknown\n")
            await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    def heard_ago(self, address: str) -> float | None:
        """Seconds since the peer at ``address`` last said hello here (None: never)."""
        at = self.heard.get(address)
        return None if at is None else max(self.clock() - at, 0.0)

    # -- the loop --------------------------------------------------------------------------
    async def check_once(self) -> None:
        now = self.clock()
        lease = self.lease
        if lease.deadline is None:  # no lease yet (or fencing off): nothing to keep
            self._write_guard(None)
            return
        if not lease.lapsed(now):
            self._write_guard(lease.deadline + PROBE_SLACK)
            return
        if not lease.peers:
            self._write_guard(None)  # a cluster of one: nowhere to fail over to
            return
        self._write_guard(now + PROBE_SLACK)  # the probe below takes at most PROBE_TIMEOUT
        answers = await asyncio.gather(*(self._probe(p) for p in lease.peers))
        if any(answers):
            if self.isolated:
                log.info("fence: peers answer again; the controller is down, not this node")
            self.isolated = False
            self._write_guard(self.clock() + HANG_AFTER)
            return
        if not self.isolated:
            log.warning(
                "fence: lease lost %.1f s ago and no peer answers: this node is cut off; "
                "killing its HA instances before the controller restarts them elsewhere",
                now - lease.deadline,
            )
        self.isolated = True
        self._write_guard(now)  # the guard kills too (and keeps killing) until the lease is back
        for iid in list(self.ha_pids()):
            log.warning("fence: killing HA instance %s", iid)
            self.fenced.append(iid)
            result = self.kill(iid)
            if asyncio.iscoroutine(result):
                await result

    async def _probe(self, address: str) -> bool:
        result = self.probe(address)
        if asyncio.iscoroutine(result):
            result = await result
        return bool(result)

    def _write_guard(self, deadline: float | None) -> None:
        pids = []
        for pid in self.ha_pids().values():
            st = start_time(pid)
            if st is not None:
                pids.append([pid, st])
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(
            self.guard_file,
            json.dumps({"agent": os.getpid(), "deadline": deadline, "pids": pids}),
        )

    async def run(self) -> None:
        while True:
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fence check failed")
            await asyncio.sleep(TICK)

    # -- the guard process -----------------------------------------------------------------
    def start(self, watchdog: str = "") -> None:
        """The decision loop; the guard once a lease says this node is fenced (a joined node;
        the controller's own node, all-in-one, is never fenced and runs no guard)."""
        self._watchdog = watchdog
        self._task = asyncio.create_task(self.run(), name="fence")
        if self.lease.deadline is not None:  # its predecessor held a lease: guard at once
            self._guard = start_guard(self.dir, watchdog)

    async def close(self) -> None:
        if self._liveness is not None:
            self._liveness.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # a clean stop: the guard goes too (it leaves the QEMUs alone)
        self._write_guard(None)
        if self._guard is not None and self._guard.poll() is None:
            self._guard.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self._guard.wait, 10)


def _boot_time() -> float:
    return float(psutil.boot_time())


def start_guard(fence_dir: Path, watchdog: str = "") -> subprocess.Popen[bytes] | None:
    """The guard, in a session of its own (a signal to the agent's group does not reach it).
    One guard per state directory: one still running (its agent died) is stopped first, after
    it has read the file the new agent wrote."""
    fence_dir.mkdir(parents=True, exist_ok=True)
    pidfile = fence_dir / "guard.pid"
    with contextlib.suppress(OSError, ValueError):
        old = int(pidfile.read_text())
        if b"corral.node.guard" in Path(f"/proc/{old}/cmdline").read_bytes():
            os.kill(old, signal.SIGTERM)
    argv = [sys.executable, "-m", "corral.node.guard", str(fence_dir)]
    if watchdog:
        argv += ["--watchdog", watchdog]
    with open(fence_dir / "guard.log", "ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    atomic_write(pidfile, f"{proc.pid}\n")
    return proc
