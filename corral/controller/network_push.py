"""Network pushes as operations: a change to what a network's kernel policy or host list holds
(a security group or its rules, an instance's groups, an elastic address, an instance's name)
records, in the transaction of the change itself, a ``network-push`` operation per network
that must follow. The operation pushes the network's whole desired state to its node
(``Networks.sync_one``: policy, hosts, metadata documents), so a push is idempotent and a later
push covers every earlier change.

- Crash safety: the change and its push commit together; a controller killed before the push
  resumes the operation when it starts (``Operations.resume``).
- A node that does not answer leaves the operation running with a ``retrying`` event naming
  the node and the reason (``corral op show``); it retries with a back-off, and at once after
  each reconcile pass (``wake``), until the node takes the push.
- Coalescing: one unfinished push per network. A change joins the push already recorded for
  its network by raising the operation's ``wanted`` counter; the handler finishes only when no
  change joined during its last push (else it pushes again), and closes the operation in the
  same transaction as that check, so a change never joins a push that is done.
- The request that made the change waits for its pushes (``settle``), bounded by
  ``wait_bound``: the change is in force in the kernel of every node that answers before the
  request answers; a node that does not answer leaves the push retrying behind an answered
  request (the store has the change)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.controller import overlays
from corral.controller.operations import DONE, RETRYING, OpContext
from corral.errors import CorralError
from corral.store.models import Instance, Network, Operation

if TYPE_CHECKING:
    from corral.controller.service import Controller

log = logging.getLogger(__name__)

OP = "network-push"
RETRY_MAX = 30.0  # seconds between two attempts at a node that does not answer, at most
# the request's list of pushes left unfinished when it answers (api/pending.py sets one per
# REST request and names them in a response header)
unfinished: ContextVar[list[str] | None] = ContextVar("unfinished_pushes", default=None)


@dataclass
class Pushes:
    """What ``record`` wrote in the caller's transaction: operations to start once it commits,
    and every push (new or joined) with its event count at that moment."""

    new: list[Operation] = field(default_factory=list)
    waits: dict[str, int] = field(default_factory=dict)  # operation id -> seq when recorded

    @property
    def ids(self) -> list[str]:
        return list(self.waits)


async def account_networks(s: AsyncSession, account_id: str) -> list[str]:
    """The networks where an account's security-group rules are in force: those holding its
    live instances (a group's members are its account's instances)."""
    return list(
        await s.scalars(
            select(Instance.network_id)
            .where(
                Instance.account_id == account_id,
                Instance.state != "terminated",
                Instance.network_id.is_not(None),
            )
            .distinct()
        )
    )


async def instance_networks(s: AsyncSession, instance_ids: Iterable[str | None]) -> list[str]:
    """The networks holding these instances, with the other nodes' networks of each one's
    segment, and of a non-default VPC's every subnet (which list its groups for
    group-to-group rules across nodes and subnets)."""
    ids_ = [i for i in instance_ids if i]
    out: dict[str, None] = {}
    for nid in await s.scalars(select(Instance.network_id).where(Instance.id.in_(ids_))):
        net = await s.get(Network, nid) if nid else None
        if net is not None:
            out.update(dict.fromkeys(n.id for n in await overlays.vpc_networks(s, net)))
    return list(out)


class NetworkPushes:
    wait_bound = 20.0  # seconds a request waits for its pushes before answering anyway

    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        self._wake = asyncio.Event()
        ctrl.ops.register(OP, self._push)

    # -- record (in the change's transaction) ------------------------------------------------
    async def record_rules(self, s: AsyncSession, account_id: str, why: str) -> Pushes:
        """Record the pushes a change to an account's security-group rules needs: the networks
        holding its live instances (``account_networks``)."""
        return await self.record(s, await account_networks(s, account_id), why=why)

    async def record(
        self,
        s: AsyncSession,
        network_ids: Iterable[str | None],
        *,
        why: str,
    ) -> Pushes:
        """Record in ``s`` (the transaction of the change) that these networks must get their
        state pushed again. Joins the unfinished push of a network
        where there is one; a new operation otherwise (start it with ``settle``). A push
        carries the changes of every account whose instances the network holds: it belongs to
        none (any account may follow it), and ``why`` names no resource."""
        wanted = list(dict.fromkeys(n for n in network_ids if n))
        out = Pushes()
        if not wanted:
            return out
        active = {
            op.target_id: op
            for op in await s.scalars(
                select(Operation).where(
                    Operation.type == OP,
                    Operation.status.in_(("pending", "running")),
                    Operation.target_id.in_(wanted),
                )
            )
            if not (op.params or {}).get("closed")
        }
        for nid in wanted:
            op = active.get(nid)
            if op is not None:  # a push not yet done: it pushes again for this change too
                params = dict(op.params or {})
                params["wanted"] = int(params.get("wanted", 0)) + 1
                params["why"] = why
                op.params = params
                out.waits[op.id] = op.seq
                continue
            op = self.ctrl.ops.new(
                OP,
                account_id=None,
                target_kind="network",
                target_id=nid,
                params={"wanted": 1, "why": why},
                requested_by="system",
            )
            s.add(op)
            out.new.append(op)
            out.waits[op.id] = 0
        return out

    # -- after the commit: run and wait ------------------------------------------------------
    async def settle(self, pushes: Pushes, timeout: float | None = None) -> list[str]:
        """Start the new pushes and wait (bounded) until every one is done or has found its
        node not answering. Returns the ids of the pushes still unfinished."""
        for op in pushes.new:
            self.ctrl.ops.start(op)
        if not pushes.waits:
            return []
        bound = self.wait_bound if timeout is None else timeout
        results = await asyncio.gather(
            *(self._wait_one(oid, since, bound) for oid, since in pushes.waits.items())
        )
        left = [oid for oid, done in zip(pushes.waits, results, strict=True) if not done]
        if left and (found := unfinished.get()) is not None:
            found.extend(left)
        return left

    async def _wait_one(self, op_id: str, since: int, bound: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound
        while True:
            remaining = deadline - loop.time()
            op = await self.ctrl.ops.wait(op_id, timeout=max(0.0, remaining), since=since)
            if op.status in DONE:
                if op.status != "succeeded":
                    log.warning("network push %s %s: %s", op_id, op.status, op.error)
                return op.status == "succeeded"
            if op.seq > since and (op.message or "").startswith(RETRYING):
                return False  # its node did not answer: the push goes on without us
            if remaining <= 0:
                return False
            since = op.seq

    def wake(self) -> None:
        """Retry the pushes waiting for a node now (a reconcile pass calls this)."""
        self._wake.set()
        self._wake = asyncio.Event()

    # -- the operation -------------------------------------------------------------------------
    async def _push(self, ctx: OpContext) -> dict[str, Any]:
        nid = ctx.target_id
        store = self.ctrl.store
        attempts = 0
        while True:
            async with store.read() as s:
                op = await s.get(Operation, ctx.id)
                wanted = int((op.params or {}).get("wanted", 0)) if op is not None else 0
                net = await s.get(Network, nid)
            if net is None:
                return {"network_id": nid, "attempts": attempts, "note": "network removed"}
            attempts += 1
            wake = self._wake  # a pass during this attempt wakes its retry at once
            try:
                if not self.ctrl.cluster.reachable(net.node_id):
                    raise CorralError(f"node {net.node_id} is unreachable")
                await self.ctrl.networks.sync_one(nid)
            except CorralError as err:
                delay = min(2.0 ** (attempts - 1), RETRY_MAX)
                log.warning("network push %s to node %s: %s", nid, net.node_id, err.message)
                await self.ctrl.ops._event(
                    ctx.id,
                    "retrying",
                    f"{RETRYING}node {net.node_id} did not take the push of network {nid} "
                    f"(attempt {attempts}): {err.message}; next attempt within {delay:.0f}s",
                    None,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), delay)
                continue
            async with store.write() as s:
                op = await s.get(Operation, ctx.id)
                if op is None:
                    break
                params = dict(op.params or {})
                if int(params.get("wanted", 0)) == wanted:
                    params["closed"] = True  # no change joins it from here on
                    op.params = params
                    break
            # a change joined during this push: push again (its state is read afresh)
        return {"network_id": nid, "node_id": net.node_id, "attempts": attempts}
