"""Replacing a server: a new instance from a new image takes over the old one's config, data
volumes, private address and DNS name; the old one goes only once the new one is healthy.

Two instances cannot hold one address at once, and a data volume cannot be in two VMs. So:

1. ``launch``: the new instance starts beside the old one on an address and name of its own
   (``<name>-next-…``), with the same config (user-data, type, keys, groups, tags).
2. ``boot``: it must pass the health check there (SSH port, or the declared TCP/HTTP check). If
   it does not, it is removed and the old one never noticed.
3. ``cutover``: the old one is stopped in order (the outage starts when its service stops); then
   one transaction swaps names and addresses, and moves the data volumes (and any elastic IP)
   to the new instance.
4. ``moved``: DHCP and DNS learn the swap, the volumes are plugged into the running new
   instance, and its network cable is pulled and plugged back so its guest asks DHCP again (a
   guest that does not watch its link is rebooted instead). It must pass the check again, at
   the old address. Then the old instance is terminated (``finish``).
5. A failure after the cutover rolls back (``rollback``, ``rolled-back``): the new instance is
   stopped, name, address and volumes go back, the old instance starts again.

Every phase is recorded in the operation before and with the change it makes (the swap commits
together with its phase), and every step is idempotent, so a controller killed at any point
resumes the operation where it was, or the rollback."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.appliances import render
from corral.controller import health
from corral.controller.accounts import Caller
from corral.controller.instances import LaunchOptions
from corral.controller.operations import ACTIVE
from corral.controller.volumes import ROOT_DEVICE
from corral.controller.volumes import io_args as volume_io_args
from corral.errors import CorralError, Invalid, NotFound, WrongState
from corral.models import InstanceCreate
from corral.node.spec import HealthCheck
from corral.store.models import (
    Address,
    ElasticAddress,
    Instance,
    InstanceSecurityGroup,
    Network,
    Operation,
    Tag,
    Volume,
    utcnow,
)

if TYPE_CHECKING:
    from corral.controller.service import Controller

log = logging.getLogger(__name__)

TAG_REPLACES = "corral:replaces"  # on a replacement while it is made: the instance it replaces
BOOT_TIMEOUT = 300.0  # seconds the new instance gets to pass its check beside the old one
RELINK_WAIT = 10.0  # seconds a guest gets to take its new address before it is rebooted
AFTER_TIMEOUT = 60.0  # seconds the new instance gets to pass the check at the old address
SETTLE = 5.0  # seconds it must then answer without a failure (its volumes are mounted and its
# service has seen its data by then; three quick answers right after the swap show neither)


def system_caller(account_id: str) -> Caller:
    return Caller(account_id, "", False, "system")


class Replacements:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        ctrl.ops.register("instance-replace", self._run)

    # -- request ---------------------------------------------------------------------------
    async def request(
        self,
        caller: Caller,
        ref: str,
        image_ref: str | None,
        check: HealthCheck | None = None,
        launch: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        extra_volumes: list[str] | None = None,
        timeout: float | None = None,
        after_timeout: float | None = None,
    ) -> tuple[Instance, Operation]:
        """Replace ``ref`` by an instance of ``image_ref`` with the same config (or with
        ``launch``/``tags``, as ``corral apply`` gives them)."""
        if image_ref is None and launch is None:
            raise Invalid("give the image to replace it with", field="image")
        async with self.ctrl.store.write() as s:
            old = await self.ctrl.instances.resolve(s, caller, ref)
            if old.state not in ("running", "stopped"):
                raise WrongState(
                    f"instance {old.name} is {old.state}; replace a running or stopped instance",
                    resource="instance",
                )
            busy = await self.active(s, old.id)
            if busy is not None:
                raise WrongState(
                    f"instance {old.name} is being replaced already (operation "
                    f"{busy}); `corral op wait {busy}`",
                    resource="instance",
                )
            if await s.scalar(
                select(Tag.resource_id).where(Tag.resource_id == old.id, Tag.key == TAG_REPLACES)
            ):
                raise WrongState(
                    f"instance {old.name} is itself a replacement being made", resource="instance"
                )
            have = await self.ctrl.tags.of(s, caller.account_id, [old.id])
            old_tags = dict(have.get(old.id, {}))
            if launch is None:
                assert image_ref is not None
                image = await self.ctrl.images.resolve(s, caller, image_ref)
                launch = self._same_config(old, image.id, max(old.disk_size, image.virtual_size))
                tags = self._retag(old_tags, image.id)
            if check is None:
                check = health.parse(old_tags.get(render.TAG_HEALTH))

            groups = list(
                await s.scalars(
                    select(InstanceSecurityGroup.group_id).where(
                        InstanceSecurityGroup.instance_id == old.id
                    )
                )
            )
            op = self.ctrl.ops.new(
                "instance-replace",
                account_id=caller.account_id,
                target_kind="instance",
                target_id=old.id,
                requested_by=caller.access_key_id,
                params={
                    "name": old.name,
                    "launch": launch,
                    "groups": groups,
                    "tags": tags if tags is not None else old_tags,
                    "check": check.model_dump(),
                    "timeout": timeout or BOOT_TIMEOUT,
                    "after_timeout": after_timeout,
                    "extra_volumes": extra_volumes or [],
                    "key_name": old.key_name,
                    "phase": "launch",
                },
            )
            s.add(op)
        self.ctrl.ops.start(op)
        return old, op

    async def active(self, s: AsyncSession, iid: str) -> str | None:
        return await s.scalar(
            select(Operation.id).where(
                Operation.type == "instance-replace",
                Operation.target_id == iid,
                Operation.status.in_(ACTIVE),
            )
        )

    @staticmethod
    def _same_config(old: Instance, image_id: str, disk: int) -> dict[str, Any]:
        req = InstanceCreate(
            image=image_id,
            instance_type=old.instance_type or None,
            cpus=old.cpus,
            memory=f"{old.memory >> 20}M",
            disk=f"{-(-disk >> 20)}M",
            public_keys=list(old.ssh_keys or []),
            user_data=(old.user_data or b"").decode() or None,
            restart_policy=old.restart_policy,  # type: ignore[arg-type]
            stop_timeout=old.stop_timeout,
            net_limit_mbit=old.net_limit_mbit,
            metadata_tokens=old.metadata_tokens,  # type: ignore[arg-type]
            metadata_hop_limit=old.metadata_hop_limit,
            ha=bool(old.ha),
        )
        return req.model_dump(exclude_none=True)

    @staticmethod
    def _retag(tags: dict[str, str], image_id: str) -> dict[str, str]:
        """An appliance instance's tags with its image changed (so `apply` of a file naming
        the new image finds nothing to do)."""
        out = dict(tags)
        if render.TAG_PARTS in out:
            parts = render.parse_parts(out[render.TAG_PARTS])
            parts["image"] = image_id
            out[render.TAG_PARTS] = ";".join(f"{k}={v}" for k, v in sorted(parts.items()))
            out[render.TAG_CONFIG] = render._h(sorted(parts.items()))
        return out

    # -- the operation ---------------------------------------------------------------------
    async def _run(self, ctx: Any) -> dict[str, Any]:
        old_id = ctx.target_id
        check = HealthCheck.model_validate(ctx.params["check"])
        phase = ctx.params.get("phase", "launch")
        if phase == "launch":
            await self._launch(ctx, old_id)
            phase = "boot"
        new_id: str = ctx.params["new_id"]
        if phase == "boot":
            why = await self._boot(
                ctx, new_id, check, float(ctx.params.get("timeout") or BOOT_TIMEOUT)
            )
            if why:
                await self._discard(ctx, new_id)
                raise WrongState(
                    f"the new instance failed its health check "
                    f"({health.describe(check)}): {why}; it was removed and "
                    f"{ctx.params['name']} runs on, unchanged",
                    resource="instance",
                )
            await ctx.checkpoint(phase="cutover", cutover_at=time.time())  # wall clock:
            # the operation may finish in another process after a crash
            phase = "cutover"
        if phase == "cutover":
            await ctx.progress(0.5, f"stopping the old instance ({old_id})")
            await self._stop(old_id, force=False)
            await self._move(ctx, old_id, new_id, forward=True)
            phase = "moved"
        if phase == "moved":
            why = await self._take_over(ctx, new_id, check)
            phase = "rollback" if why else "finish"
            await ctx.checkpoint(phase=phase, why=why)
        if phase == "finish":
            await ctx.progress(0.9, "terminating the old instance")
            await self._finish(ctx, old_id, new_id)
            return {
                "instance_id": new_id,
                "replaced": old_id,
                "name": ctx.params["name"],
                "address": ctx.params.get("address"),
                "cutover_seconds": ctx.params.get("cutover_seconds"),
            }
        if phase == "rollback":
            await ctx.progress(0.8, f"rolling back: {ctx.params.get('why')}")
            await self._stop(new_id, force=False, timeout=10)
            await self._move(ctx, new_id, old_id, forward=False)
            phase = "rolled-back"
        if phase == "rolled-back":
            await self._restore(ctx, old_id, new_id, check)
            raise WrongState(
                f"the new instance failed its health check at "
                f"{ctx.params.get('address')} after taking over "
                f"({ctx.params.get('why')}); rolled back: {ctx.params['name']} "
                "runs the old image again with its address, name and volumes",
                resource="instance",
            )
        raise CorralError(f"replace: unknown phase {phase!r}")

    async def _launch(self, ctx: Any, old_id: str) -> None:
        """The new instance, on its own address and name; found again by its tag after a
        crash (the launch commits before the phase can be recorded)."""
        async with self.ctrl.store.read() as s:
            found = await s.scalar(
                select(Instance)
                .join(Tag, Tag.resource_id == Instance.id)
                .where(Tag.key == TAG_REPLACES, Tag.value == old_id, Instance.state != "terminated")
            )
            old = await s.get(Instance, old_id)
        if old is None:
            raise NotFound(f"instance {old_id} is gone", resource="instance")
        if found is None:
            await ctx.progress(0.05, "starting the new instance beside the old one")
            temp = f"{ctx.params['name'][:46]}-next-{secrets.token_hex(3)}"
            # beside the old one: its address and volumes move on that node
            req = InstanceCreate.model_validate(
                {**ctx.params["launch"], "name": temp, "node": old.node_id}
            )
            tags = {**ctx.params["tags"], TAG_REPLACES: old_id}
            made, _ = await self.ctrl.instances.launch(
                system_caller(old.account_id),
                req,
                LaunchOptions(security_groups=ctx.params["groups"] or ["default"], tags=tags),
            )
            found = made[0]
        await ctx.checkpoint(phase="boot", new_id=found.id, temp_name=found.name)

    async def _boot(self, ctx: Any, new_id: str, check: HealthCheck, timeout: float) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await ctx.progress(0.1, "waiting for the new instance to run")
        while True:
            async with self.ctrl.store.read() as s:
                new = await s.get(Instance, new_id)
            if new is None or new.state in ("terminated", "shutting-down", "stopped"):
                return f"it did not start ({new.state_reason if new else 'gone'})"
            if new.state == "running" and new.private_ip:
                break
            if loop.time() > deadline:
                return "it did not start in time"
            await asyncio.sleep(0.2)
        hint = (
            "; SSH answers before cloud-init has run user-data, so this does not show "
            "that the service is up: name a check (--check PORT[/PATH]) for that"
            if check.port == 22 and not check.path
            else ""
        )
        await ctx.progress(
            0.2,
            f"waiting for {new.name} to pass its health check "
            f"({health.describe(check)} at {new.private_ip}){hint}",
        )
        return await health.wait(
            self.ctrl, new, new.private_ip, check, max(deadline - loop.time(), 1.0)
        )

    async def _discard(self, ctx: Any, new_id: str) -> None:
        async with self.ctrl.store.read() as s:
            new = await s.get(Instance, new_id)
        if new is not None and new.state != "terminated":
            await self.ctrl.instances.terminate(
                system_caller(new.account_id), new_id, timeout=5, force=True
            )

    async def _stop(self, iid: str, force: bool, timeout: float | None = None) -> None:
        """Stop an instance in order and record it stopped (its desired state first, so the
        reconciler agrees at any moment)."""
        mgr = self.ctrl.instances
        async with mgr.lock(iid):
            async with self.ctrl.store.write() as s:
                inst = await s.get(Instance, iid)
                if inst is None:
                    return
                inst.desired_state = "stopped"
                if inst.state not in ("stopped", "terminated"):
                    inst.state = "stopping"
            await self.ctrl.node(inst.node_id).instance_stop(
                iid, timeout if timeout is not None else mgr._timeout(inst, None), force
            )
            await mgr._set(iid, state="stopped", pid=None)

    async def _move(self, ctx: Any, src_id: str, dst_id: str, forward: bool) -> None:
        """One transaction: ``dst`` takes ``src``'s name, private address, data volumes and
        elastic IPs (``src`` gets ``dst``'s name and address), and the phase is recorded."""
        async with self.ctrl.store.write() as s:
            src, dst = await s.get(Instance, src_id), await s.get(Instance, dst_id)
            if src is None or dst is None:
                raise NotFound("an instance of the replacement is gone", resource="instance")
            name_src, name_dst = src.name, dst.name
            addr_src, addr_dst = src.private_ip, dst.private_ip
            src.name = f"swap-{src.id[2:]}"  # names are unique among live instances
            await s.flush()
            dst.name = name_src
            await s.flush()
            src.name = name_dst
            await s.execute(delete(Address).where(Address.instance_id.in_([src.id, dst.id])))
            await s.flush()
            for inst, addr in ((dst, addr_src), (src, addr_dst)):
                inst.private_ip = addr
                if addr is not None and inst.network_id is not None:
                    s.add(Address(network_id=inst.network_id, address=addr, instance_id=inst.id))
            state = "attaching" if dst.state == "running" else "attached"
            for vol in await s.scalars(
                select(Volume).where(Volume.instance_id == src.id, Volume.device != ROOT_DEVICE)
            ):
                vol.instance_id, vol.attach_state = dst.id, state
            if forward:
                await self._attach_extra(s, ctx, dst, state)
                dst.key_name = dst.key_name or ctx.params.get("key_name")
            for eip in await s.scalars(
                select(ElasticAddress).where(ElasticAddress.instance_id == src.id)
            ):
                eip.instance_id, eip.private_ip = dst.id, addr_src
            await ctx.checkpoint(s, phase="moved" if forward else "rolled-back", address=addr_src)
        log.info(
            "replace: %s (%s) now has %s's name and address %s", name_src, dst_id, src_id, addr_src
        )

    async def _attach_extra(self, s: AsyncSession, ctx: Any, dst: Instance, state: str) -> None:
        """Volumes the new config adds (``corral apply``): attached with the moved ones."""
        used = set(await s.scalars(select(Volume.device).where(Volume.instance_id == dst.id)))
        for vid in ctx.params.get("extra_volumes") or []:
            vol = await s.get(Volume, vid)
            if vol is None or vol.instance_id is not None or vol.state != "available":
                continue
            device = next(
                f"/dev/vd{c}" for c in "bcdefghijklmnopqrstuvwxyz" if f"/dev/vd{c}" not in used
            )
            used.add(device)
            vol.instance_id, vol.device, vol.attach_state, vol.state = (
                dst.id,
                device,
                state,
                "in-use",
            )

    async def _take_over(self, ctx: Any, new_id: str, check: HealthCheck) -> str:
        """Make the swap real on the node and wait for the new instance to answer at its new
        address; "" when it does, else why not."""
        async with self.ctrl.store.read() as s:
            new = await s.get(Instance, new_id)
            vols = list(
                await s.scalars(
                    select(Volume).where(
                        Volume.instance_id == new_id, Volume.attach_state == "attaching"
                    )
                )
            )
        if new is None or new.private_ip is None:
            return "the new instance is gone"
        node = self.ctrl.node(new.node_id)
        await ctx.progress(0.6, f"moving {ctx.params['name']}'s address and volumes")
        await self.ctrl.networks.sync(new.network_id)
        await self._forget_neighbour(new, new.private_ip)
        async with self.ctrl.instances.lock(new_id):
            for vol in vols:
                try:
                    await node.volume_attach(new_id, vol.id, **volume_io_args(vol))
                except CorralError as err:
                    return f"plugging in {vol.id} failed: {err.message}"
                await self.ctrl.volumes._set(vol.id, attach_state="attached")
            await node.instance_relink(new_id)
        await ctx.progress(0.7, f"waiting for {new.name} to answer at {new.private_ip}")
        timeout = float(ctx.params.get("timeout") or BOOT_TIMEOUT)
        if not await self._address_up(
            node, new.private_ip, check, await health.vantage(self.ctrl, new)
        ):
            # a guest that does not watch its link learns its address by booting again
            await ctx.progress(
                0.75,
                f"{new.name} did not take its new address by itself "
                f"within {RELINK_WAIT:.0f} s; rebooting it",
            )
            async with self.ctrl.instances.lock(new_id):
                await node.instance_reboot(new_id, 10)
            after = timeout
        else:
            after = float(ctx.params.get("after_timeout") or min(AFTER_TIMEOUT, timeout))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + after
        quick = check.model_copy(update={"timeout": 1.0})
        why = await health.wait(self.ctrl, new, new.private_ip, quick, after)
        if why:
            return why
        started = ctx.params.get("cutover_at")
        if started is not None:  # the outage ends at its first steady answers
            await ctx.checkpoint(cutover_seconds=round(time.time() - started, 3))
        settle = min(SETTLE, after / 2)
        await ctx.progress(
            0.8,
            f"{new.name} passes its check at {new.private_ip}; it must keep passing "
            f"for {settle:.0f} s",
        )
        return await health.wait(
            self.ctrl,
            new,
            new.private_ip,
            quick,
            max(deadline - loop.time(), settle + 1.0),
            steady=settle,
        )

    async def _forget_neighbour(self, inst: Instance, address: str) -> None:
        async with self.ctrl.store.read() as s:
            net = await s.get(Network, inst.network_id) if inst.network_id else None
        if net is not None:
            await self.ctrl.node(inst.node_id).address_moved(self.ctrl.networks.spec(net), address)

    async def _address_up(
        self, node: Any, address: str, check: HealthCheck, namespace: str = ""
    ) -> bool:
        """Does anyone answer at ``address`` (the check passes, or a ping)?"""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RELINK_WAIT
        quick = check.model_copy(update={"timeout": 0.5})
        while loop.time() < deadline:
            if not await node.health_check(address, quick, namespace) or await node.ping(address):
                return True
        return False

    async def _finish(self, ctx: Any, old_id: str, new_id: str) -> None:
        async with self.ctrl.store.write() as s:
            await s.execute(delete(Tag).where(Tag.resource_id == new_id, Tag.key == TAG_REPLACES))
            old = await s.get(Instance, old_id)
        if old is not None and old.state != "terminated":
            await self.ctrl.instances.terminate(system_caller(old.account_id), old_id)

    async def _restore(self, ctx: Any, old_id: str, new_id: str, check: HealthCheck) -> None:
        """After the swap back: DHCP and DNS follow, the old instance starts again (with its
        volumes, from its spec), the new one goes."""
        async with self.ctrl.store.write() as s:
            old = await s.get(Instance, old_id)
            if old is None:
                return
            old.desired_state = "running"
        await self.ctrl.networks.sync(old.network_id)
        if old.private_ip:
            await self._forget_neighbour(old, old.private_ip)
        mgr = self.ctrl.instances
        async with mgr.lock(old_id):
            async with self.ctrl.store.read() as s:
                fresh = await s.get(Instance, old_id)
                spec = await mgr.spec(s, fresh) if fresh is not None else None
            if spec is not None:
                pid = await self.ctrl.node(old.node_id).instance_start(spec)
                await mgr._set(
                    old_id, state="running", pid=pid, stopped_at=None, started_at=utcnow()
                )
                async with self.ctrl.store.write() as s:
                    for vol in await s.scalars(
                        select(Volume).where(
                            Volume.instance_id == old_id, Volume.attach_state == "attaching"
                        )
                    ):
                        vol.attach_state = "attached"
        await self._discard(ctx, new_id)
        if old.private_ip:
            after = min(AFTER_TIMEOUT, float(ctx.params.get("timeout") or BOOT_TIMEOUT))
            why = await health.wait(
                self.ctrl, old, old.private_ip, check.model_copy(update={"timeout": 1.0}), after
            )
            if why:
                log.warning("replace rollback: %s does not answer again: %s", old.name, why)
