"""Fixtures for the fast unit tests: a migrated store, an image store holding one small image,
and a controller driving a fake node (no root, no QEMU) through the node wire: the fake is
served by the agent's server on a unix socket, as the agent is.

The store is SQLite in a temporary directory; tests marked ``postgres`` run a second time on
PostgreSQL (a server this session starts, a fresh database per test). ``CORRAL_TEST_ALL_DBS=1``
runs every test that uses the store on both."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral import config
from corral.api.app import create_app
from corral.api.context import ApiContext
from corral.config import Settings
from corral.controller.service import Controller
from corral.images.store import ImageStore
from corral.node.driver import cgroups
from corral.node.fake import FakeNode
from corral.node.remote import connect_node
from corral.store import Store
from tests.postgres import PostgresServer
from tests.unit.helpers import add_image, node_server

ALL_DBS = os.environ.get("CORRAL_TEST_ALL_DBS") == "1"


@pytest.fixture(autouse=True)
def _no_corral_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """CORRAL_* variables of the shell running the tests must not leak into the settings."""
    for name in list(os.environ):
        if name.startswith("CORRAL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    state = tmp_path / "state"
    state.mkdir()
    return config.load(state, reconcile_interval=3600)


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty database at the newest schema, made once; each test gets a copy."""
    path = tmp_path_factory.mktemp("schema") / "template.db"
    Store(f"sqlite+aiosqlite:///{path}").migrate()
    return path


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_backend" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("postgres") or ALL_DBS:
        metafunc.parametrize("db_backend", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def db_backend(request: pytest.FixtureRequest) -> str:
    """sqlite, or postgresql for the tests marked ``postgres`` (their second run)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def db_url(
    db_backend: str, tmp_path: Path, migrated_db: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    """The URL of a fresh database at the newest schema, dropped after the test."""
    if db_backend == "sqlite":
        path = tmp_path / "t.db"
        shutil.copyfile(migrated_db, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    template: str = request.getfixturevalue("postgres_template")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    with server.database(template) as url:
        yield url


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    db = Store(db_url)
    yield db
    await db.close()


@pytest.fixture
def image_store(tmp_path: Path) -> ImageStore:
    images = ImageStore(tmp_path / "images")
    add_image(images, tmp_path / "parts")
    return images


@pytest.fixture
def node() -> FakeNode:
    return FakeNode()


@pytest.fixture
async def ctrl(
    settings: Settings, store: Store, image_store: ImageStore, node: FakeNode
) -> AsyncIterator[Controller]:
    async with node_server(node) as url:
        client, remote = connect_node(url)
        controller = Controller(settings, store, image_store)
        await controller.add_node(client, "n1")
        await controller.start()
        yield controller
        await controller.close()
        await remote.aclose()


@pytest.fixture
def credentials(ctrl: Controller, settings: Settings) -> tuple[str, str]:
    data = json.loads((settings.state_dir / "admin.credentials").read_text())
    return data["access_key_id"], data["secret_access_key"]


@pytest.fixture
def app_transport(ctrl: Controller, settings: Settings) -> httpx.ASGITransport:
    return httpx.ASGITransport(app=create_app(ApiContext(settings, ctrl)))


@pytest.fixture
async def api(
    app_transport: httpx.ASGITransport, credentials: tuple[str, str]
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the REST API signed in as the admin account."""
    key_id, secret = credentials
    async with httpx.AsyncClient(
        transport=app_transport,
        base_url="http://corral.test",
        headers={"Authorization": f"Bearer {key_id}:{secret}"},
    ) as c:
        yield c


@pytest.fixture
async def anonymous(app_transport: httpx.ASGITransport) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=app_transport, base_url="http://corral.test") as c:
        yield c


Cluster = Callable[..., Any]


@pytest.fixture
async def cluster(tmp_path: Path, store: Store, image_store: ImageStore) -> AsyncIterator[Cluster]:
    """``await cluster({"a": dict(memory=...), ...}, **settings)``: a started controller
    whose nodes are fake nodes of those sizes (zone/labels given per node too)."""
    made: list[Controller] = []

    async def build(nodes: dict[str, dict[str, Any]], **overrides: Any) -> Controller:
        state = tmp_path / "state"
        state.mkdir(exist_ok=True)
        overrides.setdefault("scheduler_subset", 1)
        settings = config.load(state, reconcile_interval=3600, **overrides)
        ctrl = Controller(settings, store, image_store)
        for name, spec in nodes.items():
            spec = dict(spec)
            labels = spec.pop("labels", None)
            zone = spec.pop("zone", None)
            await ctrl.add_node(FakeNode(name, **spec), name, zone=zone, labels=labels)
        await ctrl.start()
        made.append(ctrl)
        return ctrl

    yield build
    for c in made:
        await c.close()


@pytest.fixture
def v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cgroup v2 hierarchy in a temporary directory, as ``cgroups.ROOT``."""
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu memory pids io\n")
    monkeypatch.setattr(cgroups, "ROOT", root)
    return root


@pytest.fixture
def v1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty cgroup v1 controller hierarchies in a temporary directory, as ``cgroups.ROOT``."""
    root = tmp_path / "cg1"
    for c in cgroups.V1_CONTROLLERS:
        (root / c).mkdir(parents=True)
    monkeypatch.setattr(cgroups, "ROOT", root)
    return root
