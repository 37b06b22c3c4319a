"""Joining a node: single-use tokens (only their hash kept), refusals naming the fix, the node's
certificate from the controller's CA, and the wire over TCP with mutual TLS (the controller's
client certificate required; a node's certificate or none refused), on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from sqlalchemy import select, update

from corral import agentd, pki
from corral.controller.service import Controller
from corral.node import server as node_server_mod
from corral.node.fake import FakeNode
from corral.node.remote import connect_node
from corral.store.models import JoinToken, Node, utcnow


async def _token(api: httpx.AsyncClient, ttl: str = "1h") -> str:
    r = await api.post("/v1/nodes/tokens", json={"ttl": ttl})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def _join_body(token: str, name: str = "n2", address: str = "127.0.0.1:18774") -> dict[str, object]:
    key = pki.new_key()
    return {
        "token": token,
        "certificate_request": pki.csr(key, name).decode(),
        "name": name,
        "address": address,
        "zone": "zone-b",
        "labels": {"rack": "r1"},
        "_key": pki.key_pem(key).decode(),
    }


async def _join(anonymous: httpx.AsyncClient, body: dict[str, object]) -> httpx.Response:
    return await anonymous.post(
        "/v1/nodes/join", json={k: v for k, v in body.items() if not k.startswith("_")}
    )


async def test_a_token_joins_once_and_only_its_hash_is_kept(
    api: httpx.AsyncClient, anonymous: httpx.AsyncClient, ctrl: Controller
) -> None:
    token = await _token(api)
    prefix, secret, fp = token.split(".")
    assert prefix == "K1" and fp == ctrl.cluster.ca.fingerprint
    async with ctrl.store.read() as s:
        rows = list(await s.scalars(select(JoinToken)))
    assert [r.hash for r in rows] == [hashlib.sha256(secret.encode()).hexdigest()]
    assert secret not in repr([(r.hash, r.used_by) for r in rows])

    body = _join_body(token)
    r = await _join(anonymous, body)
    assert r.status_code == 201, r.text
    joined = r.json()
    cert = x509.load_pem_x509_certificate(joined["certificate"].encode())
    ca = x509.load_pem_x509_certificate(joined["ca_certificate"].encode())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    async with ctrl.store.read() as s:
        row = await s.scalar(select(Node).where(Node.name == "n2"))
    assert row is not None
    assert (row.address, row.zone, row.labels) == (
        "https://127.0.0.1:18774",
        "zone-b",
        {"rack": "r1"},
    )

    again = await _join(anonymous, _join_body(token, name="n3"))
    assert again.status_code == 401
    msg = again.json()["error"]["message"]
    assert "already used" in msg and "n2" in msg and "corral node token" in msg


async def test_wrong_expired_and_foreign_tokens_are_refused_naming_the_fix(
    api: httpx.AsyncClient, anonymous: httpx.AsyncClient, ctrl: Controller
) -> None:
    good = await _token(api)
    async with ctrl.store.write() as s:
        await s.execute(update(JoinToken).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    r = await _join(anonymous, _join_body(good))
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]

    _, _, fp = good.split(".")
    r = await _join(anonymous, _join_body(f"K1.madeup.{fp}"))
    assert r.status_code == 401 and "never issued" in r.json()["error"]["message"]
    r = await _join(anonymous, _join_body(f"K1.madeup.{'0' * 64}"))
    assert r.status_code == 401 and "another controller" in r.json()["error"]["message"]
    r = await _join(anonymous, _join_body("hello"))
    assert r.status_code == 401 and "not a Corral join token" in r.json()["error"]["message"]
    # nothing joined
    async with ctrl.store.read() as s:
        assert await s.scalar(select(Node).where(Node.name == "n2")) is None

    fresh = await _token(api)
    r = await _join(anonymous, _join_body(fresh, address="0.0.0.0:8774"))
    assert r.status_code == 400 and "not 0.0.0.0" in r.json()["error"]["message"]
    r = await api.post("/v1/nodes/tokens", json={"ttl": "9d"})
    assert r.status_code == 400 and "7 days" in r.json()["error"]["message"]


async def test_only_an_admin_makes_tokens(anonymous: httpx.AsyncClient) -> None:
    r = await anonymous.post("/v1/nodes/tokens", json={})
    assert r.status_code == 401


@contextlib.asynccontextmanager
async def tls_node(node: FakeNode, state_dir: Path, port: int) -> AsyncIterator[str]:
    """The fake node behind the agent's server on TCP with the joined node's TLS settings."""
    url = f"https://127.0.0.1:{port}"
    sock = node_server_mod.listen(url)
    srv = node_server_mod.server(node_server_mod.create_app(node), agentd.tls_settings(state_dir))
    task = asyncio.create_task(srv.serve(sockets=[sock]))
    try:
        while not srv.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        yield url
    finally:
        srv.should_exit = True
        srv.force_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        sock.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_wire_over_tcp_needs_the_controllers_certificate(
    api: httpx.AsyncClient, anonymous: httpx.AsyncClient, ctrl: Controller, tmp_path: Path
) -> None:
    port = _free_port()
    body = _join_body(await _token(api), name="n2", address=f"127.0.0.1:{port}")
    r = await _join(anonymous, body)
    assert r.status_code == 201, r.text
    node_dir = tmp_path / "node"
    d = agentd.pki_dir(node_dir)
    d.mkdir(parents=True)
    (d / "node.key").write_text(str(body["_key"]))
    (d / "node.crt").write_text(r.json()["certificate"])
    (d / "ca.crt").write_text(r.json()["ca_certificate"])
    fake = FakeNode()
    async with tls_node(fake, node_dir, port) as url:
        # the controller's client certificate: accepted, and the node's name checked
        client, remote = connect_node(url, 0.0, ctrl.cluster.client_ssl())
        try:
            assert (await client.info()).name == (await fake.info()).name
        finally:
            await remote.aclose()
        # no client certificate, or a node's own (server-only) one: refused in the handshake
        for ctx in (
            pki.client_context(d / "ca.crt"),
            pki.client_context(d / "ca.crt", d / "node.crt", d / "node.key"),
        ):
            async with httpx.AsyncClient(verify=ctx) as http:
                with pytest.raises((httpx.HTTPError, ssl.SSLError)):
                    await http.get(f"{url}/v1/version")
        # and the controller connects to the joined node by itself (as after a restart)
        ctrl.cluster.connector = connect_node
        await ctrl.cluster.connect_joined()
        assert "node-n2" in ctrl.nodes
        async with ctrl.store.read() as s:
            row = await s.get(Node, "node-n2")
        assert row is not None and row.state == "up" and row.zone == "zone-b"


# -- liveness and node administration -------------------------------------------------------------
class Silent:
    """A node whose agent does not answer (killed): every call fails as unreachable."""

    async def heartbeat(self, *args: object) -> str:
        from corral.errors import EnvironmentProblem

        raise EnvironmentProblem("node is unreachable", reason="node-unreachable")


async def _node(api: httpx.AsyncClient, ref: str = "n1") -> dict[str, object]:
    r = await api.get(f"/v1/nodes/{ref}")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_a_silent_node_becomes_unreachable_and_comes_back(
    api: httpx.AsyncClient, ctrl: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    ctrl.settings = dataclasses.replace(ctrl.settings, node_timeout=0.5)
    await ctrl.cluster.heartbeat_once()
    first = await _node(api)
    assert first["state"] == "ready" and first["last_seen"]
    await asyncio.sleep(1.1)  # the database's clock has whole seconds on SQLite
    await ctrl.cluster.heartbeat_once()
    assert (await _node(api))["last_seen"] != first["last_seen"]  # heartbeats move it

    answering = ctrl.nodes["node-n1"]
    ctrl.nodes["node-n1"] = Silent()  # type: ignore[assignment]
    await asyncio.sleep(1.1)
    await ctrl.cluster.heartbeat_once()
    assert (await _node(api))["state"] == "unreachable"
    assert not ctrl.cluster.reachable("node-n1")
    await ctrl.reconciler.reconcile_once()  # skips it (a Silent node has no instances call)
    # nothing is placed there
    r = await api.post("/v1/instances", json={"image": "tiny"})
    assert r.status_code in (400, 409, 503), r.text
    assert "not ready" in r.text

    ctrl.nodes["node-n1"] = answering
    await ctrl.cluster.heartbeat_once()
    assert (await _node(api))["state"] == "ready"
    assert ctrl.cluster.reachable("node-n1")


async def test_cordon_label_and_remove_a_node(api: httpx.AsyncClient, ctrl: Controller) -> None:
    assert (await api.post("/v1/nodes/n1/cordon")).json()["state"] == "cordoned"
    r = await api.post("/v1/instances", json={"image": "tiny"})
    assert "cordoned" in r.text and "uncordon" in r.text
    assert (await api.post("/v1/nodes/node-n1/uncordon")).json()["state"] == "ready"
    r = await api.patch("/v1/nodes/n1", json={"labels": {"disk": "ssd", "gpu": "no"}})
    assert r.json()["labels"] == {"disk": "ssd", "gpu": "no"}
    r = await api.patch("/v1/nodes/n1", json={"remove_labels": ["gpu"]})
    assert r.json()["labels"] == {"disk": "ssd"}

    r = await api.post("/v1/instances", json={"image": "tiny", "name": "web", "memory": "128M"})
    assert r.status_code == 202, r.text
    iid = r.json()["instance"]["id"]
    shown = await _node(api)
    assert shown["instance_ids"] == [iid] and shown["instances"] == 1
    assert int(str(shown["memory_claimed"])) > 0

    r = await api.delete("/v1/nodes/n1")
    assert r.status_code == 409
    msg = r.json()["error"]["message"]
    assert "1 instance" in msg and "web" in msg and "--force" in msg
    r = await api.delete("/v1/nodes/n1", params={"force": "true"})
    assert r.status_code == 204, r.text
    assert [n["name"] for n in (await api.get("/v1/nodes")).json()] == []
    assert (await api.get(f"/v1/instances/{iid}")).json()["state"] == "terminated"
    assert (await api.get("/v1/nodes/nope")).status_code == 404


def test_the_api_beyond_loopback_is_https_only(tmp_path: Path) -> None:
    from corral import config

    assert config.load(tmp_path, api_host="127.0.0.1").api_url.startswith("http://")
    assert config.load(tmp_path, api_host="localhost").api_url.startswith("http://")
    beyond = config.load(tmp_path, api_host="192.0.2.254")
    assert beyond.api_tls and beyond.api_url == "https://192.0.2.254:8773"
    assert beyond.ca_bundle == tmp_path / "pki" / "ca.crt"


def test_the_api_certificate_names_its_address_and_is_for_servers(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.load_or_create(tmp_path / "pki")
    key, cert = ca.own("api", "corral-api", ["192.0.2.254", "ctl"], "server")
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "pki" / "ca.key").stat().st_mode & 0o777) == "0o600"
    c = x509.load_pem_x509_certificate(cert.read_bytes())
    c.verify_directly_issued_by(ca.cert)
    sans = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(i) for i in sans.get_values_for_type(x509.IPAddress)} == {"192.0.2.254"}
    # kept while the names are the same; made again when they change
    assert ca.own("api", "corral-api", ["192.0.2.254", "ctl"], "server")[1].read_bytes() == (
        cert.read_bytes()
    )
    again = pki.CertificateAuthority.load_or_create(tmp_path / "pki")
    assert again.fingerprint == ca.fingerprint
    other = ca.own("api", "corral-api", ["192.0.2.253"], "server")[1].read_bytes()
    assert other != pki.cert_pem(c)


async def test_an_agent_that_restarted_gets_its_networks_again(
    ctrl: Controller, node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    await ctrl.cluster.heartbeat_once()
    assert ctrl.cluster.boots["node-n1"]
    node.hosts.clear()  # what a restarted agent may have lost

    async def restarted(**kwargs: object) -> str:
        return "n1 another-start"

    monkeypatch.setattr(node, "heartbeat", restarted)
    await ctrl.cluster.heartbeat_once()
    for _ in range(100):
        if node.hosts:
            break
        await asyncio.sleep(0.05)
    assert node.hosts, "the networks were not pushed again after the agent restarted"


async def test_a_node_connected_again_is_followed_with_its_new_client(
    ctrl: Controller, node: FakeNode, tmp_path: Path
) -> None:
    from tests.unit.helpers import node_server

    first = ctrl._followers["node-n1"]
    async with node_server(node) as url:
        client, remote = connect_node(url)
        try:
            await ctrl.add_node(client, "n1")
            await asyncio.sleep(0.1)
            assert first.done(), "the old client's event follower still runs"
            assert not ctrl._followers["node-n1"].done()
        finally:
            await remote.aclose()


def test_a_joined_agent_migrates_over_the_address_it_joined_with(tmp_path: Path) -> None:
    """Loopback (the default) would send another node's migration to itself: a joined agent
    takes the host of its listen address, unless migration_address was set."""
    from corral import config

    joined = {"address": "https://192.0.2.12:8774", "name": "host2"}
    settings = config.load(tmp_path)
    assert agentd.joined_settings(settings, joined).migration_address == "192.0.2.12"
    chosen = config.load(tmp_path, migration_address="10.0.0.5")
    assert agentd.joined_settings(chosen, joined).migration_address == "10.0.0.5"
    v6 = {"address": "https://[2001:db8::7]:8774", "name": "h"}
    assert agentd.joined_settings(settings, v6).migration_address == "2001:db8::7"
