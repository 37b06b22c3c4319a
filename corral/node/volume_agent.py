"""The node agent's volumes and snapshots: qcow2 files in ``<state>/volumes`` and
``<state>/snapshots``, plugged into running VMs and out again over QMP, and copied while a VM
writes to them by a QEMU block job. Mixed into ``NodeAgent``; every call is idempotent."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from corral.config import Settings
from corral.errors import Invalid, NotFound, WrongState
from corral.fsutil import atomic_write
from corral.images.store import ImageStore
from corral.node.driver import hotplug, qemu
from corral.node.driver.machine import Machine
from corral.node.spec import InstanceSpec
from corral.node.storage import volumes

log = logging.getLogger(__name__)

BACKUP_TIMEOUT = 3600.0


class VolumeAgent:
    settings: Settings
    images: ImageStore
    machines: dict[str, Machine]

    def paths(self, iid: str) -> qemu.Paths:
        raise NotImplementedError

    def _lock(self, iid: str) -> asyncio.Lock:
        raise NotImplementedError

    @property
    def volume_dir(self) -> Path:
        return self.settings.state_dir / "volumes"

    @property
    def snapshot_dir(self) -> Path:
        return self.settings.state_dir / "snapshots"

    def _volume(self, vid: str) -> Path:
        return self.volume_dir / f"{vid}.qcow2"

    def _snapshot(self, sid: str) -> Path:
        return self.snapshot_dir / f"{sid}.qcow2"

    def _running(self, iid: str) -> Machine | None:
        m = self.machines.get(iid)
        return m if m is not None and m.running and m.qmp is not None else None

    def _spec(self, iid: str) -> InstanceSpec | None:
        try:
            return InstanceSpec.model_validate_json(self.paths(iid).spec.read_bytes())
        except (FileNotFoundError, ValueError):
            return None

    # -- files -----------------------------------------------------------------------------
    async def volume_create(
        self,
        vid: str,
        size: int,
        snapshot_id: str | None = None,
        image_digest: str | None = None,
        fs: str | None = None,
        label: str = "",
    ) -> None:
        """An empty volume, a formatted one (``fs``), or one holding a snapshot's or an image's
        root disk (idempotent)."""
        if fs is not None and fs not in volumes.FILESYSTEMS:
            raise Invalid(
                f"file system {fs!r}: Corral formats {', '.join(volumes.FILESYSTEMS)}", field="fs"
            )
        source = None
        if snapshot_id is not None:
            source = self._snapshot(snapshot_id)
        elif image_digest is not None:
            source = self.images.root_disk_path(self.images.get_manifest(image_digest))
        if source is not None and not source.exists():
            raise NotFound(
                f"the source of volume {vid} ({source.name}) is not on this node",
                resource="snapshot",
            )
        await volumes.create(self._volume(vid), size, source, fs=fs, label=label)

    async def volume_delete(self, vid: str) -> None:
        volumes.remove(self._volume(vid))

    # -- plugging into running VMs ---------------------------------------------------------
    async def volume_attach(
        self, iid: str, vid: str, iops: int = 0, iops_burst: int = 0, bps: int = 0
    ) -> bool:
        """Plug the volume into the instance if it runs (True); a stopped instance gets it at
        its next start from its spec (False). Its IO limits are applied (again) either way."""
        path = self._volume(vid)
        if not path.exists():
            raise NotFound(f"volume {vid} has no disk on this node", resource="volume")
        async with self._lock(iid):
            m = self._running(iid)
            if m is None:
                return False
            assert m.qmp is not None
            if await hotplug.attach(m.qmp, vid, path):
                log.info("%s: plugged in %s", iid, vid)
            if iops or bps or self._throttled(iid, vid):
                await hotplug.throttle(m.qmp, vid, iops, iops_burst, bps)
            self._remember(iid, vid, attached=True, io=(iops, iops_burst, bps))
            return True

    async def volume_detach(
        self, iid: str, vid: str, timeout: float = hotplug.DETACH_TIMEOUT
    ) -> bool:
        """Unplug the volume from the running instance and wait until the guest lets go (True);
        nothing to do when the instance does not run (False). ``GuestHoldsDisk`` when the guest
        keeps it past ``timeout``."""
        async with self._lock(iid):
            m = self._running(iid)
            if m is None:
                self._remember(iid, vid, attached=False)
                return False
            assert m.qmp is not None
            if await hotplug.detach(m.qmp, vid, timeout):
                log.info("%s: unplugged %s", iid, vid)
            self._remember(iid, vid, attached=False)
            return True

    async def instance_volumes(self, iid: str) -> list[str]:
        """Volume ids plugged into the running instance now (empty when it does not run)."""
        m = self._running(iid)
        if m is None:
            return []
        assert m.qmp is not None
        return await hotplug.volumes(m.qmp)

    def _throttled(self, iid: str, vid: str) -> bool:
        spec = self._spec(iid)
        return spec is not None and any(v.id == vid and (v.iops or v.bps) for v in spec.volumes)

    def _remember(
        self, iid: str, vid: str, attached: bool, io: tuple[int, int, int] = (0, 0, 0)
    ) -> None:
        """Keep the spec file true, so an adopted or restarted VM is described correctly."""
        spec = self._spec(iid)
        if spec is None:
            return
        before = next((v for v in spec.volumes if v.id == vid), None)
        have = [v for v in spec.volumes if v.id != vid]
        if attached:
            from corral.node.spec import VolumeAttachment

            have.append(
                VolumeAttachment(
                    id=vid,
                    device=before.device if before else "",
                    iops=io[0],
                    iops_burst=io[1],
                    bps=io[2],
                )
            )
        if [(v.id, v.iops, v.iops_burst, v.bps) for v in have] != [
            (v.id, v.iops, v.iops_burst, v.bps) for v in spec.volumes
        ]:
            atomic_write(
                self.paths(iid).spec,
                spec.model_copy(update={"volumes": have}).model_dump_json(indent=2),
            )

    # -- snapshots -------------------------------------------------------------------------
    async def snapshot_create(self, sid: str, vid: str, instance_id: str | None = None) -> str:
        """A point-in-time copy of the volume. Plugged into a running VM (``instance_id``), QEMU
        copies it with a backup job while the guest goes on writing; otherwise qemu-img copies
        the file. Returns how: ``live`` or ``offline``."""
        source = self._volume(vid)
        if not source.exists():
            raise NotFound(f"volume {vid} has no disk on this node", resource="volume")
        dest = self._snapshot(sid)
        if dest.exists():
            return "done"
        if instance_id is not None:
            async with self._lock(instance_id):
                m = self._running(instance_id)
                spec = self._spec(instance_id)
                node = "root" if spec is not None and spec.root_volume == vid else vid
                if m is not None:
                    assert m.qmp is not None
                    if node == "root" or vid in await hotplug.volumes(m.qmp):
                        size = await volumes.virtual_size(source)
                        await volumes.backup_target(dest, size)
                        await hotplug.backup(
                            m.qmp,
                            node,
                            dest.with_name(f".{dest.name}.tmp"),
                            job=sid,
                            timeout=BACKUP_TIMEOUT,
                        )
                        await asyncio.to_thread(volumes.commit, dest)
                        return "live"
        if self._in_use(vid):
            raise WrongState(
                f"volume {vid} is in a running VM that was not named; snapshot it "
                "through its instance",
                resource="volume",
            )
        await volumes.flatten(source, dest)
        return "offline"

    def _in_use(self, vid: str) -> bool:
        for iid, m in self.machines.items():
            spec = self._spec(iid)
            if (
                m.running
                and spec is not None
                and (spec.root_volume == vid or any(v.id == vid for v in spec.volumes))
            ):
                return True
        return False

    async def snapshot_delete(self, sid: str) -> None:
        volumes.remove(self._snapshot(sid))
