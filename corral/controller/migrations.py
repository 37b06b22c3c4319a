"""``corral migrate NAME [--to NODE]``: a running instance moved to another node while it runs,
its disks included (``corral.controller.migration`` drives the nodes).

The request claims room on the destination (chosen by the scheduler among the other nodes when
no ``--to`` is given) in the transaction that records the operation; the record keeps saying the
source until the destination has confirmed it runs the guest, and then, in one transaction, the
instance's node, network, address and claim move together.

Crash safety: the operation records its phase; a resumed one decides by it and by what the
source's QEMU says (``migrate_status``), so a restart at any point ends with exactly one copy:
- before the switch-over (preparing, mirroring, migrating) with the source's memory migration
  not completed: rolled back (the destination's copy removed; the guest runs on at the source),
  and the operation fails saying so;
- the source's migration completed (the source is paused) or the phase is ``switching``: rolled
  forward (mirrors ended, the destination confirms, the record moves); if the destination's
  copy is gone, the source resumes instead;
- ``moved``: the source's leftovers are removed."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select

from corral.controller import migration, scheduler
from corral.controller import rebalance as balancing
from corral.controller.accounts import Caller
from corral.errors import CorralError, Forbidden, Invalid, NoResources, NotFound, WrongState
from corral.node.spec import MIGRATION_TIMEOUT, MIRROR_INCOMPLETE, QEMU_ADOPTED, InstanceSpec
from corral.store.models import (
    Address,
    Image,
    Instance,
    Network,
    Node,
    Operation,
    PlacementGroup,
    Tag,
    Volume,
)

if TYPE_CHECKING:
    from corral.controller.service import Controller

log = logging.getLogger(__name__)
# why an instance whose QEMU its node's agent adopted is not moved live (QEMU_ADOPTED)
ADOPTED_WHY = (
    "runs in a QEMU that its node's agent took over after a restart, and live migrations out "
    "of such a QEMU have left guests with corrupt memory (docs/SPEC.md), so its node refuses "
    "them: stop and start it (a new QEMU), then migrate it"
)

OP = "instance-migrate"
REBALANCE_OP = "cluster-rebalance"
REBALANCE_TARGET = "cluster"  # the rebalance operation's target (one at a time)
MAX_MOVES = 100
ADDRESS_FACT = "migration_address"  # the node's address for migration traffic (NodeInfo.facts)


class Migrations:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        ctrl.ops.register(OP, self._migrate)
        ctrl.ops.register(REBALANCE_OP, self._rebalance)

    # -- the request -----------------------------------------------------------------------
    async def request(
        self, caller: Caller, ref: str, to: str | None = None, timeout: float | None = None
    ) -> tuple[Instance, Operation]:
        async with self.ctrl.store.read() as s:
            iid = (await self.ctrl.instances.resolve(s, caller, ref)).id
        return await self._request(iid, to, timeout, caller.access_key_id)

    async def _request(
        self,
        iid: str,
        to: str | None,
        timeout: float | None,
        requested_by: str,
        adopted: set[str] | None = None,
    ) -> tuple[Instance, Operation]:
        """A migration operation for ``iid``; ``adopted``: its node's adopted QEMUs when the
        caller has asked the node already (else asked here)."""
        if timeout is not None and not 0 < timeout <= 86400:
            raise Invalid("timeout must be between 0 and 86400 seconds", field="timeout")
        if adopted is None:  # its node is asked before the write lock: no network call holds it
            async with self.ctrl.store.read() as s:
                where = await s.get(Instance, iid)
            node_ids = [where.node_id] if where is not None and where.node_id else []
            adopted = await self._adopted(node_ids)
        async with self.ctrl.store.write() as s:
            inst = await s.get(Instance, iid)
            if inst is None:
                raise NotFound(f"instance {iid} does not exist", resource="instance")
            if inst.id in adopted:
                raise WrongState(
                    f"instance {inst.name} {ADOPTED_WHY}", resource="instance", reason=QEMU_ADOPTED
                )
            if inst.state != "running" or inst.desired_state != "running":
                raise WrongState(
                    f"instance {inst.name} is {inst.state}; only a running instance migrates "
                    "live (start it first)",
                    resource="instance",
                )
            if inst.ha:  # its replica's mirror jobs would stand in for the migration's
                raise WrongState(
                    f"instance {inst.name} is highly available (its disks are mirrored to its "
                    "secondary); live migration of HA instances is not supported yet",
                    resource="instance",
                )
            if await self.ctrl.ops.active_for(inst.id):
                raise WrongState(
                    f"instance {inst.name} has an operation under way; wait for it "
                    "(`corral op ls`)",
                    resource="instance",
                )
            target = await self._choose(s, inst, to)
            req = await self._needs(s, inst)
            got = await scheduler.claim(
                s, target, req, scheduler.Policy.from_settings(self.ctrl.settings)
            )
            if got is None:
                raise NoResources(
                    f"node {target.name} has no room for {inst.name} any more", resource="node"
                )
            op = move_op(
                self.ctrl,
                s,
                OP,
                inst,
                got,
                inst.node_id,
                requested_by,
                timeout=float(timeout or MIGRATION_TIMEOUT),
            )
        self.ctrl.ops.start(op)
        return inst, op

    async def _adopted(self, node_ids: list[str]) -> set[str]:
        """The instances these nodes run in a QEMU their agent took over after a restart
        (their agents refuse to migrate out of those). A node that does not answer counts
        none: a migration from it fails on its own."""
        out: set[str] = set()
        for nid in dict.fromkeys(node_ids):
            if nid not in self.ctrl.nodes:
                continue
            try:
                out |= {o.id for o in await self.ctrl.node(nid).instances() if o.adopted}
            except CorralError as err:
                log.info("node %s: which of its QEMUs were adopted is unknown: %s", nid, err)
        return out

    async def drain(
        self, caller: Caller, node_ref: str, timeout: float | None = None
    ) -> dict[str, Any]:
        """Cordon the node, then move each of its running instances away by a live migration
        (the scheduler picks each destination among the other nodes, the claims of those
        already placed counted, so they spread); what cannot move is listed with the reason."""
        if not caller.admin:
            raise Forbidden("only an admin account may drain a node")
        async with self.ctrl.store.write() as s:
            node = await s.scalar(
                select(Node).where(or_(Node.name == node_ref, Node.id == node_ref))
            )
            if node is None:
                raise NotFound(f"node {node_ref} does not exist; `corral node ls`", field="node")
            node.cordoned = True
            name, node_id = node.name, node.id
            rows = list(
                await s.scalars(
                    select(Instance)
                    .where(Instance.node_id == node_id, Instance.state != "terminated")
                    .order_by(Instance.memory.desc(), Instance.name)
                )
            )
        moves: list[dict[str, str]] = []
        stays: dict[str, str] = {}
        adopted = await self._adopted([node_id])  # asked once for the whole node
        for inst in rows:
            if inst.state != "running":
                stays[inst.name] = (
                    f"{inst.state}: only running instances move live (a stopped one moves "
                    "cold with `corral node evacuate`)"
                )
                continue
            try:
                _, op = await self._request(inst.id, None, timeout, caller.access_key_id, adopted)
            except CorralError as err:
                stays[inst.name] = err.message
                continue
            moves.append({"instance": inst.name, "id": inst.id, "operation": op.id})
        return {"node": name, "cordoned": True, "migrations": moves, "not_moved": stays}

    # -- rebalance -----------------------------------------------------------------------
    async def rebalance(
        self,
        caller: Caller,
        max_moves: int = 10,
        dry_run: bool = False,
        timeout: float | None = None,
    ) -> tuple[balancing.Plan, Operation | None]:
        """The greedy plan (``corral.controller.rebalance``); unless ``dry_run``, one
        ``cluster-rebalance`` operation that carries it out, a migration at a time."""
        if not caller.admin:
            raise Forbidden("only an admin account may rebalance the cluster")
        if not 1 <= max_moves <= MAX_MOVES:
            raise Invalid(f"max_moves must be between 1 and {MAX_MOVES}", field="max_moves")
        if timeout is not None and not 0 < timeout <= 86400:
            raise Invalid("timeout must be between 0 and 86400 seconds", field="timeout")
        policy = scheduler.Policy.from_settings(self.ctrl.settings)
        busy = await self.ctrl.ops.active_targets()
        async with self.ctrl.store.read() as s:
            views = [v for v in await scheduler.nodes(s) if v.id in self.ctrl.nodes]
        adopted = await self._adopted([v.id for v in views])
        async with self.ctrl.store.read() as s:
            held = await self._held(s, busy, adopted)
        got = balancing.plan(views, held, policy, max_moves)
        if dry_run or not got.moves:
            return got, None
        async with self.ctrl.store.write() as s:
            if await self.ctrl.ops.active_for(REBALANCE_TARGET):
                raise WrongState(
                    "a rebalance is under way; wait for it (`corral op ls --target cluster`)",
                    resource="operation",
                )
            op = self.ctrl.ops.new(
                REBALANCE_OP,
                account_id=None,
                target_kind="cluster",
                target_id=REBALANCE_TARGET,
                params={
                    "moves": [dataclasses.asdict(m) for m in got.moves],
                    "timeout": float(timeout or MIGRATION_TIMEOUT),
                    "requested_by": caller.access_key_id,
                    "score_before": got.score_before,
                    "score_after": got.score_after,
                },
                requested_by=caller.access_key_id,
            )
            s.add(op)
        self.ctrl.ops.start(op)
        return got, op

    async def _held(
        self, s: Any, busy: set[str], adopted: frozenset[str] | set[str] = frozenset()
    ) -> list[balancing.Held]:
        """Every instance with a claim on a node, and whether it may move now."""
        rows = await s.execute(
            select(Instance, PlacementGroup.strategy)
            .outerjoin(PlacementGroup, PlacementGroup.id == Instance.placement_group_id)
            .where(Instance.state != "terminated", Instance.node_id.is_not(None))
            .order_by(Instance.name)
        )
        out = []
        for inst, strategy in rows:
            why = ""
            if inst.state != "running" or inst.desired_state != "running":
                why = f"{inst.state}: only running instances move (live)"
            elif inst.ha:
                why = "highly available: its replica would have to move with it (not built)"
            elif inst.id in busy:
                why = "an operation is under way on it"
            elif inst.id in adopted:
                why = ADOPTED_WHY
            out.append(
                balancing.Held(
                    id=inst.id,
                    name=inst.name,
                    node_id=str(inst.node_id),
                    memory=inst.memory,
                    cores=inst.claim_cores or inst.cpu_limit or float(inst.cpus),
                    disk=inst.claim_disk or inst.disk_size,
                    group=inst.placement_group_id if strategy == "spread" else None,
                    movable=not why,
                    why=why,
                )
            )
        return out

    async def _rebalance(self, ctx: Any) -> dict[str, Any]:
        """Request each planned migration, wait for it to end, then the next (a later move may
        need the room an earlier one frees). Resumed after a crash, a move whose migration was
        requested is waited for again, and one whose instance is already on its target or no
        longer running is passed over."""
        moves: list[dict[str, Any]] = [dict(m) for m in ctx.params.get("moves", [])]
        timeout = float(ctx.params.get("timeout") or MIGRATION_TIMEOUT)
        requested_by = str(ctx.params.get("requested_by", ""))
        for i, mv in enumerate(moves):
            if mv.get("outcome"):
                continue
            if not mv.get("operation"):
                async with self.ctrl.store.read() as s:
                    inst = await s.get(Instance, mv["id"])
                if inst is not None and inst.node_id == mv["target_id"]:
                    mv["outcome"] = "moved"
                elif inst is None or inst.state != "running":
                    mv["outcome"] = "skipped: no longer running"
                else:
                    try:
                        _, op = await self._request(
                            mv["id"], mv["target_id"], timeout, requested_by
                        )
                        mv["operation"] = op.id
                    except CorralError as err:
                        mv["outcome"] = f"skipped: {err.message}"
                await ctx.checkpoint(moves=moves)
            if mv.get("operation") and not mv.get("outcome"):
                await ctx.progress(
                    i / len(moves), f"moving {mv['instance']} to {mv['target']} ({mv['operation']})"
                )
                done = await self._wait(mv["operation"])
                mv["outcome"] = (
                    "moved" if done.status == "succeeded" else f"{done.status}: {done.error}"
                )
                await ctx.checkpoint(moves=moves)
            await ctx.progress((i + 1) / len(moves), f"{mv['instance']}: {mv['outcome']}")
        moved = [m["instance"] for m in moves if m.get("outcome") == "moved"]
        return {
            "moved": moved,
            "not_moved": {m["instance"]: m["outcome"] for m in moves if m["instance"] not in moved},
        }

    async def _wait(self, op_id: str) -> Operation:
        while True:
            op = await self.ctrl.ops.wait(op_id, timeout=30.0)
            if op.status in ("succeeded", "failed", "cancelled"):
                return op

    async def _choose(self, s: Any, inst: Instance, to: str | None) -> scheduler.NodeView:
        """The destination: ``to`` when given, else the scheduler's pick among the other
        connected nodes; either way it must pass the scheduler's filters for this instance
        (room, and its spread placement group: a drain or rebalance never puts two members
        of one on a node)."""
        views = await scheduler.nodes(s)
        if to is not None:
            named = [v for v in views if to in (v.name, v.id)]
            if not named:
                raise NotFound(f"node {to} does not exist; `corral node ls`", field="to")
            if named[0].id == inst.node_id:
                raise Invalid(f"instance {inst.name} already runs on {to}", field="to")
            if named[0].id not in self.ctrl.nodes:
                raise WrongState(f"node {to} is not connected to this controller", field="to")
            others = named[:1]
        else:
            others = [v for v in views if v.id != inst.node_id and v.id in self.ctrl.nodes]
        # each node has its own row of the network; one address pool spans them now
        # (controller/overlays.py), but a store from before that can hold one address twice on
        # two nodes: a node where another instance holds this one's address cannot take it
        taken = await self._address_taken_on(s, inst)
        clash = [v for v in others if v.id in taken]
        others = [v for v in others if v.id not in taken]
        req = await self._needs(s, inst)
        policy = scheduler.Policy.from_settings(self.ctrl.settings)
        ctx = await scheduler.Context.load(s, req)
        ok, failed = scheduler.sift(others, req, policy, ctx)
        if not ok:
            why = scheduler.explain(len(others), failed, req, policy) if others else "no other node"
            if clash:
                why += (
                    f"; {len(clash)} more hold{'s' if len(clash) == 1 else ''} its address "
                    f"{inst.private_ip} for another instance"
                )
            raise NoResources(
                f"no other node can take {inst.name} ({why}); add a node or free one"
                if to is None
                else f"node {to} cannot take {inst.name} ({why})",
                resource="node",
            )
        return scheduler.rank(ok, req, policy, ctx)[0]

    async def _needs(self, s: Any, inst: Instance) -> scheduler.Request:
        """What ``inst`` asks of a node, as at its launch: room, architecture, its placement
        group (spread or cluster), its exclusion tags (a move must not put it beside an
        instance sharing one, as a launch must not)."""
        image = await s.get(Image, inst.image_id)
        keys = scheduler.Policy.from_settings(self.ctrl.settings).exclusion_keys
        tags = (
            {
                t.key: t.value
                for t in await s.scalars(
                    select(Tag).where(Tag.resource_id == inst.id, Tag.key.in_(keys))
                )
            }
            if keys
            else {}
        )
        pg = (
            await s.get(PlacementGroup, inst.placement_group_id)
            if inst.placement_group_id
            else None
        )
        return scheduler.Request(
            memory=inst.memory,
            cores=inst.cpu_limit or float(inst.cpus),
            disk=inst.disk_size,
            arch=image.arch if image is not None else "x86_64",
            account_id=inst.account_id,
            group=scheduler.Group(pg.id, pg.name, pg.strategy) if pg is not None else None,
            exclusion=tags,
        )

    @staticmethod
    async def _address_taken_on(s: Any, inst: Instance) -> set[str]:
        """The nodes whose network of the instance's network's name gives its address to
        another instance."""
        src_net = await s.get(Network, inst.network_id)
        if src_net is None or inst.private_ip is None:
            return set()
        rows = await s.execute(
            select(Network.node_id)
            .join(Address, Address.network_id == Network.id)
            .where(
                Network.name == src_net.name,
                Network.id != src_net.id,
                Address.address == inst.private_ip,
                Address.instance_id != inst.id,
            )
        )
        return {str(node_id) for (node_id,) in rows}

    # -- the operation -----------------------------------------------------------------------
    async def _move(self, inst: Instance, params: dict[str, Any]) -> tuple[migration.Move, str]:
        """The steps' inputs, and the destination's network for this instance."""
        src_id, dst_id = params["from"], params["to"]
        async with self.ctrl.store.read() as s:
            src_spec = await self.ctrl.instances.spec(s, inst)
            dst_net = await network_on(s, inst, dst_id, "; choose another node (--to)")
            sizes = await disk_sizes(s, src_spec)
            src_node = await s.get(Node, src_id)
            dst_node = await s.get(Node, dst_id)
        dst_spec = src_spec.model_copy(update={"network": self.ctrl.networks.spec(dst_net)})
        move = migration.Move(
            iid=inst.id,
            src=self.ctrl.node(src_id),
            dst=self.ctrl.node(dst_id),
            src_spec=src_spec,
            dst_spec=dst_spec,
            src_address=_address(src_node),
            dst_address=_address(dst_node),
            sizes=sizes,
            timeout=float(params.get("timeout") or MIGRATION_TIMEOUT),
        )
        return move, dst_net.id

    async def _migrate(self, ctx: Any) -> dict[str, Any]:
        iid = ctx.target_id
        async with self.ctrl.instances.lock(iid):
            async with self.ctrl.store.read() as s:
                inst = await s.get(Instance, iid)
            if inst is None:
                raise NotFound(f"instance {iid} is gone", resource="instance")
            phase = ctx.params.get("phase", "requested")
            if phase == "moved" or inst.node_id == ctx.params["to"]:
                return await self._cleanup(ctx, inst)
            if inst.state != "running":
                await self._unclaim(ctx)
                raise WrongState(f"instance {inst.name} is {inst.state}; not migrated")
            try:  # a VPC subnet's network at the destination, kept there while it moves
                held = await self.ctrl.networks.hold_arrival(inst.id, ctx.params["to"])
            except BaseException:
                await self._unclaim(ctx)
                raise
            try:
                return await self._migrate_to(ctx, inst, phase)
            finally:
                await self.ctrl.networks.release_arrival(held)

    async def _migrate_to(self, ctx: Any, inst: Instance, phase: str) -> dict[str, Any]:
        """The steps of ``_migrate`` once the destination has the instance's network."""
        move, dst_net = await self._move(inst, ctx.params)
        if phase != "requested":  # resumed after a crash: decide by what the source says
            return await self._resume(ctx, inst, move, dst_net, phase)

        async def report(step: str, fraction: float, message: str) -> None:
            if ctx.params.get("phase") != step:
                await ctx.checkpoint(phase=step)
            await ctx.progress(fraction, f"{step}: {message}")

        move.arrive = lambda: self._arrive(inst.id, ctx.params["to"], dst_net)
        try:
            # the destination's overlay needs the image under it: pulled there first, only
            # the parts it lacks (a node joined to a cluster may never have run it)
            await report("preparing", 0.01, "the image to the destination")
            await self.ctrl.image_push.ensure(ctx.params["to"], move.dst_spec.image)
            await migration.run_until_moved(move, report)
        except BaseException as err:
            await asyncio.shield(self._arrived(inst.id, dst_net))
            await self._unclaim(ctx)
            await ctx.checkpoint(phase="rolled-back")
            if isinstance(err, migration.MigrationFailed):
                raise
            if isinstance(err, CorralError):
                raise CorralError(
                    f"the migration of {inst.name} failed and was rolled back; it runs on "
                    f"at its node: {err.message}",
                    reason=err.reason,
                ) from err
            raise
        return await self._switch(ctx, inst, move, dst_net)

    async def _switch(
        self, ctx: Any, inst: Instance, move: migration.Move, dst_net: str
    ) -> dict[str, Any]:
        """Memory has moved: forward (the destination confirms, the record moves), or, when
        the destination's copy does not run, back (the source resumes the guest).

        The source is paused from here, so everything the guest waits on starts at once: the
        subnet's forwarding entries on every node are pointed at the destination (what arrives
        before the destination runs waits in its tap's queue, not in a source about to be
        removed) beside the switch-over itself, and the operation's record of the phase is
        written beside both (a restart decides by what the source says: ``_resume``). The
        entries are given back to the store after the record moved or the move was rolled
        back."""
        pointing = asyncio.create_task(self._point(inst.id, ctx.params["to"]))
        noting = asyncio.create_task(self._note_switching(ctx))
        try:
            return await self._switch_over(ctx, inst, move, dst_net, pointing, noting)
        finally:
            await asyncio.gather(pointing, noting, return_exceptions=True)
            await self._point(inst.id, None)

    @staticmethod
    async def _note_switching(ctx: Any) -> None:
        """Never raises: the switch-over must not stop half-way for want of this record (the
        move's own record, ``_record``, is what counts; a restart asks the source)."""
        try:
            if ctx.params.get("phase") != "switching":
                await ctx.checkpoint(phase="switching")
            await ctx.progress(0.95, "switching: the destination takes over")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("%s: recording the switch-over (going on)", ctx.id, exc_info=True)

    async def _arrive(self, iid: str, to: str, dst_net: str) -> None:
        """The memory copy starts: the destination's policy guards the instance's tap there,
        then every node of its subnet sends its frames to both nodes (overlays.arrive). Never
        raises: without it the move goes on as before (frames follow at the switch-over)."""
        self.ctrl.overlays.arrive(iid, to)
        try:
            await self.ctrl.networks.sync_one(dst_net)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("%s: the destination's policy for it (frames follow later)", iid)
            await self._arrived(iid, dst_net)
            return
        try:
            await self.ctrl.overlays.sync()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("%s: its frames to the destination (left to the next pass)", iid)

    async def _arrived(self, iid: str, dst_net: str) -> None:
        """The move was rolled back: frames to the instance's own node only, and its port
        gone from the destination's policy. Never raises (the reconciler mends a failure)."""
        try:
            await self.ctrl.overlays.done_moving(iid)
            await self.ctrl.networks.sync_one(dst_net)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("%s: undoing its arrival at the destination (left to the next pass)", iid)

    async def _point(self, iid: str, to: str | None) -> None:
        """The overlays' forwarding entries for ``iid``: at node ``to`` now, or (None) where
        the store says. Never raises: the reconciler's next overlay pass mends a failure."""
        try:
            if to is None:
                await self.ctrl.overlays.done_moving(iid)
            else:
                await self.ctrl.overlays.move(iid, to)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning(
                "%s: its subnet's forwarding entries (left to the next pass)", iid, exc_info=True
            )

    async def _switch_over(
        self,
        ctx: Any,
        inst: Instance,
        move: migration.Move,
        dst_net: str,
        pointing: asyncio.Task[None],
        noting: asyncio.Task[None],
    ) -> dict[str, Any]:
        async def back_to_source() -> None:
            """Called off after the memory moved: the destination's copy removed (it never
            ran), frames sent back to the source, the source resumed, the claim given back."""
            await noting
            await pointing
            await self._arrived(inst.id, dst_net)  # back at the source before it resumes
            await migration.rollback(move)
            await self._unclaim(ctx)
            await ctx.checkpoint(phase="rolled-back")

        try:
            if not move.mirrors_ended:
                await move.src.migrate_complete(inst.id)
        except WrongState as err:  # the source's QEMU is gone: the destination's is the only one
            log.info("%s: the source has no mirror to end (%s)", inst.id, err.message)
        except CorralError as err:
            if err.reason != MIRROR_INCOMPLETE:
                raise
            # the destination's disks lack writes: it must never run; the paused source has
            # every write and the memory, so it resumes
            log.warning("%s: %s; resuming at the source", inst.id, err.message)
            await back_to_source()
            raise CorralError(
                f"the disks of {inst.name} could not be completed on the destination "
                f"({err.message}); it runs on at its source. Check the link between the two "
                "nodes (`corral node ls`) and run `corral migrate` again",
                reason="migration-failed",
            ) from err
        try:
            await move.dst.migrate_finish(inst.id, 60.0)
        except WrongState as err:
            st = await move.src.migrate_status(inst.id)
            if st.phase != "completed":
                raise CorralError(
                    f"neither node runs {inst.name} after its migration: the destination says "
                    f"{err.message}; the source's copy is {st.vm_status or 'gone'}",
                    reason="migration-failed",
                ) from err
            log.warning("%s: switch-over failed (%s); resuming at the source", inst.id, err)
            await back_to_source()
            raise CorralError(
                f"the destination could not take {inst.name} ({err.message}); it runs on "
                "at its source",
                reason="migration-failed",
            ) from err
        await noting  # before the record moves: its phase must not overwrite "moved"
        await pointing
        await self._record(ctx, inst, dst_net)
        return await self._cleanup(ctx, inst)

    async def _resume(
        self, ctx: Any, inst: Instance, move: migration.Move, dst_net: str, phase: str
    ) -> dict[str, Any]:
        try:
            st = await move.src.migrate_status(inst.id)
        except CorralError as err:
            raise WrongState(
                f"the source node of {inst.name} does not answer ({err.message}); the "
                "migration is resumed when it does",
            ) from err
        if st.phase == "completed" or phase == "switching":
            return await self._switch(ctx, inst, move, dst_net)
        await migration.rollback(move)
        await self._unclaim(ctx)
        await ctx.checkpoint(phase="rolled-back")
        raise CorralError(
            f"the migration of {inst.name} was interrupted at {phase} (a controller restart) "
            "and rolled back; it runs on at its node; run `corral migrate` again",
            reason="migration-interrupted",
        )

    async def _record(self, ctx: Any, inst: Instance, dst_net: str) -> None:
        """The destination confirmed: node, network, address and claim move in one go."""
        from corral.controller.failover import move_record

        async with self.ctrl.store.write() as s:
            row = await s.get(Instance, inst.id)
            if row is None:
                return
            # the source's copy is stale from here (issue 16)
            await move_record(s, row, ctx.params["to"], dst_net, ctx.params["claim"])
            op = await s.get(Operation, ctx.id)
            if op is not None:
                op.params = {**(op.params or {}), "phase": "moved"}
            ctx.params["phase"] = "moved"
        await self.ctrl.networks.sync(inst.network_id)
        await self.ctrl.networks.sync(dst_net)

    async def _cleanup(self, ctx: Any, inst: Instance) -> dict[str, Any]:
        move_src = self.ctrl.node(ctx.params["from"])
        async with self.ctrl.store.read() as s:
            row = await s.get(Instance, inst.id)
            assert row is not None
            spec = await self.ctrl.instances.spec(s, row)
        vols = [v.id for v in spec.volumes] + ([spec.root_volume] if spec.root_volume else [])
        await ctx.progress(0.98, "removing the source's copy")
        await move_src.migrate_cleanup(inst.id, spec.tap, vols)
        pid = None
        for o in await self.ctrl.node(ctx.params["to"]).instances():
            if o.id == inst.id:
                pid = o.pid
        if pid is not None:
            await self.ctrl.instances._set(inst.id, pid=pid)
        await ctx.checkpoint(phase="done")
        return {"instance_id": inst.id, "node": ctx.params["to"], "from": ctx.params["from"]}

    async def _unclaim(self, ctx: Any) -> None:
        await unclaim(self.ctrl, ctx)


def move_op(
    ctrl: Controller,
    s: Any,
    kind: str,
    inst: Instance,
    got: scheduler.Placement,
    source_id: str | None,
    requested_by: str,
    **params: Any,
) -> Operation:
    """A move of ``inst`` (a migration, a cold move) from ``source_id`` to the node of the
    claim ``got``, added to ``s`` (the claim's transaction): the claim travels in the
    operation, to be given back once (``unclaim``) if the move does not finish."""
    op = ctrl.ops.new(
        kind,
        account_id=inst.account_id,
        target_kind="instance",
        target_id=inst.id,
        params={
            "to": got.node_id,
            "from": source_id,
            "claim": [got.memory, got.cores, got.disk],
            "phase": "requested",
            **params,
        },
        requested_by=requested_by,
    )
    s.add(op)
    return op


async def unclaim(ctrl: Controller, ctx: Any) -> None:
    """A move that did not happen (a migration or a cold move rolled back) gives its claim on
    the destination back, once (``unclaimed`` in its parameters, in the same transaction)."""
    if ctx.params.get("unclaimed"):
        return
    mem, cores, disk = ctx.params["claim"]
    async with ctrl.store.write() as s:
        await scheduler.unclaim(s, ctx.params["to"], mem, cores, disk)
        await ctx.checkpoint(s, unclaimed=True)


def _address(node: Node | None) -> str:
    if node is None:
        raise NotFound("a node of the migration is gone", resource="node")
    facts = node.facts or {}
    addr = str(facts.get(ADDRESS_FACT) or "")
    if not addr:
        raise WrongState(
            f"node {node.name} reports no address for migration traffic; set "
            "migration_address (CORRAL_MIGRATION_ADDRESS) on its agent",
            resource="node",
        )
    return addr


async def network_on(s: Any, inst: Instance, node_id: str, hint: str = "") -> Network:
    """The instance's network on ``node_id`` (same name and range), its address free there
    (a migration's destination, an HA secondary)."""
    net = await s.get(Network, inst.network_id)
    assert net is not None
    there = await s.scalar(
        select(Network).where(Network.node_id == node_id, Network.name == net.name)
    )
    if there is None or there.cidr != net.cidr:
        raise WrongState(
            f"node {node_id} has no network {net.name} on {net.cidr}: {inst.name} could not "
            "keep its address there",
            resource="network",
        )
    taken = await s.scalar(
        select(Address.instance_id).where(
            Address.network_id == there.id, Address.address == inst.private_ip
        )
    )
    if taken is not None and taken != inst.id:
        raise WrongState(
            f"address {inst.private_ip} of {inst.name} is taken on node {node_id}'s network "
            f"{net.name}{hint}",
            resource="address",
        )
    return there


async def disk_sizes(s: Any, spec: InstanceSpec) -> dict[str, int]:
    """The sizes in bytes of an instance's volumes (the root volume too), as the store has
    them (GiB)."""
    sizes = {}
    for vid in [v.id for v in spec.volumes] + ([spec.root_volume] if spec.root_volume else []):
        vol = await s.get(Volume, vid)
        if vol is not None:
            sizes[vid] = vol.size << 30
    return sizes
