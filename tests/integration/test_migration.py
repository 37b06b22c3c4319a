"""Live migration without shared storage between two real agents: each a `corral agent` process
with its own state directory, in its own host namespace of the test LAN (tests/cluster.py), the
controller's side reaching them over their unix sockets. The disks (NBD) and the memory stream
cross the underlay between 192.0.2.11 and 192.0.2.12.

A guest writes numbered, checksummed, synced records to its disk while it moves; afterwards
every record is intact on the destination's disk (read back with the page cache dropped), the
guest runs there with the same MAC, and its QEMU and files are gone from the source."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from corral import config
from corral.controller import migration
from corral.images.store import ImageStore
from corral.node.client import NodeClient
from corral.node.remote import RemoteNode
from corral.node.spec import InstanceSpec, NetworkSpec
from tests.cluster import Host, lan
from tests.harness import Daemon, wait_for

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Agent:
    host: Host
    state: Path
    sock: str
    proc: subprocess.Popen[bytes]
    settings: config.Settings

    def node(self) -> RemoteNode:
        return RemoteNode(f"unix:{self.sock}")

    def client(self) -> NodeClient:
        return cast(NodeClient, self.node())

    def instance_dir(self, iid: str) -> Path:
        return self.settings.instances_dir / iid


def _start_agent(host: Host, images: Path, tag: str) -> Agent:
    base = Path(tempfile.mkdtemp(prefix=f"corral-mig-{host.name}-", dir="/var/tmp"))
    state = base / "state"
    state.mkdir()
    # the image is already here (hard links to the session daemon's store)
    subprocess.run(["cp", "-al", str(images), str(state / "images")], check=True)
    sock = f"/run/corral-mig-{tag}-{host.name}.sock"
    env = dict(os.environ, CORRAL_STATE_DIR=str(state), PYTHONUNBUFFERED="1")
    log = open(state / "agent.log", "ab")
    proc = subprocess.Popen(
        [
            *("ip", "netns", "exec", host.netns, sys.executable, "-m", "corral", "agent"),
            *("--listen", f"unix:{sock}", "--accel", "tcg"),
        ],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    return Agent(host, state, sock, proc, config.load(state))


def _stop_agent(a: Agent) -> None:
    a.proc.terminate()
    try:
        a.proc.wait(30)
    except subprocess.TimeoutExpired:
        a.proc.kill()
        a.proc.wait(10)


async def _call(a: Agent, name: str, **kw: object) -> object:
    node = a.node()
    try:
        return await getattr(node, name)(**kw)
    finally:
        await node.aclose()


def call(a: Agent, name: str, **kw: object) -> object:
    return asyncio.run(_call(a, name, **kw))


@pytest.fixture(scope="module")
def pair(corral: Daemon) -> Iterator[tuple[Agent, Agent]]:
    tag = secrets.token_hex(3)
    with lan(2) as net:
        agents = [_start_agent(h, corral.state_dir / "images", tag) for h in net.hosts]
        try:
            for a in agents:
                wait_for(lambda a=a: os.path.exists(a.sock), 60, what=f"{a.host.name}'s agent")
            yield agents[0], agents[1]
        finally:
            for a in agents:
                for d in sorted(a.settings.instances_dir.glob("*")):
                    asyncio.run(_call(a, "instance_destroy", iid=d.name, tap=None))
                asyncio.run(_call(a, "teardown"))
                _stop_agent(a)
                shutil.rmtree(a.state.parent, ignore_errors=True)


def _network(a: Agent) -> NetworkSpec:
    return NetworkSpec(
        id="net-mig",
        namespace=a.settings.namespace,
        bridge="brmig",
        cidr="10.251.0.0/24",
        gateway="10.251.0.1",
        domain="mig.internal",
    )


def _spec(a: Agent, iid: str, digest: str, disk: int) -> InstanceSpec:
    return InstanceSpec(
        id=iid,
        name="mover",
        image=digest,
        memory=128 << 20,
        disk_size=disk,
        mac="52:54:00:5e:12:34",
        address="10.251.0.10",
        network=_network(a),
        tap="tmig0",
    )


class Console:
    """The guest's serial line: type into its socket, read its log file."""

    def __init__(self, a: Agent, iid: str) -> None:
        self.sock = Path("/run/corral") / a.settings.namespace / iid / "console.sock"
        self.log = a.instance_dir(iid) / "console.log"

    def type(self, *lines: str) -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.sock))
            for line in lines:
                s.sendall(line.encode() + b"\n")
                time.sleep(0.5)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


WRITER = (
    'i=0; while :; do i=$((i+1)); r="rec $i"; '
    'echo "$r $(echo "$r" | md5sum | cut -c1-8)" >> /w.log; sync; echo "W$i"; '
    "sleep 0.3; done &"
)
VERIFY = (
    "kill %1; sleep 1; sync; echo 3 > /proc/sys/vm/drop_caches; n=0; bad=0; "
    'while read a b c; do n=$((n+1)); [ "$b" = "$n" ] || bad=1; '
    '[ "$(echo "rec $b" | md5sum | cut -c1-8)" = "$c" ] || bad=1; done < /w.log; '
    'echo "VERIFY n=$n bad=$bad mac=$(cat /sys/class/net/eth0/address)"'
)


def test_a_writing_guest_moves_between_nodes_with_every_write(pair: tuple[Agent, Agent]) -> None:
    src, dst = pair
    store = ImageStore(src.settings.images_dir)
    tiny = next(m for m in store.list() if m.name == "tiny")
    digest = tiny.digest
    disk = int(tiny.root_disk.virtual_size or (512 << 20))
    iid = f"i-mig{secrets.token_hex(4)}"
    s_spec, d_spec = _spec(src, iid, digest, disk), _spec(dst, iid, digest, disk)
    for a in (src, dst):
        call(a, "network_ensure", spec=_network(a), hosts=[])
    call(src, "instance_start", spec=s_spec)
    con = Console(src, iid)
    wait_for(lambda: "login:" in con.text(), 300, what="the guest's login prompt")
    con.type("root", WRITER)
    wait_for(lambda: re.search(r"\bW5\b", con.text()), 120, what="the writer's first records")

    move = migration.Move(
        iid=iid,
        src=src.client(),
        dst=dst.client(),
        src_spec=s_spec,
        dst_spec=d_spec,
        src_address=src.host.address,
        dst_address=dst.host.address,
        timeout=300,
    )
    phases: list[str] = []

    async def report(phase: str, fraction: float, message: str) -> None:
        print(f"{time.monotonic():.1f} {phase} {fraction:.2f} {message}")
        if not phases or phases[-1] != phase:
            phases.append(phase)

    async def go() -> object:
        try:
            return await migration.run(move, report)
        finally:
            for n in (move.src, move.dst):
                await n.aclose()  # type: ignore[attr-defined]

    written_before = max(int(x) for x in re.findall(r"\bW(\d+)\b", con.text()))
    done = asyncio.run(go())
    assert phases[:4] == ["preparing", "mirroring", "migrating", "switching"], phases
    assert done.memory.status == "completed"  # type: ignore[attr-defined]

    # the source's copy is gone, the destination's runs
    observed_src = call(src, "instances")
    assert all(o.id != iid for o in observed_src), observed_src  # type: ignore[attr-defined]
    assert not src.instance_dir(iid).exists()
    observed = {o.id: o for o in call(dst, "instances")}  # type: ignore[attr-defined]
    assert observed[iid].running and observed[iid].status == "running", observed

    dcon = Console(dst, iid)
    before = dcon.text()
    # the writer goes on at the destination
    try:
        wait_for(
            lambda: any(
                int(x) > written_before + 3 for x in re.findall(r"\bW(\d+)\b", dcon.text())
            ),
            120,
            what="records written at the destination",
        )
    except AssertionError:
        print("DEST CONSOLE", dcon.text()[-1500:])
        print("SRC CONSOLE", con.text()[-1500:])
        print("DEST AGENT", (dst.state / "agent.log").read_text()[-3000:])
        print("DEST QEMU", (dst.instance_dir(iid) / "qemu.log").read_text()[-3000:])
        print("SRC AGENT", (src.state / "agent.log").read_text()[-3000:])
        raise
    dcon.type(VERIFY)
    m = wait_for(
        lambda: re.search(r"VERIFY n=(\d+) bad=(\d) mac=(\S+)", dcon.text()[len(before) :]),
        120,
        what="the guest's check of its records",
    )
    n, bad, mac = int(m.group(1)), int(m.group(2)), m.group(3)
    assert bad == 0, dcon.text()[-3000:]
    assert n > written_before + 3
    assert mac == s_spec.mac
    # the destination's NBD server is gone, and its QEMU took the memory by descriptor
    assert "incoming.json" not in os.listdir(dst.instance_dir(iid))
    call(dst, "instance_destroy", iid=iid, tap="tmig0")
