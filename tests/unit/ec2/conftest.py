"""A Corral controller on a fake node behind the ASGI app, and an EC2 client that serializes,
signs and parses exactly as botocore does (botocore is the oracle; the transport is
httpx.ASGITransport, so no socket is opened)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import botocore.session
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.parsers import create_parser
from botocore.serialize import create_serializer

from corral import config
from corral.api.app import create_app
from corral.api.context import ApiContext
from corral.controller.accounts import Caller
from corral.controller.service import Controller
from corral.images.manifest import Manifest
from corral.images.store import ImageStore
from corral.node.fake import FakeNode
from corral.node.remote import connect_node
from corral.store import Store
from tests.unit.helpers import node_server

ENDPOINT = "http://127.0.0.1:8773"
REGION = "corral-1"
_MODEL = botocore.session.get_session().get_service_model("ec2")
_SERIALIZER = create_serializer("ec2")
_PARSER = create_parser("ec2")


class Ec2Failed(Exception):
    def __init__(self, status: int, code: str, message: str, body: bytes) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.body = status, code, message, body


class Ec2:
    """Calls like boto3's (``await ec2.call("DescribeInstances", InstanceIds=[...])``)."""

    def __init__(
        self, http: httpx.AsyncClient, key_id: str, secret: str, region: str = REGION
    ) -> None:
        self.http, self.key_id, self.secret, self.region = http, key_id, secret, region

    def sign(
        self,
        method: str,
        body: bytes | str,
        url: str = ENDPOINT + "/",
        headers: dict[str, str] | None = None,
        *,
        secret: str | None = None,
        region: str | None = None,
        when: dt.datetime | None = None,
    ) -> AWSRequest:
        req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
        signer = SigV4Auth(
            Credentials(self.key_id, secret or self.secret), "ec2", region or self.region
        )
        if when is not None:
            import unittest.mock

            frozen: dt.datetime = when

            class _Frozen(dt.datetime):
                @classmethod
                def now(cls, tz: Any = None) -> dt.datetime:  # type: ignore[override]
                    return frozen

                @classmethod
                def utcnow(cls) -> dt.datetime:  # type: ignore[override]
                    return frozen.replace(tzinfo=None)

            with unittest.mock.patch("botocore.auth.datetime.datetime", _Frozen):
                signer.add_auth(req)
        else:
            signer.add_auth(req)
        return req

    async def send(self, req: AWSRequest) -> httpx.Response:
        prepared = req.prepare()
        return await self.http.request(
            prepared.method, prepared.url, headers=dict(prepared.headers), content=prepared.body
        )

    def body(self, action: str, **params: Any) -> bytes:
        op = _MODEL.operation_model(action)
        ser = _SERIALIZER.serialize_to_request(params, op)
        from urllib.parse import urlencode

        return urlencode(ser["body"]).encode()

    async def raw(self, action: str, **params: Any) -> httpx.Response:
        body = self.body(action, **params)
        headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
        return await self.send(self.sign("POST", body, headers=headers))

    async def call(self, action: str, **params: Any) -> dict[str, Any]:
        resp = await self.raw(action, **params)
        return self.parse(action, resp)

    def parse(self, action: str, resp: httpx.Response) -> dict[str, Any]:
        op = _MODEL.operation_model(action)
        parsed = _PARSER.parse(
            {"status_code": resp.status_code, "headers": dict(resp.headers), "body": resp.content},
            op.output_shape,
        )
        if resp.status_code >= 300:
            err = parsed.get("Error", {})
            raise Ec2Failed(
                resp.status_code, err.get("Code", ""), err.get("Message", ""), resp.content
            )
        parsed.pop("ResponseMetadata", None)
        return parsed

    async def fails(self, code: str, action: str, **params: Any) -> Ec2Failed:
        try:
            await self.call(action, **params)
        except Ec2Failed as err:
            assert err.code == code, f"expected {code}, got {err.code}: {err.message}"
            return err
        raise AssertionError(f"{action} succeeded; expected {code}")


def add_fake_image(images: ImageStore, tmp: Path, name: str = "tiny") -> Manifest:
    blobs = {}
    for part in ("kernel", "initrd", "root"):
        f = tmp / f"{name}-{part}"
        f.write_bytes(f"{name} {part}".encode())
        blobs[part] = images.add_blob(
            f,
            fmt="qcow2" if part == "root" else "raw",
            virtual_size=512 << 20 if part == "root" else None,
        )
    m = Manifest(
        name=name,
        kernel=blobs["kernel"],
        initrd=blobs["initrd"],
        root_disk=blobs["root"],
        cmdline="console=ttyS0",
        min_disk=512 << 20,
    )
    images.put_manifest(m)
    return m


class World:
    def __init__(
        self, ctrl: Controller, node: FakeNode, http: httpx.AsyncClient, admin: Ec2
    ) -> None:
        self.ctrl, self.node, self.http, self.admin = ctrl, node, http, admin
        self.image_id = ""

    async def account(self, name: str) -> Ec2:
        acct = await self.ctrl.accounts.create(name)
        key = await self.ctrl.accounts.create_key(acct.id)
        return Ec2(self.http, key.id, key.secret)

    async def caller(self, ec2: Ec2) -> Caller:
        return await self.ctrl.accounts.lookup(ec2.key_id)

    async def settle(self) -> None:
        """Let every running operation finish (the fake node answers at once)."""
        import asyncio

        for _ in range(200):
            tasks = list(self.ctrl.ops.tasks.values())
            if not tasks:
                return
            await asyncio.wait(tasks, timeout=5)
        raise AssertionError("operations did not settle")


@pytest.fixture
async def world(tmp_path: Path, db_url: str) -> AsyncIterator[World]:
    state = tmp_path / "state"
    state.mkdir()
    settings = config.load(state, subnet="10.250.0.0/24", reconcile_interval=3600, db_url=db_url)
    store = Store(settings.database_url)
    images = ImageStore(settings.images_dir)
    manifest = add_fake_image(images, tmp_path)
    node = FakeNode(images=images)
    ctrl = Controller(settings, store, images)
    served = node_server(node)
    client, remote = connect_node(await served.__aenter__())
    await ctrl.add_node(client, "fake")
    await ctrl.start()
    app = create_app(ApiContext(settings, ctrl))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ENDPOINT) as http:
        assert ctrl.admin is not None
        secret = ctrl.accounts.secret_for(ctrl.admin.access_key_id)
        w = World(ctrl, node, http, Ec2(http, ctrl.admin.access_key_id, secret))
        from corral.controller.images import image_id_for

        w.image_id = image_id_for(manifest.digest)
        try:
            yield w
        finally:
            await w.settle()
            await ctrl.close()
            await remote.aclose()
            await served.__aexit__(None, None, None)
            await store.close()
