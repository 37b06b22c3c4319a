"""Wire models of the native API for what EC2 had first: security groups and their rules,
elastic addresses, tags, instance types and zones. Shared by the server, the client library and
the CLI, like ``corral.models``."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from corral.models import Text


class SecurityGroupRule(BaseModel):
    id: str
    direction: Literal["ingress", "egress"]
    protocol: str = Field(description="tcp, udp, icmp, -1 (all) or a protocol number")
    from_port: int | None = Field(None, description="first port (ICMP: the type; -1 all)")
    to_port: int | None = Field(None, description="last port (ICMP: the code; -1 all)")
    cidr: str | None = Field(None, description="the peer addresses, or")
    source_group: str | None = Field(None, description="the peer group's id")
    description: str = ""


class SecurityGroup(BaseModel):
    id: str
    name: str
    description: str
    created_at: dt.datetime
    rules: list[SecurityGroupRule] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    vpc: str | None = Field(None, description="its VPC; none: the default VPC")


class SecurityGroupCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text = Field(min_length=1, max_length=255, description="not 'default', not sg-…")
    description: Text | None = Field(
        None, min_length=1, max_length=255, description="defaults to the name"
    )
    tags: dict[Text, Text] = Field(default_factory=dict)
    vpc: str | None = Field(
        None,
        description="the VPC it is for (vpc-…); none: the default VPC. Each VPC's "
        "instances take groups of their own VPC",
    )


class RuleSpec(BaseModel):
    """One permission to allow or revoke: a protocol, ports, and one peer (a CIDR or a group,
    by id or name)."""

    model_config = ConfigDict(extra="forbid")
    direction: Literal["ingress", "egress"] = "ingress"
    protocol: str = Field("tcp", description="tcp, udp, icmp, all (-1) or a protocol number")
    from_port: int | None = Field(None, description="tcp/udp: needed; icmp: the type")
    to_port: int | None = Field(None, description="defaults to from_port")
    cidr: str | None = Field(None, description="e.g. 203.0.113.0/24 or 0.0.0.0/0")
    source_group: str | None = Field(None, description="a group of yours, by id or name")
    description: Text = Field("", max_length=255)


class Address(BaseModel):
    id: str = Field(description="the allocation id (eipalloc-…)")
    public_ip: str
    instance_id: str | None = None
    instance_name: str | None = None
    association_id: str | None = None
    private_ip: str | None = None
    created_at: dt.datetime
    tags: dict[str, str] = Field(default_factory=dict)


class AddressAllocate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tags: dict[Text, Text] = Field(default_factory=dict)


class AddressAssociate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instance: str = Field(min_length=1, description="an instance of yours, by id or name")
    allow_reassociation: bool = Field(
        False, description="move the address even when it is associated with another instance"
    )


class Tag(BaseModel):
    resource_id: str
    resource_type: str
    key: str
    value: str


class TagsSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    resources: list[str] = Field(min_length=1, description="ids: i-, ami-, vol-, snap-, sg- …")
    tags: dict[Text, Text] = Field(min_length=1)


class TagsRemove(BaseModel):
    model_config = ConfigDict(extra="forbid")
    resources: list[str] = Field(min_length=1)
    keys: list[str] | None = Field(None, description="these keys; absent: every tag")


class InstanceType(BaseModel):
    name: str
    vcpus: int
    cores: float = Field(description="host cores the vCPUs may use together")
    memory: int = Field(description="bytes")
    burstable: bool
    description: str


class Zone(BaseModel):
    name: str
    region: str
    state: Literal["available", "unavailable"]
    nodes: int = Field(description="nodes up in this zone")
