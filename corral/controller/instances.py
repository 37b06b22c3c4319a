"""Instance operations: run, start, stop, reboot, terminate. Each request records intent in
one short transaction and hands the work to an operation; no transaction is held while a
node works. Failures leave nothing half-made: what the node created is destroyed and the
address freed."""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from corral import ids
from corral.controller import (
    instance_types,
    ipam,
    keys,
    network_push,
    overlays,
    placement_claims,
    quotas,
    scheduler,
    states,
)
from corral.controller.accounts import Caller
from corral.controller.claims import ClaimLock
from corral.controller.volumes import LaunchVolume
from corral.errors import (
    CorralError,
    DryRunPassed,
    Exists,
    Invalid,
    NoResources,
    NotFound,
    WrongState,
)
from corral.models import InstanceCreate
from corral.node.spec import DiskIo, InstanceSpec
from corral.store.models import (
    Image,
    Instance,
    InstanceSecurityGroup,
    KeyPair,
    Network,
    Operation,
    utcnow,
)
from corral.units import check_disk, parse_size

if TYPE_CHECKING:
    from corral.controller.service import Controller

log = logging.getLogger(__name__)

MIN_MEMORY = 64 << 20
USER_DATA_MAX = 16 * 1024  # EC2's limit, before base64


@dataclass
class LaunchOptions:
    """What EC2's RunInstances adds to a plain run: a count range in one reservation,
    idempotency, security groups, tags, and a host name that is only a wish."""

    min_count: int = 1
    max_count: int = 1
    client_token: str | None = None
    security_groups: list[str] = field(default_factory=list)  # ids (sg-…) or names
    tags: dict[str, str] = field(default_factory=dict)
    name_is_hint: bool = False  # the Name tag: used when it is a free host name
    dry_run: bool = False
    volumes: list[str] = field(default_factory=list)  # ids attached before the first start
    disable_api_termination: bool = False
    shutdown_behavior: str = "stop"  # what a power-off from inside the guest means
    monitoring: bool = False
    block_devices: list[LaunchVolume] = field(default_factory=list)  # made for each instance
    root_delete_on_termination: bool | None = None  # None: the image's (true)
    root_volume_type: str | None = None  # None: the image's (standard)
    volume_tags: dict[str, str] = field(default_factory=dict)  # on the volumes made at launch
    subnet: str | None = None  # subnet-…; None: the default VPC's default subnet


def _user_initiated() -> str:
    """The state reason EC2 gives a stop or terminate the user asked for."""
    return f"User initiated ({utcnow():%Y-%m-%d %H:%M:%S} GMT)"


def tap_name(iid: str) -> str:
    return "t" + iid.split("-", 1)[1][:12]


class Instances:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        ops = ctrl.ops
        ops.register("instance-run", self._run)
        ops.register("instance-start", self._start)
        ops.register("instance-stop", self._stop)
        ops.register("instance-reboot", self._reboot)
        ops.register("instance-terminate", self._terminate)

    def lock(self, iid: str) -> ClaimLock:
        """The instance's lock: a claim in the database, so one operation at a time works on
        it whichever controller runs it."""
        return self.ctrl.claims.lock(iid)

    # -- lookups ---------------------------------------------------------------------------
    async def resolve(
        self, s: AsyncSession, caller: Caller, ref: str, include_terminated: bool = False
    ) -> Instance:
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
            raise NotFound(
                f"instance {ref} does not exist; `corral ls` lists yours",
                field="instance",
                resource="instance",
            )
        return inst

    async def get(self, caller: Caller, ref: str) -> Instance:
        async with self.ctrl.store.read() as s:
            return await self.resolve(s, caller, ref, include_terminated=True)

    async def list(
        self, caller: Caller, include_terminated: bool = True
    ) -> builtins.list[Instance]:
        async with self.ctrl.store.read() as s:
            q = select(Instance).where(Instance.account_id == caller.account_id)
            if not include_terminated:
                q = q.where(Instance.state != "terminated")
            return list(await s.scalars(q.order_by(Instance.launch_time)))

    # -- run -------------------------------------------------------------------------------
    async def run(self, caller: Caller, req: InstanceCreate) -> tuple[Instance, Operation]:
        opts = LaunchOptions(
            tags=dict(req.tags), security_groups=list(req.security_groups), subnet=req.subnet
        )
        insts, ops = await self.launch(caller, req, opts)
        return insts[0], ops[0]

    async def launch(
        self, caller: Caller, req: InstanceCreate, opts: LaunchOptions
    ) -> tuple[builtins.list[Instance], builtins.list[Operation]]:
        """Run ``min_count``..``max_count`` instances in one reservation, all or nothing below
        ``min_count``. With a client token already used, return that launch's instances."""
        if not 1 <= opts.min_count <= opts.max_count:
            raise Invalid(
                f"MinCount {opts.min_count} and MaxCount {opts.max_count} must be at "
                "least 1 with MinCount <= MaxCount",
                field="MinCount",
            )
        cpu_limit = cpu_baseline = 0.0
        if req.instance_type:
            itype = instance_types.get(req.instance_type)
            cpus, memory, cpu_limit = itype.vcpus, itype.memory, itype.cpu_limit
            cpu_baseline = itype.baseline
        else:
            cpus = req.cpus
            memory = parse_size(req.memory, field="memory", default_unit="M")
        if memory < MIN_MEMORY or memory % (1 << 20):
            raise Invalid(
                f"memory {req.memory} must be a whole number of MiB, at least 64M (e.g. 256M)",
                field="memory",
            )
        disk = check_disk(req.disk) if req.disk else None
        wish = req.name
        if wish is not None and not opts.name_is_hint:
            ids.check_name(wish)
        user_data = (req.user_data or "").encode()
        if len(user_data) > USER_DATA_MAX:
            raise Invalid(
                f"user-data is {len(user_data)} bytes; the limit is 16 KiB", field="user_data"
            )
        try:
            inline = [keys.parse_public(k).public_key for k in req.public_keys]
        except Invalid as err:
            raise Invalid(err.message, field="public_keys") from err
        async with self.ctrl.store.write() as s:
            if opts.client_token:
                done = list(
                    await s.scalars(
                        select(Instance)
                        .where(
                            Instance.account_id == caller.account_id,
                            Instance.client_token == opts.client_token,
                        )
                        .order_by(Instance.launch_time)
                    )
                )
                if done:
                    first = done[0]
                    if (ids.is_id("image", req.image) and first.image_id != req.image) or (
                        req.instance_type and first.instance_type != req.instance_type
                    ):
                        raise Invalid(
                            f"client token {opts.client_token!r} was used for a "
                            "launch with other parameters; use a new token",
                            field="ClientToken",
                            ec2_code="IdempotentParameterMismatch",
                        )
                    if opts.dry_run:
                        raise DryRunPassed("RunInstances would have succeeded")
                    return done, []
            image = await self.ctrl.images.resolve(s, caller, req.image)
            if image.state != "available":
                raise WrongState(
                    f"image {image.name} is {image.state}, not available",
                    field="image",
                    resource="image",
                )
            if disk is None:
                disk = image.virtual_size
            if disk < image.virtual_size:
                raise Invalid(
                    f"disk {disk >> 20} MiB is smaller than image {image.name} "
                    f"({image.virtual_size >> 20} MiB); give --disk "
                    f"{image.virtual_size >> 20}M or more",
                    field="disk",
                )
            ssh_keys = list(inline)
            for key_name in req.keys:
                kp = await s.scalar(
                    select(KeyPair).where(
                        KeyPair.account_id == caller.account_id, KeyPair.name == key_name
                    )
                )
                if kp is None:
                    raise NotFound(
                        f"key pair {key_name} does not exist; add it with "
                        "`corral key add NAME FILE.pub`",
                        field="keys",
                        resource="key_pair",
                    )
                ssh_keys.append(kp.public_key)
            subnet = await self.ctrl.vpcs.launch_subnet(s, caller, opts.subnet, req.zone)
            groups = await self.ctrl.security_groups.for_vpc(
                s, caller, opts.security_groups or ["default"], subnet.vpc_id
            )
            policy = scheduler.Policy.from_settings(self.ctrl.settings)
            pg = None
            if req.placement_group:
                pg = await self.ctrl.placement_groups.resolve(s, caller, req.placement_group)
            need = scheduler.Request(
                memory=memory,
                cores=cpu_limit or float(cpus),
                disk=disk,
                arch=image.arch,
                zone=req.zone,
                node=req.node,
                selector=dict(req.node_selector),
                account_id=caller.account_id,
                group=scheduler.Group(pg.id, pg.name, pg.strategy) if pg else None,
                exclusion={k: opts.tags[k] for k in policy.exclusion_keys if k in opts.tags},
            )
            max_count = opts.max_count
            room = await quotas.instance_headroom(
                s, self.ctrl.settings, caller.account_id, cpus, memory
            )
            if room is not None:
                if room < opts.min_count:
                    raise await quotas.launch_refusal(
                        s, self.ctrl.settings, caller.account_id, cpus, memory, opts.min_count
                    )
                max_count = min(max_count, room)  # as EC2: up to what the quotas allow
            reservation = ids.new_id("reservation")
            made: builtins.list[Instance] = []
            for n in range(max_count):
                try:
                    got = await scheduler.place(s, need, policy)
                except NoResources:
                    if n >= opts.min_count:
                        break
                    raise
                secondary = None
                if req.ha:  # the replica's node (controller/replicas.py), never the primary's
                    secondary = await scheduler.secondary(s, need, got.node_id, policy)
                iid = ids.new_id("instance")
                name = await self._pick_name(
                    s, caller, wish if n == 0 else None, image, iid, strict=not opts.name_is_hint
                )
                network = await self.ctrl.networks.for_subnet(s, subnet, got.node_id)
                inst = Instance(
                    id=iid,
                    account_id=caller.account_id,
                    name=name,
                    image_id=image.id,
                    node_id=got.node_id,
                    network_id=network.id,
                    subnet_id=subnet.id,
                    placement_group_id=pg.id if pg else None,
                    state="pending",
                    desired_state="running",
                    instance_type=req.instance_type or "",
                    cpus=cpus,
                    cpu_limit=cpu_limit,
                    cpu_baseline=cpu_baseline,
                    memory=memory,
                    disk_size=disk,
                    mac=await self._new_mac(s),
                    restart_policy=req.restart_policy,
                    stop_timeout=req.stop_timeout,
                    user_data=user_data,
                    ssh_keys=ssh_keys,
                    net_limit_mbit=req.net_limit_mbit,
                    metadata_tokens=req.metadata_tokens,
                    metadata_hop_limit=req.metadata_hop_limit,
                    key_name=req.keys[0] if req.keys else None,
                    launch_time=utcnow(),
                    reservation_id=reservation,
                    client_token=opts.client_token,
                    disable_api_termination=opts.disable_api_termination,
                    shutdown_behavior=opts.shutdown_behavior,
                    monitoring="enabled" if opts.monitoring else "disabled",
                    ha=bool(req.ha),
                    secondary_node_id=secondary.id if secondary is not None else None,
                    replica_state="syncing" if secondary is not None else "",
                )
                placement_claims.hold(inst, got)
                s.add(inst)
                await s.flush()
                made_volumes = []
                if image.root_device_type == "ebs" and image.root_snapshot_id:
                    root = self.ctrl.volumes.new_root(inst, image)  # boots from a volume
                    if opts.root_delete_on_termination is not None:
                        root.delete_on_termination = opts.root_delete_on_termination
                    if opts.root_volume_type is not None:
                        root.volume_type = opts.root_volume_type
                    s.add(root)
                    made_volumes.append(root)
                elif opts.root_delete_on_termination is not None or opts.root_volume_type:
                    raise Invalid(
                        f"image {image.id} keeps its root on the instance (instance-store): "
                        "there is no root volume to keep, delete or type; leave "
                        "DeleteOnTermination and VolumeType of the root device out",
                        field="BlockDeviceMapping.Ebs.DeleteOnTermination",
                        ec2_code="InvalidParameterCombination",
                    )
                for want in opts.block_devices:
                    made_volumes.append(
                        await self.ctrl.volumes.new_at_launch(s, caller, inst, want)
                    )
                # tags for the volumes made at this launch: with none made (the image keeps its
                # root on the instance, no mapping asks for one) they tag nothing, as on AWS for
                # an instance-store image; Ansible's ec2_instance always sends them with a name
                if opts.volume_tags:
                    await s.flush()
                    for vol in made_volumes:
                        await self.ctrl.tags.apply(
                            s, caller.account_id, vol.id, "volume", opts.volume_tags
                        )
                inst.private_ip = await ipam.allocate(
                    s, network, iid, req.address if n == 0 else None
                )
                for g in groups:
                    s.add(InstanceSecurityGroup(instance_id=iid, group_id=g.id))
                if opts.tags:
                    await self.ctrl.tags.apply(s, caller.account_id, iid, "instance", opts.tags)
                if opts.volumes and n == 0:
                    await self.ctrl.volumes.attach_at_launch(s, caller, inst, opts.volumes)
                made.append(inst)
            await quotas.enforce(
                s,
                self.ctrl.settings,
                caller.account_id,
                "instances",
                "vcpus",
                "memory_mib",
                "volumes",
                "volume_gib",
            )
            if opts.dry_run:
                raise DryRunPassed("RunInstances would have succeeded")
            ops = []
            for inst in made:
                op = self.ctrl.ops.new(
                    "instance-run",
                    account_id=caller.account_id,
                    target_kind="instance",
                    target_id=inst.id,
                    requested_by=caller.access_key_id,
                )
                s.add(op)
                ops.append(op)
        for op in ops:
            self.ctrl.ops.start(op)
        return made, ops

    async def _pick_name(
        self,
        s: AsyncSession,
        caller: Caller,
        wish: str | None,
        image: Image,
        iid: str,
        strict: bool,
    ) -> str:
        """The wished-for host name when it is valid and free (an error when ``strict``),
        else ``<image>-<5 hex of the id>``."""
        if wish is not None:
            valid = True
            if not strict:
                try:
                    ids.check_name(wish)
                except Invalid:
                    valid = False
            if valid:
                clash = await s.scalar(
                    select(Instance.id).where(
                        Instance.account_id == caller.account_id,
                        Instance.name == wish,
                        Instance.state != "terminated",
                    )
                )
                if clash is None:
                    return wish
                if strict:
                    raise Exists(
                        f"an instance named {wish} already exists ({clash}); pick "
                        "another name or remove it first",
                        field="name",
                        resource="instance",
                    )
        base = re_name(image.name)
        # five hex digits of the id, more when those clash (a thousand instances of one image
        # make a clash of five digits likely)
        for digits in (5, 7, 9, 17):
            name = f"{base}-{iid[2 : 2 + digits]}"
            if not await s.scalar(
                select(Instance.id).where(
                    Instance.account_id == caller.account_id,
                    Instance.name == name,
                    Instance.state != "terminated",
                )
            ):
                break
        return name

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
        root = await self.ctrl.volumes.root_of(s, inst.id)
        return InstanceSpec(
            id=inst.id,
            name=inst.name,
            image=image.digest,
            cpus=inst.cpus,
            cpu_limit=inst.cpu_limit,
            memory=inst.memory,
            disk_size=inst.disk_size,
            mac=inst.mac,
            address=inst.private_ip,
            network=self.ctrl.networks.spec(network),
            tap=tap_name(inst.id),
            volumes=await self.ctrl.volumes.attachments(s, inst.id),
            root_volume=root.id if root is not None else None,
            cpu_baseline=inst.cpu_baseline,
            cpu_credit_mode=inst.cpu_credits,
            cpu_credit_max=inst.cpu_baseline * 3600 * self.ctrl.settings.cpu_credit_max_hours,
            ha=bool(inst.ha),  # failure handling (issue 16): fenced; nodes check the generation
            generation=inst.generation or 1,
            **disk_limits(inst.instance_type),
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
                await self.ctrl.image_push.ensure(inst.node_id, spec.image)
                if spec.root_volume is not None:
                    await self.ctrl.volumes.ensure_root(iid)
                await self.ctrl.volumes.ensure_launch_volumes(iid)
                await node.instance_create(spec)
                await ctx.progress(0.6, "starting QEMU")
                pid = await node.instance_start(spec)
            except asyncio.CancelledError:
                if not self.ctrl.ops.closing:  # cancelled on request: leave nothing behind
                    await asyncio.shield(
                        self._undo_run(inst, spec, "Client.UserCancelled: the launch was cancelled")
                    )
                raise
            except CorralError as err:
                await self._undo_run(inst, spec, f"Server.InternalError: {err.message}")
                raise
            except Exception as err:
                if ctx.runs_again(err):  # the store was busy: run again, nothing to undo
                    raise
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
                await placement_claims.release(s, row)
        with contextlib.suppress(Exception):
            await self.ctrl.instance_released(inst.id)
        with contextlib.suppress(Exception):
            await self.ctrl.networks.sync(inst.network_id)

    async def _set(self, iid: str, **values: Any) -> None:
        async with self.ctrl.store.write() as s:
            row = await s.get(Instance, iid)
            if row is not None:
                for k, v in values.items():
                    setattr(row, k, v)

    # -- start, stop, reboot, terminate ----------------------------------------------------
    async def _request(
        self,
        caller: Caller,
        ref: str,
        request: str,
        op_type: str,
        params: dict[str, Any],
        dry_run: bool = False,
        **changes: Any,
    ) -> tuple[Instance, Operation | None]:
        async with self.ctrl.store.write() as s:
            inst = await self.resolve(s, caller, ref, include_terminated=True)
            if (
                request == "terminate"
                and inst.disable_api_termination
                and inst.state not in ("terminated", "shutting-down")
            ):  # terminating what is already gone asks nothing of the protection (as in EC2)
                raise WrongState(
                    f"The instance '{inst.id}' may not be terminated. Modify its "
                    "'disableApiTermination' instance attribute and try again.",
                    resource="instance",
                    ec2_code="OperationNotPermitted",
                )
            acts = states.check(request, inst.state, inst.name)
            if dry_run:
                raise DryRunPassed(f"{request} would have succeeded")
            if not acts:
                return inst, None
            for k, v in changes.items():
                setattr(inst, k, v)
            op = self.ctrl.ops.new(
                op_type,
                account_id=caller.account_id,
                target_kind="instance",
                target_id=inst.id,
                params=params,
                requested_by=caller.access_key_id,
            )
            s.add(op)
        self.ctrl.ops.start(op)
        return inst, op

    async def start(
        self, caller: Caller, ref: str, dry_run: bool = False
    ) -> tuple[Instance, Operation | None]:
        return await self._request(
            caller,
            ref,
            "start",
            "instance-start",
            {},
            dry_run,
            desired_state="running",
            state="pending",
            state_reason="",
        )

    async def stop(
        self,
        caller: Caller,
        ref: str,
        timeout: float | None = None,
        force: bool = False,
        dry_run: bool = False,
    ) -> tuple[Instance, Operation | None]:
        return await self._request(
            caller,
            ref,
            "stop",
            "instance-stop",
            {"timeout": timeout, "force": force},
            dry_run,
            desired_state="stopped",
            state="stopping",
            state_reason=_user_initiated(),
        )

    async def reboot(
        self, caller: Caller, ref: str, timeout: float | None = None, dry_run: bool = False
    ) -> tuple[Instance, Operation | None]:
        return await self._request(
            caller, ref, "reboot", "instance-reboot", {"timeout": timeout}, dry_run
        )

    async def terminate(
        self,
        caller: Caller,
        ref: str,
        timeout: float | None = None,
        force: bool = False,
        dry_run: bool = False,
    ) -> tuple[Instance, Operation | None]:
        return await self._request(
            caller,
            ref,
            "terminate",
            "instance-terminate",
            {"timeout": timeout, "force": force},
            dry_run,
            desired_state="terminated",
            state="shutting-down",
            state_reason=_user_initiated(),
        )

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
                await self._set(
                    iid,
                    state="stopped",
                    desired_state="stopped",
                    state_reason=f"Server.InternalError: {err.message}",
                )
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
            await ctx.progress(
                0.2,
                "forcing power-off"
                if force
                else f"asking the guest to power off (up to {timeout:.0f} s)",
            )
            info = await self.ctrl.node(inst.node_id).instance_stop(iid, timeout, force)
            await self._set(iid, state="stopped", pid=None, stopped_at=utcnow())
        # its MAC leaves the subnet's segment on the other nodes (controller/overlays.py)
        with contextlib.suppress(CorralError):
            await self.ctrl.overlays.sync()
        return {"instance_id": iid, "how": info.reason if info else "not running"}

    async def _reboot(self, ctx: Any) -> dict[str, Any]:
        iid = ctx.target_id
        async with self.lock(iid):
            inst, _ = await self._load(iid)
            if inst.state != "running":
                raise WrongState(
                    f"instance {inst.name} is {inst.state}; start it first", resource="instance"
                )
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
                        await placement_claims.release(s, row)
                await self.ctrl.instance_released(iid)
                await self.ctrl.networks.sync(inst.network_id)
        self.ctrl.claims.forget(iid)
        return {"instance_id": iid}

    async def rename(self, caller: Caller, ref: str, name: str) -> Instance:
        """A new name (and so new DNS names) for a live instance; DNS follows at once."""
        ids.check_name(name)
        async with self.ctrl.store.write() as s:
            inst = await self.resolve(s, caller, ref)
            if inst.name == name:
                return inst
            clash = await s.scalar(
                select(Instance.id).where(
                    Instance.account_id == caller.account_id,
                    Instance.name == name,
                    Instance.state != "terminated",
                )
            )
            if clash:
                raise Exists(
                    f"an instance named {name} already exists ({clash})",
                    field="name",
                    resource="instance",
                )
            old = inst.name
            inst.name = name
            public = (await self.ctrl.elastic_ips.by_instance(s, [inst.id])).get(inst.id)
            # its names on every node of its subnet, recorded with the name itself
            net = await s.get(Network, inst.network_id) if inst.network_id else None
            segment = [n.id for n in await overlays.vpc_networks(s, net)] if net else []
            pushes = await self.ctrl.network_pushes.record(s, segment, why="an instance renamed")
        waiting = await self.ctrl.network_pushes.settle(pushes)
        if public:
            await self.ctrl.elastic_ips.publish(
                inst.node_id, put={name: public}, remove=[old], strict=not waiting
            )
        return inst

    async def modify(
        self,
        caller: Caller,
        ref: str,
        instance_type: str | None = None,
        user_data: bytes | None = None,
        dry_run: bool = False,
    ) -> Instance:
        """Change a stopped instance's type or user-data (EC2's ModifyInstanceAttribute)."""
        itype = instance_types.get(instance_type) if instance_type is not None else None
        if user_data is not None and len(user_data) > USER_DATA_MAX:
            raise Invalid(
                f"user-data is {len(user_data)} bytes; the limit is 16 KiB", field="UserData"
            )
        async with self.ctrl.store.write() as s:
            inst = await self.resolve(s, caller, ref, include_terminated=True)
            states.check("modify", inst.state, inst.id)
            if dry_run:
                raise DryRunPassed("ModifyInstanceAttribute would have succeeded")
            if itype is not None:
                policy = scheduler.Policy.from_settings(self.ctrl.settings)
                await placement_claims.resize(s, inst, itype.memory, itype.cores, policy)
                inst.instance_type = itype.name
                inst.cpus, inst.memory, inst.cpu_limit = itype.vcpus, itype.memory, itype.cpu_limit
                inst.cpu_baseline = itype.baseline
                await quotas.enforce(s, self.ctrl.settings, inst.account_id, "vcpus", "memory_mib")
            if user_data is not None:
                inst.user_data = user_data
        if user_data is not None or itype is not None:  # a joined node's metadata service
            await self.ctrl.networks.sync(inst.network_id)
        return inst

    async def set_attributes(
        self, caller: Caller, ref: str, dry_run: bool = False, **values: Any
    ) -> Instance:
        """Change EC2 instance attributes that take effect at once: ``disable_api_termination``
        (TerminateInstances refused while true), ``shutdown_behavior`` (stop | terminate, on a
        power-off from inside the guest), ``source_dest_check``, ``monitoring``."""
        allowed = {
            "disable_api_termination",
            "shutdown_behavior",
            "source_dest_check",
            "monitoring",
        }
        unknown = set(values) - allowed
        if unknown:
            raise Invalid(f"no such instance attribute: {', '.join(sorted(unknown))}")
        behavior = values.get("shutdown_behavior")
        if behavior is not None and behavior not in ("stop", "terminate"):
            raise Invalid(
                f"shutdown behaviour {behavior!r} must be stop or terminate",
                field="InstanceInitiatedShutdownBehavior",
                ec2_code="InvalidParameterValue",
            )
        async with self.ctrl.store.write() as s:
            inst = await self.resolve(s, caller, ref, include_terminated=True)
            if inst.state == "terminated":
                raise WrongState(f"instance {inst.id} is terminated", resource="instance")
            if dry_run:
                raise DryRunPassed("ModifyInstanceAttribute would have succeeded")
            for k, v in values.items():
                setattr(inst, k, v)
        return inst

    async def set_groups(
        self, caller: Caller, ref: str, groups: builtins.list[str], dry_run: bool = False
    ) -> builtins.list[str]:
        """Replace a live instance's security groups; the packet filter follows before this
        returns. Returns the group ids."""
        if not groups:
            raise Invalid("give at least one security group", field="GroupId")
        async with self.ctrl.store.write() as s:
            inst = await self.resolve(s, caller, ref, include_terminated=True)
            if inst.state == "terminated":
                raise WrongState(f"instance {inst.id} is terminated", resource="instance")
            rows = await self.ctrl.security_groups.for_vpc(
                s, caller, groups, await self.ctrl.vpcs.vpc_of(s, inst)
            )
            if dry_run:
                raise DryRunPassed("ModifyInstanceAttribute would have succeeded")
            await s.execute(
                delete(InstanceSecurityGroup).where(InstanceSecurityGroup.instance_id == inst.id)
            )
            await s.flush()
            for gid in dict.fromkeys(g.id for g in rows):
                s.add(InstanceSecurityGroup(instance_id=inst.id, group_id=gid))
            nets = await network_push.instance_networks(s, [inst.id])
            pushes = await self.ctrl.network_pushes.record(
                s, nets, why="an instance's groups changed"
            )
        await self.ctrl.network_pushes.settle(pushes)  # in force in the kernel before we answer
        return [g.id for g in rows]

    # -- odds and ends ---------------------------------------------------------------------
    async def user_data_b64(self, inst: Instance) -> str:
        return base64.b64encode(inst.user_data or b"").decode()

    async def by_address(self, network_id: str, address: str) -> Instance | None:
        async with self.ctrl.store.read() as s:
            return await s.scalar(
                select(Instance).where(
                    Instance.network_id == network_id,
                    Instance.private_ip == address,
                    Instance.state != "terminated",
                )
            )

    async def on_node(self, node_id: str) -> builtins.list[Instance]:
        async with self.ctrl.store.read() as s:
            return list(
                await s.scalars(
                    select(Instance).where(
                        Instance.node_id == node_id,
                        or_(Instance.state != "terminated", Instance.desired_state != "terminated"),
                    )
                )
            )


def re_name(image_name: str) -> str:
    """An image name made fit to start a host name."""
    import re

    base = re.sub(r"[^a-z0-9-]+", "-", image_name.lower()).strip("-")[:50].rstrip("-")
    return base or "i"


def disk_limits(instance_type: str | None) -> dict[str, Any]:
    """The root disk's throttling and the cgroup IO weight of an instance of this type (none
    for custom sizes), as ``InstanceSpec`` fields."""
    t = instance_types.CATALOG.get(instance_type or "")
    if t is None:
        return {}
    root = None
    if t.disk_iops or t.disk_mbps:
        root = DiskIo(
            iops=t.disk_iops,
            bps=t.disk_mbps * 1_000_000,
            iops_burst=t.disk_burst_iops,
            bps_burst=t.disk_burst_mbps * 1_000_000,
            burst_seconds=t.disk_burst_seconds,
        )
    return {"root_io": root, "io_weight": t.io_weight}
