"""CPU credits: the bucket (earn below the baseline, spend above, held to the baseline when
out, unlimited bursting on with surplus counted), the cgroup settings per type on v1 and v2
(ceiling = quota, baseline = weight), the node's governor lowering and raising the quota from
the cgroup's CPU counter, and the controller's spec, REST and EC2 faces."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from corral.controller.service import Controller
from corral.node import credits
from corral.node.driver import cgroups
from corral.node.fake import FakeNode
from corral.node.spec import InstanceSpec, NetworkSpec
from tests.unit.helpers import run


def test_a_bucket_bursts_while_it_has_credits_then_holds_to_its_baseline() -> None:
    b = credits.Bucket(baseline=0.2, ceiling=0.5, maximum=3.0, balance=3.0)
    assert b.tick(0.0, 0.0) == 0.5  # the first look only sets the counter
    t = use = 0.0
    quotas = []
    for _ in range(20):  # a hog: as much as the ceiling allows, 0.3 above the baseline
        t += 1.0
        use += b.quota()
        quotas.append(b.tick(use, t))
    # 3 credits last 10 s at 0.3 a second; then held to the baseline, which earns nothing
    assert quotas[:9] == [0.5] * 9
    assert quotas[9:] == [0.2] * 11
    assert b.held and b.balance == 0.0
    for _ in range(5):  # idle: earns 0.2 a second, bursts again after a tick's worth
        t += 1.0
        b.tick(use, t)
    assert not b.held and b.balance == pytest.approx(1.0)
    assert b.tick(use, t + 100) == 0.5 and b.balance == 3.0  # capped at the maximum


def test_unlimited_bursts_on_and_counts_the_surplus() -> None:
    b = credits.Bucket(baseline=0.2, ceiling=0.5, maximum=3.0, balance=3.0, mode="unlimited")
    b.tick(0.0, 0.0)
    for n in range(1, 21):
        assert b.tick(0.5 * n, float(n)) == 0.5
    assert b.balance == 0.0
    assert b.surplus == pytest.approx(20 * 0.3 - 3.0)


def test_the_balance_survives_in_its_file(tmp_path: Path) -> None:
    path = tmp_path / "credits.json"
    b = credits.Bucket(baseline=0.2, ceiling=0.5, maximum=100.0, balance=42.5, held=False)
    credits.save(path, b)
    again = credits.load(path, 0.2, 0.5, 100.0, "standard")
    assert again.balance == 42.5
    assert credits.load(path, 0.2, 0.5, 10.0, "standard").balance == 10.0  # new, smaller max
    assert credits.load(tmp_path / "none.json", 0.2, 0.5, 7.0, "standard").balance == 7.0


def test_cgroup_v2_ceiling_is_the_quota_and_baseline_the_weight(v2: Path) -> None:
    g = cgroups.Group("corral/t", "i-1")
    leaf = v2 / "corral/t/i-1"
    leaf.mkdir(parents=True)
    (leaf / "memory.swap.max").write_text("max")  # as the kernel makes it
    g.create(cgroups.Limits(cpu=0.5, memory=1 << 28, cpu_baseline=0.2))
    assert (leaf / "memory.swap.max").read_text() == "0"  # no swap for guests
    assert (leaf / "cpu.max").read_text() == "50000 100000"
    assert (leaf / "cpu.weight").read_text() == "20"
    g.set_cpu_quota(0.2)
    assert (leaf / "cpu.max").read_text() == "20000 100000"
    assert g.cpu_quota() == 0.2
    plain = cgroups.Group("corral/t", "i-2")
    plain.create(cgroups.Limits(cpu=1.0, memory=1 << 28))
    assert not (v2 / "corral/t/i-2/cpu.weight").exists()  # not burstable: the default weight


def test_cgroup_v1_ceiling_is_the_quota_and_baseline_the_shares(v1: Path) -> None:
    g = cgroups.Group("corral/t", "i-1")
    mem = v1 / "memory/corral/t/i-1"
    mem.mkdir(parents=True)
    (mem / "memory.swappiness").write_text("60")  # as the kernel makes it
    g.create(cgroups.Limits(cpu=0.5, memory=1 << 28, cpu_baseline=0.2))
    assert (mem / "memory.swappiness").read_text() == "0"
    assert (mem / "memory.limit_in_bytes").read_text() == str(1 << 28)
    cpu = v1 / "cpu/corral/t/i-1"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "50000"
    assert (cpu / "cpu.shares").read_text() == str(round(0.2 * 1024))
    assert (v1 / "cpuacct/corral/t/i-1").is_dir()  # joined for its CPU counter
    g.set_cpu_quota(0.2)
    assert (cpu / "cpu.cfs_quota_us").read_text() == "20000"
    assert g.cpu_quota() == 0.2


def _spec(iid: str, baseline: float, mode: str = "standard") -> InstanceSpec:
    net = NetworkSpec(
        id="net-1", namespace="ns", bridge="br", cidr="10.0.0.0/24", gateway="10.0.0.1", domain="d"
    )
    return InstanceSpec(
        id=iid,
        name="x",
        image="d" * 64,
        cpus=1,
        cpu_limit=0.5,
        memory=1 << 27,
        disk_size=1 << 30,
        mac="52:54:00:00:00:01",
        network=net,
        tap="t1",
        cpu_baseline=baseline,
        cpu_credit_mode=mode,
        cpu_credit_max=2.0,
    )


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_governor_lowers_the_quota_when_credits_run_out(
    version: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    root: Path = request.getfixturevalue(version)
    inst_dir = tmp_path / "instances" / "i-1"
    inst_dir.mkdir(parents=True)
    (inst_dir / "spec.json").write_text(_spec("i-1", 0.2).model_dump_json())
    group = cgroups.Group("corral/t", "i-1")
    group.create(cgroups.Limits(cpu=0.5, memory=1 << 28, cpu_baseline=0.2))
    gov = credits.Governor(lambda iid: tmp_path / "instances" / iid, lambda iid: group)

    def used(seconds: float) -> None:  # the cgroup's own CPU counter
        if version == "v2":
            (root / group.rel / "cpu.stat").write_text(f"usage_usec {int(seconds * 1e6)}\n")
        else:
            (root / "cpuacct" / group.rel / "cpuacct.usage").write_text(str(int(seconds * 1e9)))

    used(0)
    gov.tick({"i-1": None}, 0.0)
    for n in range(1, 8):  # 0.3 a second above the baseline: 2 credits last under 7 s
        used(0.5 * n)
        gov.tick({"i-1": None}, float(n))
    assert group.cpu_quota() == pytest.approx(0.2)
    st = gov.status("i-1")
    assert st is not None and st.held and st.balance == 0
    assert '"held": true' in (inst_dir / "credits.json").read_text()
    # unlimited, switched while running: the ceiling again at the next tick, kept in the spec
    gov.set_mode("i-1", "unlimited")
    used(0.5 * 8)
    gov.tick({"i-1": None}, 8.0)
    assert group.cpu_quota() == pytest.approx(0.5)
    assert InstanceSpec.model_validate_json(
        (inst_dir / "spec.json").read_text()
    ).cpu_credit_mode == ("unlimited")
    # a non-burstable instance is left alone
    (tmp_path / "instances" / "i-2").mkdir()
    (tmp_path / "instances" / "i-2" / "spec.json").write_text(_spec("i-2", 0.0).model_dump_json())
    assert gov.status("i-2") is None


async def test_a_burstable_type_gives_the_node_its_baseline_and_bucket(
    ctrl: Controller, node: FakeNode, api: httpx.AsyncClient
) -> None:
    inst = await run(ctrl, instance_type="cb1.nano")
    spec = node.specs[inst.id]
    assert (spec.cpu_limit, spec.cpu_baseline, spec.cpu_credit_mode) == (0.5, 0.2, "standard")
    assert spec.cpu_credit_max == pytest.approx(0.2 * 3600 * 24)
    r = await api.get(f"/v1/instances/{inst.id}/credits")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["burstable"] and body["baseline"] == 0.2 and body["ceiling"] == 0.5
    assert body["balance"] == pytest.approx(0.2 * 3600 * 24)
    r = await api.put(f"/v1/instances/{inst.id}/credits", json={"mode": "unlimited"})
    assert r.status_code == 200 and r.json()["mode"] == "unlimited"
    assert node.specs[inst.id].cpu_credit_mode == "unlimited"  # the running node was told
    plain = await run(ctrl, instance_type="cr1.small")
    r = await api.put(f"/v1/instances/{plain.id}/credits", json={"mode": "unlimited"})
    assert r.status_code == 400 and "not burstable" in r.json()["error"]["message"]
    assert not (await api.get(f"/v1/instances/{plain.id}/credits")).json()["burstable"]
