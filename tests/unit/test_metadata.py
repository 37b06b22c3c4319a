"""The per-instance metadata service: answers in EC2's path layout to the instance whose
private address the request comes from, and to nobody else."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import pytest

from corral import imds
from corral.api import metadata
from corral.controller.service import Controller
from corral.node.fake import FakeNode
from corral.node.imds import MetadataService
from corral.node.spec import InstanceMetadata
from corral.store.models import Instance
from tests.unit.helpers import admin, finish, run

USER_DATA = "#!/bin/sh\necho hello\n"
Client = Callable[[str], AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture(params=["daemon", "joined-node"])
def node(request: pytest.FixtureRequest) -> FakeNode:
    """Every test twice: the all-in-one daemon answers from the store; a joined node's agent
    answers from the documents the controller pushed to it (node/imds.py), never the store."""
    return FakeNode(serve_metadata=request.param == "joined-node")


@pytest.fixture
def client_from(ctrl: Controller, node: FakeNode, tmp_path: Path) -> Client:
    """A metadata client whose requests come from the given address on the default network."""

    @asynccontextmanager
    async def make(address: str) -> AsyncIterator[httpx.AsyncClient]:
        (network,) = await ctrl.networks.by_namespace(ctrl.settings.namespace)
        if node.serve_metadata:
            # the agent's service, fed what the controller pushed to the node (at the time
            # of each request: no push is made here)
            service = MetadataService(tmp_path / "networks", tmp_path / "key", serve=False)
            spec = ctrl.networks.spec(network)

            async def resolve(asking: str) -> InstanceMetadata | None:
                await service.put(spec, node.metadata.get(network.id, []))
                return service.lookup(spec.namespace, asking)

            app = imds.create_app(resolve, b"k" * 32)
        else:
            app = metadata.create_app(ctrl, network.id, b"k" * 32)
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://169.254.169.254") as c:
            yield c

    return make


@pytest.fixture
async def web(ctrl: Controller) -> Instance:
    await ctrl.keypairs.add(admin(ctrl), "laptop", None)
    return await run(ctrl, name="web", keys=["laptop"], user_data=USER_DATA, cpus=2, memory="128M")


async def _text(c: httpx.AsyncClient, path: str) -> str:
    resp = await c.get(path)
    assert resp.status_code == 200, (path, resp.status_code, resp.text)
    return resp.text


async def test_instance_learns_its_identity(client_from: Client, web: Instance) -> None:
    assert web.private_ip is not None
    async with client_from(web.private_ip) as c:
        assert await _text(c, "/latest/meta-data/instance-id") == web.id
        assert await _text(c, "/latest/meta-data/local-ipv4") == web.private_ip
        fqdn = f"web.{web.account_id}.corral.internal"  # qualified by account: naming.py
        assert await _text(c, "/latest/meta-data/local-hostname") == fqdn
        assert await _text(c, "/latest/meta-data/hostname") == fqdn
        assert await _text(c, "/latest/meta-data/ami-id") == web.image_id
        assert await _text(c, "/latest/meta-data/mac") == web.mac
        assert await _text(c, "/latest/meta-data/instance-type") == "c2m128"
        assert await _text(c, "/latest/meta-data/reservation-id") == web.reservation_id


async def test_instance_gets_its_public_keys(
    ctrl: Controller, client_from: Client, web: Instance
) -> None:
    (key,) = await ctrl.keypairs.list(admin(ctrl))
    assert web.private_ip is not None
    async with client_from(web.private_ip) as c:
        assert await _text(c, "/latest/meta-data/public-keys") == "0=laptop"
        assert await _text(c, "/latest/meta-data/public-keys/") == "0=laptop"
        assert await _text(c, "/latest/meta-data/public-keys/0") == "openssh-key"
        assert await _text(c, "/latest/meta-data/public-keys/0/openssh-key") == key.public_key
        assert (await c.get("/latest/meta-data/public-keys/1/openssh-key")).status_code == 404


async def test_inline_keys_are_listed_after_a_generated_name(
    ctrl: Controller, client_from: Client
) -> None:
    made, _ = await ctrl.keypairs.add(admin(ctrl), "tmp", None)
    await ctrl.keypairs.remove(admin(ctrl), "tmp")
    inst = await run(ctrl, name="inline", public_keys=[made.public_key])
    assert inst.private_ip is not None
    async with client_from(inst.private_ip) as c:
        assert await _text(c, "/latest/meta-data/public-keys") == "0=key-0"


async def test_instance_gets_its_user_data(client_from: Client, web: Instance) -> None:
    assert web.private_ip is not None
    async with client_from(web.private_ip) as c:
        resp = await c.get("/latest/user-data")
    assert resp.status_code == 200
    assert resp.content == USER_DATA.encode()


async def test_user_data_is_404_when_there_is_none(ctrl: Controller, client_from: Client) -> None:
    inst = await run(ctrl, name="plain")
    assert inst.private_ip is not None
    async with client_from(inst.private_ip) as c:
        assert (await c.get("/latest/user-data")).status_code == 404


async def test_instance_learns_its_placement(
    ctrl: Controller, client_from: Client, web: Instance
) -> None:
    assert web.private_ip is not None
    async with client_from(web.private_ip) as c:
        assert await _text(c, "/latest/meta-data/placement/availability-zone") == "corral-1a"
        assert await _text(c, "/latest/meta-data/placement/region") == "corral-1"
        assert await _text(c, "/latest/meta-data/services/domain") == "corral.internal"


async def test_identity_document_is_json(
    ctrl: Controller, client_from: Client, web: Instance
) -> None:
    assert web.private_ip is not None
    async with client_from(web.private_ip) as c:
        doc = json.loads(await _text(c, "/latest/dynamic/instance-identity/document"))
    assert doc["instanceId"] == web.id
    assert doc["privateIp"] == web.private_ip
    assert doc["accountId"] == admin(ctrl).account_id
    assert doc["imageId"] == web.image_id
    assert (doc["region"], doc["availabilityZone"]) == ("corral-1", "corral-1a")
    assert doc["architecture"] == "x86_64"
    assert doc["instanceType"] == "c2m128"


async def test_listings_end_directories_with_a_slash(client_from: Client, web: Instance) -> None:
    assert web.private_ip is not None
    async with client_from(web.private_ip) as c:
        assert await _text(c, "/") == "latest"
        assert (await _text(c, "/latest/")).split("\n") == ["dynamic", "meta-data", "user-data"]
        listing = (await _text(c, "/latest/meta-data/")).split("\n")
        assert {"instance-id", "local-ipv4", "public-keys/", "placement/"} <= set(listing)
        assert await _text(c, "/latest/meta-data/network/interfaces/macs") == f"{web.mac}/"
        mac = f"/latest/meta-data/network/interfaces/macs/{web.mac}"
        assert await _text(c, f"{mac}/local-ipv4s") == web.private_ip
        assert await _text(c, f"{mac}/subnet-ipv4-cidr-block") == "10.88.0.0/24"


async def test_unknown_path_is_404(client_from: Client, web: Instance) -> None:
    assert web.private_ip is not None
    async with client_from(web.private_ip) as c:
        assert (await c.get("/latest/meta-data/no-such-thing")).status_code == 404
        assert (await c.get("/latest/meta-data/instance-id/deeper")).status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/latest/meta-data/instance-id",
        "/latest/user-data",
        "/latest/dynamic/instance-identity/document",
    ],
)
async def test_requests_from_an_unknown_address_are_404(
    client_from: Client, web: Instance, path: str
) -> None:
    async with client_from("10.88.0.99") as c:
        resp = await c.get(path)
    assert resp.status_code == 404
    assert web.id not in resp.text


async def test_terminated_instance_gets_no_answers(
    ctrl: Controller, client_from: Client, web: Instance
) -> None:
    _, op = await ctrl.instances.terminate(admin(ctrl), web.id)
    await finish(ctrl, op)
    assert web.private_ip is not None
    async with client_from(web.private_ip) as c:
        assert (await c.get("/latest/meta-data/instance-id")).status_code == 404


async def test_each_instance_sees_only_itself(
    ctrl: Controller, client_from: Client, web: Instance
) -> None:
    other = await run(ctrl, name="other")
    assert other.private_ip is not None and other.private_ip != web.private_ip
    async with client_from(other.private_ip) as c:
        assert await _text(c, "/latest/meta-data/instance-id") == other.id
        assert await _text(c, "/latest/meta-data/local-ipv4") == other.private_ip


# -- IMDSv2 ------------------------------------------------------------------------------------
TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "X-aws-ec2-metadata-token"


async def test_imdsv2_token_flow(client_from: Client, web: Instance) -> None:
    assert web.private_ip is not None
    async with client_from(web.private_ip) as c:
        put = await c.put("/latest/api/token", headers={TTL: "60"})
        assert put.status_code == 200 and put.headers[TTL] == "60"
        token = put.text
        got = await c.get("/latest/meta-data/instance-id", headers={TOKEN: token})
        assert got.status_code == 200 and got.text == web.id
        bad = await c.get("/latest/meta-data/instance-id", headers={TOKEN: token + "x"})
        assert bad.status_code == 401


@pytest.mark.parametrize("ttl", [None, "0", "21601", "abc"])
async def test_imdsv2_token_needs_a_ttl_in_range(
    client_from: Client, web: Instance, ttl: str | None
) -> None:
    assert web.private_ip is not None
    async with client_from(web.private_ip) as c:
        headers = {TTL: ttl} if ttl is not None else {}
        assert (await c.put("/latest/api/token", headers=headers)).status_code == 400


async def test_imdsv2_refuses_forwarded_token_requests(client_from: Client, web: Instance) -> None:
    assert web.private_ip is not None
    async with client_from(web.private_ip) as c:
        resp = await c.put("/latest/api/token", headers={TTL: "60", "X-Forwarded-For": "1.2.3.4"})
        assert resp.status_code == 403


async def test_a_token_of_one_instance_is_not_valid_for_another(
    ctrl: Controller, client_from: Client, web: Instance
) -> None:
    other = await run(ctrl, name="other", memory="128M")
    assert web.private_ip is not None and other.private_ip is not None
    async with client_from(web.private_ip) as c:
        token = (await c.put("/latest/api/token", headers={TTL: "60"})).text
    async with client_from(other.private_ip) as c:
        resp = await c.get("/latest/meta-data/instance-id", headers={TOKEN: token})
        assert resp.status_code == 401


async def test_expired_tokens_are_refused() -> None:
    tokens = metadata.Tokens(b"k" * 32)
    token = tokens.issue("i-0123456789abcdef0", 10, now=1000.0)
    assert tokens.valid(token, "i-0123456789abcdef0", now=1005.0)
    assert not tokens.valid(token, "i-0123456789abcdef0", now=1011.0)
    assert not metadata.Tokens(b"j" * 32).valid(token, "i-0123456789abcdef0", now=1005.0)


async def test_tokens_required_means_v1_requests_are_refused(
    ctrl: Controller, client_from: Client
) -> None:
    inst = await run(ctrl, name="strict", memory="128M", metadata_tokens="required")
    assert inst.private_ip is not None
    async with client_from(inst.private_ip) as c:
        v1 = await c.get("/latest/meta-data/instance-id")
        assert v1.status_code == 401 and "IMDSv2" in v1.text
        token = (await c.put("/latest/api/token", headers={TTL: "30"})).text
        v2 = await c.get("/latest/meta-data/instance-id", headers={TOKEN: token})
        assert v2.status_code == 200 and v2.text == inst.id


async def test_a_joined_node_gets_every_document_of_its_network_pushed(
    ctrl: Controller, node: FakeNode, web: Instance
) -> None:
    """Pushed on launch and on changes (here an elastic IP), and only to a node that serves
    metadata itself; a terminated instance's document is withdrawn."""
    (network,) = await ctrl.networks.by_namespace(ctrl.settings.namespace)
    if not node.serve_metadata:
        assert node.metadata == {}  # the all-in-one's daemon reads the store
        return
    (doc,) = node.metadata[network.id]
    assert doc.instance_id == web.id and doc.address == web.private_ip
    assert doc.tree["meta-data"]["public-keys"]
    eip = await ctrl.elastic_ips.allocate(admin(ctrl))
    await ctrl.elastic_ips.associate(admin(ctrl), web.id, allocation_id=eip.id)
    (doc,) = node.metadata[network.id]
    assert doc.tree["meta-data"]["public-ipv4"] == eip.public_ip
    _, op = await ctrl.instances.terminate(admin(ctrl), web.id)
    await finish(ctrl, op)
    assert node.metadata[network.id] == []


async def test_the_agent_keeps_pushed_documents_across_a_restart(
    ctrl: Controller, node: FakeNode, web: Instance, tmp_path: Path
) -> None:
    (network,) = await ctrl.networks.by_namespace(ctrl.settings.namespace)
    if not node.serve_metadata:
        return
    before = MetadataService(tmp_path / "networks", tmp_path / "key", serve=False)
    await before.put(ctrl.networks.spec(network), node.metadata[network.id])
    after = MetadataService(tmp_path / "networks", tmp_path / "key", serve=False)
    await after.start()  # a new agent: it answers before the controller pushes anything
    assert web.private_ip is not None
    found = after.lookup(network.namespace, web.private_ip)
    assert found is not None and found.instance_id == web.id
    assert found.user_data and found == node.metadata[network.id][0]
