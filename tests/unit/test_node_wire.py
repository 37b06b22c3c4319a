"""The node wire: the declarations match the NodeClient protocol; the fake node served by the
agent's server on a unix socket answers through the one client; errors come back by code and
reason; byte streams carry both ways; the event log resumes after either side restarts."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from corral import errors
from corral.node import wire
from corral.node.client import NodeClient
from corral.node.events import EventLog
from corral.node.fake import FakeNode
from corral.node.remote import RemoteNode, connect_node
from corral.node.spec import (
    GUEST_HOLDS_DISK,
    NODE_UNREACHABLE,
    HealthCheck,
    InstanceSpec,
    NetworkSpec,
    ObservedInstance,
)
from tests.unit.helpers import node_server

NET = NetworkSpec(
    id="net-1",
    namespace="ns",
    bridge="br0",
    cidr="10.0.0.0/24",
    gateway="10.0.0.1",
    domain="corral.internal",
)


def spec(iid: str = "i-1") -> InstanceSpec:
    return InstanceSpec(
        id=iid,
        name=iid,
        image="sha256:" + "0" * 64,
        memory=64 << 20,
        disk_size=1 << 30,
        mac="52:54:00:00:00:01",
        network=NET,
        tap="tap0",
    )


@pytest.fixture
async def sock_dir() -> AsyncIterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cw-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def remote(sock_dir: Path) -> AsyncIterator[tuple[FakeNode, NodeClient, RemoteNode]]:
    fake = FakeNode()
    async with node_server(fake, sock_dir) as url:
        client, owner = connect_node(url, retry_window=1.0)
        yield fake, client, owner
        await owner.aclose()


def test_every_protocol_method_is_declared_with_its_parameters() -> None:
    """One declaration per NodeClient method, its request fields in the method's order."""
    methods = {
        name: fn
        for name, fn in inspect.getmembers(NodeClient, inspect.isfunction)
        if not name.startswith("_")
    }
    assert set(methods) == set(wire.CALLS)
    for name, fn in methods.items():
        params = [p for p in inspect.signature(fn).parameters if p != "self"]
        assert list(wire.CALLS[name].request.model_fields) == params, name


def test_the_agent_and_the_fake_implement_every_call() -> None:
    from corral.node.agent import NodeAgent

    for name in wire.CALLS:
        assert inspect.iscoroutinefunction(getattr(NodeAgent, name)), name
        assert inspect.iscoroutinefunction(getattr(FakeNode, name)), name


async def test_calls_cross_the_unix_socket(
    remote: tuple[FakeNode, NodeClient, RemoteNode], sock_dir: Path
) -> None:
    fake, client, _ = remote
    mode = stat.S_IMODE(os.stat(sock_dir / "agent.sock").st_mode)
    assert mode == 0o600
    info = await client.info()
    assert info.name == "fake" and info.accel.accel == "tcg"
    await client.instance_create(spec())
    pid = await client.instance_start(spec())
    assert fake.running["i-1"] == pid
    observed = await client.instances()
    assert [(o.id, o.running, o.pid) for o in observed] == [("i-1", True, pid)]
    assert await client.console_log("i-1") == b"fake console\n"
    fake.unhealthy.add("10.0.0.9")
    assert await client.health_check("10.0.0.9", HealthCheck(port=80)) == "10.0.0.9:80 refused"
    assert fake.checked_from["10.0.0.9"] == ""
    await client.health_check("10.0.0.8", HealthCheck(), "corral-x-vpc-0123")  # over the wire
    assert fake.checked_from["10.0.0.8"] == "corral-x-vpc-0123"
    assert await client.volume_attach("i-1", "vol-1") is True
    assert await client.instance_volumes("i-1") == ["vol-1"]
    exit_info = await client.instance_stop("i-1", 5.0)
    assert exit_info is not None and exit_info.reason == "requested"
    assert await client.instance_stop("i-1", timeout=5.0, force=True) is not None
    assert fake.calls[:3] == [("create", "i-1"), ("start", "i-1"), ("health_check", "10.0.0.9")]


async def test_errors_come_back_by_code_and_reason(
    remote: tuple[FakeNode, NodeClient, RemoteNode],
) -> None:
    fake, client, _ = remote
    with pytest.raises(errors.NotFound) as nf:
        await client.volume_create("vol-2", 1 << 30, snapshot_id="snap-x")
    assert nf.value.resource == "snapshot" and "snap-x" in nf.value.message
    with pytest.raises(errors.WrongState) as ws:
        await client.instance_reboot("i-9", 5.0)
    assert ws.value.reason is None
    await client.instance_start(spec())
    fake.held.add("vol-1")
    with pytest.raises(errors.WrongState) as held:
        await client.volume_detach("i-1", "vol-1", 3.0)
    assert held.value.reason == GUEST_HOLDS_DISK and held.value.resource == "volume"
    assert "within 3 s" in held.value.message


async def test_an_unexpected_failure_is_an_internal_error_not_a_class(
    remote: tuple[FakeNode, NodeClient, RemoteNode],
) -> None:
    fake, client, _ = remote

    async def broken() -> list[ObservedInstance]:
        raise KeyError("boom")

    fake.instances = broken  # type: ignore[method-assign]
    with pytest.raises(errors.CorralError) as err:
        await client.instances()
    assert type(err.value) is errors.CorralError
    assert err.value.code == errors.Code.INTERNAL and "KeyError" in err.value.message


async def test_a_bad_request_is_refused_naming_the_field(
    remote: tuple[FakeNode, NodeClient, RemoteNode],
) -> None:
    _, _, owner = remote
    resp = await owner.http.post("/v1/calls/instance_stop", json={"iid": "i-1", "timeout": "x"})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid"
    assert resp.json()["error"]["field"] == "timeout"
    with pytest.raises(TypeError):
        await owner.call("instance_stop", "i-1", 1.0, False, "extra")


async def test_an_unreachable_node_is_an_environment_problem(sock_dir: Path) -> None:
    client, owner = connect_node(f"unix:{sock_dir}/nobody.sock", retry_window=0.3)
    with pytest.raises(errors.EnvironmentProblem) as err:
        await client.instances()
    assert err.value.reason == NODE_UNREACHABLE
    await owner.aclose()


async def test_a_call_waits_for_an_agent_that_is_restarting(sock_dir: Path) -> None:
    """Connection refused means the call never reached the node: it is sent again until the
    agent is back (here it comes up half a second later)."""
    fake = FakeNode()
    client, owner = connect_node(f"unix:{sock_dir}/agent.sock", retry_window=20.0)

    async def late() -> list[str]:
        return [o.id for o in await client.instances()]

    pending = asyncio.create_task(late())
    await asyncio.sleep(0.5)
    assert not pending.done()
    fake.specs["i-1"] = spec()
    async with node_server(fake, sock_dir):
        assert await asyncio.wait_for(pending, 20) == ["i-1"]
    await owner.aclose()


class EchoConsoleNode(FakeNode):
    """A fake whose console is a real unix socket server that answers upper-cased."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    async def console_connect(self, iid: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if iid not in self.running:
            raise errors.WrongState(f"instance {iid} is not running", resource="instance")
        return await asyncio.open_unix_connection(str(self.path))


async def test_a_console_stream_carries_bytes_both_ways(sock_dir: Path) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    console = await asyncio.start_unix_server(echo, str(sock_dir / "console.sock"))
    fake = EchoConsoleNode(sock_dir / "console.sock")
    try:
        async with node_server(fake, sock_dir) as url:
            client, owner = connect_node(url)
            with pytest.raises(errors.WrongState) as err:
                await client.console_connect("i-1")
            assert "not running" in err.value.message
            await client.instance_start(spec())
            reader, writer = await client.console_connect("i-1")
            payload = b"hello \x00\xff console\n" + b"x" * 200000 + b"\n"
            writer.write(payload)
            await writer.drain()
            got = await asyncio.wait_for(reader.readexactly(len(payload)), 20)
            assert got == payload.upper()
            writer.close()
            await owner.aclose()
    finally:
        console.close()


async def test_events_follow_and_resume_after_either_side_restarts(sock_dir: Path) -> None:
    log_path = sock_dir / "events.jsonl"
    fake = FakeNode()
    fake.event_log = EventLog(log_path, "fake")
    async with node_server(fake, sock_dir) as url:
        client, owner = connect_node(url)
        first = await client.events(0, "", 0)
        assert first.gap and first.events == [] and first.last == 0  # a newcomer: where it stands
        epoch = first.epoch
        await client.instance_start(spec("i-1"))
        fake.crash("i-1")
        batch = await client.events(0, epoch, 0)
        assert [(e.seq, e.kind, e.payload["id"]) for e in batch.events] == [
            (1, "instance-started", "i-1"),
            (2, "instance-exited", "i-1"),
        ]
        assert batch.events[1].payload["exit"]["reason"] == "crashed" and not batch.gap
        # a long poll is answered as soon as something happens
        waiting = asyncio.create_task(client.events(2, epoch, 20))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await client.instance_start(spec("i-2"))
        woke = await asyncio.wait_for(waiting, 10)
        assert [(e.seq, e.payload["id"]) for e in woke.events] == [(3, "i-2")]
        await owner.aclose()
    # the agent restarts: a new process reads its log back and numbers on from there
    fake2 = FakeNode()
    fake2.event_log = EventLog(log_path, "fake")
    async with node_server(fake2, sock_dir) as url:
        client, owner = connect_node(url)
        resumed = await client.events(2, epoch, 0)  # the controller last handled seq 2
        assert [e.seq for e in resumed.events] == [3] and resumed.epoch == epoch
        fake2.crash("i-2")
        assert [e.seq for e in (await client.events(3, epoch, 0)).events] == [4]
        # a controller whose number belongs to another log is told to look in full
        other = await client.events(7, "0123456789abcdef", 0)
        assert other.gap and other.events == [] and other.last == 4
        await owner.aclose()
    # a log started afresh (wiped state) has a new epoch
    log_path.with_suffix(".epoch").unlink()
    assert EventLog(log_path, "fake").epoch != epoch


async def test_events_dropped_from_a_short_log_are_reported_as_a_gap() -> None:
    log = EventLog(None, "n", keep=3)
    for i in range(5):
        log.append("instance-started", {"id": f"i-{i}"})
    batch = await log.read(1, log.epoch)
    assert batch.gap and [e.seq for e in batch.events] == [3, 4, 5]
    assert not (await log.read(2, log.epoch)).gap
    assert (await log.read(9, log.epoch)).gap  # ahead of the log: it lost lines


async def test_the_agent_server_speaks_only_declared_calls(
    remote: tuple[FakeNode, NodeClient, RemoteNode],
) -> None:
    _, _, owner = remote
    resp = await owner.http.get("/v1/version")
    assert resp.json() == {"wire": wire.WIRE_VERSION, "calls": sorted(wire.CALLS)}
    assert (await owner.http.post("/v1/calls/crash", json={})).status_code == 404
    assert isinstance(owner.http, httpx.AsyncClient)
