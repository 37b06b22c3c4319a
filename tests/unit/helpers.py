"""Small helpers shared by the controller, API and metadata tests."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from corral.controller.accounts import Caller
from corral.controller.migrations import move_op
from corral.controller.scheduler import Placement
from corral.controller.service import Controller
from corral.images.manifest import Manifest
from corral.images.store import ImageStore
from corral.models import InstanceCreate
from corral.node.fake import FakeNode
from corral.store.models import Address, Instance, Node, Operation

IMAGE_VIRTUAL_SIZE = 64 << 20
WAIT = 60.0  # seconds; only a safety net, generous for a loaded 2-core machine


def admin(ctrl: Controller) -> Caller:
    """The all-in-one admin account the controller made at start."""
    assert ctrl.admin is not None
    return ctrl.admin


async def finish(ctrl: Controller, op: Operation | None) -> Operation:
    """Poll until ``op`` ends and return it. Polling rather than ``Operations.wait`` keeps these
    tests independent of ``wait``'s own behaviour, which test_operations checks."""
    assert op is not None, "expected an operation, got a no-op answer"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while (done := await ctrl.ops.get(op.id)).status not in ("succeeded", "failed", "cancelled"):
        assert loop.time() < deadline, f"operation {op.type} still {done.status}"
        await asyncio.sleep(0.01)
    return done


def req(**fields: Any) -> InstanceCreate:
    """A run request for the tiny image (validated as the API would)."""
    return InstanceCreate.model_validate({"image": "tiny", **fields})


async def run(ctrl: Controller, **fields: Any) -> Instance:
    """Run an instance of the tiny image and return its row once the run succeeded."""
    inst, op = await ctrl.instances.run(admin(ctrl), req(**fields))
    done = await finish(ctrl, op)
    assert done.status == "succeeded", done.error
    return await ctrl.instances.get(admin(ctrl), inst.id)


async def reload(ctrl: Controller, iid: str) -> Instance:
    return await ctrl.instances.get(admin(ctrl), iid)


async def addresses(ctrl: Controller) -> dict[str, str]:
    """Leased private addresses: address -> instance id."""
    async with ctrl.store.read() as s:
        return {a.address: a.instance_id for a in await s.scalars(select(Address))}


def add_image(images: ImageStore, work: Path, name: str = "tiny", version: str = "1") -> Manifest:
    """Put a manifest of three small dummy parts into ``images`` and return it."""
    work.mkdir(parents=True, exist_ok=True)
    parts = {}
    for part in ("kernel", "initrd", "disk"):
        src = work / f"{name}-{version}-{part}"
        src.write_bytes(f"{name} {version} {part}\n".encode() * 64)
        parts[part] = images.add_blob(
            src, virtual_size=IMAGE_VIRTUAL_SIZE if part == "disk" else None
        )
    manifest = Manifest(
        name=name,
        version=version,
        kernel=parts["kernel"],
        initrd=parts["initrd"],
        root_disk=parts["disk"],
        cmdline="console=ttyS0",
    )
    images.put_manifest(manifest)
    return manifest


@contextlib.asynccontextmanager
async def node_server(node: Any, sock_dir: Path | None = None) -> AsyncIterator[str]:
    """Serve ``node`` with the agent's server on a unix socket (as ``corral agent`` does) and
    give its URL; the server stops at the end."""
    from corral.node import server as node_server_mod

    made = sock_dir is None
    directory = Path(tempfile.mkdtemp(prefix="cw-", dir="/tmp")) if sock_dir is None else sock_dir
    path = directory / "agent.sock"
    sock = node_server_mod.bind_unix(path)
    srv = node_server_mod.server(node_server_mod.create_app(node))
    task = asyncio.create_task(srv.serve(sockets=[sock]))
    try:
        while not srv.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        yield f"unix:{path}"
    finally:
        srv.should_exit = True
        srv.force_exit = True  # a follower's long poll may still be open: do not wait for it
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        sock.close()
        if made:
            shutil.rmtree(directory, ignore_errors=True)


def fake_node(ctrl: Controller, name: str) -> FakeNode:
    """The fake node ``name`` of a cluster fixture's controller."""
    node = ctrl.nodes[f"node-{name}"]
    assert isinstance(node, FakeNode)
    return node


async def claimed_memory(ctrl: Controller, name: str) -> int:
    """The memory the store has claimed on node ``name``."""
    async with ctrl.store.read() as s:
        row = await s.scalar(select(Node).where(Node.name == name))
        assert row is not None
        return row.claimed_memory


async def resumed_move(
    ctrl: Controller,
    op_type: str,
    inst: Instance,
    phase: str,
    alter: Callable[[Instance], None] | None = None,
    **params: Any,
) -> Operation:
    """A move of ``inst`` from node a to node b (a migration, a cold move) as a crashed
    controller left it at ``phase``, its claim on b made (and the instance's row changed by
    ``alter``), run again to its end."""
    async with ctrl.store.write() as s:
        row = await s.scalar(select(Node).where(Node.name == "b"))
        assert row is not None
        row.claimed_memory += inst.claim_memory
        if alter is not None:
            i = await s.get(Instance, inst.id)
            assert i is not None
            alter(i)
        got = Placement("node-b", "b", inst.claim_memory, inst.claim_cores, inst.claim_disk)
        op = move_op(ctrl, s, op_type, inst, got, "node-a", "", phase=phase, **params)
    ctrl.ops.start(op)
    return await finish(ctrl, op)
