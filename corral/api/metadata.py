"""The per-instance metadata service at 169.254.169.254, in EC2's path layout.

It listens inside Corral's network namespace; the instance asking is the one whose private
address the request comes from on that network (addresses are fixed per MAC by DHCP)."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from corral.controller.service import Controller
from corral.store.models import Image, Instance, KeyPair, Network

Tree = dict[str, Any]


def build_tree(inst: Instance, image: Image | None, network: Network, settings: Any,
               key_names: list[str]) -> Tree:
    fqdn = f"{inst.name}.{network.domain}"
    keys: Tree = {}
    for i, key in enumerate(inst.ssh_keys or []):
        name = key_names[i] if i < len(key_names) else f"key-{i}"
        keys[f"{i}={name}"] = {"openssh-key": key}
    mac = {
        "device-number": "0",
        "local-hostname": fqdn,
        "local-ipv4s": inst.private_ip or "",
        "mac": inst.mac,
        "subnet-ipv4-cidr-block": network.cidr,
        "interface-id": f"eni-{inst.id[2:]}",
    }
    meta: Tree = {
        "ami-id": inst.image_id,
        "ami-launch-index": "0",
        "hostname": fqdn,
        "instance-id": inst.id,
        "instance-type": inst.instance_type or f"c{inst.cpus}m{inst.memory >> 20}",
        "local-hostname": fqdn,
        "local-ipv4": inst.private_ip or "",
        "mac": inst.mac,
        "placement": {"availability-zone": settings.availability_zone, "region": settings.region},
        "public-keys": keys,
        "reservation-id": inst.reservation_id or "",
        "security-groups": "default",
        "network": {"interfaces": {"macs": {inst.mac: mac}}},
        "services": {"domain": network.domain},
    }
    document = {
        "accountId": inst.account_id,
        "architecture": image.arch if image else "x86_64",
        "availabilityZone": settings.availability_zone,
        "imageId": inst.image_id,
        "instanceId": inst.id,
        "instanceType": meta["instance-type"],
        "pendingTime": inst.launch_time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "privateIp": inst.private_ip,
        "region": settings.region,
        "version": "2017-09-30",
    }
    return {"meta-data": meta, "dynamic": {"instance-identity": {"document": json.dumps(document, indent=2)}}}


API_VERSIONS = ["1.0", "2009-04-04", "2016-09-02", "2018-09-24", "2021-03-23"]


def _known_version(version: str) -> bool:
    return version == "latest" or version in API_VERSIONS or bool(
        re.fullmatch(r"\d{4}-\d{2}-\d{2}", version))


def _listing(node: Tree) -> str:
    names = []
    for k, v in node.items():
        if k.endswith("=") or "=" in k:  # public-keys: "0=name" lists as such
            names.append(k)
        else:
            names.append(k + "/" if isinstance(v, dict) else k)
    return "\n".join(names)


def _walk(tree: Tree, parts: list[str]) -> Any:
    node: Any = tree
    for part in parts:
        if not isinstance(node, dict):
            return None
        if part in node:
            node = node[part]
            continue
        # public-keys/0/ addresses the "0=name" entry
        match = next((v for k, v in node.items() if "=" in k and k.split("=", 1)[0] == part), None)
        if match is None:
            return None
        node = match
    return node


def create_app(ctrl: Controller, network_id: str) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    async def whoami(request: Request) -> tuple[Instance, Image | None, Network, list[str]] | None:
        client = request.client.host if request.client else ""
        async with ctrl.store.read() as s:
            network = await s.get(Network, network_id)
            if network is None:
                return None
            from sqlalchemy import select

            inst = await s.scalar(select(Instance).where(
                Instance.network_id == network_id, Instance.private_ip == client,
                Instance.state != "terminated"))
            if inst is None:
                return None
            image = await s.get(Image, inst.image_id)
            names = []
            for key in inst.ssh_keys or []:
                kp = await s.scalar(select(KeyPair.name).where(
                    KeyPair.account_id == inst.account_id, KeyPair.public_key == key))
                names.append(kp or "")
            names = [n or (inst.key_name if i == 0 and inst.key_name else f"key-{i}")
                     for i, n in enumerate(names)]
            return inst, image, network, names

    @app.get("/")
    async def root() -> PlainTextResponse:
        return PlainTextResponse("latest")

    # cloud-init asks for dated API versions (/2009-04-04/…): they all answer as latest
    @app.get("/{version}")
    @app.get("/{version}/")
    async def latest(version: str) -> PlainTextResponse:
        if not _known_version(version):
            return PlainTextResponse("not found", status_code=404)
        return PlainTextResponse("dynamic\nmeta-data\nuser-data")

    @app.get("/{version}/user-data")
    async def user_data(version: str, request: Request) -> Response:
        if not _known_version(version):
            return PlainTextResponse("not found", status_code=404)
        found = await whoami(request)
        if found is None:
            return PlainTextResponse("no instance has this address", status_code=404)
        if not found[0].user_data:
            return PlainTextResponse("no user-data", status_code=404)
        return Response(found[0].user_data, media_type="application/octet-stream")

    @app.get("/{version}/{path:path}")
    async def lookup(version: str, path: str, request: Request) -> PlainTextResponse:
        if not _known_version(version):
            return PlainTextResponse("not found", status_code=404)
        found = await whoami(request)
        if found is None:
            return PlainTextResponse("no instance has this address", status_code=404)
        tree = build_tree(found[0], found[1], found[2], ctrl.settings, found[3])
        parts = [p for p in path.split("/") if p]
        node = _walk(tree, parts)
        if node is None:
            return PlainTextResponse("not found", status_code=404)
        if isinstance(node, dict):
            if not node:  # e.g. public-keys of an instance without keys: EC2 answers 404
                return PlainTextResponse("not found", status_code=404)
            return PlainTextResponse(_listing(node))
        return PlainTextResponse(str(node))

    return app
