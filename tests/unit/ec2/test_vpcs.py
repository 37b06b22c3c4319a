"""VPCs over EC2, as botocore sends and parses them: the default VPC an EC2 client expects
(describe it, pick its subnet, run), VPCs, subnets, internet gateways, the main route table,
network interfaces as views of instances, and bad input refused with AWS's codes, nothing
changed. The store logic runs on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from tests.unit.ec2.conftest import Ec2, World

pytestmark = pytest.mark.postgres


async def _default(ec2: Ec2) -> tuple[dict, dict]:  # type: ignore[type-arg]
    vpcs = (await ec2.call("DescribeVpcs", Filters=[{"Name": "is-default", "Values": ["true"]}]))[
        "Vpcs"
    ]
    assert len(vpcs) == 1
    subnets = (
        await ec2.call(
            "DescribeSubnets", Filters=[{"Name": "vpc-id", "Values": [vpcs[0]["VpcId"]]}]
        )
    )["Subnets"]
    assert len(subnets) == 1
    return vpcs[0], subnets[0]


async def test_an_ec2_client_finds_the_default_vpc_and_launches_into_its_subnet(
    world: World,
) -> None:
    ec2 = world.admin
    vpc, subnet = await _default(ec2)
    # the default VPC holds the node network (10.250.0.0/24 here; 172.31.0.0/16 by default)
    assert vpc["IsDefault"] and vpc["CidrBlock"] == "10.250.0.0/16" and vpc["State"] == "available"
    assert subnet["DefaultForAz"] and subnet["CidrBlock"] == "10.250.0.0/24"
    assert subnet["AvailabilityZone"] == "corral-1a" and subnet["VpcId"] == vpc["VpcId"]
    igws = (
        await ec2.call(
            "DescribeInternetGateways",
            Filters=[{"Name": "attachment.vpc-id", "Values": [vpc["VpcId"]]}],
        )
    )["InternetGateways"]
    assert len(igws) == 1 and igws[0]["Attachments"][0]["State"] == "available"
    tables = (
        await ec2.call(
            "DescribeRouteTables",
            Filters=[
                {"Name": "vpc-id", "Values": [vpc["VpcId"]]},
                {"Name": "association.main", "Values": ["true"]},
            ],
        )
    )["RouteTables"]
    routes = {r["DestinationCidrBlock"]: r["GatewayId"] for r in tables[0]["Routes"]}
    assert routes == {"10.250.0.0/16": "local", "0.0.0.0/0": igws[0]["InternetGatewayId"]}
    groups = (
        await ec2.call(
            "DescribeSecurityGroups",
            Filters=[
                {"Name": "vpc-id", "Values": [vpc["VpcId"]]},
                {"Name": "group-name", "Values": ["default"]},
            ],
        )
    )["SecurityGroups"]
    assert len(groups) == 1 and groups[0]["VpcId"] == vpc["VpcId"]
    ran = await ec2.call(
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        SubnetId=subnet["SubnetId"],
        SecurityGroupIds=[groups[0]["GroupId"]],
        PrivateIpAddress="10.250.0.77",
    )
    inst = ran["Instances"][0]
    assert inst["SubnetId"] == subnet["SubnetId"] and inst["VpcId"] == vpc["VpcId"]
    assert inst["PrivateIpAddress"] == "10.250.0.77"
    nic = inst["NetworkInterfaces"][0]
    assert nic["NetworkInterfaceId"] == "eni-" + inst["InstanceId"][2:]
    assert nic["MacAddress"] and nic["Attachment"]["DeviceIndex"] == 0
    # launching with nothing lands in the same default subnet
    plain = await ec2.call("RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1)
    assert plain["Instances"][0]["SubnetId"] == subnet["SubnetId"]
    described = await ec2.call(
        "DescribeInstances", Filters=[{"Name": "subnet-id", "Values": [subnet["SubnetId"]]}]
    )
    found = [i["InstanceId"] for r in described["Reservations"] for i in r["Instances"]]
    assert sorted(found) == sorted([inst["InstanceId"], plain["Instances"][0]["InstanceId"]])
    enis = (
        await ec2.call(
            "DescribeNetworkInterfaces",
            Filters=[{"Name": "attachment.instance-id", "Values": [inst["InstanceId"]]}],
        )
    )["NetworkInterfaces"]
    assert [e["PrivateIpAddress"] for e in enis] == ["10.250.0.77"]
    assert enis[0]["VpcId"] == vpc["VpcId"] and enis[0]["Status"] == "in-use"
    # the address is taken; one outside the subnet is invalid; nothing was launched by either
    await ec2.fails(
        "InvalidIPAddress.InUse",
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        PrivateIpAddress="10.250.0.77",
    )
    await ec2.fails(
        "InvalidParameterValue",
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        SubnetId=subnet["SubnetId"],
        PrivateIpAddress="10.251.0.5",
    )
    again = await ec2.call("DescribeInstances")
    assert sum(len(r["Instances"]) for r in again["Reservations"]) == 2
    # a subnet with instances cannot go
    await ec2.fails("DependencyViolation", "DeleteSubnet", SubnetId=subnet["SubnetId"])
    await ec2.fails("DependencyViolation", "DeleteVpc", VpcId=vpc["VpcId"])
    # the interface form of the same launch
    nic_run = await ec2.call(
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        NetworkInterfaces=[
            {
                "DeviceIndex": 0,
                "SubnetId": subnet["SubnetId"],
                "AssociatePublicIpAddress": False,
                "Groups": [groups[0]["GroupId"]],
            }
        ],
    )
    assert nic_run["Instances"][0]["SubnetId"] == subnet["SubnetId"]
    await ec2.fails(
        "UnsupportedOperation",
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        NetworkInterfaces=[{"DeviceIndex": 0, "AssociatePublicIpAddress": True}],
    )


async def test_vpcs_and_subnets_are_made_described_tagged_and_deleted(world: World) -> None:
    ec2 = world.admin
    made = await ec2.call(
        "CreateVpc",
        CidrBlock="10.0.0.0/16",
        TagSpecifications=[{"ResourceType": "vpc", "Tags": [{"Key": "env", "Value": "test"}]}],
    )
    vpc = made["Vpc"]
    assert vpc["VpcId"].startswith("vpc-") and not vpc["IsDefault"]
    only = await ec2.call("DescribeVpcs", Filters=[{"Name": "tag:env", "Values": ["test"]}])
    assert [v["VpcId"] for v in only["Vpcs"]] == [vpc["VpcId"]]
    by_cidr = await ec2.call("DescribeVpcs", Filters=[{"Name": "cidr", "Values": ["10.0.*"]}])
    assert [v["VpcId"] for v in by_cidr["Vpcs"]] == [vpc["VpcId"]]
    vid = vpc["VpcId"]
    sub = (
        await ec2.call(
            "CreateSubnet", VpcId=vid, CidrBlock="10.0.1.0/24", AvailabilityZone="corral-1a"
        )
    )["Subnet"]
    assert sub["VpcId"] == vid and sub["AvailableIpAddressCount"] == 251
    assert not sub["DefaultForAz"] and not sub["MapPublicIpOnLaunch"]
    # bad subnets: nothing made
    await ec2.fails("InvalidSubnet.Conflict", "CreateSubnet", VpcId=vid, CidrBlock="10.0.1.128/25")
    await ec2.fails("InvalidSubnet.Range", "CreateSubnet", VpcId=vid, CidrBlock="10.1.0.0/24")
    await ec2.fails("InvalidSubnet.Range", "CreateSubnet", VpcId=vid, CidrBlock="10.0.2.0/29")
    await ec2.fails("InvalidVpc.Range", "CreateVpc", CidrBlock="10.0.0.0/8")
    await ec2.fails(
        "InvalidVpcID.NotFound", "CreateSubnet", VpcId="vpc-12345678", CidrBlock="10.0.3.0/24"
    )
    await ec2.fails(
        "InvalidParameterValue",
        "CreateSubnet",
        VpcId=vid,
        CidrBlock="10.0.3.0/24",
        AvailabilityZone="elsewhere-1z",
    )
    subs = await ec2.call("DescribeSubnets", Filters=[{"Name": "vpc-id", "Values": [vid]}])
    assert [s["SubnetId"] for s in subs["Subnets"]] == [sub["SubnetId"]]
    by_zone = await ec2.call(
        "DescribeSubnets",
        Filters=[
            {"Name": "availability-zone", "Values": ["corral-1a"]},
            {"Name": "cidr-block", "Values": ["10.0.1.0/24"]},
        ],
    )
    assert [s["SubnetId"] for s in by_zone["Subnets"]] == [sub["SubnetId"]]
    # attributes
    attr = await ec2.call("DescribeVpcAttribute", VpcId=vid, Attribute="enableDnsHostnames")
    assert attr["EnableDnsHostnames"]["Value"] is False
    await ec2.call("ModifyVpcAttribute", VpcId=vid, EnableDnsHostnames={"Value": True})
    attr = await ec2.call("DescribeVpcAttribute", VpcId=vid, Attribute="enableDnsHostnames")
    assert attr["EnableDnsHostnames"]["Value"] is True
    support = await ec2.call("DescribeVpcAttribute", VpcId=vid, Attribute="enableDnsSupport")
    assert support["EnableDnsSupport"]["Value"] is True
    await ec2.call(
        "ModifySubnetAttribute", SubnetId=sub["SubnetId"], MapPublicIpOnLaunch={"Value": False}
    )
    await ec2.fails(
        "UnsupportedOperation",
        "ModifySubnetAttribute",
        SubnetId=sub["SubnetId"],
        MapPublicIpOnLaunch={"Value": True},
    )
    # a launch into it runs in the VPC's own network on the node: the address asked for, in
    # the subnet, the gateway its first address, the namespace the VPC's (issue 12)
    ran = await ec2.call(
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        SubnetId=sub["SubnetId"],
        PrivateIpAddress="10.0.1.20",
    )
    iid = ran["Instances"][0]["InstanceId"]
    assert ran["Instances"][0]["PrivateIpAddress"] == "10.0.1.20"
    # its security group is its VPC's own default group (each VPC has one)
    vpc_default = (
        await ec2.call(
            "DescribeSecurityGroups",
            Filters=[
                {"Name": "vpc-id", "Values": [vid]},
                {"Name": "group-name", "Values": ["default"]},
            ],
        )
    )["SecurityGroups"]
    assert [g["VpcId"] for g in vpc_default] == [vid]
    assert [g["GroupId"] for g in ran["Instances"][0]["SecurityGroups"]] == [
        vpc_default[0]["GroupId"]
    ]
    # a group of another VPC (the default VPC's) is refused for it, nothing launched
    [main_default] = (await ec2.call("DescribeSecurityGroups", GroupNames=["default"]))[
        "SecurityGroups"
    ]
    assert main_default["VpcId"] != vid
    err = await ec2.fails(
        "InvalidParameter",
        "RunInstances",
        ImageId=world.image_id,
        MinCount=1,
        MaxCount=1,
        SubnetId=sub["SubnetId"],
        SecurityGroupIds=[main_default["GroupId"]],
    )
    assert "give groups of the subnet's VPC" in err.message
    assert (
        ran["Instances"][0]["VpcId"] == vid and ran["Instances"][0]["SubnetId"] == sub["SubnetId"]
    )
    await world.settle()
    nets = {p.network.id: p.network for p in world.node.policies.values()}
    mine = [n for n in nets.values() if n.cidr == "10.0.1.0/24"]
    assert len(mine) == 1 and mine[0].vpc and mine[0].gateway == "10.0.1.1"
    assert mine[0].namespace.endswith(vid) and mine[0].bridge != "cbr0"
    pol = world.node.policies[mine[0].id]
    assert [p.address for p in pol.ports] == ["10.0.1.20"]
    # no uplink on this node (uplink none): none for its VPC namespaces either
    assert world.ctrl.settings.uplink == "none" and pol.uplink is None
    assert [h.address for h in world.node.hosts[mine[0].id]] == ["10.0.1.20"]
    # enableDnsHostnames decides whether its instances have names in the VPC's DNS
    assert world.node.hosts[mine[0].id][0].names  # turned on above
    await ec2.call("ModifyVpcAttribute", VpcId=vid, EnableDnsHostnames={"Value": False})
    await world.settle()
    [nameless] = world.node.hosts[mine[0].id]
    assert nameless.address == "10.0.1.20" and nameless.dhcp and nameless.names == []
    await ec2.call("ModifyVpcAttribute", VpcId=vid, EnableDnsHostnames={"Value": True})
    await world.settle()
    assert any(n.startswith(f"{iid}.") for n in world.node.hosts[mine[0].id][0].names)
    default_vpc = (await _default(ec2))[0]["VpcId"]
    await ec2.fails(
        "UnsupportedOperation",
        "ModifyVpcAttribute",
        VpcId=default_vpc,
        EnableDnsHostnames={"Value": False},
    )
    assert world.node.metadata[mine[0].id][0].address == "10.0.1.20"  # served by its agent
    # an elastic IP maps to it in its VPC's namespace (the node's routes it there); the
    # subnet and VPC are in use
    alloc = (await ec2.call("AllocateAddress", Domain="vpc"))["AllocationId"]
    assoc = await ec2.call("AssociateAddress", AllocationId=alloc, InstanceId=iid)
    [addr] = (await ec2.call("DescribeAddresses", AllocationIds=[alloc]))["Addresses"]
    assert (addr["InstanceId"], addr["PrivateIpAddress"]) == (iid, "10.0.1.20")
    await world.settle()
    assert [p.public_ip for p in world.node.policies[mine[0].id].ports] == [addr["PublicIp"]]
    await ec2.call("DisassociateAddress", AssociationId=assoc["AssociationId"])
    await ec2.call("ReleaseAddress", AllocationId=alloc)
    await ec2.fails("DependencyViolation", "DeleteSubnet", SubnetId=sub["SubnetId"])
    # its last instance gone, the network leaves the node (the namespace with it)
    await ec2.call("TerminateInstances", InstanceIds=[iid])
    await world.settle()
    assert ("network_remove", mine[0].id) in world.node.calls
    assert mine[0].id not in world.node.policies
    # a group of its own VPC; the same name may be in another VPC
    own = await ec2.call("CreateSecurityGroup", GroupName="web", Description="d", VpcId=vid)
    await ec2.call("CreateSecurityGroup", GroupName="web", Description="d")
    await ec2.fails(
        "InvalidGroup.Duplicate", "CreateSecurityGroup", GroupName="web", Description="d", VpcId=vid
    )
    shown = await ec2.call("DescribeSecurityGroups", GroupIds=[own["GroupId"]])
    assert shown["SecurityGroups"][0]["VpcId"] == vid
    # internet gateway life cycle
    igw = (await ec2.call("CreateInternetGateway"))["InternetGateway"]["InternetGatewayId"]
    await ec2.call("AttachInternetGateway", InternetGatewayId=igw, VpcId=vid)
    await ec2.fails(
        "Resource.AlreadyAssociated", "AttachInternetGateway", InternetGatewayId=igw, VpcId=vid
    )
    await ec2.fails("DependencyViolation", "DeleteInternetGateway", InternetGatewayId=igw)
    await ec2.fails("DependencyViolation", "DeleteVpc", VpcId=vid)
    await ec2.call("DetachInternetGateway", InternetGatewayId=igw, VpcId=vid)
    await ec2.fails(
        "Gateway.NotAttached", "DetachInternetGateway", InternetGatewayId=igw, VpcId=vid
    )
    await ec2.call("DeleteInternetGateway", InternetGatewayId=igw)
    await ec2.fails("DependencyViolation", "DeleteVpc", VpcId=vid)  # the subnet
    await ec2.call("DeleteSubnet", SubnetId=sub["SubnetId"])
    err = await ec2.fails("DependencyViolation", "DeleteVpc", VpcId=vid)  # its own group
    assert own["GroupId"] in err.message
    await ec2.call("DeleteSecurityGroup", GroupId=own["GroupId"])
    await ec2.call("DeleteVpc", VpcId=vid)  # its default group with it
    left = (await ec2.call("DescribeSecurityGroups"))["SecurityGroups"]
    assert vid not in {g["VpcId"] for g in left}
    await ec2.fails("InvalidVpcID.NotFound", "DescribeVpcs", VpcIds=[vid])
    # another account sees only its own default VPC, with the same CIDR
    other = await world.account("other")
    theirs = (await other.call("DescribeVpcs"))["Vpcs"]
    assert len(theirs) == 1 and theirs[0]["IsDefault"] and theirs[0]["CidrBlock"] == "10.250.0.0/16"
    await other.fails("InvalidSubnetID.NotFound", "DescribeSubnets", SubnetIds=[sub["SubnetId"]])


async def _default_vpc_attribute(ec2: Ec2) -> str:
    attrs = await ec2.call("DescribeAccountAttributes", AttributeNames=["default-vpc"])
    return str(attrs["AccountAttributes"][0]["AttributeValues"][0]["AttributeValue"])


async def test_the_default_vpc_is_deleted_and_made_again(world: World) -> None:
    ec2 = world.admin
    vpc, subnet = await _default(ec2)
    assert await _default_vpc_attribute(ec2) == vpc["VpcId"]
    await ec2.fails("DefaultVpcAlreadyExists", "CreateDefaultVpc")
    igw = (await ec2.call("DescribeInternetGateways"))["InternetGateways"][0]["InternetGatewayId"]
    await ec2.call("DetachInternetGateway", InternetGatewayId=igw, VpcId=vpc["VpcId"])
    await ec2.call("DeleteInternetGateway", InternetGatewayId=igw)
    await ec2.call("DeleteSubnet", SubnetId=subnet["SubnetId"])
    await ec2.call("DeleteVpc", VpcId=vpc["VpcId"])
    # gone, and not made again behind the caller's back
    assert (await ec2.call("DescribeVpcs"))["Vpcs"] == []
    assert await _default_vpc_attribute(ec2) == "none"
    await ec2.fails(
        "VPCIdNotSpecified", "RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1
    )
    made = (await ec2.call("CreateDefaultVpc"))["Vpc"]
    assert made["IsDefault"] and made["VpcId"] != vpc["VpcId"]
    new_vpc, new_subnet = await _default(ec2)
    assert new_vpc["VpcId"] == made["VpcId"] and new_subnet["CidrBlock"] == "10.250.0.0/24"
    assert await _default_vpc_attribute(ec2) == made["VpcId"]
    ran = await ec2.call("RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1)
    assert ran["Instances"][0]["VpcId"] == made["VpcId"]


async def test_concurrent_first_calls_make_one_default_vpc(world: World) -> None:
    import asyncio

    fresh = await world.account("fresh")
    answers = await asyncio.gather(*(fresh.call("DescribeVpcs") for _ in range(6)))
    made = {v["VpcId"] for a in answers for v in a["Vpcs"]}
    assert len(made) == 1
    assert len((await fresh.call("DescribeSubnets"))["Subnets"]) == 1


async def test_the_default_subnet_follows_a_moved_node_network(world: World) -> None:
    import dataclasses

    ec2 = world.admin
    vpc, subnet = await _default(ec2)
    ran = await ec2.call("RunInstances", ImageId=world.image_id, MinCount=1, MaxCount=1)
    iid = ran["Instances"][0]["InstanceId"]
    # the operator moves the node network (corral up --subnet) ...
    world.ctrl.settings = dataclasses.replace(world.ctrl.settings, subnet="10.251.0.0/24")
    # ... while an instance still uses the old one: the subnet keeps its CIDR
    assert (await _default(ec2))[1]["CidrBlock"] == "10.250.0.0/24"
    await ec2.call("TerminateInstances", InstanceIds=[iid])
    await world.settle()
    moved_vpc, moved = await _default(ec2)
    assert moved["SubnetId"] == subnet["SubnetId"] and moved["CidrBlock"] == "10.251.0.0/24"
    assert moved_vpc["VpcId"] == vpc["VpcId"] and moved_vpc["CidrBlock"] == "10.251.0.0/16"
