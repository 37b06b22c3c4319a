"""Instances: RunInstances, DescribeInstances, Start/Stop/Reboot/TerminateInstances, and the
per-instance calls (status, console output, attributes)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from corral import ids
from corral.api.ec2 import views, xml
from corral.api.ec2.errors import Ec2Error, invalid, missing
from corral.api.ec2.listing import Filters, next_token, paginate, window
from corral.api.ec2.params import DRY_RUN, FILTERS, PAGES, TAG_SPECS
from corral.api.ec2.parse import Params
from corral.api.ec2.registry import Call, action
from corral.controller import instance_types
from corral.controller.instances import LaunchOptions
from corral.controller.volumes import LaunchVolume
from corral.models import InstanceCreate
from corral.store.models import (
    ElasticAddress,
    Image,
    Instance,
    InstanceSecurityGroup,
    Node,
    PlacementGroup,
    SecurityGroup,
    Subnet,
    Volume,
)

ROOT_NAMES = ("/dev/sda1", "/dev/sda", "/dev/xvda", "/dev/vda")
MAX_COUNT = 100


def zone_id(region: str) -> str:
    """The one zone's id, as DescribeAvailabilityZones names it."""
    return f"{region.replace('-', '')}-az1"


def check_ids(values: list[str], kind: str = "instance", param: str = "InstanceId") -> None:
    for v in values:
        if not ids.is_id(kind, v):
            raise Ec2Error(
                f"Invalid{_KIND_CODE[kind]}ID.Malformed",
                f'Invalid id: "{v}" ({param} must be {ids.PREFIXES[kind]}- and 8 or 17 hex digits)',
            )


_KIND_CODE = {"instance": "Instance", "volume": "Volume", "snapshot": "Snapshot"}
LISTED = (
    Instance.id,
    Instance.account_id,
    Instance.name,
    Instance.image_id,
    Instance.node_id,
    Instance.state,
    Instance.state_reason,
    Instance.instance_type,
    Instance.cpus,
    Instance.memory,
    Instance.private_ip,
    Instance.key_name,
    Instance.client_token,
    Instance.reservation_id,
    Instance.launch_time,
    Instance.placement_group_id,
    Instance.mac,
    Instance.metadata_tokens,
    Instance.metadata_hop_limit,
    Instance.metadata_endpoint,
    Instance.monitoring,
    Instance.source_dest_check,
    Instance.subnet_id,
)


async def load(
    call: Call, instance_ids: list[str] | None = None, window: tuple[int, int] | None = None
) -> tuple[list[Any], views.InstanceExtras]:
    """The caller's instances (all, or these ids: missing ones are an error; or the
    ``(offset, limit)`` window of them) with extras."""
    account = call.caller.account_id
    async with call.ctrl.store.read() as s:
        # plain rows of the columns a listing shows, not ORM objects: several times cheaper
        # for a thousand instances (no JSON, blob or extra date parsing per row)
        q = select(*LISTED).where(Instance.account_id == account)
        if instance_ids:
            q = q.where(Instance.id.in_(instance_ids))
        q = q.order_by(Instance.launch_time, Instance.id)
        if window is not None:
            q = q.offset(window[0]).limit(window[1])
        rows: list[Any] = list(await s.execute(q))
        if instance_ids:
            found = {r.id for r in rows}
            gone = [i for i in instance_ids if i not in found]
            if gone:
                raise Ec2Error(
                    "InvalidInstanceID.NotFound",
                    f"The instance ID{'s' if len(gone) > 1 else ''} "
                    f"'{', '.join(gone)}' do{'' if len(gone) > 1 else 'es'} not "
                    "exist",
                )
        x = views.InstanceExtras()
        x.tags = await call.ctrl.tags.of(
            s, account, [r.id for r in rows] if instance_ids or window else None
        )
        gq = (
            select(InstanceSecurityGroup.instance_id, SecurityGroup.id, SecurityGroup.name)
            .join(SecurityGroup, SecurityGroup.id == InstanceSecurityGroup.group_id)
            .where(SecurityGroup.account_id == account)
        )
        for iid, gid, name in await s.execute(gq):
            x.groups.setdefault(iid, []).append((gid, name))
        for owner, ip in await s.execute(
            select(ElasticAddress.instance_id, ElasticAddress.public_ip).where(
                ElasticAddress.account_id == account, ElasticAddress.instance_id.is_not(None)
            )
        ):
            x.public_ips[str(owner)] = str(ip)
        for v in await s.scalars(
            select(Volume).where(Volume.account_id == account, Volume.instance_id.is_not(None))
        ):
            x.volumes.setdefault(str(v.instance_id), []).append(v)
        x.zones = {str(k): str(v) for k, v in await s.execute(select(Node.id, Node.zone))}
        x.vpcs = {
            str(k): str(v)
            for k, v in await s.execute(
                select(Subnet.id, Subnet.vpc_id).where(Subnet.account_id == account)
            )
        }
        pg_ids = {r.placement_group_id for r in rows if r.placement_group_id}
        if pg_ids:
            for pid, name in await s.execute(
                select(PlacementGroup.id, PlacementGroup.name).where(PlacementGroup.id.in_(pg_ids))
            ):
                x.placement_groups[pid] = name
        image_ids = {r.image_id for r in rows}
        if image_ids:
            for iid, rtype in await s.execute(
                select(Image.id, Image.root_device_type).where(Image.id.in_(image_ids))
            ):
                x.root_types[iid] = rtype
    return rows, x


# rendered <item> of each instance, keyed by everything it shows: a listing of a thousand
# instances that mostly did not change re-renders only those that did
_ITEMS: dict[str, tuple[tuple[Any, ...], xml.Raw]] = {}
_ITEMS_MAX = 100_000


def _item(r: Any, x: views.InstanceExtras, zone: str, domain: str, index: int) -> xml.Raw:
    key = (
        tuple(r),
        index,
        zone,
        domain,
        tuple(x.tags.get(r.id, {}).items()),
        tuple(x.groups.get(r.id, ())),
        x.public_ips.get(r.id),
        x.root_types.get(r.image_id),
        x.zones.get(r.node_id or ""),
        x.placement_groups.get(r.placement_group_id or ""),
        tuple(
            (v.id, v.device, v.attach_state, v.attach_time, v.delete_on_termination)
            for v in x.volumes.get(r.id, ())
        ),
    )
    hit = _ITEMS.get(r.id)
    if hit is not None and hit[0] == key:
        return hit[1]
    frag = xml.fragment("item", views.instance(r, x, zone, domain, index))
    if len(_ITEMS) >= _ITEMS_MAX:
        _ITEMS.clear()
    _ITEMS[r.id] = (key, frag)
    return frag


def _reservations(call: Call, rows: list[Any], x: views.InstanceExtras) -> list[dict[str, Any]]:
    st = call.api.settings
    zone, domain = st.availability_zone, st.domain
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        key = r.reservation_id or f"r-{r.id[2:]}"
        res = out.get(key)
        if res is None:
            res = out[key] = {
                "reservationId": key,
                "ownerId": r.account_id,
                "groupSet": [],
                "instancesSet": [],
            }
        res["instancesSet"].append(_item(r, x, zone, domain, len(res["instancesSet"])))
    return list(out.values())


@action(
    "DescribeInstances",
    accepts=(
        "InstanceId.N",
        "IncludeManagedResources",
        *FILTERS,
        *PAGES,
        *DRY_RUN,
    ),
)
async def instances_describe(call: Call) -> dict[str, Any]:
    p = call.p
    p.flag("IncludeManagedResources")  # Corral has no managed instances
    wanted = p.strings("InstanceId")
    check_ids(wanted)
    filters = p.filters()
    if not filters and not wanted:
        # no filter: the page is cut in SQL, so a page costs the same however many there are
        start, size, fp = window(p, call.action, call.caller.account_id, 5, 1000)
        if call.dry_run:
            raise Ec2Error(
                "DryRunOperation", "Request would have succeeded, but DryRun flag is set."
            )
        if size is not None:
            async with call.ctrl.store.read() as s:
                total = int(
                    await s.scalar(
                        select(func.count())
                        .select_from(Instance)
                        .where(Instance.account_id == call.caller.account_id)
                    )
                    or 0
                )
            rows, x = await load(call, window=(start, size))
            return {
                "reservationSet": _reservations(call, rows, x),
                "nextToken": next_token(start, size, total, fp),
            }
        rows, x = await load(call, window=(start, -1) if start else None)
        return {"reservationSet": _reservations(call, rows, x), "nextToken": None}
    # parameters are checked before anything is looked up, as on AWS
    window(p, call.action, call.caller.account_id, 5, 1000, "InstanceId")
    rows, x = await load(call, wanted or None)
    st = call.api.settings
    counts: dict[str, int] = {}
    for r in rows:
        key = r.reservation_id or r.id
        x.launch_index[r.id] = counts.get(key, 0)
        counts[key] = x.launch_index[r.id] + 1
    match = Filters(
        filters,
        views.instance_filters(x, st.availability_zone, st.domain, zone_id(st.region)),
        lambda r: x.tags.get(r.id, {}),
        views.INSTANCE_ABSENT,
    )
    rows = [r for r in rows if match(r)]
    if call.dry_run:
        raise Ec2Error("DryRunOperation", "Request would have succeeded, but DryRun flag is set.")
    page, token = paginate(rows, p, call.action, call.caller.account_id, 5, 1000, "InstanceId")
    return {"reservationSet": _reservations(call, page, x), "nextToken": token}


RUN_ACCEPTS = (
    "ImageId",
    "MinCount",
    "MaxCount",
    "InstanceType",
    "KeyName",
    "UserData",
    "ClientToken",
    "Placement.AvailabilityZone",
    "Placement.GroupName",
    "Placement.GroupId",
    "Placement.Tenancy",
    "SecurityGroupId.N",
    "SecurityGroup.N",
    "PrivateIpAddress",
    "EbsOptimized",
    "MetadataOptions.HttpTokens",
    "MetadataOptions.HttpPutResponseHopLimit",
    "DisableApiTermination",
    "InstanceInitiatedShutdownBehavior",
    "Monitoring.Enabled",
    "BlockDeviceMapping.N.DeviceName",
    "BlockDeviceMapping.N.NoDevice",
    "BlockDeviceMapping.N.Ebs.VolumeSize",
    "BlockDeviceMapping.N.Ebs.VolumeType",
    "BlockDeviceMapping.N.Ebs.SnapshotId",
    "BlockDeviceMapping.N.Ebs.DeleteOnTermination",
    "BlockDeviceMapping.N.Ebs.Encrypted",
    # device 0 only: its security groups (SecurityGroupId on the wire; Groups from some clients)
    "NetworkInterface.N.DeviceIndex",
    "NetworkInterface.N.SecurityGroupId.N",
    "NetworkInterface.N.Groups.N",
    "NetworkInterface.N.DeleteOnTermination",
    "NetworkInterface.N.SubnetId",
    "NetworkInterface.N.PrivateIpAddress",
    "NetworkInterface.N.AssociatePublicIpAddress",
    "SubnetId",
    *TAG_SPECS,
    *DRY_RUN,
)
RUN_UNSUPPORTED = (
    "BlockDeviceMapping.N.*",
    "NetworkInterface.N.*",
    "Placement.*",
    "MetadataOptions.*",
    "Ipv6AddressCount",
    "Ipv6Address.N.*",
    "KernelId",
    "RamdiskId",
    "Monitoring.*",
    "ElasticGpuSpecification.N.*",
    "ElasticInferenceAccelerator.N.*",
    "LaunchTemplate.*",
    "InstanceMarketOptions.*",
    "CreditSpecification.*",
    "CpuOptions.*",
    "CapacityReservationSpecification.*",
    "HibernationOptions.*",
    "LicenseSpecification.N.*",
    "EnclaveOptions.*",
    "PrivateDnsNameOptions.*",
    "MaintenanceOptions.*",
    "DisableApiStop",
    "EnablePrimaryIpv6",
    "NetworkPerformanceOptions.*",
    "Operator.*",
    "SecondaryInterface.N.*",
    "AdditionalInfo",
    "IamInstanceProfile.*",
)


@dataclass
class _Nic:
    """What RunInstances says of the instance's interface: its groups (None: not given),
    subnet and private address."""

    groups: list[str] | None = None
    subnet: str | None = None
    address: str | None = None


def _interface(p: Params) -> _Nic:
    """``SubnetId``/``PrivateIpAddress`` or ``NetworkInterface.1`` (not both, as on AWS)."""
    nic = _Nic(subnet=p.get("SubnetId"), address=p.get("PrivateIpAddress"))
    nics = p.group("NetworkInterface")
    if not nics:
        return nic
    if nic.subnet is not None or nic.address is not None:
        raise Ec2Error(
            "InvalidParameterCombination",
            "Network interfaces and an instance-level subnet ID or private IP address may not "
            "be specified on the same request",
        )
    one = nics[0]
    if one.flag("AssociatePublicIpAddress"):
        raise Ec2Error(
            "UnsupportedOperation",
            "NetworkInterface.1.AssociatePublicIpAddress=true: Corral's public addresses are "
            "elastic IPs; allocate one (AllocateAddress) and associate it after the launch",
        )
    nic.groups = _interface_groups(p)
    nic.subnet, nic.address = one.get("SubnetId"), one.get("PrivateIpAddress")
    return nic


def _interface_groups(p: Params) -> list[str] | None:
    """The security groups of ``NetworkInterface.N`` (None when none is given): Corral gives
    an instance one interface, device 0, created with it and deleted with it."""
    nics = p.group("NetworkInterface")
    if not nics:
        return None
    if len(nics) > 1:
        raise Ec2Error(
            "UnsupportedOperation",
            "Corral instances have one network interface: give NetworkInterface.1 only",
        )
    nic = nics[0]
    index = nic.get("DeviceIndex")
    if index is None:
        raise missing("NetworkInterface.1.DeviceIndex")
    if index != "0":
        raise invalid(
            "NetworkInterface.1.DeviceIndex", index, "Corral's only interface is device 0."
        )
    if not nic.flag("DeleteOnTermination", True):
        raise Ec2Error(
            "UnsupportedOperation",
            "NetworkInterface.1.DeleteOnTermination=false: Corral's interface goes with its "
            "instance",
        )
    if p.strings("SecurityGroupId") or p.strings("SecurityGroup"):
        raise Ec2Error(
            "InvalidParameterCombination",
            "Network interfaces and an instance-level security groups may not be specified on "
            "the same request",
        )
    groups = nic.strings("SecurityGroupId") + nic.strings("Groups")
    for g in groups:
        if not g.startswith("sg-"):
            raise Ec2Error("InvalidGroupId.Malformed", f'Invalid id: "{g}" (expecting "sg-...")')
    return groups


@dataclass
class _Devices:
    volumes: list[LaunchVolume] = field(default_factory=list)
    root_delete_on_termination: bool | None = None
    root_volume_type: str | None = None


def _block_devices(p: Params) -> tuple[str | None, _Devices]:
    """RunInstances' BlockDeviceMapping.N: the root's size, type and DeleteOnTermination, and
    the volumes to make (blank or from a snapshot) for each instance. ``NoDevice`` suppresses
    an image mapping: Corral's images map only their root, which cannot be suppressed."""
    disk, out, seen = None, _Devices(), set()
    for i, bdm in enumerate(p.group("BlockDeviceMapping"), 1):
        name = f"BlockDeviceMapping.{i}"
        device = bdm.get("DeviceName")
        if not device:
            raise missing(f"{name}.DeviceName")
        if device in seen:
            raise invalid(f"{name}.DeviceName", device, "Each device may be mapped once.")
        seen.add(device)
        root = device in ROOT_NAMES
        ebs_given = any(k.startswith("Ebs.") for k in bdm.raw)
        if "NoDevice" in bdm:
            if root:
                raise Ec2Error(
                    "InvalidBlockDeviceMapping",
                    f"{name}: the root device {device} cannot be suppressed (NoDevice)",
                )
            if ebs_given:
                raise Ec2Error(
                    "InvalidBlockDeviceMapping", f"{name}: give NoDevice or Ebs, not both"
                )
            continue  # nothing of the image's is mapped there: nothing to suppress
        if bdm.flag("Ebs.Encrypted"):
            raise Ec2Error(
                "UnsupportedOperation",
                f"{name}.Ebs.Encrypted=true: Corral's volumes are not encrypted",
            )
        size = bdm.integer("Ebs.VolumeSize", None, 1, 16384)
        vtype = bdm.get("Ebs.VolumeType")
        keep = bdm.get("Ebs.DeleteOnTermination")
        delete = bdm.flag("Ebs.DeleteOnTermination", True)
        if root:
            if bdm.get("Ebs.SnapshotId"):
                raise Ec2Error(
                    "InvalidBlockDeviceMapping",
                    f"{name}: the root volume comes from the image; leave Ebs.SnapshotId out",
                )
            if size is not None:
                disk = f"{size}G"
            out.root_volume_type = vtype
            out.root_delete_on_termination = None if keep is None else delete
            continue
        if not ebs_given:
            raise missing(f"{name}.Ebs.VolumeSize or {name}.Ebs.SnapshotId")
        out.volumes.append(
            LaunchVolume(
                device=device,
                size=size,
                snapshot_id=bdm.get("Ebs.SnapshotId"),
                volume_type=vtype or "standard",
                delete_on_termination=delete,
            )
        )
    return disk, out


@action("RunInstances", accepts=RUN_ACCEPTS, unsupported=RUN_UNSUPPORTED)
async def instances_run(call: Call) -> dict[str, Any]:
    p = call.p
    image_id = p.need("ImageId")
    if not ids.is_id("image", image_id):
        raise Ec2Error("InvalidAMIID.Malformed", f'Invalid id: "{image_id}" (expecting "ami-...")')
    if "MinCount" not in p:
        raise missing("MinCount")
    if "MaxCount" not in p:
        raise missing("MaxCount")
    lo = p.integer("MinCount", 1, 1, MAX_COUNT) or 1
    hi = p.integer("MaxCount", 1, 1, MAX_COUNT) or 1
    if lo > hi:
        raise Ec2Error(
            "InvalidParameterValue",
            f"MinCount ({lo}) must be less than or equal to MaxCount ({hi})",
        )
    itype = p.get("InstanceType") or instance_types.DEFAULT
    instance_types.get(itype, "InstanceType")
    zone, group = _placement(p)
    if p.flag("EbsOptimized"):
        raise Ec2Error(
            "UnsupportedOperation",
            "EbsOptimized=true: Corral's volumes have no separate EBS bandwidth; leave it out",
        )
    token = p.get("ClientToken")
    if token is not None and (len(token) > 64 or not token.isascii()):
        raise invalid("ClientToken", token, "At most 64 ASCII characters.")
    user_data_raw = p.base64("UserData")
    user_data = None
    if user_data_raw is not None:
        try:
            user_data = user_data_raw.decode()
        except UnicodeDecodeError as err:
            raise invalid("UserData", "...", "Corral keeps user data as UTF-8 text.") from err
    disk, devices = _block_devices(p)
    specs = p.tag_specs(("instance", "volume"))
    tags = specs.get("instance", {})
    nic = _interface(p)
    nic_groups = nic.groups
    if nic.subnet is not None and not ids.is_id("subnet", nic.subnet):
        raise Ec2Error(
            "InvalidSubnetID.Malformed", f'Invalid id: "{nic.subnet}" (expecting "subnet-...")'
        )
    groups = p.strings("SecurityGroupId") + p.strings("SecurityGroup")
    for g in p.strings("SecurityGroupId"):
        if not g.startswith("sg-"):
            raise Ec2Error("InvalidGroupId.Malformed", f'Invalid id: "{g}" (expecting "sg-...")')
    if nic_groups is not None:
        groups = nic_groups
    address = nic.address
    if address is not None and hi > 1:
        raise Ec2Error(
            "InvalidParameterCombination",
            "PrivateIpAddress names one address: launch one instance (MaxCount=1) with it",
        )
    hop_limit = p.integer("MetadataOptions.HttpPutResponseHopLimit", 1, 1, 64) or 1
    tokens = p.get("MetadataOptions.HttpTokens", "optional") or "optional"
    if tokens not in ("optional", "required"):
        raise invalid("MetadataOptions.HttpTokens", tokens, "It must be optional or required.")
    key = p.get("KeyName")
    req = InstanceCreate(
        image=image_id,
        name=tags.get("Name"),  # type: ignore[call-arg]
        instance_type=itype,
        disk=disk,
        keys=[key] if key else [],
        user_data=user_data,
        zone=zone,
        placement_group=group,
        address=address,
        metadata_tokens=tokens,  # type: ignore[arg-type]
        metadata_hop_limit=hop_limit,
        ha=_ha_tag(tags),
    )
    behavior = p.get("InstanceInitiatedShutdownBehavior") or "stop"
    if behavior not in ("stop", "terminate"):
        raise invalid(
            "InstanceInitiatedShutdownBehavior", behavior, "It must be stop or terminate."
        )
    opts = LaunchOptions(
        min_count=lo,
        max_count=hi,
        client_token=token,
        security_groups=groups,
        tags=tags,
        name_is_hint=True,
        dry_run=call.dry_run,
        disable_api_termination=p.flag("DisableApiTermination"),
        shutdown_behavior=behavior,
        monitoring=p.flag("Monitoring.Enabled"),
        block_devices=devices.volumes,
        root_delete_on_termination=devices.root_delete_on_termination,
        root_volume_type=devices.root_volume_type,
        volume_tags=specs.get("volume", {}),
        subnet=nic.subnet,
    )
    made, _ = await call.ctrl.instances.launch(call.caller, req, opts)
    rows, x = await load(call, [i.id for i in made])
    res = _reservations(call, rows, x)[0]
    groups_out = [{"groupId": g, "groupName": n} for g, n in x.groups.get(made[0].id, [])]
    return {
        "reservationId": res["reservationId"],
        "ownerId": res["ownerId"],
        "groupSet": groups_out,
        "instancesSet": res["instancesSet"],
    }


ROOT_DEVICE_HINT = "DeviceName /dev/sda1 with Ebs.VolumeSize"
PLACEMENT = ("AvailabilityZone", "GroupName", "GroupId", "Tenancy")


def _placement(p: Any) -> tuple[str | None, str | None]:
    """RunInstances' Placement: the zone and the placement group (name or id). What Corral
    cannot honour (dedicated tenancy, hosts, partitions) is refused, never ignored."""
    for k in p.raw:
        if k.startswith("Placement.") and k.split(".", 1)[1] not in PLACEMENT:
            raise Ec2Error(
                "InvalidParameterCombination",
                f"{k}: Corral honours Placement.AvailabilityZone, Placement.GroupName and "
                "Placement.GroupId (Tenancy default only)",
            )
    tenancy = p.get("Placement.Tenancy")
    if tenancy not in (None, "", "default"):
        raise invalid("Placement.Tenancy", tenancy, "Corral offers default tenancy only.")
    name, gid = p.get("Placement.GroupName") or None, p.get("Placement.GroupId") or None
    if name and gid:
        raise Ec2Error(
            "InvalidParameterCombination",
            "give Placement.GroupName or Placement.GroupId, not both",
        )
    if gid and not gid.startswith("pg-"):
        raise invalid("Placement.GroupId", gid, 'Expecting "pg-...".')
    return p.get("Placement.AvailabilityZone") or None, name or gid


async def _change(call: Call, verb: str) -> dict[str, Any]:
    p = call.p
    wanted = p.strings("InstanceId")
    if not wanted:
        raise missing("InstanceId")
    check_ids(wanted)
    rows, _ = await load(call, wanted)
    before = {r.id: r.state for r in rows}
    mgr = call.ctrl.instances
    out = []
    for iid in wanted:
        if verb == "terminate":
            inst, _ = await mgr.terminate(
                call.caller, iid, force=p.flag("Force"), dry_run=call.dry_run
            )
        elif verb == "stop":
            if p.flag("Hibernate"):
                raise Ec2Error(
                    "UnsupportedHibernationConfiguration",
                    "Corral instances cannot hibernate; stop them without Hibernate",
                )
            inst, _ = await mgr.stop(call.caller, iid, force=p.flag("Force"), dry_run=call.dry_run)
        else:
            inst, _ = await mgr.start(call.caller, iid, dry_run=call.dry_run)
        out.append(
            {
                "instanceId": iid,
                "currentState": views.state(inst.state),
                "previousState": views.state(before[iid]),
            }
        )
    return {"instancesSet": out}


@action(
    "TerminateInstances",
    accepts=(
        "InstanceId.N",
        "Force",
        *DRY_RUN,
    ),
    unsupported=("SkipOsShutdown",),
)
async def instances_terminate(call: Call) -> dict[str, Any]:
    return await _change(call, "terminate")


@action(
    "StopInstances",
    accepts=(
        "InstanceId.N",
        "Force",
        "Hibernate",
        *DRY_RUN,
    ),
    unsupported=("SkipOsShutdown",),
)
async def instances_stop(call: Call) -> dict[str, Any]:
    return await _change(call, "stop")


@action(
    "StartInstances",
    accepts=(
        "InstanceId.N",
        *DRY_RUN,
    ),
    unsupported=("AdditionalInfo",),
)
async def instances_start(call: Call) -> dict[str, Any]:
    return await _change(call, "start")


@action(
    "RebootInstances",
    accepts=(
        "InstanceId.N",
        *DRY_RUN,
    ),
)
async def instances_reboot(call: Call) -> dict[str, Any]:
    wanted = call.p.strings("InstanceId")
    if not wanted:
        raise missing("InstanceId")
    check_ids(wanted)
    await load(call, wanted)
    for iid in wanted:
        await call.ctrl.instances.reboot(call.caller, iid, dry_run=call.dry_run)
    return {"return": True}


def _status(state: str) -> dict[str, Any]:
    ok = state == "running"
    value = "ok" if ok else "not-applicable"
    details = [{"name": "reachability", "status": "passed" if ok else "not-applicable"}]
    return {"status": value, "details": details}


@action(
    "DescribeInstanceStatus",
    accepts=(
        "InstanceId.N",
        "IncludeAllInstances",
        "IncludeManagedResources",
        *FILTERS,
        *PAGES,
        *DRY_RUN,
    ),
)
async def instances_status(call: Call) -> dict[str, Any]:
    p = call.p
    p.flag("IncludeManagedResources")
    wanted = p.strings("InstanceId")
    check_ids(wanted)
    window(p, call.action, call.caller.account_id, 5, 1000, "InstanceId")
    rows, _ = await load(call, wanted or None)
    if not p.flag("IncludeAllInstances"):
        rows = [r for r in rows if r.state == "running"]
    zone = call.api.settings.availability_zone
    match = Filters(
        p.filters(),
        {
            "availability-zone": lambda r: zone,
            "instance-state-name": lambda r: r.state,
            "instance-state-code": lambda r: views.state(r.state)["code"],
            "instance-status.status": lambda r: _status(r.state)["status"],
            "system-status.status": lambda r: _status(r.state)["status"],
            "instance-status.reachability": lambda r: _status(r.state)["details"][0]["status"],
            "system-status.reachability": lambda r: _status(r.state)["details"][0]["status"],
            "availability-zone-id": lambda r: zone_id(call.api.settings.region),
            "operator.managed": lambda r: False,
        },
        absent=(
            "event.code",
            "event.description",
            "event.instance-event-id",
            "event.not-after",
            "event.not-before",
            "event.not-before-deadline",
            "operator.principal",
            "attached-ebs-status.status",
            "application-status.status",
        ),
    )
    rows = [r for r in rows if match(r)]
    if call.dry_run:
        raise Ec2Error("DryRunOperation", "Request would have succeeded, but DryRun flag is set.")
    page, token = paginate(rows, p, call.action, call.caller.account_id, 5, 1000, "InstanceId")
    return {
        "instanceStatusSet": [
            {
                "instanceId": r.id,
                "availabilityZone": zone,
                "instanceState": views.state(r.state),
                "systemStatus": _status(r.state),
                "instanceStatus": _status(r.state),
            }
            for r in page
        ],
        "nextToken": token,
    }


@action(
    "GetConsoleOutput",
    accepts=(
        "InstanceId",
        "Latest",
        *DRY_RUN,
    ),
)
async def instances_console_output(call: Call) -> dict[str, Any]:
    call.p.flag("Latest")  # the answer is always the latest 64 KiB
    iid = call.p.need("InstanceId")
    check_ids([iid])
    rows, _ = await load(call, [iid])
    inst = rows[0]
    if call.dry_run:
        raise Ec2Error("DryRunOperation", "Request would have succeeded, but DryRun flag is set.")
    data = b""
    if inst.node_id is not None and inst.state != "terminated":
        data = await call.ctrl.node(inst.node_id).console_log(inst.id, 64 * 1024)
    full = await call.ctrl.instances.get(call.caller, inst.id)
    return {
        "instanceId": inst.id,
        "timestamp": full.stopped_at or full.started_at or full.launch_time,
        "output": base64.b64encode(data).decode(),
    }


HA_TAG = "corral:ha"  # RunInstances' way to ask for high availability (docs/ec2.md)


def _ha_tag(tags: dict[str, str]) -> bool:
    """The ``corral:ha`` instance tag: ``true`` asks for an HA instance, ``false`` for none;
    anything else is refused rather than guessed."""
    value = tags.get(HA_TAG)
    if value is None:
        return False
    if value.lower() not in ("true", "false"):
        raise invalid(f"TagSpecification ({HA_TAG})", value, "It must be true or false.")
    return value.lower() == "true"
