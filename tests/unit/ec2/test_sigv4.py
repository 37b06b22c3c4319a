"""SigV4: botocore-signed requests pass; every way of getting the signature wrong is refused
with an AWS error document, and nothing runs."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlencode

import pytest
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.unit.ec2.conftest import ENDPOINT, Ec2, World

FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}


def _code(body: bytes) -> str:
    return body.split(b"<Code>")[1].split(b"</Code>")[0].decode()


async def _sent(ec2: Ec2, body: bytes, **kw: object) -> tuple[int, str]:
    req = ec2.sign("POST", body, headers=FORM, **kw)  # type: ignore[arg-type]
    resp = await ec2.send(req)
    return resp.status_code, _code(resp.content) if resp.status_code >= 300 else ""


async def test_signed_request_is_accepted(world: World) -> None:
    status, _ = await _sent(world.admin, world.admin.body("DescribeRegions"))
    assert status == 200


async def test_wrong_secret_is_auth_failure(world: World) -> None:
    status, code = await _sent(
        world.admin, world.admin.body("DescribeRegions"), secret="not-the-secret"
    )
    assert (status, code) == (401, "AuthFailure")


async def test_unknown_access_key_is_auth_failure(world: World) -> None:
    stranger = Ec2(world.http, "CKIAUNKNOWNKEY000000", "whatever")
    status, code = await _sent(stranger, stranger.body("DescribeRegions"))
    assert (status, code) == (401, "AuthFailure")


async def test_tampered_body_is_refused_and_nothing_runs(world: World) -> None:
    ec2 = world.admin
    req = ec2.sign(
        "POST",
        ec2.body("RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1),
        headers=FORM,
    )
    req.data = ec2.body("RunInstances", ImageId=world.image_id, MinCount=5, MaxCount=5)
    resp = await ec2.send(req)
    assert resp.status_code == 401 and _code(resp.content) == "AuthFailure"
    assert (await ec2.call("DescribeInstances"))["Reservations"] == []


async def test_stale_date_is_request_expired(world: World) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20)
    status, code = await _sent(world.admin, world.admin.body("DescribeRegions"), when=old)
    assert (status, code) == (400, "RequestExpired")


async def test_date_within_skew_is_accepted(world: World) -> None:
    near = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    status, _ = await _sent(world.admin, world.admin.body("DescribeRegions"), when=near)
    assert status == 200


async def test_wrong_region_is_auth_failure(world: World) -> None:
    status, code = await _sent(world.admin, world.admin.body("DescribeRegions"), region="us-east-1")
    assert (status, code) == (401, "AuthFailure")


async def test_signed_header_missing_from_request_is_auth_failure(world: World) -> None:
    ec2 = world.admin
    req = ec2.sign(
        "POST", ec2.body("DescribeRegions"), headers={**FORM, "X-Corral-Extra": "signed"}
    )
    del req.headers["X-Corral-Extra"]
    resp = await ec2.send(req)
    assert resp.status_code == 401 and _code(resp.content) == "AuthFailure"
    assert b"x-corral-extra" in resp.content


async def test_unsigned_request_is_refused(world: World) -> None:
    resp = await world.http.post(
        "/", content=b"Action=DescribeRegions&Version=2016-11-15", headers=FORM
    )
    assert resp.status_code == 401 and _code(resp.content) == "MissingAuthenticationToken"


async def test_wrong_service_in_scope_is_refused(world: World) -> None:
    from botocore.auth import SigV4Auth

    ec2 = world.admin
    req = AWSRequest(
        method="POST", url=ENDPOINT + "/", data=ec2.body("DescribeRegions"), headers=dict(FORM)
    )
    SigV4Auth(Credentials(ec2.key_id, ec2.secret), "s3", "corral-1").add_auth(req)
    resp = await ec2.send(req)
    assert resp.status_code == 401 and _code(resp.content) == "AuthFailure"


@pytest.mark.parametrize("expires, ok", [(300, True), (-1, False)])
async def test_presigned_get(world: World, expires: int, ok: bool) -> None:
    ec2 = world.admin
    query = urlencode(
        {
            "Action": "DescribeAvailabilityZones",
            "Version": "2016-11-15",
            "Filter.1.Name": "zone-name",
            "Filter.1.Value.1": "corral-1*",
        }
    )
    req = AWSRequest(method="GET", url=f"{ENDPOINT}/?{query}")
    when = dt.datetime.now(dt.UTC) - (dt.timedelta(seconds=400) if not ok else dt.timedelta())
    signer = SigV4QueryAuth(Credentials(ec2.key_id, ec2.secret), "ec2", "corral-1", expires=300)
    import unittest.mock

    class _Frozen(dt.datetime):
        @classmethod
        def now(cls, tz: object = None) -> dt.datetime:  # type: ignore[override]
            return when

    with unittest.mock.patch("botocore.auth.datetime.datetime", _Frozen):
        signer.add_auth(req)
    resp = await ec2.send(req)
    if ok:
        assert resp.status_code == 200
        assert b"<zoneName>corral-1a</zoneName>" in resp.content
    else:
        assert resp.status_code == 400 and _code(resp.content) == "RequestExpired"


async def test_get_with_authorization_header(world: World) -> None:
    ec2 = world.admin
    req = ec2.sign(
        "GET",
        b"",
        url=f"{ENDPOINT}/?Action=DescribeRegions&Version=2016-11-15&RegionName.1=corral-1",
    )
    resp = await ec2.send(req)
    assert resp.status_code == 200 and b"<regionName>corral-1</regionName>" in resp.content
