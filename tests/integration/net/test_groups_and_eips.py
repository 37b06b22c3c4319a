"""Security groups and elastic IPs as the kernel enforces them, shown with real packets between
real guests and the namespace that stands for the outside world. Driven through the EC2 API."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.harness import WHOLE_CORE, Daemon
from tests.integration.net.conftest import Listener, Uplinked

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
    # makes the CLI's SSH key
    d.cli("run", "tiny", *WHOLE_CORE, "--name", "keyholder", "--no-wait").ok()
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
            InstanceType="cr1.small",  # a whole core: boots in half the time of the default
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
    """Whether guest ``frm`` fetched ``url``. The SSH session must work (its exit status is
    checked) and say which: a probe that did not run is an error, never "blocked"."""
    res = d.ssh(frm, f"if timeout 5 wget -q -O - {url}; then echo GOT; else echo NOPE; fi").ok()
    verdict = res.out.split()[-1:] if res.out.split() else []
    assert verdict in (["GOT"], ["NOPE"]), f"the probe from {frm} did not run: {res}"
    return verdict == ["GOT"]


def _blocked(d: Daemon, frm: str, server: str, url: str) -> bool:
    """``frm`` cannot fetch ``url`` (served by guest ``server``), and the probe is shown able
    to: the server answers that port on itself, and ``frm``'s wget fetches from its own
    server. Only then does a failed fetch mean the rules blocked it."""
    port = url.rsplit(":", 1)[1].strip("/")
    assert _get(d, server, f"http://127.0.0.1:{port}/"), f"{server} does not serve port {port}"
    assert _get(d, frm, f"http://127.0.0.1:{port}/"), f"wget on {frm} does not work"
    return not _get(d, frm, url)


def _ping(d: Daemon, frm: str, address: str) -> bool:
    """Whether one ping from guest ``frm`` to ``address`` is answered (SSH checked)."""
    res = d.ssh(frm, f"ping -c 1 -W 2 {address} >/dev/null && echo PONG || echo SILENT").ok()
    assert res.out.split()[-1:] in (["PONG"], ["SILENT"]), res
    return "PONG" in res.out


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
    assert _blocked(d, "client", "web", f"http://{web_ip}:8080/")
    perm = _perm("tcp", 8080, 8080, group=pair["default_sg"])
    ec2.authorize_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[perm])
    # in force when the API answers; the reply comes back through conntrack (stateful): the
    # client's default group admits no traffic from `web`
    assert _get(d, "client", f"http://{web_ip}:8080/")
    assert _blocked(d, "client", "web", f"http://{web_ip}:8081/")  # another port stays closed
    ec2.revoke_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[perm])
    assert _blocked(d, "client", "web", f"http://{web_ip}:8080/")
    # the other way round, the default group admits its own members only: web -> client drops
    client_ip = pair["info"]["client"]["private_ip"]
    assert _blocked(d, "web", "client", f"http://{client_ip}:8080/")


def test_port_ranges_and_cidrs(pair: dict, ec2: Any) -> None:
    d, web_ip = pair["d"], pair["info"]["web"]["private_ip"]
    client_ip = pair["info"]["client"]["private_ip"]
    perm = _perm("tcp", 9000, 9010, cidr=f"{client_ip}/32")
    ec2.authorize_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[perm])
    assert _get(d, "client", f"http://{web_ip}:9005/")
    assert _blocked(d, "client", "web", f"http://{web_ip}:9011/")
    ec2.revoke_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[perm])
    # a CIDR that does not hold the client admits nothing
    perm = _perm("tcp", 9000, 9010, cidr="10.1.0.0/16")
    ec2.authorize_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[perm])
    assert _blocked(d, "client", "web", f"http://{web_ip}:9005/")
    ec2.revoke_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[perm])


def test_icmp_and_all_protocols(pair: dict, ec2: Any) -> None:
    d, web_ip = pair["d"], pair["info"]["web"]["private_ip"]
    # the probe works: the client's ping answers itself, and web answers its own
    assert _ping(d, "client", pair["info"]["client"]["private_ip"])
    assert _ping(d, "web", web_ip)
    assert not _ping(d, "client", web_ip)
    perm = _perm("icmp", 8, -1, cidr="0.0.0.0/0")
    ec2.authorize_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[perm])
    assert _ping(d, "client", web_ip)
    assert _blocked(d, "client", "web", f"http://{web_ip}:8080/")  # icmp only
    ec2.revoke_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[perm])
    everything = _perm("-1", None, None, group=pair["default_sg"])
    ec2.authorize_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[everything])
    assert _ping(d, "client", web_ip) and _get(d, "client", f"http://{web_ip}:8081/")
    ec2.revoke_security_group_ingress(GroupId=pair["web_sg"], IpPermissions=[everything])


def _collector(up: Uplinked, proto: str, port: int) -> Listener:
    """A listener in the outside namespace on ``proto``/``port`` that keeps every message it
    gets until one says END (or 120 s pass)."""
    kind = "SOCK_DGRAM" if proto == "udp" else "SOCK_STREAM"
    code = (
        "import json, socket, time\n"
        f"s = socket.socket(socket.AF_INET, socket.{kind})\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('{OUTSIDE}', {port}))\n"
        + ("" if proto == "udp" else "s.listen(8)\n")
        + "s.settimeout(1); seen = []; end = time.monotonic() + 120\n"
        "print('READY', flush=True)\n"
        "while time.monotonic() < end and 'END' not in [m['data'] for m in seen]:\n"
        "    try:\n"
        + (
            "        d, a = s.recvfrom(4096)\n"
            if proto == "udp"
            else "        c, a = s.accept(); c.settimeout(10); d = c.recv(4096); c.close()\n"
        )
        + "    except socket.timeout:\n        continue\n"
        "    seen.append({'from': a[0], 'data': d.decode(errors='replace').strip()})\n"
        "print(json.dumps({'messages': seen}))\n"
    )
    return up.listener(code)


def _collected(up: Uplinked, listener: Listener, proto: str, port: int) -> list[str]:
    """End ``listener`` with an END of our own, sent from the outside namespace itself: the
    listener must hear it (so it was alive and listening all along). The other messages."""
    kind = "SOCK_DGRAM" if proto == "udp" else "SOCK_STREAM"
    send = f"import socket; s = socket.socket(socket.AF_INET, socket.{kind}); " + (
        f"s.sendto(b'END', ('{OUTSIDE}', {port}))"
        if proto == "udp"
        else f"s.connect(('{OUTSIDE}', {port})); s.sendall(b'END'); s.close()"
    )
    assert up.outside_exec("python3", "-c", send).returncode == 0
    got = [m["data"] for m in listener.result(150)["messages"]]
    assert "END" in got, f"the outside listener missed its own END: {got}"
    return [x for x in got if x != "END"]


def _syslog_udp(d: Daemon, name: str, port: int, text: str) -> None:
    """Send ``text`` over UDP from guest ``name`` (busybox nc has no UDP mode: syslogd forwards
    over UDP with -R, logger feeds it). Returns once syslogd has handled the line: it sends to
    the remote host before it writes its local log (-L -O), which is what is waited on."""
    d.ssh(
        name,
        "killall syslogd 2>/dev/null; rm -f /dev/log /tmp/udp.log; "
        f"syslogd -R {OUTSIDE}:{port} -L -O /tmp/udp.log; "
        "i=0; until [ -S /dev/log ]; do [ $i -ge 300 ] && exit 3; sleep 0.1; i=$((i+1)); done; "
        f"logger {text}; "
        f"i=0; until grep -q {text} /tmp/udp.log; do [ $i -ge 300 ] && exit 4; sleep 0.1; "
        "i=$((i+1)); done; killall syslogd",
    ).ok()


def _udp_arrives(up: Uplinked, d: Daemon, name: str, port: int, text: str) -> bool:
    listener = _collector(up, "udp", port)
    _syslog_udp(d, name, port, text)
    return any(text in m for m in _collected(up, listener, "udp", port))


def _tcp_arrives(up: Uplinked, d: Daemon, name: str, port: int, text: str) -> bool:
    listener = _collector(up, "tcp", port)
    d.ssh(name, f"echo {text} | timeout 5 nc {OUTSIDE} {port}; true").ok()
    return text in _collected(up, listener, "tcp", port)


def test_egress_rules_udp_and_tcp(pair: dict, uplinked: Uplinked, ec2: Any) -> None:
    d = pair["d"]
    # the probes work: with the default egress (everything) both reach the outside
    assert _udp_arrives(uplinked, d, "web", 7777, "udp-before")
    assert _tcp_arrives(uplinked, d, "web", 7778, "tcp-before")
    everything = _perm("-1", None, None, cidr="0.0.0.0/0")
    ec2.revoke_security_group_egress(GroupId=pair["web_sg"], IpPermissions=[everything])
    try:
        assert not _udp_arrives(uplinked, d, "web", 7777, "blocked-by-egress")
        ec2.authorize_security_group_egress(
            GroupId=pair["web_sg"], IpPermissions=[_perm("udp", 7777, 7777, cidr=f"{OUTSIDE}/32")]
        )
        assert _udp_arrives(uplinked, d, "web", 7777, "allowed-udp")
        # tcp to the outside stays closed: only udp/7777 is allowed out
        assert not _tcp_arrives(uplinked, d, "web", 7778, "tcp-blocked")
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


def _first_reply(ping: subprocess.Popen[str]) -> None:
    """Return once ``ping`` has printed its first reply (the address answers before it moves);
    ping ends by itself (-c), so this read ends too."""
    assert ping.stdout is not None
    for line in ping.stdout:
        if "bytes from" in line:
            return
    raise AssertionError("ping ended without a reply")


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
    _first_reply(ping)
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


def test_a_rule_allowed_with_the_native_cli_is_in_force_when_it_returns(pair: dict) -> None:
    """`corral sg allow/revoke` (the REST API) reach the same packet filter as EC2's calls."""
    d, web_ip = pair["d"], pair["info"]["web"]["private_ip"]

    def ingress() -> dict[str, int | None]:
        """The web group's ingress rules: id -> first port."""
        shown = json.loads(d.cli("sg", "show", "web", "--json").ok().out)
        return {r["id"]: r["from_port"] for r in shown["rules"] if r["direction"] == "ingress"}

    # the module's earlier tests leave rules of their own in the group: compare with them
    before = ingress()
    assert _blocked(d, "client", "web", f"http://{web_ip}:8081/")
    d.cli("sg", "allow", "web", "--port", "8081", "--group", "default").ok()
    assert _get(d, "client", f"http://{web_ip}:8081/")
    added = [port for rule, port in ingress().items() if rule not in before]
    assert added == [8081]
    d.cli("sg", "revoke", "web", "--port", "8081", "--group", "default").ok()
    assert _blocked(d, "client", "web", f"http://{web_ip}:8081/")
    assert ingress() == before
