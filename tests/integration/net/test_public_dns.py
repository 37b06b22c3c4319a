"""RFC 2136 updates with TSIG against a real BIND 9 running in the namespace that stands for the
outside world; updates leave from Corral's namespace through its uplink."""

from __future__ import annotations

import base64
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from corral import config
from corral.errors import CorralError
from corral.node.net.publicdns import PublicDns
from tests.harness import dns_query
from tests.integration.net.conftest import Uplinked

SERVER = "198.51.100.254"
ZONE = "public.test."


@pytest.fixture(scope="module")
def bind(uplinked: Uplinked) -> Iterator[str]:
    """BIND 9 on 198.51.100.254:53 in the outside namespace; yields the TSIG secret."""
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    d = Path(tempfile.mkdtemp(prefix="corral-bind-", dir="/var/tmp"))
    (d / "db.public").write_text(
        "$TTL 60\n@ IN SOA ns.public.test. admin.public.test. 1 60 60 600 60\n"
        "@ IN NS ns.public.test.\nns IN A 198.51.100.254\n"
    )
    (d / "named.conf").write_text(f"""
key "corral" {{ algorithm hmac-sha256; secret "{secret}"; }};
options {{
    directory "{d}"; pid-file "{d}/named.pid";
    listen-on port 53 {{ {SERVER}; }}; listen-on-v6 {{ none; }};
    recursion no; dnssec-validation no;
}};
zone "public.test" {{ type primary; file "{d}/db.public"; allow-update {{ key corral; }}; }};
""")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", uplinked.outside, "named", "-g", "-c", str(d / "named.conf")],
        stdout=open(d / "named.log", "wb"),  # a file: a full pipe would stall BIND
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while _query(uplinked, "ns") != [SERVER]:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait(10)
                out = (d / "named.log").read_text(errors="replace")
                raise RuntimeError(f"BIND did not answer for ns.{ZONE} in 60 s:\n{out[-2000:]}")
            time.sleep(0.2)
        yield secret
    finally:
        proc.terminate()
        proc.wait(10)
        subprocess.run(["rm", "-rf", str(d)])


def _query(up: Uplinked, name: str) -> list[str] | None:
    """A lookup from the outside world; None when the server does not answer."""
    try:
        resp = dns_query(up.outside, SERVER, f"{name}.{ZONE}", 1)
    except (OSError, dns.exception.Timeout):
        return None
    if resp.rcode() != dns.rcode.NOERROR:
        return []
    return [r.address for rrset in resp.answer for r in rrset]


def _publisher(up: Uplinked, secret: str) -> PublicDns:
    st = config.load(
        up.corral.state_dir,
        uplink=f"netns:{up.outside}",
        subnet=up.corral.subnet,
        dns_server=f"{SERVER}:53",
        dns_zone=ZONE,
        dns_tsig_name="corral",
        dns_tsig_secret=secret,
    )
    return PublicDns(st)


async def test_records_are_set_replaced_and_removed(uplinked: Uplinked, bind: str) -> None:
    pub = _publisher(uplinked, bind)
    await pub.set("web1", "198.51.100.20")
    assert _query(uplinked, "web1") == ["198.51.100.20"]
    await pub.set("web1", "198.51.100.21")  # replaced, never both
    assert _query(uplinked, "web1") == ["198.51.100.21"]
    await pub.remove("web1")
    assert _query(uplinked, "web1") == []


async def test_a_wrong_key_is_refused(uplinked: Uplinked, bind: str) -> None:
    wrong = base64.b64encode(secrets.token_bytes(32)).decode()
    with pytest.raises(CorralError, match=r"refused|NOTAUTH|BADSIG|failed"):
        await _publisher(uplinked, wrong).set("evil", "198.51.100.66")
    assert _query(uplinked, "evil") == []
