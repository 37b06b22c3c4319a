"""The per-instance metadata service of the all-in-one daemon: corral/imds.py's service,
answering from the store. It listens inside the node's network namespace; the instance asking
is the one whose private address the request comes from on that network. A node joined to a
cluster answers its own guests from pushed documents instead (corral/node/imds.py)."""

from __future__ import annotations

from fastapi import FastAPI

from corral.controller import imds_docs
from corral.controller.imds_docs import Asker, build_tree
from corral.controller.service import Controller
from corral.imds import Tokens
from corral.node.spec import InstanceMetadata

__all__ = ["Asker", "Tokens", "build_tree", "create_app"]


def create_app(ctrl: Controller, network_id: str, key: bytes) -> FastAPI:
    from corral import imds

    async def resolve(address: str) -> InstanceMetadata | None:
        async with ctrl.store.read() as s:
            found = await imds_docs.asker(s, network_id, address)
            return None if found is None else imds_docs.document(found, ctrl.settings)

    return imds.create_app(resolve, key)
