"""The node API, declared once as data (as Ganeti's ``rpc_definitions``): every call the
controller may make of a node, with its request model, its result type, its timeout class and
whether repeating it is harmless. The agent's server (``corral.node.server``) and the one
client (``corral.node.remote``) are both generated from ``CALLS``; adding a call is one
``Call(...)`` line here, one request model in ``corral.node.spec`` and the method on the agent.

On the wire a call is ``POST /v1/calls/<name>`` with the request model as JSON, answered
``{"result": …}`` or, with the error's HTTP status, ``{"error": WireError}``; a stream call is a
websocket at ``/v1/streams/<name>`` whose arguments are the query string. Errors cross as
``corral.errors`` codes and reasons, never as exception classes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import Base64Bytes, BaseModel, TypeAdapter

from corral import errors
from corral.node import spec as s

WIRE_VERSION = "1"


class Timeout(StrEnum):
    FAST = "fast"  # a look at the node's state
    NORMAL = "normal"  # a change that takes seconds (taps, nft, QEMU start)
    LONG = "long"  # disk copies, image captures, guest-side waits
    STREAM = "stream"  # a byte stream open as long as both ends want


SECONDS: dict[Timeout, float | None] = {
    Timeout.FAST: 15.0,
    Timeout.NORMAL: 120.0,
    Timeout.LONG: 3700.0,
    Timeout.STREAM: None,
}


@dataclass(frozen=True)
class Call:
    name: str
    request: type[BaseModel]
    result: Any  # a type pydantic can validate (a model, int, list[…], X | None …)
    timeout: Timeout = Timeout.NORMAL
    idempotent: bool = True  # safe to send again when the answer was lost
    budget: str | None = None  # a request field (seconds) the call may spend on top
    adapter: TypeAdapter[Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "adapter", TypeAdapter(self.result))

    @property
    def stream(self) -> bool:
        return self.timeout is Timeout.STREAM

    def seconds(self, request: BaseModel) -> float | None:
        base = SECONDS[self.timeout]
        if base is None or self.budget is None:
            return base
        return base + float(getattr(request, self.budget) or 0)


Bytes = Base64Bytes
T = Timeout

CALLS: dict[str, Call] = {
    c.name: c
    for c in (
        Call("info", s.NoArgs, s.NodeInfo, T.LONG),  # the first call probes the accelerator
        # the controller's heartbeat, renewing the node's lease (node/fence.py): the node's name
        Call("heartbeat", s.HeartbeatRequest, str, T.FAST),
        Call("peer_heard", s.PeerHeardRequest, list[float | None], T.FAST),
        Call("network_ensure", s.NetworkEnsureRequest, None),
        Call("network_hosts", s.NetworkEnsureRequest, None),
        Call("network_policy", s.NetworkPolicyRequest, None),
        Call("network_remove", s.NetworkRemoveRequest, None),  # a VPC network's last instance
        Call("dns_update", s.DnsUpdateRequest, None),
        Call("metadata_put", s.MetadataPutRequest, None),  # a network's metadata documents
        Call("overlay_ensure", s.OverlayRequest, None),  # VPC segments across nodes (issue 12)
        Call("overlay_remove", s.OverlayRemoveRequest, None),
        Call("router_ensure", s.RouterRequest, None),  # a VPC's router on the node (issue 12)
        Call("instance_create", s.InstanceSpecRequest, None, T.LONG),
        Call("instance_start", s.InstanceSpecRequest, int, T.LONG),
        Call("instance_stop", s.InstanceStopRequest, s.ExitInfo | None, budget="timeout"),
        Call("instance_reboot", s.InstanceRebootRequest, str, idempotent=False, budget="timeout"),
        Call("instance_destroy", s.InstanceDestroyRequest, None),
        Call("instances", s.NoArgs, list[s.ObservedInstance], T.FAST),
        Call("console_log", s.ConsoleLogRequest, Bytes, T.FAST),
        Call("console_connect", s.InstanceRequest, None, T.STREAM),
        Call("port_connect", s.PortConnectRequest, None, T.STREAM),
        Call("instance_confinement", s.InstanceRequest, s.Confinement | None, T.FAST),
        Call("volume_create", s.VolumeCreateRequest, None, T.LONG),
        Call("volume_delete", s.VolumeRequest, None),
        Call("volume_attach", s.VolumeAttachRequest, bool),
        Call("volume_detach", s.VolumeDetachRequest, bool, budget="timeout"),
        Call("instance_volumes", s.InstanceRequest, list[str], T.FAST),
        Call("snapshot_create", s.SnapshotCreateRequest, str, T.LONG),
        Call("snapshot_delete", s.SnapshotRequest, None),
        Call("image_capture", s.ImageCaptureRequest, str, T.LONG),
        Call("image_delete", s.ImageRequest, None),
        # an image pulled to the node on first use (corral.node.image_pull)
        Call("image_missing", s.ImageMissingRequest, list[str], T.FAST),
        Call("image_blob_put", s.ImageBlobRequest, None, T.STREAM),
        Call("image_manifest_put", s.ImageManifestRequest, None),
        Call("health_check", s.HealthCheckRequest, str, T.FAST),
        Call("instance_relink", s.InstanceRelinkRequest, bool, budget="down"),
        Call("address_moved", s.AddressMovedRequest, None),
        Call("ping", s.PingRequest, bool, budget="count"),
        Call("events", s.EventsRequest, s.EventBatch, T.FAST, budget="wait"),
        Call("teardown", s.NoArgs, None, T.LONG),
        Call("stats", s.NoArgs, s.NodeStats, T.FAST),  # operator views (issue 15)
        # live migration (corral.node.migrate_agent)
        Call("migrate_prepare", s.MigrationPrepareRequest, s.MigrationPrepared, T.LONG),
        Call("migrate_incoming", s.InstanceRequest, None),
        Call("migrate_mirror", s.MigrationMirrorRequest, s.MigrationStatus),
        Call("migrate_start", s.MigrationStartRequest, s.MigrationStatus),
        Call("migrate_status", s.InstanceRequest, s.MigrationStatus, T.FAST),
        Call("migrate_wait", s.MigrationWaitRequest, s.MigrationStatus, T.FAST, budget="wait"),
        Call("migrate_complete", s.InstanceRequest, None),
        Call("migrate_cancel", s.MigrationCancelRequest, s.MigrationStatus),
        Call("migrate_finish", s.MigrationFinishRequest, str, budget="timeout"),
        Call("migrate_abort", s.MigrationAbortRequest, None),
        Call("migrate_cleanup", s.MigrationCleanupRequest, None),
        Call("instance_credits", s.InstanceCreditsRequest, s.CreditStatus | None, T.FAST),
        # high availability: replicated disks (corral.node.replica_agent)
        Call("replica_serve", s.ReplicaServeRequest, s.ReplicaServed, T.LONG),
        Call("replica_mirror", s.ReplicaMirrorRequest, s.ReplicaStatus),
        Call("replica_status", s.InstanceRequest, s.ReplicaStatus, T.FAST),
        Call("replica_stop", s.InstanceRequest, None),
        Call("replica_drop", s.ReplicaDropRequest, None),
        Call("replica_promote", s.ReplicaPromoteRequest, int, T.LONG),
        # cold moves of stopped instances (corral.node.evacuate_agent)
        Call("evacuate_receive", s.ReplicaServeRequest, s.ReplicaServed, T.LONG),
        Call("evacuate_send", s.EvacuateSendRequest, list[str], T.LONG),
        Call("evacuate_accept", s.EvacuateAcceptRequest, None),
        Call("evacuate_abort", s.EvacuateAbortRequest, None),
    )
}

# -- errors ------------------------------------------------------------------------------------
_CLASSES: dict[errors.Code, type[errors.CorralError]] = {
    errors.Code.INVALID: errors.Invalid,
    errors.Code.NOT_FOUND: errors.NotFound,
    errors.Code.EXISTS: errors.Exists,
    errors.Code.WRONG_STATE: errors.WrongState,
    errors.Code.NO_RESOURCES: errors.NoResources,
    errors.Code.UNAUTHORIZED: errors.Unauthorized,
    errors.Code.FORBIDDEN: errors.Forbidden,
    errors.Code.ENVIRONMENT: errors.EnvironmentProblem,
    errors.Code.CANCELLED: errors.Cancelled,
}


def error_out(err: errors.CorralError) -> s.WireError:
    return s.WireError(
        code=str(err.code),
        message=err.message,
        reason=err.reason,
        field=err.field,
        resource=err.resource,
    )


def error_in(wire: s.WireError) -> errors.CorralError:
    """The caller's side of an error: the ``corral.errors`` class of its code (an unknown code
    is an internal error), carrying the reason."""
    try:
        code = errors.Code(wire.code)
    except ValueError:
        code = errors.Code.INTERNAL
    cls = _CLASSES.get(code, errors.CorralError)
    return cls(
        wire.message, code=code, field=wire.field, resource=wire.resource, reason=wire.reason
    )
