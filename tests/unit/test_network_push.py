"""Security-group, elastic-IP and rename changes reach the nodes as ``network-push`` operations
(controller/network_push.py), over the fake node behind the real wire: the operation commits with
the change, a controller that dies before the push pushes at its next start, a node that
refuses or hangs leaves the push retrying (the request still answers) until a later pass
completes it, concurrent changes share one push, and a request answers only once its push is in
the node's kernel."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from corral.config import Settings
from corral.controller.accounts import Caller
from corral.controller.network_push import OP, RETRYING
from corral.controller.security_groups import Permission
from corral.controller.service import Controller
from corral.errors import CorralError, DryRunPassed
from corral.images.store import ImageStore
from corral.node.fake import FakeNode
from corral.node.remote import connect_node
from corral.store import Store
from corral.store.models import Operation, SecurityGroupRule
from tests.unit.helpers import WAIT, admin, node_server, run

pytestmark = pytest.mark.postgres


async def _pushes(ctrl: Controller) -> list[Operation]:
    async with ctrl.store.read() as s:
        return list(
            await s.scalars(
                select(Operation).where(Operation.type == OP).order_by(Operation.created_at)
            )
        )


def _ingress_ports(node: FakeNode) -> set[int | None]:
    return {r.from_port for pol in node.policies.values() for g in pol.groups for r in g.ingress}


async def _until(what: Callable[[], Any], message: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not await what():
        assert loop.time() < deadline, message
        await asyncio.sleep(0.02)


async def _allow(ctrl: Controller, port: int, dry_run: bool = False) -> None:
    await ctrl.security_groups.authorize(
        admin(ctrl),
        "default",
        "ingress",
        [Permission(protocol="tcp", from_port=port, to_port=port, cidr="10.9.0.0/16")],
        dry_run=dry_run,
    )


async def _done(ctrl: Controller, op_id: str) -> bool:
    return (await ctrl.ops.get(op_id)).status == "succeeded"


async def test_a_rule_and_its_push_commit_together_and_a_restart_pushes_what_a_crash_left(
    settings: Settings, store: Store, image_store: ImageStore, node: FakeNode
) -> None:
    """The controller 'dies' between the commit and the push (its operations runner never
    starts the push): the rule and the pending push are in the store, the node never got it; a
    new controller on the same store runs the push at start."""
    async with node_server(node) as url:
        client, remote = connect_node(url)
        first = Controller(settings, store, image_store)
        await first.add_node(client, "n1")
        await first.start()
        try:
            await run(first)  # a member of the default group on the node
            with pytest.raises(DryRunPassed):  # nothing recorded for a dry run
                await _allow(first, 8080, dry_run=True)
            assert await _pushes(first) == []
            real_start = first.ops.start
            first.ops.start = lambda op: None if op.type == OP else real_start(op)  # type: ignore[method-assign]
            first.network_pushes.wait_bound = 0.2
            await _allow(first, 8080)
            [pending] = await _pushes(first)
            assert pending.status == "pending" and pending.target_kind == "network"
            async with store.read() as s:
                rules = list(await s.scalars(select(SecurityGroupRule)))
            assert 8080 in {r.from_port for r in rules}
            assert 8080 not in _ingress_ports(node), "pushed although the runner never ran"
        finally:
            await first.close()
        # a new controller on the same database: the push resumes at start
        client2, remote2 = connect_node(url)
        second = Controller(settings, store, image_store)
        await second.add_node(client2, "n1")
        await second.start()
        try:
            await _until(lambda: _done(second, pending.id), "the resumed push never succeeded")
            assert 8080 in _ingress_ports(node)
            done = await second.ops.get(pending.id)
            assert done.attempts >= 1 and done.result["network_id"] == pending.target_id
        finally:
            await second.close()
            await remote2.aclose()
            await remote.aclose()


async def test_a_node_that_refuses_leaves_the_push_retrying_and_a_later_pass_completes_it(
    ctrl: Controller, node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    await run(ctrl)
    real = node.network_policy

    async def refuse(policy: Any) -> None:
        raise CorralError("nft: the fake node refuses")

    monkeypatch.setattr(node, "network_policy", refuse)
    await _allow(ctrl, 2222)  # answers: the store has the rule, the push goes on
    [op] = await _pushes(ctrl)
    op = await ctrl.ops.get(op.id)
    assert op.status == "running", op.status
    assert op.message.startswith(RETRYING) and "refuses" in op.message, op.message
    assert 2222 not in _ingress_ports(node)
    # a second change while the node is away joins the same push
    await _allow(ctrl, 2223)
    assert [p.id for p in await _pushes(ctrl)] == [op.id]
    monkeypatch.setattr(node, "network_policy", real)
    await ctrl.reconciler.reconcile_once()  # wakes the push waiting for its node
    await _until(lambda: _done(ctrl, op.id), "the push never completed once the node answered")
    assert {2222, 2223} <= _ingress_ports(node)


async def test_a_node_that_hangs_leaves_the_request_answered_and_the_push_pending(
    ctrl: Controller, node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    await run(ctrl)
    real = node.network_policy
    release = asyncio.Event()

    async def hang(policy: Any) -> None:
        await release.wait()
        await real(policy)

    monkeypatch.setattr(node, "network_policy", hang)
    ctrl.network_pushes.wait_bound = 1.0
    await asyncio.wait_for(_allow(ctrl, 3306), WAIT)  # bounded: answered while the node hangs
    [op] = await _pushes(ctrl)
    assert (await ctrl.ops.get(op.id)).status == "running"
    assert 3306 not in _ingress_ports(node)
    release.set()
    await _until(lambda: _done(ctrl, op.id), "the push never completed once the node answered")
    assert 3306 in _ingress_ports(node)


async def test_concurrent_rule_changes_share_one_push_and_answer_once_it_is_in_force(
    ctrl: Controller, node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    await run(ctrl)
    real = node.network_policy
    calls = 0
    gate = asyncio.Event()

    async def slow(policy: Any) -> None:
        nonlocal calls
        calls += 1
        await gate.wait()
        await real(policy)

    monkeypatch.setattr(node, "network_policy", slow)
    ports = list(range(5000, 5010))
    answered: dict[int, set[int | None]] = {}

    async def allow(port: int) -> None:
        await _allow(ctrl, port)
        answered[port] = _ingress_ports(node)  # what the kernel held when the API answered

    async def started() -> bool:
        return calls > 0

    tasks = [asyncio.create_task(allow(p)) for p in ports]
    await _until(started, "the first push never reached the node")
    await asyncio.sleep(0.3)  # the other changes arrive while the first push is in flight
    gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
    for port in ports:
        assert port in answered[port], f"answered before {port} was in the kernel"
    pushes = await _pushes(ctrl)
    assert len(pushes) <= 2, [p.id for p in pushes]  # not one per change
    assert all(p.status == "succeeded" for p in pushes)
    assert calls <= 4, calls


async def test_rename_and_an_elastic_address_push_as_operations(
    ctrl: Controller, node: FakeNode
) -> None:
    inst = await run(ctrl)
    await ctrl.instances.rename(admin(ctrl), inst.id, "renamed")
    names = {n for hosts in node.hosts.values() for h in hosts for n in h.names}
    assert any(n.startswith("renamed.") for n in names), names
    [op] = await _pushes(ctrl)
    assert (await ctrl.ops.get(op.id)).status == "succeeded"
    eip = await ctrl.elastic_ips.allocate(admin(ctrl))
    await ctrl.elastic_ips.associate(admin(ctrl), inst.id, eip.id)
    mapped = {p.public_ip for pol in node.policies.values() for p in pol.ports}
    assert eip.public_ip in mapped
    await ctrl.elastic_ips.disassociate(admin(ctrl), public_ip=eip.public_ip)
    mapped = {p.public_ip for pol in node.policies.values() for p in pol.ports}
    assert eip.public_ip not in mapped
    assert [p.status for p in await _pushes(ctrl)] == ["succeeded"] * 3


async def test_rest_answers_a_rule_whose_node_refuses_and_names_the_pending_push(
    ctrl: Controller, node: FakeNode, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(policy: Any) -> None:
        raise CorralError("nft: the fake node refuses")

    await run(ctrl)  # a member of the default group: its network follows the group's rules
    monkeypatch.setattr(node, "network_policy", refuse)
    resp = await api.post(
        "/v1/security-groups/default/rules", json={"from_port": 443, "cidr": "10.9.0.0/16"}
    )
    assert resp.status_code == 201, resp.text  # accepted: the store has it
    [op_id] = resp.headers["corral-pending-operations"].split(",")
    shown = (await api.get(f"/v1/operations/{op_id}")).json()
    assert shown["type"] == OP and shown["status"] == "running"
    assert shown["message"].startswith(RETRYING) and "refuses" in shown["message"]
    assert op_id in {o["id"] for o in (await api.get("/v1/operations")).json()}
    # a change the node takes at once names no pending push
    monkeypatch.undo()
    await ctrl.reconciler.reconcile_once()
    await _until(lambda: _done(ctrl, op_id), "the push never completed once the node answered")
    resp = await api.post(
        "/v1/security-groups/default/rules", json={"from_port": 444, "cidr": "10.9.0.0/16"}
    )
    assert resp.status_code == 201 and "corral-pending-operations" not in resp.headers


async def test_a_rule_pushes_only_the_networks_of_its_accounts_instances(
    ctrl: Controller, node: FakeNode
) -> None:
    """A security-group change is in force where the group's members are: another account's
    rule, with no instance anywhere, pushes nothing (it used to push every network)."""
    await run(ctrl)  # the admin's instance on the node's network
    acct = await ctrl.accounts.create("bob")
    bob = Caller(acct.id, "bob", False, "")
    await ctrl.security_groups.authorize(
        bob,
        "default",
        "ingress",
        [Permission(protocol="tcp", from_port=7000, to_port=7000, cidr="10.9.0.0/16")],
    )
    assert await _pushes(ctrl) == []
    assert 7000 not in _ingress_ports(node)
    await _allow(ctrl, 7001)  # the admin's: its instance's network, once
    [push] = await _pushes(ctrl)
    assert (await ctrl.ops.get(push.id)).status == "succeeded"
    assert 7001 in _ingress_ports(node)
