"""Joining nodes: a single-use join token (admin), the join itself (authenticated by the token,
answered with the node's certificate) and the cluster's CA certificate (public: a joining node
checks it against the fingerprint in its token)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import PlainTextResponse
from sqlalchemy import select

from corral import models
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES
from corral.controller.accounts import Caller
from corral.controller.cluster import REMOVED, node_state, parse_ttl
from corral.controller.scheduler import NodeView, Policy
from corral.errors import Forbidden
from corral.store.models import Instance, Node

router = APIRouter(prefix="/v1", tags=["nodes"], responses=RESPONSES)


@router.post("/nodes/tokens", status_code=201, response_model=models.NodeToken)
async def node_token_create(
    req: models.NodeTokenCreate,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.NodeToken:
    """A single-use token that lets one host join as a node until it expires."""
    if not who.admin:
        raise Forbidden("only an admin account may let nodes join")
    cluster = ctx.controller.cluster
    token, expires = await cluster.new_token(parse_ttl(req.ttl))
    return models.NodeToken(
        token=token,
        expires_at=expires,
        ca_fingerprint=cluster.ca.fingerprint,
        api_url=ctx.settings.api_url,
    )


@router.post("/nodes/join", status_code=201, response_model=models.NodeJoined)
async def node_join(
    req: models.NodeJoin, ctx: ApiContext = Depends(get_context)
) -> models.NodeJoined:
    """A host joins with a token from `corral node token`: it gets its certificate, and the
    controller connects to its agent at ``address`` with mutual TLS."""
    cluster = ctx.controller.cluster
    node_id, cert = await cluster.join(
        req.token, req.certificate_request, req.name, req.address, req.zone, req.labels
    )
    return models.NodeJoined(
        node_id=node_id, certificate=cert.decode(), ca_certificate=cluster.ca.pem.decode()
    )


@router.get("/cluster/ca.crt", response_class=PlainTextResponse)
async def cluster_ca(ctx: ApiContext = Depends(get_context)) -> str:
    """The cluster CA's certificate (PEM); public."""
    return ctx.controller.cluster.ca.pem.decode()


# -- node administration -----------------------------------------------------------------------
def _admin(who: Caller) -> None:
    if not who.admin:
        raise Forbidden("only an admin account manages the nodes")


def _view(ctx: ApiContext, n: Node, instances: list[str], p: Policy) -> models.Node:
    v = NodeView(
        id=n.id, name=n.name, state=n.state, cordoned=n.cordoned, zone=n.zone, arch=n.arch,
        labels=n.labels or {}, cpus=n.cpus, memory=n.memory, disk=n.disk,
        memory_overhead=n.memory_overhead, memory_reserved=n.memory_reserved,
        claimed_memory=n.claimed_memory, claimed_cores=n.claimed_cores,
        claimed_disk=n.claimed_disk,
    )  # fmt: skip
    return models.Node(
        id=n.id,
        name=n.name,
        state=node_state(n),
        cpus=n.cpus,
        memory=n.memory,
        accel=n.accel,
        accel_reason=n.accel_reason,
        qemu_version=n.qemu_version,
        last_seen=n.last_seen,
        instances=len(instances),
        strays=ctx.controller.reconciler.strays.get(n.id, []),
        zone=n.zone,
        labels={str(k): str(val) for k, val in (n.labels or {}).items()},
        cordoned=n.cordoned,
        address=n.address,
        memory_claimed=n.claimed_memory,
        memory_free=v.free_memory(p),
        cores_claimed=n.claimed_cores,
        cores_free=v.free_cores(p),
        disk=n.disk,
        disk_claimed=n.claimed_disk,
        instance_ids=instances,
        lease=ctx.controller.cluster.lease_view(n),
    )


async def node_views(ctx: ApiContext, ref: str | None = None) -> list[models.Node]:
    p = Policy.from_settings(ctx.settings)
    async with ctx.controller.store.read() as s:
        if ref is not None:
            rows = [await ctx.controller.cluster.node_row(s, ref)]
        else:
            rows = list(
                await s.scalars(select(Node).where(Node.state != REMOVED).order_by(Node.name))
            )
        by_node: dict[str | None, list[str]] = {}
        for iid, node_id in (
            await s.execute(
                select(Instance.id, Instance.node_id)
                .where(Instance.state != "terminated")
                .order_by(Instance.id)
            )
        ).all():
            by_node.setdefault(node_id, []).append(iid)
    return [_view(ctx, n, by_node.get(n.id, []), p) for n in rows]


@router.get("/nodes/{ref}", response_model=models.Node)
async def node_show(
    ref: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.Node:
    """One node by id or name: state, capacity claimed and free, instances, last heartbeat."""
    _admin(who)
    return (await node_views(ctx, ref))[0]


@router.patch("/nodes/{ref}", response_model=models.Node)
async def node_update(
    ref: str,
    req: models.NodeUpdate,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> models.Node:
    """Set or remove labels (what `--node-selector` matches)."""
    _admin(who)
    await ctx.controller.cluster.label(ref, req.labels, req.remove_labels)
    return (await node_views(ctx, ref))[0]


@router.post("/nodes/{ref}/cordon", response_model=models.Node)
async def node_cordon(
    ref: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.Node:
    """No new instances on this node; what runs there stays."""
    _admin(who)
    await ctx.controller.cluster.cordon(ref, True)
    return (await node_views(ctx, ref))[0]


@router.post("/nodes/{ref}/uncordon", response_model=models.Node)
async def node_uncordon(
    ref: str, ctx: ApiContext = Depends(get_context), who: Caller = Depends(auth)
) -> models.Node:
    _admin(who)
    await ctx.controller.cluster.cordon(ref, False)
    return (await node_views(ctx, ref))[0]


@router.delete("/nodes/{ref}", status_code=204)
async def node_remove(
    ref: str,
    force: bool = False,
    ctx: ApiContext = Depends(get_context),
    who: Caller = Depends(auth),
) -> Response:
    """Forget a node; refused while it has instances unless ``force`` (they are then recorded
    terminated)."""
    _admin(who)
    await ctx.controller.cluster.remove(ref, force)
    return Response(status_code=204)
