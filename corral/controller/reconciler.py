"""The reconciler: compares what the store wants with what nodes report and acts until they
agree. Level-triggered and idempotent: it runs every few seconds, at start, and whenever a
node reports an exit; any step may be repeated after a crash.

``decide`` is pure (state in, action out), so the policy is tested without a node."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from sqlalchemy import select

from corral.controller import volume_sync
from corral.errors import CorralError
from corral.node.spec import ObservedInstance
from corral.store.models import Instance, utcnow

if TYPE_CHECKING:
    from corral.controller.service import Controller
    from corral.node.client import NodeClient

log = logging.getLogger(__name__)

BACKOFF_MAX = 300.0
CRASH_WINDOW = 600.0


class Action(StrEnum):
    NONE = "none"
    MARK_RUNNING = "mark-running"
    MARK_STOPPED = "mark-stopped"
    RESTART = "restart"
    START = "start"
    STOP = "stop"
    DESTROY = "destroy"
    TERMINATE = "terminate"  # the guest powered off and its shutdown behaviour says terminate
    WAIT = "wait"  # a restart is due later (crash-loop back-off)


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""


def decide(
    inst: Instance, obs: ObservedInstance | None, *, now: float, next_restart_at: float = 0.0
) -> Decision:
    running = obs is not None and obs.running
    if inst.desired_state == "terminated":
        return Decision(Action.DESTROY, "finishing an interrupted termination")
    if inst.desired_state == "stopped":
        if running:
            return Decision(Action.STOP, "running although it should be stopped")
        if inst.state != "stopped":
            return Decision(Action.MARK_STOPPED, inst.state_reason)
        return Decision(Action.NONE)
    # desired running
    if running:
        assert obs is not None
        if inst.state != "running" or inst.pid != obs.pid:
            return Decision(Action.MARK_RUNNING, f"found running as pid {obs.pid}")
        return Decision(Action.NONE)
    if inst.state in ("pending", "stopped", "stopping"):
        return Decision(Action.START, "resuming an interrupted start")
    exit_reason = obs.exit.reason if obs is not None and obs.exit is not None else "unknown"
    detail = obs.exit.detail if obs is not None and obs.exit is not None else ""
    if exit_reason == "guest-shutdown":
        if inst.shutdown_behavior == "terminate":
            return Decision(
                Action.TERMINATE,
                "Client.InstanceInitiatedShutdown: the guest powered itself off "
                "(shutdown behaviour terminate)",
            )
        if inst.restart_policy == "always":
            return _restart(now, next_restart_at, "the guest powered off (restart policy always)")
        return Decision(
            Action.MARK_STOPPED, "Client.InstanceInitiatedShutdown: the guest powered itself off"
        )
    what = f"QEMU {detail}" if detail else "QEMU exited unexpectedly"
    if exit_reason == "unknown":
        what = "QEMU exited while Corral was not watching"
    if inst.restart_policy == "never":
        return Decision(Action.MARK_STOPPED, f"Server.InternalError: {what} (restart policy never)")
    return _restart(
        now, next_restart_at, f"{what}; restarted (restart policy {inst.restart_policy})"
    )


def _restart(now: float, next_restart_at: float, reason: str) -> Decision:
    if now < next_restart_at:
        return Decision(Action.WAIT, reason)
    return Decision(Action.RESTART, reason)


class Reconciler:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        self._poke = asyncio.Event()
        self._pass_lock = asyncio.Lock()
        self.crashes: dict[str, list[float]] = {}
        self.strays: dict[str, list[str]] = {}  # node id -> descriptions
        self._reported: set[str] = set()
        self.passes = 0

    def poke(self) -> None:
        self._poke.set()

    def next_restart_at(self, iid: str) -> float:
        now = time.monotonic()
        recent = [t for t in self.crashes.get(iid, []) if now - t < CRASH_WINDOW]
        self.crashes[iid] = recent
        if len(recent) <= 1:
            return 0.0
        return recent[-1] + min(2.0 ** (len(recent) - 1), BACKOFF_MAX)

    async def run(self) -> None:
        interval = self.ctrl.settings.reconcile_interval
        while True:
            try:
                await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconcile pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), interval)
            self._poke.clear()

    async def reconcile_once(self) -> None:
        """One pass over every node. Passes never overlap: a pass woken by a node's exit event
        and one run by the tick (or at start) would both count the same crash."""
        async with self._pass_lock:
            self.passes += 1
            for node_id in list(self.ctrl.nodes):
                if not self.ctrl.cluster.reachable(node_id):
                    continue  # its instances are unknown until it answers again
                try:
                    await self._reconcile_node(node_id)
                except CorralError as err:  # one node away must not stop the others' pass
                    log.warning("reconcile node %s: %s", node_id, err.message)
            # subnets spanning nodes: what changed since the last push (controller/overlays.py)
            try:
                await self.ctrl.overlays.sync()
            except CorralError as err:
                log.warning("subnet segments: %s", err.message)
            try:  # HA instances' replicas (controller/replicas.py)
                await self.ctrl.replicas.reconcile()
            except CorralError as err:
                log.warning("reconcile replicas: %s", err.message)
            # network pushes waiting for a node that did not answer: try again now
            self.ctrl.network_pushes.wake()

    async def _reconcile_node(self, node_id: str) -> None:
        node = self.ctrl.node(node_id)
        observed = {o.id: o for o in await node.instances()}
        rows = await self.ctrl.instances.on_node(node_id)
        known = {r.id for r in rows}
        volumes = await volume_sync.attached_on(
            self.ctrl, [r.id for r in rows if r.state == "running"]
        )
        busy = await self.ctrl.ops.active_targets([r.id for r in rows])
        for inst in rows:
            if inst.id in busy or self.ctrl.instances.lock(inst.id).locked():
                continue
            if inst.state == "terminated" and inst.desired_state == "terminated":
                continue
            d = decide(
                inst,
                observed.get(inst.id),
                now=time.monotonic(),
                next_restart_at=self.next_restart_at(inst.id),
            )
            if d.action not in (Action.NONE, Action.WAIT):
                try:
                    await self._apply(inst, d, observed.get(inst.id))
                except CorralError as err:
                    log.warning("reconcile %s (%s): %s", inst.name, d.action, err.message)
            elif d.action == Action.NONE and inst.state == "running":
                held = volumes.get(inst.id, [])
                try:
                    if await volume_sync.in_sync(self.ctrl, inst, held):
                        continue  # nothing to change: no lock taken
                    async with self.ctrl.instances.lock(inst.id):
                        await volume_sync.sync_instance(self.ctrl, inst, held)
                except CorralError as err:
                    log.warning("reconcile %s (volumes): %s", inst.name, err.message)
        await self._stop_stale_copies(node, node_id, observed, known)
        self._report_strays(node_id, observed, known)

    async def _stop_stale_copies(
        self, node: NodeClient, node_id: str, observed: dict[str, ObservedInstance], known: set[str]
    ) -> None:
        """A node back from the dead may still run copies of instances that moved away
        (failed over or migrated while it was cut off; its fence should have killed the HA
        ones): each such copy is killed, never adopted. Its files stay: the replica manager
        resyncs the old disk from the new primary. A copy of an instance with an operation
        under way is left alone: a live migration's destination runs its copy before the
        record moves there (killing it broke the migration at its switch-over)."""
        running = [o for iid, o in observed.items() if o.running and iid not in known]
        if running:
            busy = await self.ctrl.ops.active_targets([o.id for o in running])
            running = [o for o in running if o.id not in busy]
        if not running:
            return
        async with self.ctrl.store.read() as s:
            rows = {
                r.id: r
                for r in await s.scalars(
                    select(Instance).where(Instance.id.in_([o.id for o in running]))
                )
            }
        for obs in running:
            row = rows.get(obs.id)
            if row is None or row.node_id == node_id or row.state == "terminated":
                continue
            log.warning(
                "node %s runs a stale copy of %s (generation %d; the instance is generation "
                "%d on node %s): killing it",
                node_id,
                row.name or row.id,
                obs.generation,
                row.generation,
                row.node_id,
            )
            try:
                await node.instance_stop(obs.id, 0, force=True)
            except CorralError as err:
                log.warning("stopping the stale copy of %s failed: %s", obs.id, err.message)

    async def _apply(self, inst: Instance, d: Decision, obs: ObservedInstance | None) -> None:
        inst_mgr = self.ctrl.instances
        node = self.ctrl.node(inst.node_id)
        async with inst_mgr.lock(inst.id):
            # the row may have changed while earlier instances were handled: decide again
            async with self.ctrl.store.read() as s:
                fresh = await s.get(Instance, inst.id)
            if fresh is None or await self.ctrl.ops.active_for(inst.id):
                return
            if (
                decide(
                    fresh, obs, now=time.monotonic(), next_restart_at=self.next_restart_at(inst.id)
                ).action
                != d.action
            ):
                return
            inst = fresh
            log.info("reconcile %s (%s): %s - %s", inst.name, inst.id, d.action, d.reason)
            if d.action == Action.MARK_RUNNING:
                assert obs is not None
                await inst_mgr._set(
                    inst.id, state="running", pid=obs.pid, started_at=inst.started_at or utcnow()
                )
            elif d.action == Action.MARK_STOPPED:
                await inst_mgr._set(
                    inst.id,
                    state="stopped",
                    desired_state="stopped",
                    pid=None,
                    stopped_at=utcnow(),
                    state_reason=d.reason,
                )
            elif d.action == Action.STOP:
                await node.instance_stop(inst.id, inst_mgr._timeout(inst, None))
                await inst_mgr._set(inst.id, state="stopped", pid=None, stopped_at=utcnow())
            elif d.action in (Action.RESTART, Action.START):
                async with self.ctrl.store.read() as s:
                    spec = await inst_mgr.spec(s, inst)
                if d.action == Action.RESTART:
                    self.crashes.setdefault(inst.id, []).append(time.monotonic())
                try:
                    pid = await node.instance_start(spec)
                except CorralError as err:
                    await inst_mgr._set(inst.id, state_reason=f"restart failed: {err.message}")
                    raise
                values = {"state": "running", "pid": pid, "started_at": utcnow()}
                if d.action == Action.RESTART:
                    values |= {"restarts": inst.restarts + 1, "state_reason": d.reason}
                await inst_mgr._set(inst.id, **values)
            elif d.action in (Action.DESTROY, Action.TERMINATE):
                if d.action == Action.TERMINATE:
                    # intent first: a crash from here on resumes as an interrupted termination
                    await inst_mgr._set(
                        inst.id,
                        desired_state="terminated",
                        state="shutting-down",
                        pid=None,
                        state_reason=d.reason,
                    )
                async with self.ctrl.store.read() as s:
                    spec = await inst_mgr.spec(s, inst)
                await node.instance_stop(inst.id, 0, force=True)
                await node.instance_destroy(inst.id, spec.tap)
                from corral.controller import ipam, placement_claims

                async with self.ctrl.store.write() as s:
                    row = await s.get(Instance, inst.id)
                    if row is not None:
                        row.state = "terminated"
                        row.pid = None
                        row.private_ip = None
                        row.terminated_at = row.terminated_at or utcnow()
                        await ipam.release(s, inst.id)
                        await placement_claims.release(s, row)
                await self.ctrl.instance_released(inst.id)
                await self.ctrl.networks.sync(inst.network_id)

    def _report_strays(
        self, node_id: str, observed: dict[str, ObservedInstance], known: set[str]
    ) -> None:
        found = []
        for iid, obs in observed.items():
            if iid in known:
                continue
            if obs.running:
                what = f"{iid}: QEMU pid {obs.pid} runs but the store has no such instance"
            else:
                what = f"{iid}: files on the node but no such instance in the store"
            found.append(what)
            if what not in self._reported:
                self._reported.add(what)
                log.warning("stray on node %s: %s", node_id, what)
        self.strays[node_id] = found
