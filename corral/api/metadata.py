"""The per-instance metadata service at 169.254.169.254, in EC2's path layout, with IMDSv2.

It listens inside Corral's network namespace; the instance asking is the one whose private
address the request comes from on that network. That address cannot be forged: the bridge
drops any frame whose MAC or source address is not its tap's instance's (node/net/firewall.py).

IMDSv2: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1-21600) gives a
token bound to the instance (HMAC with a key kept in the state directory, so tokens survive a
daemon restart); requests carrying `X-aws-ec2-metadata-token` must carry a valid one, and
instances launched with tokens `required` must carry one. The PUT's answer leaves with the
instance's hop limit as its IP TTL (set by nftables), so it travels no further than allowed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from corral.api.limits import METADATA_LIMIT, BodyLimit
from corral.controller.service import Controller
from corral.naming import private_dns_name
from corral.store.models import (
    ElasticAddress,
    Image,
    Instance,
    InstanceSecurityGroup,
    KeyPair,
    Network,
    SecurityGroup,
)

Tree = dict[str, Any]


@dataclass
class Asker:
    """The instance a request came from, with what its metadata is made of."""

    inst: Instance
    image: Image | None
    network: Network
    key_names: list[str]
    groups: list[str]
    public_ip: str | None = None


def build_tree(asker: Asker, settings: Any) -> Tree:
    inst, image, network = asker.inst, asker.image, asker.network
    key_names, groups = asker.key_names, asker.groups
    fqdn = private_dns_name(inst.name, inst.account_id, network.domain)
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
        "security-groups": "\n".join(groups or ["default"]),
        "network": {"interfaces": {"macs": {inst.mac: mac}}},
        "services": {"domain": network.domain},
    }
    if asker.public_ip:
        meta["public-ipv4"] = asker.public_ip
        mac["public-ipv4s"] = asker.public_ip
        if settings.dns_zone:
            meta["public-hostname"] = f"{inst.name}.{settings.dns_zone.rstrip('.')}"
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
    identity = {"document": json.dumps(document, indent=2)}
    return {"meta-data": meta, "dynamic": {"instance-identity": identity}}


API_VERSIONS = ["1.0", "2009-04-04", "2016-09-02", "2018-09-24", "2021-03-23"]


def _known_version(version: str) -> bool:
    return (
        version == "latest"
        or version in API_VERSIONS
        or bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", version))
    )


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


TOKEN_HEADER = "x-aws-ec2-metadata-token"
TTL_HEADER = "x-aws-ec2-metadata-token-ttl-seconds"
TTL_MAX = 21600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Tokens:
    """IMDSv2 session tokens: ``payload.signature``, bound to one instance and an expiry."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self.key, payload.encode(), hashlib.sha256).digest())

    def issue(self, instance_id: str, ttl: int, now: float | None = None) -> str:
        expires = int((now or time.time()) + ttl)
        payload = _b64(json.dumps({"i": instance_id, "e": expires}).encode())
        return f"{payload}.{self._sign(payload)}"

    def valid(self, token: str, instance_id: str, now: float | None = None) -> bool:
        payload, _, sig = token.partition(".")
        if not payload or not hmac.compare_digest(sig, self._sign(payload)):
            return False
        try:
            data = json.loads(_unb64(payload))
        except ValueError:
            return False
        return bool(data.get("i") == instance_id and data.get("e", 0) > (now or time.time()))


def create_app(ctrl: Controller, network_id: str, key: bytes) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, limits=lambda _path: METADATA_LIMIT)
    tokens = Tokens(key)

    def refused(inst: Instance, request: Request) -> PlainTextResponse | None:
        """The answer when this request may not read metadata, else None."""
        if inst.metadata_endpoint == "disabled":
            return PlainTextResponse(
                "the metadata endpoint is disabled for this instance", status_code=403
            )
        token = request.headers.get(TOKEN_HEADER)
        if token is not None and not tokens.valid(token, inst.id):
            return PlainTextResponse("invalid or expired token", status_code=401)
        if token is None and inst.metadata_tokens == "required":
            return PlainTextResponse(
                "this instance requires IMDSv2: PUT /latest/api/token first", status_code=401
            )
        return None

    async def whoami(request: Request) -> Asker | None:
        client = request.client.host if request.client else ""
        async with ctrl.store.read() as s:
            network = await s.get(Network, network_id)
            if network is None:
                return None
            from sqlalchemy import select

            inst = await s.scalar(
                select(Instance).where(
                    Instance.network_id == network_id,
                    Instance.private_ip == client,
                    Instance.state != "terminated",
                )
            )
            if inst is None:
                return None
            image = await s.get(Image, inst.image_id)
            names = []
            for key in inst.ssh_keys or []:
                kp = await s.scalar(
                    select(KeyPair.name).where(
                        KeyPair.account_id == inst.account_id, KeyPair.public_key == key
                    )
                )
                names.append(kp or "")
            names = [
                n or (inst.key_name if i == 0 and inst.key_name else f"key-{i}")
                for i, n in enumerate(names)
            ]
            groups = list(
                await s.scalars(
                    select(SecurityGroup.name)
                    .join(InstanceSecurityGroup, InstanceSecurityGroup.group_id == SecurityGroup.id)
                    .where(InstanceSecurityGroup.instance_id == inst.id)
                    .order_by(SecurityGroup.name)
                )
            )
            public = await s.scalar(
                select(ElasticAddress.public_ip).where(ElasticAddress.instance_id == inst.id)
            )
            return Asker(inst, image, network, names, groups, public)

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

    @app.put("/latest/api/token")
    async def token(request: Request) -> Response:
        found = await whoami(request)
        if found is None:
            return PlainTextResponse("no instance has this address", status_code=404)
        if "x-forwarded-for" in request.headers:
            return PlainTextResponse("forwarded requests may not get tokens", status_code=403)
        if found.inst.metadata_endpoint == "disabled":
            return PlainTextResponse("the metadata endpoint is disabled", status_code=403)
        try:
            ttl = int(request.headers.get(TTL_HEADER, ""))
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= TTL_MAX:
            return PlainTextResponse(f"{TTL_HEADER} must be 1-{TTL_MAX} seconds", status_code=400)
        return PlainTextResponse(tokens.issue(found.inst.id, ttl), headers={TTL_HEADER: str(ttl)})

    async def reader(version: str, request: Request) -> Asker | Response:
        """The instance asking, or the answer when it may not read (unknown version or
        address, endpoint disabled, token missing or wrong)."""
        if not _known_version(version):
            return PlainTextResponse("not found", status_code=404)
        found = await whoami(request)
        if found is None:
            return PlainTextResponse("no instance has this address", status_code=404)
        return refused(found.inst, request) or found

    @app.get("/{version}/user-data")
    async def user_data(version: str, request: Request) -> Response:
        found = await reader(version, request)
        if isinstance(found, Response):
            return found
        if not found.inst.user_data:
            return PlainTextResponse("no user-data", status_code=404)
        return Response(found.inst.user_data, media_type="application/octet-stream")

    @app.get("/{version}/{path:path}")
    async def lookup(version: str, path: str, request: Request) -> Response:
        found = await reader(version, request)
        if isinstance(found, Response):
            return found
        tree = build_tree(found, ctrl.settings)
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
