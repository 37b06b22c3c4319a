"""Live migration without shared storage between two real agents: each a `corral agent` process
with its own state directory, in its own host namespace of the test LAN (tests/cluster.py), the
controller's side reaching them over their unix sockets. The disks (NBD) and the memory stream
cross the underlay between 192.0.2.11 and 192.0.2.12.

A guest writes numbered, checksummed, synced records to its disk while it moves; afterwards
every record is intact on the destination's disk (read back with the page cache dropped), the
guest runs there with the same MAC, and its QEMU and files are gone from the source."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from corral import config
from corral.controller import migration
from corral.errors import CorralError
from corral.images.store import ImageStore
from corral.node.client import NodeClient
from corral.node.remote import RemoteNode
from corral.node.spec import (
    MIGRATION_TIMED_OUT,
    HostRecord,
    InstanceSpec,
    MirrorDisk,
    NetworkSpec,
    VolumeAttachment,
)
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
    env = dict(
        os.environ,
        CORRAL_STATE_DIR=str(state),
        CORRAL_MIGRATION_ADDRESS=host.address,
        PYTHONUNBUFFERED="1",
    )
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


@contextlib.contextmanager
def agent_pair(images: Path) -> Iterator[tuple[Agent, Agent]]:
    """Two agents in the two host namespaces of a new test LAN, each with a copy (hard links)
    of ``images``; everything removed afterwards."""
    tag = secrets.token_hex(3)
    with lan(2) as net:
        agents = [_start_agent(h, images, tag) for h in net.hosts]
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
                Path(a.sock).unlink(missing_ok=True)
                shutil.rmtree(a.state.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def pair(corral: Daemon) -> Iterator[tuple[Agent, Agent]]:
    with agent_pair(corral.state_dir / "images") as agents:
        yield agents


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


@dataclass
class Guest:
    """The one guest of this module, and where it runs now."""

    iid: str
    digest: str
    disk: int
    where: Agent
    agents: tuple[Agent, Agent]

    def spec(self, a: Agent) -> InstanceSpec:
        return _spec(a, self.iid, self.digest, self.disk)

    def other(self) -> Agent:
        return self.agents[1] if self.where is self.agents[0] else self.agents[0]

    def move(
        self,
        timeout: float,
        phases: list[str],
        times: dict[str, float] | None = None,
        arrive: Callable[[], Awaitable[None]] | None = None,
    ) -> migration.MigrationStatus:
        src, dst = self.where, self.other()
        move = migration.Move(
            iid=self.iid,
            src=src.client(),
            dst=dst.client(),
            src_spec=self.spec(src),
            dst_spec=self.spec(dst),
            src_address=src.host.address,
            dst_address=dst.host.address,
            timeout=timeout,
            arrive=arrive,
        )

        async def report(phase: str, fraction: float, message: str) -> None:
            print(f"{time.monotonic():.1f} {phase} {fraction:.2f} {message}")
            if not phases or phases[-1] != phase:
                phases.append(phase)
                if times is not None:
                    times[phase] = time.monotonic()

        async def go() -> migration.MigrationStatus:
            try:
                return await migration.run(move, report)
            finally:
                for n in (move.src, move.dst):
                    await n.aclose()  # type: ignore[attr-defined]

        st = asyncio.run(go())
        self.where = dst
        return st


@pytest.fixture(scope="module")
def guest(pair: tuple[Agent, Agent]) -> Guest:
    """A tiny guest booted on the first host, logged in at its console."""
    src, _ = pair
    store = ImageStore(src.settings.images_dir)
    tiny = next(m for m in store.list() if m.name == "tiny")
    g = Guest(
        iid=f"i-mig{secrets.token_hex(4)}",
        digest=tiny.digest,
        disk=int(tiny.root_disk.virtual_size or (512 << 20)),
        where=src,
        agents=pair,
    )
    # its DHCP reservation, so the guest has its address at once (without one it asks for a
    # minute before it gives up and goes on to its login prompt)
    lease = HostRecord(mac=g.spec(src).mac, address=g.spec(src).address, names=["mover"])
    for a in pair:
        call(a, "network_ensure", spec=_network(a), hosts=[lease])
    call(src, "instance_start", spec=g.spec(src))
    con = Console(src, g.iid)
    wait_for(lambda: "login:" in con.text(), 300, what="the guest's login prompt")
    con.type("root")
    return g


def test_a_writing_guest_moves_between_nodes_with_every_write(guest: Guest) -> None:
    src, dst = guest.where, guest.other()
    iid = guest.iid
    s_spec = guest.spec(src)
    con = Console(src, iid)
    con.type(WRITER)
    wait_for(lambda: re.search(r"\bW5\b", con.text()), 120, what="the writer's first records")
    phases: list[str] = []
    written_before = max(int(x) for x in re.findall(r"\bW(\d+)\b", con.text()))
    done = guest.move(300, phases)
    assert phases[:4] == ["preparing", "mirroring", "migrating", "switching"], phases
    assert done.memory.status == "completed"

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


DIRTIER = (
    "mount -t tmpfs -o size=64m tmpfs /mnt; "
    "while :; do dd if=/dev/urandom of=/mnt/d bs=1M count=40 2>/dev/null; done &"
)


def test_a_guest_dirtying_memory_faster_than_the_link_is_called_off(guest: Guest) -> None:
    src, dst = guest.where, guest.other()
    iid = guest.iid
    con = Console(src, iid)
    con.type(DIRTIER)
    # the source's underlay link slowed to 20 Mbit/s: the guest dirties memory faster
    shaped = src.host.exec(
        *("tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "20mbit"),
        *("burst", "64kb", "latency", "200ms"),
    )
    assert shaped.returncode == 0, shaped.stderr
    phases: list[str] = []
    try:
        with pytest.raises(CorralError) as err:
            guest.move(20, phases)
    finally:
        src.host.exec("tc", "qdisc", "del", "dev", "eth0", "root")
    guest.where = src  # it never left
    assert err.value.reason == MIGRATION_TIMED_OUT, err.value.message
    assert "migrating" in phases, phases
    # the guest runs on at the source, untouched; nothing is left at the destination
    st = call(src, "migrate_status", iid=iid)
    assert st.phase in ("cancelled", "none") and st.vm_status == "running", st  # type: ignore[attr-defined]
    assert not dst.instance_dir(iid).exists()
    assert all(o.id != iid for o in call(dst, "instances"))  # type: ignore[attr-defined]
    before = con.text()
    con.type("kill %1; echo alive-$((6*7))")
    wait_for(lambda: "alive-42" in con.text()[len(before) :], 120, what="the guest's answer")


def test_a_guest_whose_disks_lose_the_destination_as_its_memory_moves_runs_on_at_its_source(
    guest: Guest,
) -> None:
    """The disks' link to the destination dies just as the memory starts to move (its NBD port
    dropped there) while the guest writes: its writes wait on the mirror at most the link
    timeout (15 s; before, TCP's many minutes), the mirror fails, QEMU's own flush at the end
    of the memory copy fails with it, and the migration is called off: the destination (which
    never ran) is removed and the guest runs on at its source with every record. (When the
    mirror fails after the memory copy instead, the switch-over's check of how each mirror
    ended does the same: tests/unit/test_migrate_controller.py.)"""
    src, dst = guest.where, guest.other()
    iid = guest.iid
    con = Console(src, iid)
    before = con.text()
    con.type("rm -f /w.log", WRITER)  # records numbered from 1 again: a file of their own
    wait_for(lambda: re.search(r"\bW3\b", con.text()[len(before) :]), 120, what="records")
    table = f"corral-test-{secrets.token_hex(3)}"

    async def cut_disks() -> None:  # just before the memory moves
        st = await _call(src, "migrate_status", iid=iid)  # the mirrors are in step here
        assert st.phase == "mirrored", st  # type: ignore[attr-defined]
        nbd = prepared_port(dst, iid)
        rules = (
            f"add table inet {table}; "
            f"add chain inet {table} in {{ type filter hook input priority -10; }}; "
            f"add rule inet {table} in tcp dport {nbd} drop"
        )
        out = dst.host.exec("nft", rules)
        assert out.returncode == 0, out.stderr

    phases: list[str] = []
    try:
        with pytest.raises(CorralError) as err:
            guest.move(300, phases, arrive=cut_disks)
    finally:
        dst.host.exec("nft", "delete", "table", "inet", table)
    assert err.value.reason == "migration-failed", err.value.message
    assert "migrating" in phases, phases
    # the guest runs on at the source; the destination's copy (which never ran) is gone
    st = call(src, "migrate_status", iid=iid)
    assert st.vm_status == "running", st  # type: ignore[attr-defined]
    assert not dst.instance_dir(iid).exists()
    assert all(o.id != iid for o in call(dst, "instances"))  # type: ignore[attr-defined]
    # and every record it wrote is on its disk
    mark = con.text()
    con.type(VERIFY)
    m = wait_for(
        lambda: re.search(r"VERIFY n=(\d+) bad=(\d)", con.text()[len(mark) :]),
        120,
        what="the guest's check of its records",
    )
    assert int(m.group(2)) == 0, (m.group(0), con.text()[len(mark) :])
    assert int(m.group(1)) >= 3, m.group(0)


def prepared_port(a: Agent, iid: str) -> int:
    """The NBD port a destination serves an incoming migration's disks on (its record)."""
    rec = json.loads((a.instance_dir(iid) / "incoming.json").read_text())
    return int(rec["prepared"]["nbd_port"])


def test_the_only_copy_is_never_removed_and_an_aborted_destination_leaves_nothing(
    guest: Guest,
) -> None:
    src, dst = guest.where, guest.other()
    iid = guest.iid
    # the copy that runs the guest: neither abort (not an incoming copy) nor cleanup (it runs)
    with pytest.raises(CorralError, match="not an incoming migration"):
        call(src, "migrate_abort", iid=iid, tap="tmig0")
    with pytest.raises(CorralError, match="refusing to remove a copy that runs"):
        call(src, "migrate_cleanup", iid=iid, tap="tmig0", volumes=[])
    # a destination prepared and then called off: its QEMU, files, tap and ports are gone
    prepared = call(
        dst, "migrate_prepare", spec=guest.spec(dst), sizes={}, address=dst.host.address
    )
    assert dst.instance_dir(iid).exists()
    port = prepared.nbd_port  # type: ignore[attr-defined]
    probe = f"exec 3<>/dev/tcp/{dst.host.address}/{port}"
    assert src.host.exec("bash", "-c", probe).returncode == 0  # QEMU's NBD server answers
    call(dst, "migrate_abort", iid=iid, tap="tmig0")
    assert not dst.instance_dir(iid).exists()
    assert all(o.id != iid for o in call(dst, "instances"))  # type: ignore[attr-defined]
    assert "tmig0" not in dst.host.exec("ip", "-n", dst.settings.namespace, "link").stdout
    assert src.host.exec("bash", "-c", probe).returncode != 0  # and no more
    assert call(src, "migrate_status", iid=iid).vm_status == "running"  # type: ignore[attr-defined]


def test_a_cold_move_copies_the_overlay_checked_and_a_failed_one_leaves_nothing(
    pair: tuple[Agent, Agent],
) -> None:
    """The nodes' half of `corral node evacuate` (no guest boots: a stopped instance's files):
    the destination serves empty disks from a qemu-storage-daemon, the source copies the root
    overlay's own clusters into them over the underlay and compares; a copy that fails is
    undone on the destination to the last file and process; a good one becomes the instance's
    disk there, on the destination's own base image, and reads the same as the original."""
    src, dst = pair
    tiny = next(m for m in ImageStore(src.settings.images_dir).list() if m.name == "tiny")
    iid, vid = f"i-cold{secrets.token_hex(4)}", f"vol-cold{secrets.token_hex(4)}"
    disk = int(tiny.root_disk.virtual_size or (512 << 20))
    sizes = {vid: 64 << 20}

    def spec(a: Agent) -> InstanceSpec:
        return _spec(a, iid, tiny.digest, disk).model_copy(
            update={
                "tap": "tcold0",
                "mac": "52:54:00:5e:12:35",
                "address": "10.251.0.11",
                "volumes": [VolumeAttachment(id=vid, device="/dev/sdf")],
            }
        )

    for a in pair:
        call(a, "network_ensure", spec=_network(a), hosts=[])
    call(src, "volume_create", vid=vid, size=sizes[vid])
    call(src, "instance_create", spec=spec(src))
    overlay = src.instance_dir(iid) / "disk.qcow2"
    volume = src.settings.state_dir / "volumes" / f"{vid}.qcow2"
    assert overlay.exists() and volume.exists()
    # the guest's writes: data, and a zeroed cluster that hides the base image's content
    for op, f in (("write -P 0x5a 1M 192k", overlay), ("write -z 0 64k", overlay)):
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", op, str(f)], check=True, timeout=60)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0xa5 40M 1M", str(volume)],
        check=True, timeout=60,
    )  # fmt: skip
    try:
        served = call(
            dst, "evacuate_receive", spec=spec(dst), sizes=sizes, address=dst.host.address
        )
        pid = served.pid  # type: ignore[attr-defined]
        wrong = MirrorDisk(node="root", export="not-the-export", sync="top")
        with pytest.raises(CorralError, match="could not be copied to the destination"):
            call(
                src, "evacuate_send", iid=iid, address=dst.host.address,
                port=served.port, disks=[wrong],  # type: ignore[attr-defined]
            )  # fmt: skip
        call(dst, "evacuate_abort", iid=iid, tap="tcold0", volumes=[vid])
        assert not (dst.settings.state_dir / "arriving" / iid).exists()
        assert not dst.instance_dir(iid).exists()
        assert not os.path.exists(f"/proc/{pid}"), "the destination's daemon outlived the abort"
        assert overlay.exists()  # the source's copy is untouched

        served = call(
            dst, "evacuate_receive", spec=spec(dst), sizes=sizes, address=dst.host.address
        )
        exports = served.exports  # type: ignore[attr-defined]
        disks = [
            MirrorDisk(node="root", export=exports["root"], sync="top"),
            MirrorDisk(node=vid, export=exports[vid], sync="full"),
        ]
        sent = call(
            src, "evacuate_send", iid=iid, address=dst.host.address,
            port=served.port, disks=disks,  # type: ignore[attr-defined]
        )  # fmt: skip
        assert sent == ["root", vid]
        call(dst, "evacuate_accept", spec=spec(dst))
        there = dst.instance_dir(iid) / "disk.qcow2"
        assert not (dst.settings.state_dir / "arriving" / iid).exists()
        info = subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(there)],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout  # fmt: skip
        assert str(dst.settings.images_dir) in info  # on the destination's own base image
        same = subprocess.run(
            ["qemu-img", "compare", "-U", str(overlay), str(there)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert same.returncode == 0, same.stdout + same.stderr
        # only the overlay's own clusters came: far less than the image under it
        assert there.stat().st_size < 4 << 20, there.stat().st_size
        vol_there = dst.settings.state_dir / "volumes" / f"{vid}.qcow2"
        same = subprocess.run(
            ["qemu-img", "compare", "-U", str(volume), str(vol_there)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert same.returncode == 0, same.stdout + same.stderr
        call(src, "migrate_cleanup", iid=iid, tap="tcold0", volumes=[vid])
        assert not src.instance_dir(iid).exists() and not volume.exists()
    finally:
        for a in pair:
            call(a, "evacuate_abort", iid=iid, tap="tcold0", volumes=[vid])
