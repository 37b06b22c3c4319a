"""The ASGI application: the native REST API under /v1 with its OpenAPI at /openapi.json."""

from __future__ import annotations

import uuid

from fastapi import FastAPI
from starlette.types import Scope

from corral.api import limits, metrics, openapi, ui
from corral.api.context import ApiContext
from corral.api.ec2 import endpoint as ec2
from corral.api.ec2 import xml
from corral.api.ec2.errors import from_corral
from corral.api.rest import (
    accounts,
    addresses,
    appliances,
    catalog,
    cluster,
    credits,
    errors,
    images,
    instances,
    keys,
    metering,
    migration,
    observe,
    operations,
    placement,
    quotas,
    security_groups,
    system,
    tags,
    volumes,
    vpcs,
)
from corral.errors import CorralError

VERSION = "0.1.0"


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="Corral",
        version=VERSION,
        description="A self-hosted cloud for lightweight, disposable virtual servers. "
        "Mutations answer 202 with an operation to wait on (GET /v1/operations/{id}/wait).",
    )
    app.state.ctx = ctx
    errors.install(app)
    for module in (system, instances, images, keys, operations, accounts, volumes):
        app.include_router(module.router)
    app.include_router(volumes.snapshots)
    app.include_router(appliances.router)
    app.include_router(placement.router)
    app.include_router(placement.capacity_router)
    # the native API of what EC2 had first (issue 15)
    for module in (security_groups, addresses, tags, catalog, observe):
        app.include_router(module.router)
    app.include_router(ui.router)  # the dashboard at /ui
    app.include_router(migration.router)  # node drain (live migration)
    app.include_router(migration.cluster)  # rebalance
    app.include_router(quotas.router)
    app.include_router(metering.router)
    app.include_router(credits.router)
    app.include_router(cluster.router)
    app.include_router(vpcs.router)
    app.include_router(vpcs.subnet_router)
    app.include_router(ec2.router)  # the EC2 Query API at / (POST form or GET ?Action=)
    app.add_middleware(limits.BodyLimit, render=_render_refusal)
    app.add_middleware(metrics.RequestMetrics)  # /metrics: requests by route and status
    from corral.api.pending import PendingPushes

    app.add_middleware(PendingPushes)  # names the network pushes a node left unfinished
    openapi.install(app)
    return app


def _render_refusal(scope: Scope, err: CorralError) -> tuple[bytes, str]:
    """A body refused before routing, in the format of the API it was sent to."""
    if scope.get("path") == "/":
        e = from_corral(err)
        return xml.error(e.code, e.message, str(uuid.uuid4())), ec2.XML_TYPE
    return limits.json_error(scope, err)
