"""``corral node evacuate NODE``: the node cordoned, then each of its stopped instances moved
cold to another node (``corral node drain`` moves the running ones live).

The request plans every move in one transaction: each destination is the scheduler's pick
(``Migrations._choose``: room, architecture, zone, spread groups, the address free there) with
the claims of the moves already planned counted, so the instances spread; each move is then
one ``instance-evacuate`` operation. A dry run plans the same and rolls the claims back.

The cold move of one instance (the nodes' half is ``corral.node.evacuate_agent``): the image
pulled to the destination; the destination serves empty disks over NBD; the source copies the
root overlay's own clusters (the base image is on both) and every volume into them and compares
each copy with its original; the destination takes the copies as the instance's disks; then, in
one transaction, the record moves (node, network, address kept, claim, volumes, generation) and
the source's files are removed last. Until the record moves, any failure removes the
destination's copy, gives its claim back and leaves the instance stopped on its source. A
controller restart before the record moved starts the copy again from the beginning (the
destination's ``evacuate_receive`` starts anew); after it, it finishes the source's clean-up."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select

from corral.controller import scheduler
from corral.controller.accounts import Caller
from corral.controller.migrations import _address, disk_sizes, move_op, network_on, unclaim
from corral.errors import CorralError, Forbidden, Invalid, NoResources, NotFound, WrongState
from corral.node.spec import InstanceSpec, MirrorDisk
from corral.store.models import Instance, Node, Operation

if TYPE_CHECKING:
    from corral.controller.service import Controller

log = logging.getLogger(__name__)

OP = "instance-evacuate"
FAILED = "evacuate-failed"


class _DryRun(Exception):
    """Rolls back the planning transaction of a dry run (its claims)."""


class Evacuations:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        ctrl.ops.register(OP, self._evacuate)

    # -- the request -----------------------------------------------------------------------
    async def evacuate(
        self, caller: Caller, node_ref: str, to: str | None = None, dry_run: bool = False
    ) -> dict[str, Any]:
        """Cordon the node (not in a dry run) and move each stopped instance of it cold to
        another node; running instances and what cannot move are listed with the reason."""
        if not caller.admin:
            raise Forbidden("only an admin account may evacuate a node")
        result: dict[str, Any] = {}
        ops: list[Operation] = []
        try:
            async with self.ctrl.store.write() as s:
                node = await s.scalar(
                    select(Node).where(or_(Node.name == node_ref, Node.id == node_ref))
                )
                if node is None:
                    raise NotFound(
                        f"node {node_ref} does not exist; `corral node ls`", field="node"
                    )
                if to is not None:
                    there = await s.scalar(select(Node).where(or_(Node.name == to, Node.id == to)))
                    if there is None:
                        raise NotFound(f"node {to} does not exist; `corral node ls`", field="to")
                    if there.id == node.id:
                        raise Invalid(
                            f"--to names the node being evacuated ({to}); name another node",
                            field="to",
                        )
                if not dry_run:
                    node.cordoned = True
                result = await self._plan(s, caller, node, to, dry_run, ops)
                if dry_run:
                    raise _DryRun()
        except _DryRun:
            pass
        for op in ops:
            self.ctrl.ops.start(op)
        return result

    async def _plan(
        self,
        s: Any,
        caller: Caller,
        node: Node,
        to: str | None,
        dry_run: bool,
        ops: list[Operation],
    ) -> dict[str, Any]:
        rows = list(
            await s.scalars(
                select(Instance)
                .where(Instance.node_id == node.id, Instance.state != "terminated")
                .order_by(Instance.memory.desc(), Instance.name)
            )
        )
        policy = scheduler.Policy.from_settings(self.ctrl.settings)
        moves: list[dict[str, Any]] = []
        stays: dict[str, str] = {}
        for inst in rows:
            why = await self._why_not(inst)
            if why:
                stays[inst.name] = why
                continue
            try:
                req = dataclasses.replace(
                    await self.ctrl.migrations._needs(s, inst), zone=node.zone or None
                )
                target = await self._choose(s, inst, req, node, to)
                got = await scheduler.claim(s, target, req, policy)
                if got is None:
                    raise NoResources(f"node {target.name} has no room for {inst.name} any more")
            except CorralError as err:
                stays[inst.name] = err.message
                continue
            move: dict[str, Any] = {
                "instance": inst.name,
                "id": inst.id,
                "to": target.name,
                "operation": None,
            }
            if not dry_run:
                op = move_op(self.ctrl, s, OP, inst, got, node.id, caller.access_key_id)
                ops.append(op)
                move["operation"] = op.id
            moves.append(move)
        return {
            "node": node.name,
            "cordoned": not dry_run or bool(node.cordoned),
            "dry_run": dry_run,
            "moves": moves,
            "not_moved": stays,
        }

    async def _choose(
        self, s: Any, inst: Instance, req: scheduler.Request, node: Node, to: str | None
    ) -> scheduler.NodeView:
        """The destination: ``to`` when given, else the scheduler's pick among the other
        connected nodes of the node's zone (an instance keeps its zone, as in EC2), passing
        the scheduler's filters, where no other instance holds its address."""
        views = await scheduler.nodes(s)
        if to is not None:
            others = [v for v in views if to in (v.name, v.id)]
            if others and others[0].id not in self.ctrl.nodes:
                raise WrongState(f"node {to} is not connected to this controller", field="to")
        else:
            others = [v for v in views if v.id != node.id and v.id in self.ctrl.nodes]
        taken = await self.ctrl.migrations._address_taken_on(s, inst)
        clash = [v for v in others if v.id in taken]
        others = [v for v in others if v.id not in taken]
        policy = scheduler.Policy.from_settings(self.ctrl.settings)
        ctx = await scheduler.Context.load(s, req)
        ok, failed = scheduler.sift(others, req, policy, ctx)
        if not ok:
            why = scheduler.explain(len(others), failed, req, policy) if others else "no other node"
            if clash:
                why += f"; {len(clash)} more give its address {inst.private_ip} to another instance"
            raise NoResources(
                f"no other node can take {inst.name} ({why}); add a node or free one"
                if to is None
                else f"node {to} cannot take {inst.name} ({why})",
                resource="node",
            )
        return scheduler.rank(ok, req, policy, ctx)[0]

    async def _why_not(self, inst: Instance) -> str:
        """Why ``inst`` cannot move cold now ("" when it can)."""
        if inst.state == "running" or inst.desired_state == "running":
            return f"{inst.state}: running instances move live with `corral node drain`, not cold"
        if inst.state != "stopped":
            return f"{inst.state}: only a stopped instance moves cold (wait until it is stopped)"
        if inst.ha:
            return (
                "highly available: its replica would have to move with it (not built); "
                "turn HA off first"
            )
        if await self.ctrl.ops.active_for(inst.id):
            return "an operation is under way on it; wait for it (`corral op ls`)"
        return ""

    # -- the operation ---------------------------------------------------------------------
    async def _evacuate(self, ctx: Any) -> dict[str, Any]:
        iid = ctx.target_id
        async with self.ctrl.instances.lock(iid):
            async with self.ctrl.store.read() as s:
                inst = await s.get(Instance, iid)
            if inst is None:
                await self._unclaim(ctx)
                raise NotFound(f"instance {iid} is gone", resource="instance")
            phase = ctx.params.get("phase", "requested")
            if phase == "moved" or inst.node_id == ctx.params["to"]:
                return await self._cleanup(ctx, inst)
            if phase == "rolled-back":  # undone before a restart: only the failure is left
                await self._unclaim(ctx)
                raise CorralError(
                    f"the cold move of {inst.name} was undone; it stays stopped on its node",
                    reason=FAILED,
                )
            dst_spec: InstanceSpec | None = None
            held = None
            try:
                # a VPC subnet's network at the destination (its tap goes there), held there
                # while the copy lasts (networks.py)
                held = await self.ctrl.networks.hold_arrival(inst.id, ctx.params["to"])
                async with self.ctrl.store.read() as s:
                    src_spec = await self.ctrl.instances.spec(s, inst)
                    dst_net = await network_on(s, inst, ctx.params["to"], "; evacuate with --to")
                    sizes = await disk_sizes(s, src_spec)
                    src_node = await s.get(Node, ctx.params["from"])
                    dst_node = await s.get(Node, ctx.params["to"])
                dst_spec = src_spec.model_copy(update={"network": self.ctrl.networks.spec(dst_net)})
                if inst.state != "stopped" or inst.desired_state != "stopped":
                    raise WrongState(
                        f"it is {inst.state} (asked to be {inst.desired_state}): only a stopped "
                        "instance moves cold",
                        resource="instance",
                    )
                if phase != "requested":
                    await ctx.progress(0.0, f"resumed after a restart at {phase}: copying anew")
                await self._copy(ctx, src_spec, dst_spec, sizes, src_node, dst_node)
            except BaseException as err:
                await asyncio.shield(self._rollback(ctx, dst_spec))
                await asyncio.shield(self.ctrl.networks.release_arrival(held))
                if isinstance(err, CorralError):
                    raise CorralError(
                        f"the cold move of {inst.name} failed and was undone; it stays where "
                        f"it was, stopped: {err.message}",
                        reason=FAILED,
                    ) from err
                raise
            try:
                await self._record(ctx, inst, dst_net.id)
            finally:
                await self.ctrl.networks.release_arrival(held)
            return await self._cleanup(ctx, inst)

    async def _copy(
        self,
        ctx: Any,
        src_spec: InstanceSpec,
        dst_spec: InstanceSpec,
        sizes: dict[str, int],
        src_node: Node | None,
        dst_node: Node | None,
    ) -> None:
        """The image, then the disks copied and checked, then taken by the destination."""
        iid, to = src_spec.id, ctx.params["to"]
        src, dst = self.ctrl.node(ctx.params["from"]), self.ctrl.node(to)
        src_address, dst_address = _address(src_node), _address(dst_node)
        await ctx.checkpoint(phase="copying")
        await ctx.progress(0.02, "copying: the image to the destination")
        await self.ctrl.image_push.ensure(to, dst_spec.image)
        await ctx.progress(0.1, "copying: the destination makes empty disks")
        served = await dst.evacuate_receive(dst_spec, sizes, dst_address, src_address)
        disks = [
            MirrorDisk(
                node=name,
                export=export,
                sync="top" if name == "root" and src_spec.root_volume is None else "full",
            )
            for name, export in served.exports.items()
        ]
        for i, disk in enumerate(disks):
            await ctx.progress(
                0.1 + 0.8 * i / len(disks),
                f"copying: disk {disk.node} ({i + 1} of {len(disks)}"
                f"{', the overlay only' if disk.sync == 'top' else ''})",
            )
            await src.evacuate_send(iid, served.address, served.port, [disk])
        await ctx.checkpoint(phase="verified")
        await ctx.progress(0.9, "verified: every copy matches its original")
        await dst.evacuate_accept(dst_spec)

    async def _rollback(self, ctx: Any, dst_spec: InstanceSpec | None) -> None:
        """The destination's copy removed, its claim given back; the instance stays put."""
        if dst_spec is not None and ctx.params.get("phase") not in ("requested", "rolled-back"):
            vols = [v.id for v in dst_spec.volumes]
            if dst_spec.root_volume:
                vols.append(dst_spec.root_volume)
            try:
                await self.ctrl.node(ctx.params["to"]).evacuate_abort(
                    dst_spec.id, dst_spec.tap, vols
                )
            except CorralError as err:  # a node away: its stray copy is reported, not started
                log.warning("%s: the destination's copy stays (%s)", dst_spec.id, err.message)
        await self._unclaim(ctx)
        await ctx.checkpoint(phase="rolled-back")

    async def _record(self, ctx: Any, inst: Instance, dst_net: str) -> None:
        """The copies are the destination's: node, network, address, claim, volumes and
        generation move in one transaction."""
        from corral.controller.failover import move_record

        async with self.ctrl.store.write() as s:
            row = await s.get(Instance, inst.id)
            if row is None:
                return
            await move_record(s, row, ctx.params["to"], dst_net, ctx.params["claim"])
            await ctx.checkpoint(s, phase="moved")
        await self.ctrl.networks.sync(inst.network_id)
        await self.ctrl.networks.sync(dst_net)

    async def _cleanup(self, ctx: Any, inst: Instance) -> dict[str, Any]:
        async with self.ctrl.store.read() as s:
            row = await s.get(Instance, inst.id)
            assert row is not None
            spec = await self.ctrl.instances.spec(s, row)
        vols = [v.id for v in spec.volumes] + ([spec.root_volume] if spec.root_volume else [])
        await ctx.progress(0.95, "moved: removing the source's copy")
        await self.ctrl.node(ctx.params["from"]).migrate_cleanup(inst.id, spec.tap, vols)
        await ctx.checkpoint(phase="done")
        return {"instance_id": inst.id, "node": ctx.params["to"], "from": ctx.params["from"]}

    async def _unclaim(self, ctx: Any) -> None:
        await unclaim(self.ctrl, ctx)
