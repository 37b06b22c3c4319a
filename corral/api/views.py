"""Store rows to wire models."""

from __future__ import annotations

from corral import models
from corral.controller import states
from corral.naming import private_dns_name
from corral.store import models as db


def instance(row: db.Instance, image_name: str = "", domain: str = "") -> models.Instance:
    return models.Instance(
        id=row.id,
        name=row.name,
        account_id=row.account_id,
        image_id=row.image_id,
        image_name=image_name,
        state=row.state,
        state_code=states.code(row.state),
        desired_state=row.desired_state,
        state_reason=row.state_reason,
        node=row.node_id,
        cpus=row.cpus,
        memory=row.memory,
        disk_size=row.disk_size,
        private_ip=row.private_ip,
        mac=row.mac,
        hostname=private_dns_name(row.name, row.account_id, domain) if domain else row.name,
        key_name=row.key_name,
        restart_policy=row.restart_policy,
        restarts=row.restarts,
        net_limit_mbit=row.net_limit_mbit,
        metadata_tokens=row.metadata_tokens,
        metadata_hop_limit=row.metadata_hop_limit,
        subnet_id=row.subnet_id,
        pid=row.pid,
        launch_time=row.launch_time,
        started_at=row.started_at,
        stopped_at=row.stopped_at,
        terminated_at=row.terminated_at,
        ha=bool(row.ha),
        secondary_node=row.secondary_node_id,
        replica_state=row.replica_state or "",
        replica_percent=row.replica_percent or 0.0,
        replica_detail=row.replica_detail or "",
    )


def operation(row: db.Operation) -> models.Operation:
    err = models.ErrorBody(**row.error) if row.error else None
    return models.Operation(
        id=row.id,
        type=row.type,
        status=row.status,
        target_kind=row.target_kind,
        target_id=row.target_id,
        progress=row.progress,
        message=row.message,
        error=err,
        result=row.result or {},
        seq=row.seq,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def image(row: db.Image) -> models.Image:
    return models.Image(
        id=row.id,
        name=row.name,
        version=row.version,
        digest=row.digest,
        state=row.state,
        public=row.public,
        owner=row.account_id,
        arch=row.arch,
        kind=row.kind,
        description=row.description,
        default_user=row.default_user,
        size=row.size,
        virtual_size=row.virtual_size,
        created_at=row.created_at,
    )


def key_pair(row: db.KeyPair) -> models.KeyPair:
    return models.KeyPair(
        id=row.id,
        name=row.name,
        key_type=row.key_type,
        fingerprint=row.fingerprint,
        public_key=row.public_key,
        created_at=row.created_at,
    )


def volume(row: db.Volume, name: str | None = None, instance_name: str = "") -> models.Volume:
    att = None
    if row.instance_id is not None:
        att = models.VolumeAttachment(
            instance_id=row.instance_id,
            instance_name=instance_name,
            device=row.device or "",
            state=row.attach_state or "",
            attach_time=row.attach_time,
        )
    return models.Volume(
        id=row.id,
        name=name,
        size=row.size << 30,
        state=row.state,
        volume_type=row.volume_type,
        snapshot_id=row.snapshot_id,
        attachment=att,
        delete_on_termination=row.delete_on_termination,
        root=row.device == "/dev/sda1",
        error=row.error or "",
        created_at=row.created_at,
    )


def snapshot(row: db.Snapshot) -> models.Snapshot:
    return models.Snapshot(
        id=row.id,
        volume_id=row.volume_id,
        size=row.volume_size << 30,
        state=row.state,
        description=row.description,
        image_id=row.image_id,
        error=row.error or "",
        created_at=row.created_at,
    )
