"""Waiting until a server answers its health check (from the node's namespace), with a
deadline; the check is one TCP connection, or an HTTP GET answered below 400."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from corral.node.spec import HealthCheck
from corral.store.models import Instance, Network

if TYPE_CHECKING:
    from corral.controller.service import Controller

INTERVAL = 0.1
PASSES = 3  # consecutive answers that count as healthy (one lucky answer of a flapping service
# does not)


def parse(value: str | None, default_port: int = 22) -> HealthCheck:
    """A check from its short form: ``80``, ``80/health`` (HTTP) or ``ssh`` (port 22)."""
    if not value or value == "ssh":
        return HealthCheck(port=default_port)
    port, slash, path = value.partition("/")
    return HealthCheck(port=int(port), path=f"/{path}" if slash else None)


def short(check: HealthCheck) -> str:
    return f"{check.port}{check.path or ''}"


def describe(check: HealthCheck) -> str:
    if check.path:
        return f"HTTP GET {check.path} on port {check.port}"
    return "SSH port 22" if check.port == 22 else f"TCP port {check.port}"


async def wait(
    ctrl: Controller,
    inst: Instance,
    address: str,
    check: HealthCheck,
    seconds: float,
    passes: int = PASSES,
    steady: float = 0.0,
) -> str:
    """ "" once ``address`` answers ``check`` ``passes`` times in a row, and without a
    failure for ``steady`` seconds since the first of them; else (after ``seconds``) the
    last failure."""
    node = ctrl.node(inst.node_id)
    namespace = await vantage(ctrl, inst)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    why, good, since = "not checked", 0, 0.0
    while True:
        why = await node.health_check(address, check, namespace)
        now = loop.time()
        if why:
            good = 0
        else:
            since = since if good else now
            good += 1
        if good >= passes and now - since >= steady:
            return ""
        if now >= deadline:
            steadily = f"steadily for {steady:g} s" if steady else "steadily"
            return why or f"it answered, but not {steadily}"
        await asyncio.sleep(INTERVAL)


async def vantage(ctrl: Controller, inst: Instance) -> str:
    """Where on its node ``inst`` is checked from: its VPC's namespace for an instance of a
    non-default VPC's subnet (the node's own namespace has no route into it); "" (the node's
    own) otherwise."""
    async with ctrl.store.read() as s:
        net = await s.get(Network, inst.network_id) if inst.network_id else None
    return net.namespace if net is not None and net.transit is not None else ""
