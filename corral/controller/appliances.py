"""Appliances on the controller: the plan for a service file, and ``appliance-apply``, the
operation that converges on it: it creates the instances (with their data volumes) that are
missing, replaces those whose config changed (one at a time, each a ``replace`` with its health
check and rollback), starts stopped ones and removes those no longer wanted (their volumes are
kept). It is level-triggered: resumed after a crash it waits for replacements under way, makes
the plan again from what exists and goes on, so a second run finds nothing to do."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select

from corral.appliances import render
from corral.appliances.plan import Current, Facts, Plan, Step, VolumeFact, compute
from corral.appliances.spec import ApplianceSpec, check_inline
from corral.controller import health
from corral.controller.accounts import Caller
from corral.controller.instances import LaunchOptions
from corral.controller.operations import DONE
from corral.controller.replace import system_caller
from corral.errors import CorralError, WrongState
from corral.models import InstanceCreate
from corral.naming import account_zone
from corral.node.spec import HealthCheck
from corral.store.models import Image, Instance, Operation, Tag, Volume

if TYPE_CHECKING:
    from corral.controller.service import Controller

log = logging.getLogger(__name__)


class Appliances:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        ctrl.ops.register("appliance-apply", self._apply)

    # -- plan ------------------------------------------------------------------------------
    async def desired(self, caller: Caller, spec: ApplianceSpec) -> list[render.Desired]:
        check_inline(spec)
        image_ids = {}
        async with self.ctrl.store.read() as s:
            for name, svc in spec.services.items():
                try:
                    image = await self.ctrl.images.resolve(s, caller, svc.image)
                except CorralError as err:
                    raise type(err)(
                        f"services.{name}.image: {err.message}",
                        field=f"services.{name}.image",
                        resource="image",
                    ) from err
                image_ids[name] = image.id
        # names resolve within the account (naming.py): its zone is the appliance's domain
        zone = account_zone(caller.account_id, self.ctrl.settings.domain)
        return render.desired(spec, image_ids, zone)

    async def facts(
        self, caller: Caller, spec: ApplianceSpec, desired: list[render.Desired]
    ) -> Facts:
        names = [d.name for d in desired]
        vol_names = [d.volume_name(v) for d in desired for v in d.volumes]
        async with self.ctrl.store.read() as s:
            tagged = select(Tag.resource_id).where(
                Tag.account_id == caller.account_id,
                Tag.key == render.TAG_APPLIANCE,
                Tag.value == spec.name,
            )
            rows = list(
                await s.scalars(
                    select(Instance).where(
                        Instance.account_id == caller.account_id,
                        Instance.state != "terminated",
                        or_(Instance.name.in_(names), Instance.id.in_(tagged)),
                    )
                )
            )
            tags = await self.ctrl.tags.of(s, caller.account_id, [r.id for r in rows])
            named = list(
                await s.execute(
                    select(Tag.value, Volume)
                    .join(Volume, Volume.id == Tag.resource_id)
                    .where(
                        Tag.account_id == caller.account_id,
                        Tag.key == "Name",
                        Tag.resource_type == "volume",
                        or_(Tag.value.in_(vol_names), Volume.instance_id.in_([r.id for r in rows])),
                    )
                )
            )
            inst_names = {
                i.id: i.name
                for i in await s.scalars(
                    select(Instance).where(
                        Instance.id.in_([v.instance_id for _, v in named if v.instance_id])
                    )
                )
            }
            image_names = {
                i.id: f"{i.name}:{i.version}"
                for i in await s.scalars(
                    select(Image).where(
                        Image.id.in_(
                            {d.image_id for d in desired}
                            | {
                                render.parse_parts(t.get(render.TAG_PARTS, "")).get("image", "")
                                for t in tags.values()
                            }
                        )
                    )
                )
            }
        current = []
        for r in rows:
            t = tags.get(r.id, {})
            if "corral:replaces" in t:
                continue  # a replacement under way, not a member yet
            current.append(
                Current(
                    id=r.id,
                    name=r.name,
                    state=r.state,
                    appliance=t.get(render.TAG_APPLIANCE),
                    service=t.get(render.TAG_SERVICE),
                    config=t.get(render.TAG_CONFIG),
                    parts=t.get(render.TAG_PARTS, ""),
                )
            )
        volumes = {
            name: VolumeFact(
                id=v.id,
                state=v.state,
                attached_to=inst_names.get(v.instance_id or ""),
                size_gib=v.size,
            )
            for name, v in named
        }
        return Facts(current=current, volumes=volumes, image_names=image_names)

    async def plan(self, caller: Caller, spec: ApplianceSpec) -> Plan:
        desired = await self.desired(caller, spec)
        return compute(spec.name, desired, await self.facts(caller, spec, desired))

    # -- apply -----------------------------------------------------------------------------
    async def apply(self, caller: Caller, spec: ApplianceSpec) -> tuple[Plan, Operation | None]:
        """The plan, and the operation carrying it out (none when nothing is to change)."""
        plan = await self.plan(caller, spec)
        if not plan.changes:
            return plan, None
        busy = await self._running_apply(spec.name, caller.account_id)
        if busy is not None:
            raise WrongState(
                f"appliance {spec.name} is being applied already (operation "
                f"{busy}); `corral op wait {busy}`",
                resource="appliance",
            )
        op = await self.ctrl.ops.submit(
            "appliance-apply",
            account_id=caller.account_id,
            target_kind="appliance",
            target_id=spec.name,
            requested_by=caller.access_key_id,
            params={"spec": spec.model_dump(mode="json")},
        )
        return plan, op

    async def _running_apply(self, name: str, account_id: str) -> str | None:
        async with self.ctrl.store.read() as s:
            return await s.scalar(
                select(Operation.id).where(
                    Operation.type == "appliance-apply",
                    Operation.target_id == name,
                    Operation.account_id == account_id,
                    Operation.status.in_(("pending", "running", "cancelling")),
                )
            )

    async def _apply(self, ctx: Any) -> dict[str, Any]:
        spec = ApplianceSpec.model_validate(ctx.params["spec"])
        caller = system_caller(ctx.account_id)
        await self._wait_replacements(ctx, caller, spec)
        desired = {d.name: d for d in await self.desired(caller, spec)}
        plan = compute(
            spec.name,
            list(desired.values()),
            await self.facts(caller, spec, list(desired.values())),
        )
        done: dict[str, list[str]] = {}
        todo = [s for s in plan.steps if s.action != "unchanged"]
        for n, step in enumerate(todo):
            await ctx.progress(n / max(len(todo), 1), f"{step.action} {step.instance}")
            d = desired.get(step.instance)
            if step.action == "create" and d is not None:
                await self._create(ctx, caller, spec, d)
            elif step.action == "replace" and d is not None:
                await self._replace(ctx, caller, spec, d, step)
            elif step.action == "start" and step.instance_id:
                await self._wait(self.ctrl.instances.start(caller, step.instance_id))
            elif step.action == "remove" and step.instance_id:
                await self._wait(self.ctrl.instances.terminate(caller, step.instance_id))
            done.setdefault(step.action, []).append(step.instance)
        return {"appliance": spec.name, **done}

    async def _wait_replacements(self, ctx: Any, caller: Caller, spec: ApplianceSpec) -> None:
        """Replacements left by an interrupted run finish (or roll back) first."""
        async with self.ctrl.store.read() as s:
            tagged = select(Tag.resource_id).where(
                Tag.account_id == caller.account_id,
                Tag.key == render.TAG_APPLIANCE,
                Tag.value == spec.name,
            )
            ops = list(
                await s.scalars(
                    select(Operation.id).where(
                        Operation.type == "instance-replace",
                        Operation.target_id.in_(tagged),
                        Operation.status.in_(("pending", "running", "cancelling")),
                    )
                )
            )
        for op_id in ops:
            await ctx.progress(0.0, f"waiting for replacement {op_id} under way")
            await self._until_done(op_id)

    async def _until_done(self, op_id: str) -> Operation:
        while True:
            op = await self.ctrl.ops.wait(op_id, timeout=60)
            if op.status in DONE:
                return op

    async def _wait(self, coro: Any) -> None:
        _, op = await coro
        if op is not None:
            done = await self._until_done(op.id)
            if done.status != "succeeded":
                raise CorralError((done.error or {}).get("message", done.status))

    def _launch(self, d: render.Desired) -> InstanceCreate:
        svc = d.svc
        fields: dict[str, Any] = {
            "image": d.image_id,
            "name": d.name,
            "instance_type": svc.type,
            "disk": svc.disk,
            "keys": svc.keys,
            "public_keys": svc.public_keys,
            "user_data": d.user_data,
            "restart_policy": svc.restart,
            "ha": svc.ha or None,
        }
        if svc.type is None:
            fields |= {"cpus": svc.cpus or 1, "memory": svc.memory or "256M"}
        return InstanceCreate.model_validate({k: v for k, v in fields.items() if v is not None})

    async def _volumes(self, caller: Caller, spec: ApplianceSpec, d: render.Desired) -> list[str]:
        """The instance's data volumes, made (formatted, labelled) where missing."""
        out = []
        for v in d.volumes:
            name = d.volume_name(v)
            async with self.ctrl.store.read() as s:
                found = await self.ctrl.volumes._named(s, caller.account_id, name)
            if found:
                out.append(found[0])
                continue
            row, op = await self.ctrl.volumes.create(
                caller,
                v.gib,
                None,
                name=name,
                fs="ext4",
                label=v.name,
                tags={render.TAG_APPLIANCE: spec.name, render.TAG_SERVICE: d.service},
            )
            if op is not None:
                done = await self._until_done(op.id)
                if done.status != "succeeded":
                    raise CorralError(f"volume {name}: {(done.error or {}).get('message')}")
            out.append(row.id)
        return out

    async def _create(
        self, ctx: Any, caller: Caller, spec: ApplianceSpec, d: render.Desired
    ) -> None:
        vids = await self._volumes(caller, spec, d)
        made, ops = await self.ctrl.instances.launch(
            caller, self._launch(d), LaunchOptions(tags=d.tags(spec.name), volumes=vids)
        )
        for op in ops:
            done = await self._until_done(op.id)
            if done.status != "succeeded":
                raise CorralError(
                    f"{d.name} did not start: {(done.error or {}).get('message', done.status)}"
                )
        inst = made[0]
        async with self.ctrl.store.read() as s:
            fresh = await s.get(Instance, inst.id)
        if fresh is None or fresh.private_ip is None:
            raise CorralError(f"{d.name} is gone")
        h = d.svc.health
        await ctx.ops._event(
            ctx.id, "progress", f"waiting for {d.name} to pass its health check", None
        )
        why = await health.wait(
            self.ctrl, fresh, fresh.private_ip, HealthCheck(port=h.port, path=h.path), h.timeout
        )
        if why:
            raise CorralError(
                f"{d.name} was created but fails its health check: {why}; it is "
                "left running for a look (`corral console`), `apply` again "
                "once fixed"
            )

    async def _replace(
        self, ctx: Any, caller: Caller, spec: ApplianceSpec, d: render.Desired, step: Step
    ) -> None:
        vids = await self._volumes(caller, spec, d)
        assert step.instance_id is not None
        async with self.ctrl.store.read() as s:
            attached = set(
                await s.scalars(select(Volume.id).where(Volume.instance_id == step.instance_id))
            )
        h = d.svc.health
        launch = self._launch(d).model_dump(exclude_none=True)
        launch.pop("name", None)
        _, op = await self.ctrl.replacements.request(
            caller,
            step.instance_id,
            None,
            check=HealthCheck(port=h.port, path=h.path),
            launch=launch,
            tags=d.tags(spec.name),
            extra_volumes=[v for v in vids if v not in attached],
            timeout=h.timeout,
        )
        done = await self._until_done(op.id)
        if done.status != "succeeded":
            msg = (done.error or {}).get("message", done.status)
            raise CorralError(
                f"replacing {d.name} failed: {msg}; the rest of the plan was not applied"
            )
