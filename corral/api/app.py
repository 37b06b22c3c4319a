"""The ASGI application: the native REST API under /v1 with its OpenAPI at /openapi.json."""

from __future__ import annotations

from fastapi import FastAPI

from corral.api.context import ApiContext
from corral.api.ec2 import endpoint as ec2
from corral.api.rest import (
    accounts,
    appliances,
    errors,
    images,
    instances,
    keys,
    operations,
    placement,
    system,
    volumes,
)

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
    app.include_router(ec2.router)  # the EC2 Query API at / (POST form or GET ?Action=)
    return app
