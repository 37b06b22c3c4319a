"""A volume's IO limits from its EC2 volume type, as AWS sizes them, enforced by QEMU's block
throttling on the volume's virtio disk (guest-visible, like EBS): IOPS with a burst where the
type has one, and bytes per second. ``standard`` (Corral's default) is not throttled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from corral.controller.accounts import Caller
from corral.errors import DryRunPassed, Invalid
from corral.store.models import Instance, Volume

if TYPE_CHECKING:
    from corral.controller.service import Controller

MiB = 1 << 20


@dataclass(frozen=True)
class IoLimits:
    iops: int = 0  # sustained IO operations per second; 0: none
    iops_burst: int = 0  # what a burst may reach (0: no burst above ``iops``)
    bps: int = 0  # bytes per second; 0: none

    @property
    def limited(self) -> bool:
        return bool(self.iops or self.bps)


def check(volume_type: str, size: int, iops: int | None, throughput: int | None) -> None:
    """Refuse Iops and Throughput where the type does not take them, or out of its range."""
    if iops is not None and volume_type not in ("io1", "io2", "gp3"):
        raise Invalid(
            f"Iops is for io1, io2 and gp3 volumes, not {volume_type}; leave it out",
            field="Iops",
            ec2_code="InvalidParameterCombination",
        )
    if throughput is not None and volume_type != "gp3":
        raise Invalid(
            f"Throughput is for gp3 volumes, not {volume_type}; leave it out",
            field="Throughput",
            ec2_code="InvalidParameterCombination",
        )
    if volume_type in ("io1", "io2") and iops is None:
        raise Invalid(
            f"an {volume_type} volume needs Iops (100-64000)",
            field="Iops",
            ec2_code="MissingParameter",
        )
    per_gib = {"io1": 50, "io2": 500, "gp3": 500}
    if iops is not None:
        lo, hi = (3000, 16000) if volume_type == "gp3" else (100, 64000)
        if not lo <= iops <= hi:
            raise Invalid(f"Iops {iops} must be {lo}-{hi} for {volume_type}", field="Iops")
        if iops > per_gib[volume_type] * size and iops > lo:
            raise Invalid(
                f"Iops {iops} is more than {per_gib[volume_type]} per GiB of a {size} GiB "
                f"{volume_type} volume; ask for fewer or a larger volume",
                field="Iops",
            )
    if throughput is not None and not 125 <= throughput <= 1000:
        raise Invalid(f"Throughput {throughput} must be 125-1000 MiB/s", field="Throughput")


def limits(volume_type: str, size: int, iops: int | None, throughput: int | None) -> IoLimits:
    if volume_type == "gp2":  # 3 IOPS a GiB (100-16000), bursting to 3000; 250 MiB/s
        base = min(16000, max(100, 3 * size))
        return IoLimits(base, max(base, 3000) if base < 3000 else 0, 250 * MiB)
    if volume_type == "gp3":
        return IoLimits(iops or 3000, 0, (throughput or 125) * MiB)
    if volume_type in ("io1", "io2"):
        return IoLimits(iops or 100, 0, 1000 * MiB)
    if volume_type == "st1":  # throughput-optimised: 40 MiB/s a TiB, bursting to 250 a TiB
        return IoLimits(500, 0, max(20, size * 40 // 1024) * MiB)
    if volume_type == "sc1":  # cold: 12 MiB/s a TiB
        return IoLimits(250, 0, max(6, size * 12 // 1024) * MiB)
    return IoLimits()  # standard: not throttled


async def modify(
    ctrl: Controller,
    caller: Caller,
    ref: str,
    volume_type: str | None = None,
    iops: int | None = None,
    throughput: int | None = None,
    size: int | None = None,
    dry_run: bool = False,
) -> tuple[Volume, dict[str, Any]]:
    """EC2's ModifyVolume for the volume's type, Iops and Throughput: stored, and applied at
    once to the disk of a running instance it is attached to. Returns the row and what it was
    before. Resizing is not done here: a Size other than the volume's is refused."""
    from corral.controller.volumes import VOLUME_TYPES, io_args

    if volume_type is not None and volume_type not in VOLUME_TYPES:
        raise Invalid(
            f"VolumeType {volume_type!r} must be one of {', '.join(VOLUME_TYPES)}",
            field="VolumeType",
        )
    async with ctrl.store.write() as s:
        row = await ctrl.volumes.resolve(s, caller, ref)
        before = {
            "size": row.size,
            "volume_type": row.volume_type,
            "iops": limits(row.volume_type, row.size, row.iops, row.throughput).iops,
            "throughput": row.throughput,
        }
        if size is not None and size != row.size:
            raise Invalid(
                f"Size {size}: Corral does not resize volumes ({row.id} is {row.size} GiB); "
                "leave Size out, or make a larger volume from a snapshot",
                field="Size",
            )
        vtype = volume_type or row.volume_type
        # what the volume had carries over within its kind (io1 <-> io2, gp3 -> gp3); a new
        # kind starts from its own defaults unless asked
        same = vtype == row.volume_type or {vtype, row.volume_type} == {"io1", "io2"}
        keep_iops = row.iops if same and vtype in ("io1", "io2", "gp3") else None
        keep_tp = row.throughput if same and vtype == "gp3" else None
        new_iops = iops if iops is not None else keep_iops
        new_tp = throughput if throughput is not None else keep_tp
        check(vtype, row.size, new_iops, new_tp)
        if dry_run:
            raise DryRunPassed("ModifyVolume would have succeeded")
        row.volume_type, row.iops, row.throughput = vtype, new_iops, new_tp
        inst = await s.get(Instance, row.instance_id) if row.instance_id else None
    if inst is not None and inst.state == "running" and row.attach_state == "attached":
        await ctrl.node(inst.node_id).volume_attach(inst.id, row.id, **io_args(row))
    return row, before
