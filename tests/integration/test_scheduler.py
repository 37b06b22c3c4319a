"""The scheduler against the real agent: the node registers its memory reserve, QEMU's
overhead, disk and zone; a launch claims guest memory + overhead; `corral capacity` shows it;
a request no node can take, a pin to a missing node and a full spread placement group are
refused with the reason; terminating gives the claim back."""

from __future__ import annotations

import json

import psutil

from tests.harness import Daemon, wait_for

MiB = 1 << 20


def _capacity(corral: Daemon) -> dict:  # type: ignore[type-arg]
    return json.loads(corral.cli("capacity", "--json").ok().out)


def test_placement_claims_and_refusals_on_the_real_node(corral: Daemon) -> None:
    (node,) = _capacity(corral)["nodes"]
    assert node["zone"] == corral.settings.availability_zone
    assert node["memory_total"] == psutil.virtual_memory().total - 512 * MiB
    assert node["disk_total"] and node["disk_total"] > 0
    before = node["memory_claimed"]
    corral.cli("placement-group", "create", "sched-web", "--strategy", "spread").ok()
    corral.cli(
        "run", "tiny", "--name", "sched1", "--memory", "192M", "--placement-group", "sched-web"
    ).ok()
    (node,) = _capacity(corral)["nodes"]
    assert node["memory_claimed"] - before == (192 + 256) * MiB  # guest + QEMU's overhead
    # a second member of a spread group needs a second node
    r = corral.cli("run", "tiny", "--name", "sched2", "--placement-group", "sched-web")
    assert r.rc != 0
    assert "1 node: 1 already holds an instance of placement group sched-web" in r.err
    huge = (psutil.virtual_memory().total >> 30) + 8
    r = corral.cli("run", "tiny", "--name", "sched3", "--memory", f"{huge}G")
    assert r.rc != 0 and f"1 node: 1 lacks {huge} GiB free memory" in r.err
    r = corral.cli("run", "tiny", "--name", "sched4", "--node", "no-such-node")
    assert r.rc != 0 and "node no-such-node does not exist" in r.err
    r = corral.cli("placement-group", "rm", "sched-web")
    assert r.rc != 0 and "in use" in r.err
    corral.cli("rm", "--force", "sched1").ok()
    wait_for(
        lambda: _capacity(corral)["nodes"][0]["memory_claimed"] == before,
        60,
        what="the claim to be given back",
    )
    corral.cli("placement-group", "rm", "sched-web").ok()
