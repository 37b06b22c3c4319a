"""Instance attributes: Describe/Modify/ResetInstanceAttribute (type and user data while
stopped; termination protection, shutdown behaviour, security groups, DeleteOnTermination of
attached volumes and the source/destination check at once), Monitor/UnmonitorInstances and
GetPasswordData. What Corral enforces is enforced: termination protection refuses
TerminateInstances, a guest power-off follows the shutdown behaviour, a group change is in the
packet filter before the answer."""

from __future__ import annotations

import base64
from typing import Any

from corral.api.ec2 import views
from corral.api.ec2.common import dry_run_ok
from corral.api.ec2.errors import Ec2Error, invalid, missing
from corral.api.ec2.instances import check_ids, load
from corral.api.ec2.params import DRY_RUN
from corral.api.ec2.parse import Params
from corral.api.ec2.registry import Call, action
from corral.controller import instance_types

ATTRIBUTES = (
    "instanceType",
    "kernel",
    "ramdisk",
    "userData",
    "disableApiTermination",
    "instanceInitiatedShutdownBehavior",
    "rootDeviceName",
    "blockDeviceMapping",
    "productCodes",
    "sourceDestCheck",
    "groupSet",
    "ebsOptimized",
    "sriovNetSupport",
    "enaSupport",
    "enclaveOptions",
    "disableApiStop",
)
# attributes of AWS's that have no meaning here: asked to change them, Corral says so
NOT_HERE = {
    "kernel": "Corral's instances boot their image's own kernel",
    "ramdisk": "Corral's instances boot their image's own initrd",
    "sriovNetSupport": "Corral's interfaces are virtio, not SR-IOV",
    "enaSupport": "Corral's interfaces are virtio, not ENA",
    "enclaveOptions": "Corral has no Nitro enclaves",
    "disableApiStop": "Corral has no stop protection",
}


def _unknown(attr: str) -> Ec2Error:
    return Ec2Error(
        "InvalidParameterValue",
        f"Value ({attr}) for parameter attribute is invalid; use one of {', '.join(ATTRIBUTES)}",
    )


@action("DescribeInstanceAttribute", accepts=("InstanceId", "Attribute", *DRY_RUN))
async def instances_attribute(call: Call) -> dict[str, Any]:
    iid = call.p.need("InstanceId")
    attr = call.p.need("Attribute")
    check_ids([iid])
    if attr not in ATTRIBUTES:
        raise _unknown(attr)
    rows, x = await load(call, [iid])
    r = rows[0]
    if call.dry_run:
        dry_run_ok()
    st = call.api.settings
    item = views.instance(r, x, st.availability_zone, st.domain)
    full = await call.ctrl.instances.get(call.caller, r.id)
    value: Any
    if attr == "instanceType":
        value = {"value": item["instanceType"]}
    elif attr == "userData":
        data = full.user_data
        value = {"value": base64.b64encode(data).decode()} if data else {}
    elif attr == "groupSet":
        value = item["groupSet"]
    elif attr == "rootDeviceName":
        value = {"value": views.ROOT_DEVICE}
    elif attr == "blockDeviceMapping":
        value = item["blockDeviceMapping"]
    elif attr == "disableApiTermination":
        value = {"value": full.disable_api_termination}
    elif attr == "instanceInitiatedShutdownBehavior":
        value = {"value": full.shutdown_behavior}
    elif attr == "sourceDestCheck":
        value = {"value": full.source_dest_check}
    elif attr == "productCodes":
        value = []
    elif attr in ("kernel", "ramdisk", "sriovNetSupport"):
        value = {}
    elif attr == "enclaveOptions":
        value = {"enabled": False}
    else:  # ebsOptimized, enaSupport, disableApiStop
        value = {"value": False}
    return {"instanceId": r.id, attr: value}


# the structured forms of ModifyInstanceAttribute and the attribute each one sets
_VALUE_FORMS = {
    "InstanceType.Value": "instanceType",
    "UserData.Value": "userData",
    "DisableApiTermination.Value": "disableApiTermination",
    "InstanceInitiatedShutdownBehavior.Value": "instanceInitiatedShutdownBehavior",
    "SourceDestCheck.Value": "sourceDestCheck",
    "EbsOptimized.Value": "ebsOptimized",
}


def _bool(name: str, value: str) -> bool:
    low = value.lower()
    if low not in ("true", "false"):
        raise invalid(name, value, "It must be true or false.")
    return low == "true"


def _one_change(p: Params) -> tuple[str, str, str]:
    """The one attribute a ModifyInstanceAttribute call changes: (attribute, parameter, value);
    AWS changes one attribute per call."""
    found: list[tuple[str, str, str]] = []
    attr = p.get("Attribute")
    if attr is not None:
        if attr not in ATTRIBUTES:
            raise _unknown(attr)
        if attr in ("groupSet", "blockDeviceMapping"):
            param = "GroupId.N" if attr == "groupSet" else "BlockDeviceMapping.N"
            raise Ec2Error(
                "InvalidParameterCombination", f"Change {attr} with {param}, not Attribute/Value"
            )
        value = p.get("Value")
        if value is None:
            raise missing("Value")
        found.append((attr, "Value", value))
    for param, name in _VALUE_FORMS.items():
        if param in p:
            found.append((name, param, p.get(param) or ""))
    if p.strings("GroupId"):
        found.append(("groupSet", "GroupId.N", ""))
    if p.group("BlockDeviceMapping"):
        found.append(("blockDeviceMapping", "BlockDeviceMapping.N", ""))
    if not found:
        raise missing("Attribute or one of " + ", ".join([*_VALUE_FORMS, "GroupId.N"]))
    if len(found) > 1:
        raise Ec2Error(
            "InvalidParameterCombination",
            "ModifyInstanceAttribute changes one attribute per call; got "
            + ", ".join(f[1] for f in found),
        )
    return found[0]


@action(
    "ModifyInstanceAttribute",
    accepts=(
        "InstanceId",
        "Attribute",
        "Value",
        *_VALUE_FORMS,
        "GroupId.N",
        "BlockDeviceMapping.N.DeviceName",
        "BlockDeviceMapping.N.Ebs.DeleteOnTermination",
        "BlockDeviceMapping.N.Ebs.VolumeId",
        *DRY_RUN,
    ),
    unsupported=(
        "BlockDeviceMapping.N.*",
        "Kernel.Value",
        "Ramdisk.Value",
        "SriovNetSupport.Value",
        "EnaSupport.Value",
        "EnclaveOptions.Enabled",
        "DisableApiStop.Value",
    ),
)
async def instances_modify(call: Call) -> dict[str, Any]:
    p = call.p
    iid = p.need("InstanceId")
    check_ids([iid])
    attr, param, value = _one_change(p)
    if attr in NOT_HERE:
        raise Ec2Error("UnsupportedOperation", f"{attr}: {NOT_HERE[attr]}")
    if attr in ("rootDeviceName", "productCodes"):
        raise Ec2Error("InvalidParameterValue", f"{attr} cannot be changed")
    await load(call, [iid])
    mgr = call.ctrl.instances
    if attr == "instanceType":
        instance_types.get(value, "InstanceType")
        await mgr.modify(call.caller, iid, value, None, call.dry_run)
    elif attr == "userData":
        data = base64.b64decode(value) if _is_b64(value) else value.encode()
        await mgr.modify(call.caller, iid, None, data, call.dry_run)
    elif attr == "disableApiTermination":
        await mgr.set_attributes(
            call.caller, iid, call.dry_run, disable_api_termination=_bool(param, value)
        )
    elif attr == "instanceInitiatedShutdownBehavior":
        await mgr.set_attributes(call.caller, iid, call.dry_run, shutdown_behavior=value)
    elif attr == "sourceDestCheck":
        await mgr.set_attributes(
            call.caller, iid, call.dry_run, source_dest_check=_bool(param, value)
        )
    elif attr == "ebsOptimized":
        if _bool(param, value):
            raise Ec2Error(
                "UnsupportedOperation",
                "ebsOptimized=true: Corral's volumes have no separate EBS bandwidth",
            )
        if call.dry_run:
            dry_run_ok()
    elif attr == "groupSet":
        groups = p.strings("GroupId")
        for g in groups:
            if not g.startswith("sg-"):
                raise Ec2Error("InvalidGroupId.Malformed", f'Invalid id: "{g}"')
        await mgr.set_groups(call.caller, iid, groups, call.dry_run)
    else:  # blockDeviceMapping: DeleteOnTermination of attached volumes
        await _delete_on_termination(call, iid)
    return {"return": True}


async def _delete_on_termination(call: Call, iid: str) -> None:
    _, x = await load(call, [iid])
    attached = {v.device: v for v in x.volumes.get(iid, [])}
    changes: list[tuple[str, bool]] = []
    for i, bdm in enumerate(call.p.group("BlockDeviceMapping"), 1):
        device = bdm.get("DeviceName")
        if device is None:
            raise missing(f"BlockDeviceMapping.{i}.DeviceName")
        vol = attached.get(device)
        if vol is None:
            raise Ec2Error(
                "InvalidInstanceAttributeValue",
                f"No device is currently mapped at {device} on {iid}",
            )
        given = bdm.get("Ebs.VolumeId")
        if given is not None and given != vol.id:
            raise invalid(f"BlockDeviceMapping.{i}.Ebs.VolumeId", given, f"{device} is {vol.id}.")
        text = bdm.get("Ebs.DeleteOnTermination")
        if text is None:
            raise missing(f"BlockDeviceMapping.{i}.Ebs.DeleteOnTermination")
        changes.append((vol.id, _bool(f"BlockDeviceMapping.{i}.Ebs.DeleteOnTermination", text)))
    if call.dry_run:
        dry_run_ok()
    for vid, keep in changes:
        await call.ctrl.volumes.update(call.caller, vid, delete_on_termination=keep)


@action("ResetInstanceAttribute", accepts=("InstanceId", "Attribute", *DRY_RUN))
async def instances_reset(call: Call) -> dict[str, Any]:
    iid = call.p.need("InstanceId")
    attr = call.p.need("Attribute")
    check_ids([iid])
    if attr not in ("kernel", "ramdisk", "sourceDestCheck"):
        raise invalid("Attribute", attr, "It must be kernel, ramdisk or sourceDestCheck.")
    rows, _ = await load(call, [iid])
    if attr == "sourceDestCheck":
        await call.ctrl.instances.set_attributes(
            call.caller, iid, call.dry_run, source_dest_check=True
        )
        return {"return": True}
    # kernel and ramdisk: already the image's own (Corral has no others); AWS wants it stopped
    if rows[0].state != "stopped":
        raise Ec2Error(
            "IncorrectInstanceState",
            f"The instance '{iid}' is not in the 'stopped' state; stop it to reset {attr}",
        )
    if call.dry_run:
        dry_run_ok()
    return {"return": True}


async def _monitor(call: Call, enabled: bool) -> dict[str, Any]:
    wanted = call.p.strings("InstanceId")
    if not wanted:
        raise missing("InstanceId")
    check_ids(wanted)
    await load(call, wanted)
    if call.dry_run:
        dry_run_ok()
    state = "enabled" if enabled else "disabled"
    for iid in wanted:
        await call.ctrl.instances.set_attributes(call.caller, iid, monitoring=state)
    return {"instancesSet": [{"instanceId": i, "monitoring": {"state": state}} for i in wanted]}


@action("MonitorInstances", accepts=("InstanceId.N", *DRY_RUN), unsupported=("MetricCategoryId.N",))
async def instances_monitor(call: Call) -> dict[str, Any]:
    """Detailed monitoring as asked (Corral's metrics are always collected): the state is
    recorded and shown in DescribeInstances."""
    return await _monitor(call, True)


@action(
    "UnmonitorInstances", accepts=("InstanceId.N", *DRY_RUN), unsupported=("MetricCategoryId.N",)
)
async def instances_unmonitor(call: Call) -> dict[str, Any]:
    return await _monitor(call, False)


@action("GetPasswordData", accepts=("InstanceId", *DRY_RUN))
async def instances_password(call: Call) -> dict[str, Any]:
    """As AWS answers for a Linux instance: no Windows password, an empty one."""
    iid = call.p.need("InstanceId")
    check_ids([iid])
    await load(call, [iid])
    if call.dry_run:
        dry_run_ok()
    full = await call.ctrl.instances.get(call.caller, iid)
    return {
        "instanceId": iid,
        "timestamp": full.started_at or full.launch_time,
        "passwordData": "",
    }


def _is_b64(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
    except ValueError:
        return False
    return True
