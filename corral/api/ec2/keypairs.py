"""Key pairs: CreateKeyPair (RSA or ED25519, AWS fingerprints), ImportKeyPair,
DescribeKeyPairs, DeleteKeyPair."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from corral.api.ec2 import views
from corral.api.ec2.common import dry_run_ok, not_found
from corral.api.ec2.errors import Ec2Error, invalid
from corral.api.ec2.listing import Filters
from corral.api.ec2.params import DRY_RUN, FILTERS, TAG_SPECS
from corral.api.ec2.registry import Call, action
from corral.controller import keys, tags
from corral.errors import NotFound
from corral.store.models import KeyPair


async def _tag(call: Call, row: KeyPair, wanted: dict[str, str]) -> dict[str, str]:
    if wanted:
        await call.ctrl.tags.create(call.caller, [row.id], wanted)
    return wanted


async def _check_new(call: Call, name: str) -> None:
    keys.check_name(name)
    try:
        await call.ctrl.keypairs.get(call.caller, name)
    except NotFound:
        return
    raise Ec2Error("InvalidKeyPair.Duplicate", f"The keypair '{name}' already exists.")


@action(
    "CreateKeyPair",
    accepts=(
        "KeyName",
        "KeyType",
        "KeyFormat",
        *TAG_SPECS,
        *DRY_RUN,
    ),
)
async def keypair_create(call: Call) -> dict[str, Any]:
    p = call.p
    name = p.need("KeyName")
    key_type = p.get("KeyType", "rsa") or "rsa"
    if key_type not in ("rsa", "ed25519"):
        raise invalid("KeyType", key_type, "It must be rsa or ed25519.")
    if (p.get("KeyFormat") or "pem") != "pem":
        raise Ec2Error("UnsupportedOperation", "Corral returns private keys as PEM only")
    wanted = tags.check(p.tag_specs(("key-pair",)).get("key-pair", {}))
    await _check_new(call, name)
    if call.dry_run:
        dry_run_ok()
    row, private = await call.ctrl.keypairs.add(call.caller, name, None, key_type)
    return {
        "keyName": row.name,
        "keyFingerprint": row.fingerprint,
        "keyMaterial": private,
        "keyPairId": row.id,
        "tagSet": views.tag_set(await _tag(call, row, wanted)),
    }


@action(
    "ImportKeyPair",
    accepts=(
        "KeyName",
        "PublicKeyMaterial",
        *TAG_SPECS,
        *DRY_RUN,
    ),
)
async def keypair_import(call: Call) -> dict[str, Any]:
    p = call.p
    name = p.need("KeyName")
    material = p.need("PublicKeyMaterial")
    try:
        text = base64.b64decode(material, validate=True).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        text = material  # some clients send the OpenSSH line as it is
    wanted = tags.check(p.tag_specs(("key-pair",)).get("key-pair", {}))
    keys.parse_public(text)
    await _check_new(call, name)
    if call.dry_run:
        dry_run_ok()
    row, _ = await call.ctrl.keypairs.add(call.caller, name, text)
    return {
        "keyName": row.name,
        "keyFingerprint": row.fingerprint,
        "keyPairId": row.id,
        "tagSet": views.tag_set(await _tag(call, row, wanted)),
    }


@action(
    "DescribeKeyPairs",
    accepts=(
        "KeyName.N",
        "KeyPairId.N",
        "IncludePublicKey",
        *FILTERS,
        *DRY_RUN,
    ),
)
async def keypair_describe(call: Call) -> dict[str, Any]:
    p = call.p
    rows = await call.ctrl.keypairs.list(call.caller)
    names, key_ids = p.strings("KeyName"), p.strings("KeyPairId")
    if names:
        have = {r.name for r in rows}
        gone = [n for n in names if n not in have]
        if gone:
            raise not_found("InvalidKeyPair.NotFound", "key pair", gone)
        rows = [r for r in rows if r.name in names]
    if key_ids:
        have = {r.id for r in rows}
        gone = [n for n in key_ids if n not in have]
        if gone:
            raise not_found("InvalidKeyPair.NotFound", "key pair ID", gone)
        rows = [r for r in rows if r.id in key_ids]
    async with call.ctrl.store.read() as s:
        tag_map = await call.ctrl.tags.of(s, call.caller.account_id, [r.id for r in rows])
    match = Filters(
        p.filters(),
        {
            "key-name": lambda r: r.name,
            "key-pair-id": lambda r: r.id,
            "fingerprint": lambda r: r.fingerprint,
            "key-type": lambda r: r.key_type,
        },
        lambda r: tag_map.get(r.id, {}),
    )
    if call.dry_run:
        dry_run_ok()
    include = p.flag("IncludePublicKey")
    return {
        "keySet": [
            {
                "keyPairId": r.id,
                "keyType": r.key_type,
                "tagSet": views.tag_set(tag_map.get(r.id)),
                "publicKey": r.public_key if include else None,
                "keyName": r.name,
                "keyFingerprint": r.fingerprint,
                "createTime": r.created_at,
            }
            for r in rows
            if match(r)
        ]
    }


@action(
    "DeleteKeyPair",
    accepts=(
        "KeyName",
        "KeyPairId",
        *DRY_RUN,
    ),
)
async def keypair_delete(call: Call) -> dict[str, Any]:
    p = call.p
    ref = p.get("KeyPairId") or p.get("KeyName")
    if not ref:
        raise Ec2Error("MissingParameter", "The request must contain KeyName or KeyPairId")
    try:
        row = await call.ctrl.keypairs.get(call.caller, ref)
    except NotFound:
        if p.get("KeyPairId"):
            raise Ec2Error(
                "InvalidKeyPair.NotFound", f"The key pair ID '{ref}' does not exist"
            ) from None
        if call.dry_run:
            dry_run_ok()
        return {"return": True}  # as on AWS: deleting a missing key name succeeds
    if call.dry_run:
        dry_run_ok()
    await call.ctrl.keypairs.remove(call.caller, row.id)  # its tags go with it
    return {"return": True, "keyPairId": row.id}
