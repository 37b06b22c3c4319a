"""sts:GetCallerIdentity at the EC2 endpoint, signed for service ``sts`` and read by botocore's
own STS serializer and parser (the oracle of STS's XML shape)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import urlencode

import botocore.session
import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.parsers import create_parser
from botocore.serialize import create_serializer

from corral.api.ec2 import sts
from tests.unit.ec2.conftest import ENDPOINT, REGION, Ec2, World

_MODEL = botocore.session.get_session().get_service_model("sts")
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}


async def sts_call(ec2: Ec2, action: str, **params: Any) -> tuple[int, dict[str, Any]]:
    op = _MODEL.operation_model(action)
    body = urlencode(create_serializer("query").serialize_to_request(params, op)["body"])
    req = AWSRequest(method="POST", url=ENDPOINT + "/", data=body.encode(), headers=dict(FORM))
    SigV4Auth(Credentials(ec2.key_id, ec2.secret), "sts", REGION).add_auth(req)
    resp: httpx.Response = await ec2.send(req)
    parsed = create_parser("query").parse(
        {"status_code": resp.status_code, "headers": dict(resp.headers), "body": resp.content},
        op.output_shape,
    )
    return resp.status_code, parsed


async def test_get_caller_identity_names_the_account_of_the_key(world: World) -> None:
    alice = await world.account("alice")
    status, out = await sts_call(alice, "GetCallerIdentity")
    caller = await world.caller(alice)
    assert status == 200
    assert out["Account"] == caller.account_id
    assert out["Arn"] == f"arn:aws:iam::{caller.account_id}:user/alice"
    assert out["UserId"] == sts.user_id(caller.account_id)
    assert out["UserId"].startswith("AIDA") and len(out["UserId"]) == 21
    assert out["ResponseMetadata"]["RequestId"]
    # a second account is another identity
    _, admin = await sts_call(world.admin, "GetCallerIdentity")
    assert admin["Account"] != out["Account"] and admin["UserId"] != out["UserId"]


async def test_sts_errors_are_sts_documents(world: World) -> None:
    status, out = await sts_call(world.admin, "GetSessionToken")
    assert status == 400 and out["Error"]["Code"] == "UnsupportedOperation"
    assert out["Error"]["Type"] == "Sender"
    status, out = await sts_call(
        world.admin, "GetAccessKeyInfo", AccessKeyId="AKIAIOSFODNN7EXAMPLE"
    )
    assert status == 400 and out["Error"]["Code"] == "UnsupportedOperation"


async def test_sts_request_with_a_bad_signature_is_refused(world: World) -> None:
    ec2 = world.admin
    body = b"Action=GetCallerIdentity&Version=2011-06-15"
    req = AWSRequest(method="POST", url=ENDPOINT + "/", data=body, headers=dict(FORM))
    SigV4Auth(Credentials(ec2.key_id, "wrong" + ec2.secret), "sts", REGION).add_auth(req)
    resp = await ec2.send(req)
    assert resp.status_code == 401
    assert ET.fromstring(resp.content).findtext(".//Code") == "AuthFailure"


async def test_ec2_actions_are_not_answered_for_an_sts_signature(world: World) -> None:
    status, _ = await sts_call(world.admin, "GetCallerIdentity")
    assert status == 200
    ec2 = world.admin
    body = b"Action=DescribeRegions&Version=2016-11-15"
    req = AWSRequest(method="POST", url=ENDPOINT + "/", data=body, headers=dict(FORM))
    SigV4Auth(Credentials(ec2.key_id, ec2.secret), "sts", REGION).add_auth(req)
    resp = await ec2.send(req)
    assert resp.status_code == 400
    assert ET.fromstring(resp.content).findtext(f".//{{{sts.NAMESPACE}}}Code") == "InvalidAction"
