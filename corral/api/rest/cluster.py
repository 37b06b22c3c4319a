"""Joining nodes: a single-use join token (admin), the join itself (authenticated by the token,
answered with the node's certificate) and the cluster's CA certificate (public: a joining node
checks it against the fingerprint in its token)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from corral import models
from corral.api.auth import caller as auth
from corral.api.context import ApiContext, get_context
from corral.api.rest.errors import RESPONSES
from corral.controller.accounts import Caller
from corral.controller.cluster import parse_ttl
from corral.errors import Forbidden

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
