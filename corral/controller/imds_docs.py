"""The metadata documents: what 169.254.169.254 answers each instance (corral/imds.py serves
them). The all-in-one daemon builds one per request from the store; a joined node gets every
document of its network pushed (``Networks.sync`` → ``metadata_put``) and answers from those."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from corral.naming import private_dns_name
from corral.node.spec import InstanceMetadata
from corral.store.models import (
    ElasticAddress,
    Image,
    Instance,
    InstanceSecurityGroup,
    KeyPair,
    Network,
    Node,
    SecurityGroup,
)

Tree = dict[str, Any]


@dataclass
class Asker:
    """The instance a request came from, with what its metadata is made of."""

    inst: Instance
    image: Image | None
    network: Network
    key_names: list[str]
    groups: list[str]
    public_ip: str | None = None
    zone: str = ""  # its node's availability zone ("": this controller's)


def build_tree(asker: Asker, settings: Any) -> Tree:
    inst, image, network = asker.inst, asker.image, asker.network
    key_names, groups = asker.key_names, asker.groups
    fqdn = private_dns_name(inst.name, inst.account_id, network.domain)
    zone = asker.zone or settings.availability_zone
    keys: Tree = {}
    for i, key in enumerate(inst.ssh_keys or []):
        name = key_names[i] if i < len(key_names) else f"key-{i}"
        keys[f"{i}={name}"] = {"openssh-key": key}
    mac = {
        "device-number": "0",
        "local-hostname": fqdn,
        "local-ipv4s": inst.private_ip or "",
        "mac": inst.mac,
        "subnet-ipv4-cidr-block": network.cidr,
        "interface-id": f"eni-{inst.id[2:]}",
    }
    meta: Tree = {
        "ami-id": inst.image_id,
        "ami-launch-index": "0",
        "hostname": fqdn,
        "instance-id": inst.id,
        "instance-type": inst.instance_type or f"c{inst.cpus}m{inst.memory >> 20}",
        "local-hostname": fqdn,
        "local-ipv4": inst.private_ip or "",
        "mac": inst.mac,
        "placement": {"availability-zone": zone, "region": settings.region},
        "public-keys": keys,
        "reservation-id": inst.reservation_id or "",
        "security-groups": "\n".join(groups or ["default"]),
        "network": {"interfaces": {"macs": {inst.mac: mac}}},
        "services": {"domain": network.domain},
    }
    if asker.public_ip:
        meta["public-ipv4"] = asker.public_ip
        mac["public-ipv4s"] = asker.public_ip
        if settings.dns_zone:
            meta["public-hostname"] = f"{inst.name}.{settings.dns_zone.rstrip('.')}"
    document = {
        "accountId": inst.account_id,
        "architecture": image.arch if image else "x86_64",
        "availabilityZone": zone,
        "imageId": inst.image_id,
        "instanceId": inst.id,
        "instanceType": meta["instance-type"],
        "pendingTime": inst.launch_time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "privateIp": inst.private_ip,
        "region": settings.region,
        "version": "2017-09-30",
    }
    identity = {"document": json.dumps(document, indent=2)}
    return {"meta-data": meta, "dynamic": {"instance-identity": identity}}


def document(asker: Asker, settings: Any) -> InstanceMetadata:
    inst = asker.inst
    return InstanceMetadata(
        instance_id=inst.id,
        address=inst.private_ip or "",
        tree=build_tree(asker, settings),
        user_data=base64.b64encode(inst.user_data or b"").decode(),
        endpoint=inst.metadata_endpoint,
        tokens=inst.metadata_tokens,
    )


async def _askers(s: AsyncSession, network: Network, rows: list[Instance]) -> list[Asker]:
    """What the documents of ``rows`` are made of, in a fixed number of queries."""
    iids = [i.id for i in rows]
    images = {
        im.id: im
        for im in await s.scalars(select(Image).where(Image.id.in_({i.image_id for i in rows})))
    }
    accounts = {i.account_id for i in rows}
    key_names: dict[tuple[str, str], str] = {}
    for account, name, pub in await s.execute(
        select(KeyPair.account_id, KeyPair.name, KeyPair.public_key).where(
            KeyPair.account_id.in_(accounts)
        )
    ):
        key_names.setdefault((account, pub), name)
    groups: dict[str, list[str]] = {}
    for iid, name in await s.execute(
        select(InstanceSecurityGroup.instance_id, SecurityGroup.name)
        .join(SecurityGroup, InstanceSecurityGroup.group_id == SecurityGroup.id)
        .where(InstanceSecurityGroup.instance_id.in_(iids))
        .order_by(SecurityGroup.name)
    ):
        groups.setdefault(iid, []).append(name)
    node = await s.get(Node, network.node_id) if network.node_id else None
    public: dict[str, str] = {}
    for eip_owner, ip in await s.execute(
        select(ElasticAddress.instance_id, ElasticAddress.public_ip).where(
            ElasticAddress.instance_id.in_(iids)
        )
    ):
        public[str(eip_owner)] = ip
    out = []
    for inst in rows:
        names = [key_names.get((inst.account_id, k), "") for k in inst.ssh_keys or []]
        names = [
            n or (inst.key_name if i == 0 and inst.key_name else f"key-{i}")
            for i, n in enumerate(names)
        ]
        out.append(
            Asker(
                inst,
                images.get(inst.image_id),
                network,
                names,
                groups.get(inst.id, []),
                public.get(inst.id),
                node.zone if node is not None else "",
            )
        )
    return out


async def asker(s: AsyncSession, network_id: str, address: str) -> Asker | None:
    """The live instance with private address ``address`` on the network, or None."""
    network = await s.get(Network, network_id)
    if network is None:
        return None
    inst = await s.scalar(
        select(Instance).where(
            Instance.network_id == network_id,
            Instance.private_ip == address,
            Instance.state != "terminated",
        )
    )
    if inst is None:
        return None
    (found,) = await _askers(s, network, [inst])
    return found


async def documents(s: AsyncSession, network: Network, settings: Any) -> list[InstanceMetadata]:
    """The document of every live instance with an address on ``network``."""
    from corral.controller.policy import addressed

    rows = await addressed(s, network)
    return [document(a, settings) for a in await _askers(s, network, rows)]
