"""Images: DescribeImages (Owners, ExecutableBy, ImageIds, filters), CreateImage,
RegisterImage, DeregisterImage, Describe/ModifyImageAttribute (launchPermission,
description). Built-in images are owned by the admin account under the alias ``corral``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from corral import ids
from corral.api.ec2 import views, xml
from corral.api.ec2.common import dry_run_ok
from corral.api.ec2.errors import Ec2Error, invalid, missing
from corral.api.ec2.listing import Filters, paginate
from corral.api.ec2.params import DRY_RUN, FILTERS, PAGES, TAG_SPECS
from corral.api.ec2.registry import Call, action
from corral.controller import tags
from corral.store.models import Account, Image

OWNER_ALIAS = "corral"
GIB = 1 << 30
ROOT_NAMES = ("/dev/sda1", "/dev/sda", "/dev/xvda", "/dev/vda")


async def _admin_id(call: Call) -> str:
    async with call.ctrl.store.read() as s:
        acct = await s.scalar(select(Account.id).where(Account.name == "admin"))
    return acct or "000000000000"


def display_name(i: Image) -> str:
    """Built-in images come in versions: their EC2 name carries it (tiny-1)."""
    return i.name if i.account_id else f"{i.name}-{i.version}"


def image_item(i: Image, owner: str, tag_map: dict[str, dict[str, str]]) -> dict[str, Any]:
    ebs = i.root_device_type == "ebs"
    bdm = (
        [
            {
                "deviceName": views.ROOT_DEVICE,
                "ebs": {
                    "snapshotId": i.root_snapshot_id,
                    "volumeSize": max(1, -(-i.virtual_size // GIB)),
                    "deleteOnTermination": True,
                    "volumeType": "standard",
                    "encrypted": False,
                },
            }
        ]
        if ebs
        else []
    )
    state = {"failed": "failed", "pending": "pending"}.get(i.state, i.state)
    return {
        "imageId": i.id,
        "imageLocation": f"{OWNER_ALIAS if i.account_id is None else owner}/{i.name}",
        "imageState": state,
        "imageOwnerId": owner,
        "creationDate": i.created_at,
        "isPublic": i.public,
        "architecture": i.arch,
        "imageType": "machine",
        "name": display_name(i),
        "description": i.description or None,
        "imageOwnerAlias": OWNER_ALIAS if i.account_id is None else None,
        "rootDeviceType": i.root_device_type,
        "rootDeviceName": views.ROOT_DEVICE,
        "blockDeviceMapping": bdm,
        "virtualizationType": "hvm",
        "platformDetails": "Linux/UNIX",
        "usageOperation": "RunInstances",
        "tagSet": views.tag_set(tag_map.get(i.id)),
        "bootMode": "legacy-bios",
    }


# filters AWS documents for DescribeImages on what Corral's images never have
IMAGE_ABSENT = (
    "hypervisor",
    "image-allowed",
    "image-watermark.source-image-creation-time",
    "image-watermark.source-image-id",
    "image-watermark.source-image-region",
    "image-watermark.watermark-creation-time",
    "image-watermark.watermark-key",
    "instance-type-specification.supported-instance-type",
    "instance-type-specification.unsupported-instance-type",
    "kernel-id",
    "ramdisk-id",
    "platform",
    "product-code",
    "product-code.type",
    "public-ssm-parameter-name",
    "scan-result.critical-fix-available-since",
    "scan-result.finding-scan-date",
    "scan-result.high-fix-available-since",
    "scan-result.highest-finding-severity-label",
    "scan-result.informational-fix-available-since",
    "scan-result.low-fix-available-since",
    "scan-result.medium-fix-available-since",
    "source-image-id",
    "source-image-region",
    "state-reason-code",
    "state-reason-message",
    "sriov-net-support",
)


def _bdm(i: Image, field: str) -> list[Any]:
    out = []
    for m in image_item(i, "", {})["blockDeviceMapping"]:
        value = m.get(field, m.get("ebs", {}).get(field))
        if value is not None:
            out.append(value)
    return out


@action(
    "DescribeImages",
    accepts=(
        "ImageId.N",
        "Owner.N",
        "ExecutableBy.N",
        "IncludeDeprecated",
        "IncludeDisabled",
        *FILTERS,
        *PAGES,
        *DRY_RUN,
    ),
)
async def images_describe(call: Call) -> dict[str, Any]:
    p = call.p
    # Corral neither deprecates nor disables images: these widen nothing
    p.flag("IncludeDeprecated")
    p.flag("IncludeDisabled")
    me = call.caller.account_id
    admin = await _admin_id(call)
    rows = await call.ctrl.image_publishing.list(call.caller)
    wanted = p.strings("ImageId")
    for w in wanted:
        if not ids.is_id("image", w):
            raise Ec2Error("InvalidAMIID.Malformed", f'Invalid id: "{w}" (expecting "ami-...")')
    if wanted:
        have = {i.id for i in rows}
        gone = [w for w in wanted if w not in have]
        if gone:
            raise Ec2Error(
                "InvalidAMIID.NotFound", f"The image id '[{', '.join(gone)}]' does not exist"
            )
        rows = [i for i in rows if i.id in wanted]

    def owner_of(i: Image) -> str:
        return i.account_id or admin

    owners = p.strings("Owner")
    if owners:
        keep = set()
        for o in owners:
            if o == "self":
                keep.add(me)
            elif o == OWNER_ALIAS:
                keep.add(OWNER_ALIAS)
            else:
                keep.add(o)
        rows = [
            i for i in rows if owner_of(i) in keep or (OWNER_ALIAS in keep and i.account_id is None)
        ]
    async with call.ctrl.store.read() as s:
        perms = await call.ctrl.image_publishing.permissions(s, [i.id for i in rows])
        tag_map = await call.ctrl.tags.of(s, me, [i.id for i in rows])
    exec_by = p.strings("ExecutableBy")
    if exec_by:

        def may(i: Image, who: str) -> bool:
            if who == "all":
                return i.public
            acct = me if who == "self" else who
            if who != "self" and owner_of(i) != me:
                return False  # only an owner may ask who else can launch its images
            return i.public or owner_of(i) == acct or acct in perms.get(i.id, [])

        rows = [i for i in rows if any(may(i, w) for w in exec_by)]
    match = Filters(
        p.filters(),
        {
            "image-id": lambda i: i.id,
            "name": display_name,
            "state": lambda i: i.state,
            "owner-id": owner_of,
            "owner-alias": lambda i: OWNER_ALIAS if i.account_id is None else None,
            "is-public": lambda i: i.public,
            "architecture": lambda i: i.arch,
            "image-type": lambda i: "machine",
            "root-device-type": lambda i: i.root_device_type,
            "root-device-name": lambda i: views.ROOT_DEVICE,
            "virtualization-type": lambda i: "hvm",
            "description": lambda i: i.description,
            "block-device-mapping.snapshot-id": lambda i: i.root_snapshot_id,
            "platform-details": lambda i: "Linux/UNIX",
            "block-device-mapping.device-name": lambda i: _bdm(i, "deviceName"),
            "block-device-mapping.delete-on-termination": lambda i: _bdm(i, "deleteOnTermination"),
            "block-device-mapping.volume-size": lambda i: _bdm(i, "volumeSize"),
            "block-device-mapping.volume-type": lambda i: _bdm(i, "volumeType"),
            "block-device-mapping.encrypted": lambda i: _bdm(i, "encrypted"),
            "boot-mode": lambda i: "legacy-bios",
            "creation-date": lambda i: xml.timestamp(i.created_at),
            "ena-support": lambda i: False,
            "free-tier-eligible": lambda i: False,
            "manifest-location": lambda i: image_item(i, owner_of(i), {})["imageLocation"],
            "source-instance-id": lambda i: i.source_instance_id,
        },
        lambda i: tag_map.get(i.id, {}),
        IMAGE_ABSENT,
    )
    rows = [i for i in rows if match(i)]
    if call.dry_run:
        dry_run_ok()
    page, token = paginate(rows, p, call.action, me, 1, 1000, "ImageId")
    return {"imagesSet": [image_item(i, owner_of(i), tag_map) for i in page], "nextToken": token}


@action(
    "CreateImage",
    accepts=(
        "InstanceId",
        "Name",
        "Description",
        "NoReboot",
        *TAG_SPECS,
        *DRY_RUN,
    ),
    unsupported=(
        "SnapshotLocation",
        "BootModeOverride",
        "BlockDeviceMapping.N.*",
    ),
)
async def image_create(call: Call) -> dict[str, Any]:
    p = call.p
    iid = p.need("InstanceId")
    if not ids.is_id("instance", iid):
        raise Ec2Error("InvalidInstanceID.Malformed", f'Invalid id: "{iid}"')
    specs = p.tag_specs(("image", "snapshot"))
    wanted = tags.check(specs.get("image", {}))
    row, _ = await call.ctrl.image_publishing.create_image(
        call.caller,
        iid,
        p.need("Name"),
        p.get("Description", "") or "",
        wanted,
        call.dry_run,
        no_reboot=p.flag("NoReboot"),
    )
    if specs.get("snapshot") and row.root_snapshot_id:
        await call.ctrl.tags.create(call.caller, [row.root_snapshot_id], specs["snapshot"])
    return {"imageId": row.id}


@action(
    "RegisterImage",
    accepts=(
        "Name",
        "Description",
        "Architecture",
        "KernelId",
        "RootDeviceName",
        "VirtualizationType",
        "BlockDeviceMapping.N.DeviceName",
        "BlockDeviceMapping.N.Ebs.SnapshotId",
        *DRY_RUN,
    ),
    unsupported=(
        "ImageLocation",
        "BillingProduct.N",
        "BootMode",
        "TpmSupport",
        "UefiData",
        "ImdsSupport",
        "TagSpecification.N.*",
        "RamdiskId",
        "BlockDeviceMapping.N.*",
        "SriovNetSupport",
        "EnaSupport",
    ),
)
async def image_register(call: Call) -> dict[str, Any]:
    p = call.p
    name = p.need("Name")
    arch = p.get("Architecture", "x86_64")
    if arch != "x86_64":
        raise Ec2Error("InvalidParameterValue", f"Architecture {arch!r}: Corral runs x86_64")
    virt = p.get("VirtualizationType", "hvm")
    if virt != "hvm":
        raise Ec2Error(
            "InvalidParameterValue", f"VirtualizationType {virt!r}: Corral's images are hvm"
        )
    root = p.get("RootDeviceName")
    if root is not None and root not in ROOT_NAMES:
        raise invalid("RootDeviceName", root, f"Corral's root device is one of {ROOT_NAMES}.")
    mappings = p.group("BlockDeviceMapping")
    if len(mappings) > 1:
        raise Ec2Error(
            "UnsupportedOperation",
            "Corral's images have one disk: give one BlockDeviceMapping, the root's snapshot",
        )
    snapshot = mappings[0].get("Ebs.SnapshotId") if mappings else None
    if not snapshot:
        raise missing("BlockDeviceMapping.1.Ebs.SnapshotId")
    device = mappings[0].get("DeviceName")
    if (device is not None and device != (root or device)) or device not in (None, *ROOT_NAMES):
        raise invalid(
            "BlockDeviceMapping.1.DeviceName",
            device,
            f"The snapshot is the root disk: map it at {root or views.ROOT_DEVICE}.",
        )
    row, _ = await call.ctrl.image_publishing.register(
        call.caller, name, snapshot, p.get("KernelId"), p.get("Description", "") or "", call.dry_run
    )
    return {"imageId": row.id}


@action(
    "DeregisterImage",
    accepts=(
        "ImageId",
        *DRY_RUN,
    ),
    unsupported=("DeleteAssociatedSnapshots",),
)
async def image_deregister(call: Call) -> dict[str, Any]:
    await call.ctrl.image_publishing.deregister(call.caller, call.p.need("ImageId"), call.dry_run)
    return {"return": True}


IMAGE_ATTRIBUTES = (
    "description",
    "kernel",
    "ramdisk",
    "launchPermission",
    "productCodes",
    "blockDeviceMapping",
    "sriovNetSupport",
    "bootMode",
    "tpmSupport",
    "uefiData",
    "lastLaunchedTime",
    "imdsSupport",
    "deregistrationProtection",
)


@action(
    "DescribeImageAttribute",
    accepts=(
        "ImageId",
        "Attribute",
        *DRY_RUN,
    ),
)
async def image_attribute(call: Call) -> dict[str, Any]:
    image_id, attr = call.p.need("ImageId"), call.p.need("Attribute")
    pub = call.ctrl.image_publishing
    if attr == "launchPermission":
        public, users = await pub.launch_permissions(call.caller, image_id)
        users = list(users)
        perms: list[dict[str, str]] = [{"group": "all"}] if public else []
        perms += [{"userId": u} for u in users]
        if call.dry_run:
            dry_run_ok()
        return {"imageId": image_id, "launchPermission": perms}
    async with call.ctrl.store.read() as s:
        row = await pub.get_visible(s, call.caller, image_id)
    if call.dry_run:
        dry_run_ok()
    if attr == "description":
        return {"imageId": image_id, "description": {"value": row.description}}
    if attr == "blockDeviceMapping":
        return {
            "imageId": image_id,
            "blockDeviceMapping": image_item(row, "", {})["blockDeviceMapping"],
        }
    if attr == "bootMode":
        return {"imageId": image_id, attr: {"value": "legacy-bios"}}
    if attr == "deregistrationProtection":
        return {"imageId": image_id, attr: {"value": "disabled"}}
    if attr in ("kernel", "ramdisk", "sriovNetSupport", "lastLaunchedTime", "imdsSupport"):
        return {"imageId": image_id, attr: {}}
    if attr in ("tpmSupport", "uefiData"):
        return {"imageId": image_id, attr: {}}
    if attr == "productCodes":
        return {"imageId": image_id, "productCodes": []}
    raise Ec2Error(
        "InvalidParameterValue",
        f"Value ({attr}) for parameter attribute is invalid; use one of "
        f"{', '.join(IMAGE_ATTRIBUTES)}",
    )


@action(
    "ModifyImageAttribute",
    accepts=(
        "ImageId",
        "Attribute",
        "Value",
        "Description.Value",
        "OperationType",
        "UserId.N",
        "UserGroup.N",
        "LaunchPermission.Add.N.UserId",
        "LaunchPermission.Add.N.Group",
        "LaunchPermission.Remove.N.UserId",
        "LaunchPermission.Remove.N.Group",
        *DRY_RUN,
    ),
    unsupported=(
        "LaunchPermission.Add.N.*",
        "LaunchPermission.Remove.N.*",
        "ProductCode.N",
        "OrganizationArn.N",
        "OrganizationalUnitArn.N",
        "ImdsSupport.Value",
    ),
)
async def image_modify(call: Call) -> dict[str, Any]:
    p = call.p
    image_id = p.need("ImageId")
    add_users, remove_users, add_all = [], [], None
    for g in p.group("LaunchPermission.Add"):
        if g.get("Group") == "all":
            add_all = True
        elif g.get("UserId"):
            add_users.append(g.need("UserId"))
    for g in p.group("LaunchPermission.Remove"):
        if g.get("Group") == "all":
            add_all = False
        elif g.get("UserId"):
            remove_users.append(g.need("UserId"))
    attr = p.get("Attribute")
    if attr is not None and attr not in ("launchPermission", "description"):
        if attr not in IMAGE_ATTRIBUTES:
            raise invalid("Attribute", attr, f"Use one of {', '.join(IMAGE_ATTRIBUTES)}.")
        raise Ec2Error(
            "UnsupportedOperation",
            f"Corral changes an image's launchPermission and description, not {attr}",
        )
    if attr == "launchPermission" or p.get("OperationType"):
        op = p.need("OperationType")
        if op not in ("add", "remove"):
            raise Ec2Error("InvalidParameterValue", f"OperationType {op!r} must be add or remove")
        users, groups = p.strings("UserId"), p.strings("UserGroup")
        if op == "add":
            add_users += users
        else:
            remove_users += users
        if "all" in groups:
            add_all = op == "add"
    description = p.get("Description.Value")
    if attr == "description":
        description = p.need("Value")
    if description is None and not add_users and not remove_users and add_all is None:
        raise Ec2Error(
            "MissingParameter",
            "Say what to change: LaunchPermission.Add/Remove or Description.Value",
        )
    pub = call.ctrl.image_publishing
    await pub.modify_launch_permissions(
        call.caller, image_id, add_users, remove_users, add_all, call.dry_run
    )
    if description is not None:
        async with call.ctrl.store.write() as s:
            row = await pub.owned(s, call.caller, image_id)
            row.description = description
    return {"return": True}


@action("ResetImageAttribute", accepts=("ImageId", "Attribute", *DRY_RUN))
async def image_reset(call: Call) -> dict[str, Any]:
    """As on AWS, only launchPermission resets: the image becomes private to its owner."""
    image_id, attr = call.p.need("ImageId"), call.p.need("Attribute")
    if attr != "launchPermission":
        raise invalid("Attribute", attr, "Only launchPermission can be reset.")
    await call.ctrl.image_publishing.reset_launch_permissions(call.caller, image_id, call.dry_run)
    return {"return": True}
