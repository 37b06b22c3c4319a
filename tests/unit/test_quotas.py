"""Quotas per account: enforced atomically (ten concurrent launches at a limit let exactly the
allowed number through, on SQLite and PostgreSQL), with AWS's codes over EC2, reported by
DescribeAccountAttributes, shown and set over REST (admin only)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from corral.api.app import create_app
from corral.api.context import ApiContext
from corral.controller.quotas import QuotaExceeded
from corral.controller.service import Controller
from corral.store.models import Instance
from tests.unit.conftest import Cluster
from tests.unit.helpers import admin, req

pytestmark = pytest.mark.postgres


async def _live(ctrl: Controller) -> int:
    from sqlalchemy import func, select

    async with ctrl.store.read() as s:
        n = await s.scalar(select(func.count(Instance.id)).where(Instance.state != "terminated"))
    return int(n or 0)


async def test_ten_concurrent_launches_at_a_limit_let_exactly_the_allowed_number_through(
    cluster: Cluster,
) -> None:
    ctrl = await cluster({"a": {}}, quota_instances=4)
    await ctrl.instances.run(admin(ctrl), req())  # one in use already: room for three
    results = await asyncio.gather(
        *(ctrl.instances.run(admin(ctrl), req()) for _ in range(10)), return_exceptions=True
    )
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(ok) == 3
    assert len(refused) == 7
    assert all(isinstance(r, QuotaExceeded) for r in refused), refused
    assert {r.ec2_code for r in refused if isinstance(r, QuotaExceeded)} == {
        "InstanceLimitExceeded"
    }
    assert await _live(ctrl) == 4


async def test_vcpu_and_memory_quotas_count_every_instance_not_terminated(
    cluster: Cluster,
) -> None:
    ctrl = await cluster({"a": {}}, quota_vcpus=3, quota_memory_mib=100000)
    await ctrl.instances.run(admin(ctrl), req(instance_type="cr1.medium"))  # 2 vCPUs
    with pytest.raises(QuotaExceeded, match=r"quota vcpus .* is 3; 2 in use") as err:
        await ctrl.instances.run(admin(ctrl), req(instance_type="cr1.large"))
    assert err.value.ec2_code == "VcpuLimitExceeded"
    await ctrl.instances.run(admin(ctrl), req(instance_type="cr1.small"))  # the third vCPU
    # an account override beats the default; -1 is unlimited
    await ctrl.quotas.set(admin(ctrl), admin(ctrl).account_id, "vcpus", -1)
    await ctrl.quotas.set(admin(ctrl), admin(ctrl).account_id, "memory_mib", 1024)
    with pytest.raises(QuotaExceeded, match="quota memory_mib") as err:
        await ctrl.instances.run(admin(ctrl), req(instance_type="cr1.small"))  # 1024+512 MiB
    _acct, views = await ctrl.quotas.show(admin(ctrl).account_id)
    got = {v.name: (v.limit, v.used, v.overridden) for v in views}
    assert got["vcpus"] == (-1, 3, True)
    assert got["memory_mib"] == (1024, 1024 + 512, True)
    assert got["instances"] == (100, 2, False)


async def test_rest_quota_show_and_set_admin_only(cluster: Cluster) -> None:
    ctrl = await cluster({"a": {}})
    user = await ctrl.accounts.create("bob")
    key = await ctrl.accounts.create_key(user.id)
    data = json.loads((ctrl.settings.state_dir / "admin.credentials").read_text())
    transport = httpx.ASGITransport(app=create_app(ApiContext(ctrl.settings, ctrl)))
    boss = f"Bearer {data['access_key_id']}:{data['secret_access_key']}"
    async with httpx.AsyncClient(transport=transport, base_url="http://corral.test") as c:
        r = await c.put(
            "/v1/quotas/bob/instances", json={"value": 7}, headers={"Authorization": boss}
        )
        assert r.status_code == 200, r.text
        bob = {"Authorization": f"Bearer {key.id}:{key.secret}"}
        r = await c.get("/v1/quotas", headers=bob)
        assert r.status_code == 200
        rows = {q["name"]: q for q in r.json()["quotas"]}
        assert rows["instances"]["limit"] == 7 and rows["instances"]["overridden"]
        assert rows["vcpus"]["limit"] == 256 and not rows["vcpus"]["overridden"]
        r = await c.put("/v1/quotas/bob/instances", json={"value": 70}, headers=bob)
        assert r.status_code == 403
        r = await c.put(
            "/v1/quotas/bob/nonsense", json={"value": 1}, headers={"Authorization": boss}
        )
        assert r.status_code == 400 and "instances" in r.json()["error"]["message"]
        r = await c.get("/v1/quotas?account=admin", headers=bob)
        assert r.status_code == 403
        r = await c.put(
            "/v1/quotas/bob/instances", json={"value": None}, headers={"Authorization": boss}
        )
        assert r.status_code == 200
        rows = {q["name"]: q for q in r.json()["quotas"]}
        assert rows["instances"]["limit"] == 100 and not rows["instances"]["overridden"]
