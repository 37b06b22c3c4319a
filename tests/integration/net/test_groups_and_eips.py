"""Security groups and elastic IPs as the kernel enforces them, shown with real packets between
real guests and the namespace that stands for the outside world. Driven through the EC2 API."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.harness import Daemon
from tests.integration.net.conftest import Uplinked

OUTSIDE = "198.51.100.254"


@pytest.fixture(scope="module")
def ec2(uplinked: Uplinked) -> Any:
    data = json.loads((uplinked.corral.state_dir / "admin.credentials").read_text())
    return boto3.client(
        "ec2",
        endpoint_url=uplinked.corral.url,
        region_name="corral-1",
        aws_access_key_id=data["access_key_id"],
        aws_secret_access_key=data["secret_access_key"],
        config=Config(retries={"max_attempts": 1}),
    )


@pytest.fixture(scope="module")
def pair(uplinked: Uplinked, ec2: Any) -> Iterator[dict[str, Any]]:
    """Instance `web` in group `web` (no ingress at first), instance `client` in `default`;
    both serve HTTP on 8080, 8081 and 9005 (busybox httpd)."""
    d = uplinked.corral
    d.cli("run", "tiny", "--name", "keyholder", "--no-wait").ok()  # makes the CLI's SSH key
    d.cli("rm", "--force", "keyholder").ok()
    pub = (d.home / "corral" / "id_ed25519.pub").read_text()
    ec2.import_key_pair(KeyName="cli", PublicKeyMaterial=pub.encode())
    web_sg = ec2.create_security_group(GroupName="web", Description="web servers")["GroupId"]
    image = ec2.describe_images(Filters=[{"Name": "name", "Values": ["tiny*"]}])["Images"][0]
    ids = {}
    for name, groups in (("web", [web_sg]), ("client", None)):
        kw: dict[str, Any] = {"SecurityGroupIds": groups} if groups else {}
        r = ec2.run_instances(
            ImageId=image["ImageId"],
            MinCount=1,
            MaxCount=1,
            KeyName="cli",
            InstanceType="cr1.micro",
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}]}
            ],
            **kw,
        )
        ids[name] = r["Instances"][0]["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=list(ids.values()))
    info = {n: json.loads(d.cli("show", n, "--json").ok().out) for n in ids}
    for n in ids:
        d.ssh(
            n,
            "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && "
            "for p in 8080 8081 9005 9011; do httpd -p $p -h /www; done",
        ).ok()
    yield {
        "d": d,
        "web_sg": web_sg,
        "ids": ids,
        "info": info,
        "default_sg": ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0][
            "GroupId"
        ],
    }
    ec2.terminate_instances(InstanceIds=list(ids.values()))


def _get(d: Daemon, frm: str, url: str) -> bool:
    out = d.ssh(frm, f"timeout 3 wget -q -O - {url} && echo GOT || echo NOPE").out
    return "GOT" in out


def _perm(
    proto: str, lo: int | None, hi: int | None, cidr: str | None = None, group: str | None = None
) -> dict[str, Any]:
    p: dict[str, Any] = {"IpProtocol": proto}
    if lo is not None:
        p["FromPort"], p["ToPort"] = lo, hi
    if cidr:
        p["IpRanges"] = [{"CidrIp": cidr}]
    if group:
        p["UserIdGroupPairs"] = [{"GroupId": group}]
    return p


def test_ingress_is_denied_until_a_group_reference_allows_it(pair: dict, ec2: Any) -> None:
    d, web_ip = pair["d"], pair["info"]["web"]["private_ip"]
    assert not _get(d, "client", f"http://{web_ip}:8080/")
    perm = _perm("tcp", 8080, 8080, group=pair["default_sg"])
    ec2.authorize_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[perm])
    # in force when the API answers; the reply comes back through conntrack (stateful): the
    # client's default group admits no traffic from `web`
    assert _get(d, "client", f"http://{web_ip}:8080/")
    assert not _get(d, "client", f"http://{web_ip}:8081/")  # another port stays closed
    ec2.revoke_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[perm])
    assert not _get(d, "client", f"http://{web_ip}:8080/")
    # the other way round, the default group admits its own members only: web -> client drops
    client_ip = pair["info"]["client"]["private_ip"]
    assert not _get(d, "web", f"http://{client_ip}:8080/")


def test_port_ranges_and_cidrs(pair: dict, ec2: Any) -> None:
    d, web_ip = pair["d"], pair["info"]["web"]["private_ip"]
    client_ip = pair["info"]["client"]["private_ip"]
    perm = _perm("tcp", 9000, 9010, cidr=f"{client_ip}/32")
    ec2.authorize_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[perm])
    assert _get(d, "client", f"http://{web_ip}:9005/")
    assert not _get(d, "client", f"http://{web_ip}:9011/")
    ec2.revoke_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[perm])
    # a CIDR that does not hold the client admits nothing
    perm = _perm("tcp", 9000, 9010, cidr="10.1.0.0/16")
    ec2.authorize_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[perm])
    assert not _get(d, "client", f"http://{web_ip}:9005/")
    ec2.revoke_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[perm])


def test_icmp_and_all_protocols(pair: dict, ec2: Any) -> None:
    d, web_ip = pair["d"], pair["info"]["web"]["private_ip"]
    ping = f"ping -c 1 -W 1 {web_ip} >/dev/null && echo PONG || echo SILENT"
    assert "SILENT" in d.ssh("client", ping).out
    perm = _perm("icmp", 8, -1, cidr="0.0.0.0/0")
    ec2.authorize_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[perm])
    assert "PONG" in d.ssh("client", ping).out
    assert not _get(d, "client", f"http://{web_ip}:8080/")  # icmp only
    ec2.revoke_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[perm])
    everything = _perm("-1", None, None, group=pair["default_sg"])
    ec2.authorize_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[everything])
    assert "PONG" in d.ssh("client", ping).out and _get(d, "client", f"http://{web_ip}:8081/")
    ec2.revoke_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[everything])


def _udp_listener(up: Uplinked, port: int) -> dict[str, Any]:
    code = (
        "import socket,json\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(('{OUTSIDE}', {port})); s.settimeout(8)\n"
        "try:\n    d,a=s.recvfrom(4096)\n"
        "    print(json.dumps({'from': a[0], 'data': d.decode()}))\n"
        "except socket.timeout:\n    print('{}')\n"
    )
    result: dict[str, Any] = {}

    def run() -> None:
        p = up.outside_exec("python3", "-c", code, timeout=30)
        result.update(json.loads(p.stdout or "{}"))

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.5)
    result["_thread"] = t
    return result


def _syslog_udp(d: Daemon, name: str, port: int, text: str) -> None:
    # busybox nc has no UDP mode; syslogd forwards over UDP (-R) and logger feeds it
    d.ssh(
        name,
        f"killall syslogd 2>/dev/null; syslogd -R {OUTSIDE}:{port} -L && sleep 0.3 && "
        f"logger {text}; sleep 0.5; killall syslogd",
    ).ok()


def test_egress_rules_udp_and_tcp(pair: dict, uplinked: Uplinked, ec2: Any) -> None:
    d = pair["d"]
    everything = _perm("-1", None, None, cidr="0.0.0.0/0")
    ec2.revoke_security_group_egress(GroupId=pair["web_sg"], IpPermissions=[everything])
    try:
        seen = _udp_listener(uplinked, 7777)
        _syslog_udp(d, "web", 7777, "blocked-by-egress")
        seen["_thread"].join(30)
        assert "data" not in seen
        ec2.authorize_security_group_egress(
            GroupId=pair["web_sg"], IpPermissions=[_perm("udp", 7777, 7777, cidr=f"{OUTSIDE}/32")]
        )
        seen = _udp_listener(uplinked, 7777)
        _syslog_udp(d, "web", 7777, "allowed-udp")
        seen["_thread"].join(30)
        assert "allowed-udp" in seen.get("data", "")
        # tcp to the outside stays closed: only udp/7777 is allowed out
        out = d.ssh("web", f"timeout 3 wget -q -O - http://{OUTSIDE}:1/ ; echo rc=$?").out
        assert "rc=0" not in out
    finally:
        ec2.revoke_security_group_egress(
            GroupId=pair["web_sg"], IpPermissions=[_perm("udp", 7777, 7777, cidr=f"{OUTSIDE}/32")]
        )
        ec2.authorize_security_group_egress(GroupId=pair["web_sg"], IpPermissions=[everything])


def _outside_get(up: Uplinked, url: str) -> str:
    code = (
        "import urllib.request,sys\ntry:\n"
        f"    print(urllib.request.urlopen('{url}', timeout=3).read().decode())\n"
        "except Exception as e:\n    print('ERR', e)\n"
    )
    return up.outside_exec("python3", "-c", code).stdout


def test_elastic_ip_answers_from_outside_and_moves_without_loss(
    pair: dict, uplinked: Uplinked, ec2: Any
) -> None:
    d, ids = pair["d"], pair["ids"]
    for sg in (pair["web_sg"], pair["default_sg"]):
        ec2.authorize_security_group_ingress(
            GroupId=sg,
            IpPermissions=[
                _perm("tcp", 8080, 8080, cidr="0.0.0.0/0"),
                _perm("icmp", -1, -1, cidr="0.0.0.0/0"),
            ],
        )
    alloc = ec2.allocate_address(Domain="vpc")
    eip = alloc["PublicIp"]
    assert _outside_get(uplinked, f"http://{eip}:8080/").startswith("ERR")
    ec2.associate_address(AllocationId=alloc["AllocationId"], InstanceId=ids["web"])
    assert "hello-from-web" in _outside_get(uplinked, f"http://{eip}:8080/")
    desc = ec2.describe_instances(InstanceIds=[ids["web"]])["Reservations"][0]["Instances"][0]
    assert desc["PublicIpAddress"] == eip
    assert (
        eip in d.ssh("web", "wget -q -O - http://169.254.169.254/latest/meta-data/public-ipv4").out
    )
    # hairpin: the other instance reaches web by its public address
    assert _get(d, "client", f"http://{eip}:8080/")
    # move it to `client` while the outside pings it every 10 ms
    ping = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            uplinked.outside,
            "ping",
            "-n",
            "-i",
            "0.01",
            "-c",
            "400",
            "-W",
            "1",
            eip,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)
    ec2.associate_address(
        AllocationId=alloc["AllocationId"], InstanceId=ids["client"], AllowReassociation=True
    )
    out, _ = ping.communicate(timeout=60)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    lost = int(m.group(1)) - int(m.group(2))
    assert lost <= 2, f"{lost} pings lost while the address moved"
    assert "hello-from-client" in _outside_get(uplinked, f"http://{eip}:8080/")
    # never routed to both: web no longer answers for it
    ec2.disassociate_address(
        AssociationId=ec2.describe_addresses(AllocationIds=[alloc["AllocationId"]])["Addresses"][0][
            "AssociationId"
        ]
    )
    assert _outside_get(uplinked, f"http://{eip}:8080/").startswith("ERR")
    with pytest.raises(ClientError) as err:
        ec2.associate_address(AllocationId="eipalloc-00000000000000000", InstanceId=ids["web"])
    assert err.value.response["Error"]["Code"] == "InvalidAllocationID.NotFound"
    ec2.release_address(AllocationId=alloc["AllocationId"])


def test_bad_rules_are_refused_and_change_nothing(pair: dict, ec2: Any) -> None:
    d = pair["d"]
    before = d.nsexec("nft", "list", "table", "inet", "corral").stdout
    for perm, code in (
        (_perm("tcp", 80, 80, cidr="10.0.0.0/33"), "InvalidParameterValue"),
        (_perm("tcp", 90, 80, cidr="10.0.0.0/8"), "InvalidParameterValue"),
        (_perm("tcp", 80, 70000, cidr="10.0.0.0/8"), "InvalidParameterValue"),
        (_perm("bogus", 80, 80, cidr="10.0.0.0/8"), "InvalidParameterValue"),
        (_perm("tcp", 80, 80, group="sg-00000000000000000"), "InvalidGroup.NotFound"),
    ):
        with pytest.raises(ClientError) as err:
            ec2.authorize_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[perm])
        assert err.value.response["Error"]["Code"] == code, perm
    assert d.nsexec("nft", "list", "table", "inet", "corral").stdout == before


def test_rules_are_rebuilt_after_a_daemon_crash_never_lost_or_doubled(pair: dict, ec2: Any) -> None:
    d, web_ip = pair["d"], pair["info"]["web"]["private_ip"]
    perm = _perm("tcp", 8081, 8081, group=pair["default_sg"])
    ec2.authorize_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[perm])
    rules = d.nsexec("nft", "list", "ruleset").stdout
    d.kill9()
    d.start()
    assert (
        d.nsexec("nft", "list", "ruleset").stdout.count("tcp dport 8081")
        == rules.count("tcp dport 8081")
        == 1
    )
    assert _get(d, "client", f"http://{web_ip}:8081/")
    ec2.revoke_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[perm])
