"""The accelerator probe boots a guest for up to 10 s: it runs in the background from start-up,
and nothing that answers a request waits for it (the first /v1/system used to take 10 s)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from corral.config import Settings
from corral.controller.service import Controller
from corral.images.store import ImageStore
from corral.node import agent as agent_module
from corral.node.agent import NodeAgent
from corral.node.fake import FakeNode
from corral.node.spec import Accel, NodeInfo
from corral.store import Store
from corral.store.models import Node


class SlowProbe:
    """Stands in for the boot probe: answers only when the test lets it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def __call__(self, *_args: Any) -> Accel:
        self.calls += 1
        await self.release.wait()
        return Accel(accel="kvm", reason="the probe guest booted", probed=True, seconds=0.5)


@pytest.fixture
def slow_probe(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> SlowProbe:
    fake = SlowProbe()
    monkeypatch.setattr(agent_module.probe, "probe", fake)
    monkeypatch.setattr(
        NodeAgent, "_probe_kernel", lambda self: (Path("/k"), Path("/i")), raising=True
    )
    assert settings.accel == "auto"
    return fake


async def test_verdict_is_probing_while_the_probe_runs_then_final(
    settings: Settings, slow_probe: SlowProbe
) -> None:
    agent = NodeAgent(settings)
    first = agent.accel_now()  # starts the probe, does not wait for it
    assert first.accel == "probing" and "probe" in first.reason
    await asyncio.sleep(0)
    assert agent.accel_now().accel == "probing"
    assert slow_probe.calls == 1  # one probe, however often it is asked
    slow_probe.release.set()
    assert agent._probe_task is not None
    await asyncio.wait_for(agent._probe_task, 5)
    final = agent.accel_now()
    assert (final.accel, final.probed) == ("kvm", True)
    assert slow_probe.calls == 1
    await agent.close()


async def test_closing_cancels_a_running_probe(settings: Settings, slow_probe: SlowProbe) -> None:
    agent = NodeAgent(settings)
    agent.accel_now()
    await asyncio.sleep(0)
    task = agent._probe_task
    await asyncio.wait_for(agent.close(), 5)
    assert task is not None and task.cancelled()


class ProbingNode(FakeNode):
    def __init__(self) -> None:
        super().__init__()
        self.verdict = Accel(accel="probing", reason="the probe is running")

    async def info(self) -> NodeInfo:
        return (await super().info()).model_copy(update={"accel": self.verdict})


async def test_system_answers_at_once_and_the_node_row_gets_the_verdict_later(
    settings: Settings,
    store: Store,
    image_store: ImageStore,
) -> None:
    node = ProbingNode()
    ctrl = Controller(settings, store, image_store)
    node_id = await ctrl.add_node(node, "n1")
    await ctrl.start()
    try:
        from corral.api.app import create_app
        from corral.api.context import ApiContext

        creds = json.loads((settings.state_dir / "admin.credentials").read_text())
        key_id, secret = creds["access_key_id"], creds["secret_access_key"]
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(ApiContext(settings, ctrl))),
            base_url="http://corral.test",
            headers={"Authorization": f"Bearer {key_id}:{secret}"},
        ) as api:
            resp = await api.get("/v1/system")
            assert resp.status_code == 200, resp.text
            assert resp.json()["node"]["accel"]["accel"] == "probing"
            node.verdict = Accel(accel="tcg", reason="KVM hung the probe guest", probed=True)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while True:
                async with store.read() as s:
                    row = await s.scalar(select(Node).where(Node.id == node_id))
                assert row is not None
                if row.accel == "tcg":
                    break
                assert loop.time() < deadline, "the node row never got the verdict"
                await asyncio.sleep(0.1)
            assert row.accel_reason == "KVM hung the probe guest"
            nodes = (await api.get("/v1/nodes")).json()
            assert nodes[0]["accel"] == "tcg"
    finally:
        await ctrl.close()
