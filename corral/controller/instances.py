"""Instance operations: run, start, stop, reboot, terminate. Each request records intent in
one short transaction and hands the work to an operation; no transaction is held while a
node works. Failures leave nothing half-made: what the node created is destroyed and the
address freed."""

from __future__ import annotations

import builtins

import asyncio
import base64
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral import ids
from corral.controller import ipam, keys, scheduler, states
from corral.controller.accounts import Caller
from corral.errors import CorralError, Exists, Invalid, NotFound, WrongState
from corral.models import InstanceCreate
from corral.node.spec import InstanceSpec
from corral.store.models import Image, Instance, KeyPair, Network, Operation, utcnow
from corral.units import parse_size

if TYPE_CHECKING:
    from corral.controller.service import Controller

log = logging.getLogger(__name__)

MIN_MEMORY = 64 << 20
USER_DATA_MAX = 16 * 1024  # EC2's limit, before base64


def tap_name(iid: str) -> str:
    return "t" + iid.split("-", 1)[1][:12]


class Instances:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        self.locks: dict[str, asyncio.Lock] = {}
        ops = ctrl.ops
        ops.register("instance-run", self._run)
        ops.register("instance-start", self._start)
        ops.register("instance-stop", self._stop)
        ops.register("instance-reboot", self._reboot)
        ops.register("instance-terminate", self._terminate)

    def lock(self, iid: str) -> asyncio.Lock:
        return self.locks.setdefault(iid, asyncio.Lock())

    # -- lookups ---------------------------------------------------------------------------
    async def resolve(self, s: AsyncSession, caller: Caller, ref: str,
                      include_terminated: bool = False) -> Instance:
        """An instance of the caller's account by id or by name."""
        q = select(Instance).where(Instance.account_id == caller.account_id)
        if ids.is_id("instance", ref):
            q = q.where(Instance.id == ref)
        else:
            q = q.where(Instance.name == ref)
            if not include_terminated:
                q = q.where(Instance.state != "terminated")
        inst = (await s.scalars(q.order_by(Instance.launch_time.desc()))).first()
        if inst is None:
            raise NotFound(f"instance {ref} does not exist; `corral ls` lists yours",
                           field="instance", resource="instance")
        return inst

    async def get(self, caller: Caller, ref: str) -> Instance:
        async with self.ctrl.store.read() as s:
            return await self.resolve(s, caller, ref, include_terminated=True)

    async def list(self, caller: Caller, include_terminated: bool = True) -> builtins.list[Instance]:
        async with self.ctrl.store.read() as s:
            q = select(Instance).where(Instance.account_id == caller.account_id)
            if not include_terminated:
                q = q.where(Instance.state != "terminated")
            return list(await s.scalars(q.order_by(Instance.launch_time)))

    # -- run -------------------------------------------------------------------------------
    async def run(self, caller: Caller, req: InstanceCreate) -> tuple[Instance, Operation]:
        memory = parse_size(req.memory, field="memory", default_unit="M")
        if memory < MIN_MEMORY or memory % (1 << 20):
            raise Invalid(f"memory {req.memory} must be a whole number of MiB, at least 64M "
                          "(e.g. 256M)", field="memory")
        disk = parse_size(req.disk, field="disk", default_unit="G") if req.disk else None
        name = ids.check_name(req.name) if req.name else None
        user_data = (req.user_data or "").encode()
        if len(user_data) > USER_DATA_MAX:
            raise Invalid(f"user-data is {len(user_data)} bytes; the limit is 16 KiB",
                          field="user_data")
        try:
            inline = [keys.parse_public(k).public_key for k in req.public_keys]
        except Invalid as err:
            raise Invalid(err.message, field="public_keys") from err
        async with self.ctrl.store.write() as s:
            image = await self.ctrl.images.resolve(s, caller, req.image)
            if image.state != "available":
                raise WrongState(f"image {image.name} is {image.state}, not available",
                                 field="image", resource="image")
            if disk is None:
                disk = image.virtual_size
            if disk < image.virtual_size:
                raise Invalid(f"disk {disk >> 20} MiB is smaller than image {image.name} "
                              f"({image.virtual_size >> 20} MiB); give --disk "
                              f"{image.virtual_size >> 20}M or more", field="disk")
            ssh_keys = list(inline)
            for key_name in req.keys:
                kp = await s.scalar(select(KeyPair).where(KeyPair.account_id == caller.account_id,
                                                          KeyPair.name == key_name))
                if kp is None:
                    raise NotFound(f"key pair {key_name} does not exist; add it with "
                                   "`corral key add NAME FILE.pub`", field="keys",
                                   resource="key_pair")
                ssh_keys.append(kp.public_key)
            iid = ids.new_id("instance")
            if name is None:
                name = f"{image.name}-{iid[2:7]}"
            clash = await s.scalar(select(Instance.id).where(
                Instance.account_id == caller.account_id, Instance.name == name,
                Instance.state != "terminated"))
            if clash:
                raise Exists(f"an instance named {name} already exists ({clash}); pick another "
                             "name or remove it first", field="name", resource="instance")
            node = await scheduler.pick(s, memory, req.cpus)
            network = await self.ctrl.networks.default(s, node.id)
            inst = Instance(
                id=iid, account_id=caller.account_id, name=name, image_id=image.id,
                node_id=node.id, network_id=network.id, state="pending", desired_state="running",
                cpus=req.cpus, memory=memory, disk_size=disk, mac=await self._new_mac(s),
                restart_policy=req.restart_policy, stop_timeout=req.stop_timeout,
                net_limit_mbit=req.net_limit_mbit, metadata_tokens=req.metadata_tokens,
                metadata_hop_limit=req.metadata_hop_limit,
                user_data=user_data, ssh_keys=ssh_keys,
                key_name=req.keys[0] if req.keys else None, launch_time=utcnow(),
                reservation_id=ids.new_id("reservation"),
            )
            s.add(inst)
            await s.flush()
            inst.private_ip = await ipam.allocate(s, network, iid, req.address)
            op = self.ctrl.ops.new("instance-run", account_id=caller.account_id,
                                   target_kind="instance", target_id=iid,
                                   requested_by=caller.access_key_id)
            s.add(op)
        self.ctrl.ops.start(op)
        return inst, op

    async def _new_mac(self, s: AsyncSession) -> str:
        while True:
            mac = ids.new_mac()
            if not await s.scalar(select(Instance.id).where(Instance.mac == mac)):
                return mac

    async def spec(self, s: AsyncSession, inst: Instance) -> InstanceSpec:
        image = await s.get(Image, inst.image_id)
        network = await s.get(Network, inst.network_id)
        if image is None or network is None:
            raise CorralError(f"instance {inst.id} refers to a missing image or network")
        return InstanceSpec(
            id=inst.id, name=inst.name, image=image.digest, cpus=inst.cpus,
            cpu_limit=inst.cpu_limit, memory=inst.memory, disk_size=inst.disk_size, mac=inst.mac,
            address=inst.private_ip, network=self.ctrl.networks.spec(network), tap=tap_name(inst.id),
        )

    async def _load(self, iid: str) -> tuple[Instance, InstanceSpec]:
        async with self.ctrl.store.read() as s:
            inst = await s.get(Instance, iid)
            if inst is None:
                raise NotFound(f"instance {iid} is gone", resource="instance")
            return inst, await self.spec(s, inst)

    async def _run(self, ctx: Any) -> dict[str, Any]:
        iid = ctx.target_id
        async with self.lock(iid):
            inst, spec = await self._load(iid)
            if inst.desired_state != "running" or inst.state not in ("pending", "running"):
                return {"instance_id": iid, "state": inst.state}
            node = self.ctrl.node(inst.node_id)
            await ctx.progress(0.1, "registering the address with DHCP and DNS")
            await self.ctrl.networks.sync(inst.network_id)
            try:
                await ctx.progress(0.3, "creating the root disk and the network port")
                await node.instance_create(spec)
                await ctx.progress(0.6, "starting QEMU")
                pid = await node.instance_start(spec)
            except asyncio.CancelledError:
                if not self.ctrl.ops.closing:  # cancelled on request: leave nothing behind
                    await asyncio.shield(self._undo_run(inst, spec, "Client.UserCancelled: "
                                                        "the launch was cancelled"))
                raise
            except CorralError as err:
                await self._undo_run(inst, spec, f"Server.InternalError: {err.message}")
                raise
            except Exception as err:
                await self._undo_run(inst, spec, f"Server.InternalError: {err!r}")
                raise
            await self._set(iid, state="running", pid=pid, started_at=utcnow(), state_reason="")
            await ctx.progress(0.95, f"running as pid {pid}")
        return {"instance_id": iid, "pid": pid, "private_ip": inst.private_ip}

    async def _undo_run(self, inst: Instance, spec: InstanceSpec, reason: str) -> None:
        """A run that failed leaves nothing behind: no process, disk, tap or address."""
        with contextlib.suppress(Exception):
            await self.ctrl.node(inst.node_id).instance_destroy(inst.id, spec.tap)
        async with self.ctrl.store.write() as s:
            row = await s.get(Instance, inst.id)
            if row is not None:
                row.state = row.desired_state = "terminated"
                row.state_reason = reason
                row.terminated_at = utcnow()
                row.pid = None
                row.private_ip = None
                await ipam.release(s, inst.id)
        with contextlib.suppress(Exception):
            await self.ctrl.networks.sync(inst.network_id)

    async def _set(self, iid: str, **values: Any) -> None:
        async with self.ctrl.store.write() as s:
            row = await s.get(Instance, iid)
            if row is not None:
                for k, v in values.items():
                    setattr(row, k, v)

    # -- start, stop, reboot, terminate ----------------------------------------------------
    async def _request(self, caller: Caller, ref: str, request: str, op_type: str,
                       params: dict[str, Any], **changes: Any) -> tuple[Instance, Operation | None]:
        async with self.ctrl.store.write() as s:
            inst = await self.resolve(s, caller, ref, include_terminated=True)
            if not states.check(request, inst.state, inst.name):
                return inst, None
            for k, v in changes.items():
                setattr(inst, k, v)
            op = self.ctrl.ops.new(op_type, account_id=caller.account_id, target_kind="instance",
                                   target_id=inst.id, params=params,
                                   requested_by=caller.access_key_id)
            s.add(op)
        self.ctrl.ops.start(op)
        return inst, op

    async def start(self, caller: Caller, ref: str) -> tuple[Instance, Operation | None]:
        return await self._request(caller, ref, "start", "instance-start", {},
                                   desired_state="running", state="pending", state_reason="")

    async def stop(self, caller: Caller, ref: str, timeout: float | None = None,
                   force: bool = False) -> tuple[Instance, Operation | None]:
        return await self._request(caller, ref, "stop", "instance-stop",
                                   {"timeout": timeout, "force": force},
                                   desired_state="stopped", state="stopping",
                                   state_reason=f"User initiated ({utcnow():%Y-%m-%d %H:%M:%S} GMT)")

    async def reboot(self, caller: Caller, ref: str,
                     timeout: float | None = None) -> tuple[Instance, Operation | None]:
        return await self._request(caller, ref, "reboot", "instance-reboot", {"timeout": timeout})

    async def terminate(self, caller: Caller, ref: str, timeout: float | None = None,
                        force: bool = False) -> tuple[Instance, Operation | None]:
        return await self._request(caller, ref, "terminate", "instance-terminate",
                                   {"timeout": timeout, "force": force},
                                   desired_state="terminated", state="shutting-down",
                                   state_reason=f"User initiated ({utcnow():%Y-%m-%d %H:%M:%S} GMT)")

    def _timeout(self, inst: Instance, given: float | None) -> float:
        if given is not None:
            return float(given)
        if inst.stop_timeout is not None:
            return float(inst.stop_timeout)
        return self.ctrl.settings.stop_timeout

    async def _start(self, ctx: Any) -> dict[str, Any]:
        iid = ctx.target_id
        async with self.lock(iid):
            inst, spec = await self._load(iid)
            if inst.desired_state != "running":
                return {"state": inst.state}
            await ctx.progress(0.3, "starting QEMU")
            try:
                pid = await self.ctrl.node(inst.node_id).instance_start(spec)
            except CorralError as err:
                await self._set(iid, state="stopped", desired_state="stopped",
                                state_reason=f"Server.InternalError: {err.message}")
                raise
            await self._set(iid, state="running", pid=pid, started_at=utcnow(), stopped_at=None)
        return {"instance_id": iid, "pid": pid}

    async def _stop(self, ctx: Any) -> dict[str, Any]:
        iid = ctx.target_id
        async with self.lock(iid):
            inst, _ = await self._load(iid)
            if inst.desired_state != "stopped":
                return {"state": inst.state}
            timeout = self._timeout(inst, ctx.params.get("timeout"))
            force = bool(ctx.params.get("force"))
            await ctx.progress(0.2, "forcing power-off" if force
                               else f"asking the guest to power off (up to {timeout:.0f} s)")
            info = await self.ctrl.node(inst.node_id).instance_stop(iid, timeout, force)
            await self._set(iid, state="stopped", pid=None, stopped_at=utcnow())
        return {"instance_id": iid, "how": info.reason if info else "not running"}

    async def _reboot(self, ctx: Any) -> dict[str, Any]:
        iid = ctx.target_id
        async with self.lock(iid):
            inst, _ = await self._load(iid)
            if inst.state != "running":
                raise WrongState(f"instance {inst.name} is {inst.state}; start it first",
                                 resource="instance")
            timeout = self._timeout(inst, ctx.params.get("timeout"))
            await ctx.progress(0.2, "asking the guest to reboot")
            how = await self.ctrl.node(inst.node_id).instance_reboot(iid, timeout)
        return {"instance_id": iid, "how": "guest reboot" if how == "guest" else "hard reset"}

    async def _terminate(self, ctx: Any) -> dict[str, Any]:
        iid = ctx.target_id
        async with self.lock(iid):
            inst, spec = await self._load(iid)
            node = self.ctrl.node(inst.node_id)
            if inst.state != "terminated":
                timeout = self._timeout(inst, ctx.params.get("timeout"))
                await ctx.progress(0.2, "shutting down")
                await node.instance_stop(iid, timeout, bool(ctx.params.get("force")))
                await ctx.progress(0.6, "removing disk and network port")
                await node.instance_destroy(iid, spec.tap)
                async with self.ctrl.store.write() as s:
                    row = await s.get(Instance, iid)
                    if row is not None:
                        row.state = "terminated"
                        row.pid = None
                        row.private_ip = None
                        row.terminated_at = utcnow()
                        await ipam.release(s, iid)
                await self.ctrl.networks.sync(inst.network_id)
        self.locks.pop(iid, None)
        return {"instance_id": iid}

    async def rename(self, caller: Caller, ref: str, name: str) -> Instance:
        """A new name (and so new DNS names) for a live instance; DNS follows at once."""
        ids.check_name(name)
        async with self.ctrl.store.write() as s:
            inst = await self.resolve(s, caller, ref)
            if inst.name == name:
                return inst
            clash = await s.scalar(select(Instance.id).where(
                Instance.account_id == caller.account_id, Instance.name == name,
                Instance.state != "terminated"))
            if clash:
                raise Exists(f"an instance named {name} already exists ({clash})", field="name",
                             resource="instance")
            inst.name = name
        await self.ctrl.networks.sync(inst.network_id)
        return inst

    # -- odds and ends ---------------------------------------------------------------------
    async def user_data_b64(self, inst: Instance) -> str:
        return base64.b64encode(inst.user_data or b"").decode()

    async def by_address(self, network_id: str, address: str) -> Instance | None:
        async with self.ctrl.store.read() as s:
            return await s.scalar(select(Instance).where(
                Instance.network_id == network_id, Instance.private_ip == address,
                Instance.state != "terminated"))

    async def on_node(self, node_id: str) -> builtins.list[Instance]:
        async with self.ctrl.store.read() as s:
            return list(await s.scalars(select(Instance).where(
                Instance.node_id == node_id,
                or_(Instance.state != "terminated", Instance.desired_state != "terminated"))))


