"""High availability, the controller's half: an HA instance's disks replicated to its secondary
node (``corral.node.replica_agent`` does the nodes' part), and its restart there when its
primary's node dies (``fail_over_node``).

Replication is driven by the reconciler (``reconcile``): for each running HA instance on a
reachable node the primary reports its replica's state (syncing with %, in-sync, degraded),
which the store keeps for the API; a degraded replica is set up again, on the same secondary
when it answers, else on a new one the scheduler picks (never the primary's node, another
zone when one exists). A resync copies the disks whole (QEMU 7.2 has no incremental mirror).

Failover (``fail_over_node``) is one resumable operation per HA instance of the dead node: the
secondary starts the instance from its replica (same name, MAC, address, security groups,
elastic IP, volumes: the record carries them), and only once its QEMU runs does the record
(node, network, claim, volumes) move, in one transaction; the next reconcile pass gives it a
new secondary. Who calls it is a seam: here the heartbeat's "node unreachable"
(``controller.cluster``); with leases, their expiry plus a margin."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from corral.controller import scheduler
from corral.controller.failover import move_record
from corral.controller.migrations import _address, disk_sizes, network_on
from corral.errors import CorralError, NoResources, NotFound, WrongState
from corral.node.spec import (
    REPLICA_DEGRADED,
    REPLICA_SYNCING,
    InstanceSpec,
    MirrorDisk,
    ReplicaServed,
    ReplicaStatus,
)
from corral.store.models import Image, Instance, Node, Operation

if TYPE_CHECKING:
    from corral.controller.service import Controller

log = logging.getLogger(__name__)

OP = "instance-failover"


def mirror_disks(spec: InstanceSpec, served: ReplicaServed) -> list[MirrorDisk]:
    """What the primary mirrors into the secondary's exports: the root overlay only its top
    (the base image is on both nodes), volumes whole."""
    return [
        MirrorDisk(
            node=node,
            export=export,
            sync="top" if node == "root" and spec.root_volume is None else "full",
        )
        for node, export in served.exports.items()
    ]


class Replicas:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        ctrl.ops.register(OP, self._failover)

    # -- replication (the reconciler's pass) ------------------------------------------------
    async def reconcile(self) -> None:
        """Read every running HA instance's replica state from its primary; set up the
        replicas that are degraded."""
        async with self.ctrl.store.read() as s:
            rows = list(
                await s.scalars(
                    select(Instance).where(
                        Instance.ha.is_(True),
                        Instance.state == "running",
                        Instance.desired_state == "running",
                    )
                )
            )
        busy = await self.ctrl.ops.active_targets([r.id for r in rows])
        for inst in rows:
            if inst.id in busy or inst.node_id not in self.ctrl.nodes:
                continue
            if not self.ctrl.cluster.reachable(inst.node_id):
                continue
            try:
                await self.replicate(inst)
            except CorralError as err:
                log.warning("replica of %s: %s", inst.name, err.message)
                await self._record(inst.id, REPLICA_DEGRADED, 0.0, err.message)

    async def replicate(self, inst: Instance) -> ReplicaStatus:
        """One instance: its replica's state, and replication started where it is degraded."""
        assert inst.node_id is not None
        primary = self.ctrl.node(inst.node_id)
        st = await primary.replica_status(inst.id)
        await self._record(inst.id, st.state, st.percent, st.reason)  # degraded shows too
        if st.state != REPLICA_DEGRADED:
            return st
        await primary.replica_stop(inst.id)  # a broken mirror's leftovers
        secondary = await self._secondary(inst)
        # a VPC subnet's network on the secondary (the replica's QEMU starts there on a
        # failover), held while this sets it up; kept afterwards as the secondary's (networks.py)
        held = await self.ctrl.networks.hold_arrival(inst.id, secondary)
        try:
            return await self._replicate_to(inst, secondary, primary)
        finally:
            await self.ctrl.networks.release_arrival(held)

    async def _replicate_to(self, inst: Instance, secondary: str, primary: Any) -> ReplicaStatus:
        async with self.ctrl.store.read() as s:
            spec = await self.ctrl.instances.spec(s, inst)
            sizes = await disk_sizes(s, spec)
            dst_net = await network_on(s, inst, secondary)
            src_node = await s.get(Node, inst.node_id)
            dst_node = await s.get(Node, secondary)
        sec_spec = spec.model_copy(update={"network": self.ctrl.networks.spec(dst_net)})
        await self.ctrl.image_push.ensure(secondary, spec.image)
        node = self.ctrl.node(secondary)
        served = await node.replica_serve(sec_spec, sizes, _address(dst_node), _address(src_node))
        st = await primary.replica_mirror(
            inst.id, served.address, served.port, mirror_disks(spec, served)
        )
        if st.state == REPLICA_DEGRADED:
            st = st.model_copy(update={"state": REPLICA_SYNCING})
        await self._record(inst.id, st.state, st.percent, st.reason, secondary=secondary)
        log.info("%s: replicating to %s (%s)", inst.name, secondary, st.state)
        return st

    async def _secondary(self, inst: Instance) -> str:
        """The stored secondary while it is connected and reachable; else a new one."""
        sec = inst.secondary_node_id
        if sec and sec in self.ctrl.nodes and self.ctrl.cluster.reachable(sec):
            return sec
        assert inst.node_id is not None
        avoid = [n for n in self.ctrl.cluster.unreachable] + ([sec] if sec else [])
        async with self.ctrl.store.read() as s:
            image = await s.get(Image, inst.image_id)
            req = scheduler.Request(
                memory=inst.memory,
                cores=inst.cpu_limit or float(inst.cpus),
                disk=inst.disk_size,
                arch=image.arch if image is not None else "x86_64",
            )
            views = await scheduler.nodes(s)
            avoid += [v.id for v in views if v.id not in self.ctrl.nodes]
            view = await scheduler.secondary(
                s,
                req,
                inst.node_id,
                scheduler.Policy.from_settings(self.ctrl.settings),
                avoid,
            )
        if sec and sec != view.id:
            try:
                await self.ctrl.node(sec).replica_drop(inst.id)
            except CorralError:
                pass  # it is away; its stale replica goes when it returns
        return view.id

    async def _record(
        self,
        iid: str,
        state: str,
        percent: float,
        detail: str,
        secondary: str | None = None,
    ) -> None:
        async with self.ctrl.store.write() as s:
            row = await s.get(Instance, iid)
            if row is None:
                return
            row.replica_state, row.replica_percent, row.replica_detail = state, percent, detail
            if secondary is not None:
                row.secondary_node_id = secondary

    # -- failover ---------------------------------------------------------------------------
    async def fail_over_node(self, node_id: str) -> list[Operation]:
        """Start every HA instance whose primary is ``node_id`` (dead) on its secondary, one
        resumable operation each; instances with an operation under way are skipped (that
        operation's resume decides). Returns the operations started."""
        async with self.ctrl.store.read() as s:
            rows = list(
                await s.scalars(
                    select(Instance).where(
                        Instance.node_id == node_id,
                        Instance.ha.is_(True),
                        Instance.secondary_node_id.is_not(None),
                        Instance.state != "terminated",
                        Instance.desired_state == "running",
                    )
                )
            )
        busy = await self.ctrl.ops.active_targets([r.id for r in rows])
        ops = []
        async with self.ctrl.store.write() as s:
            for inst in rows:
                if inst.id in busy:
                    continue
                op = self.ctrl.ops.new(
                    OP,
                    account_id=inst.account_id,
                    target_kind="instance",
                    target_id=inst.id,
                    params={"from": node_id, "to": inst.secondary_node_id, "phase": "requested"},
                    requested_by="controller",
                )
                s.add(op)
                ops.append(op)
        for op in ops:
            log.warning(
                "node %s is dead: failing %s over to %s", node_id, op.target_id, op.params["to"]
            )
            self.ctrl.ops.start(op)
        return ops

    async def _failover(self, ctx: Any) -> dict[str, Any]:
        iid = ctx.target_id
        src, dst = ctx.params["from"], ctx.params["to"]
        async with self.ctrl.instances.lock(iid):
            async with self.ctrl.store.read() as s:
                inst = await s.get(Instance, iid)
                if inst is None or inst.state == "terminated":
                    raise NotFound(f"instance {iid} is gone", resource="instance")
                if inst.node_id == dst:  # resumed after the record moved
                    return {"instance_id": iid, "node": dst, "from": src}
                if inst.node_id != src:
                    raise WrongState(
                        f"instance {inst.name} is on {inst.node_id} now, not on the dead node "
                        f"{src}: not failed over",
                        resource="instance",
                    )
                spec = await self.ctrl.instances.spec(s, inst)
                dst_net = await network_on(s, inst, dst)
                image = await s.get(Image, inst.image_id)
            if "claim" not in ctx.params:
                await self._claim(ctx, inst, image.arch if image is not None else "x86_64")
            await ctx.checkpoint(phase="starting")
            await ctx.progress(0.3, f"starting {inst.name} on {dst} from its replica")
            dst_spec = spec.model_copy(update={"network": self.ctrl.networks.spec(dst_net)})
            pid = await self.ctrl.node(dst).replica_promote(dst_spec)
            await self._move(ctx, inst, dst_net.id, pid)
        await self.ctrl.networks.sync(dst_net.id)
        if self.ctrl.cluster.reachable(src):  # a dead node's network gets it when it returns
            try:
                await self.ctrl.networks.sync(inst.network_id)
            except CorralError as err:
                log.warning("%s: the old node's network: %s", inst.name, err.message)
        self.ctrl.reconciler.poke()  # a new secondary, and the replica resynced
        return {"instance_id": iid, "node": dst, "from": src, "pid": pid}

    async def _claim(self, ctx: Any, inst: Instance, arch: str) -> None:
        """Room on the secondary, claimed in the transaction that records it on the operation
        (the replica's node was checked to fit when chosen; it may have filled since)."""
        dst = ctx.params["to"]
        async with self.ctrl.store.write() as s:
            views = {v.id: v for v in await scheduler.nodes(s)}
            view = views.get(dst)
            if view is None:
                raise NotFound(f"the secondary node {dst} is gone", resource="node")
            req = scheduler.Request(
                memory=inst.memory,
                cores=inst.cpu_limit or float(inst.cpus),
                disk=inst.disk_size,
                arch=arch,
            )
            got = await scheduler.claim(
                s, view, req, scheduler.Policy.from_settings(self.ctrl.settings)
            )
            if got is None:
                raise NoResources(
                    f"the secondary node {view.name} has no room left to run {inst.name}",
                    resource="node",
                )
            await ctx.checkpoint(s, claim=[got.memory, got.cores, got.disk])

    async def _move(self, ctx: Any, inst: Instance, dst_net: str, pid: int) -> None:
        """The secondary runs it: node, network, address, claim and volumes move at once."""
        dst = ctx.params["to"]
        async with self.ctrl.store.write() as s:
            row = await s.get(Instance, inst.id)
            if row is None:
                return
            # the dead node's copy is stale from here: never started again
            await move_record(s, row, dst, dst_net, ctx.params["claim"])
            row.pid = pid
            row.state, row.state_reason = "running", f"failed over from {ctx.params['from']}"
            row.secondary_node_id = None  # the reconciler picks a new one
            row.replica_state, row.replica_percent = REPLICA_DEGRADED, 0.0
            row.replica_detail = f"failed over from {ctx.params['from']}; resyncing"
            await ctx.checkpoint(s, phase="moved")
