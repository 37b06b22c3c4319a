"""High availability's data path between two real agents (the nodes' half; the controller's
is in tests/unit/test_ha.py): each a `corral agent` in its own host namespace of the test LAN
(tests/integration/test_migration.py's pair), the NBD traffic crossing the underlay.

A guest on the primary writes numbered, checksummed, fsynced records and reports each on its
serial line once the sync returned (the console log is the observer, outside the node). Its
disk is replicated to the secondary (a qemu-storage-daemon there, a write-blocking mirror
here). Then the primary's QEMU is killed and its link taken down; the secondary starts the
guest from the replica, and every acknowledged record is on its disk."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.controller import replicas
from corral.images.store import ImageStore
from corral.node.storage import overlays
from tests.harness import Daemon, wait_for
from tests.integration.test_migration import (
    WRITER,
    Agent,
    Console,
    _network,
    _spec,
    agent_pair,
    call,
)

pytestmark = pytest.mark.integration

CHECK = (
    "kill %1; sleep 1; sync; echo 3 > /proc/sys/vm/drop_caches; n=0; bad=0; "
    'while read a b c; do n=$((n+1)); [ "$b" = "$n" ] || bad=1; '
    '[ "$(echo "rec $b" | md5sum | cut -c1-8)" = "$c" ] || bad=1; done < /w.log; '
    'echo "CHECK n=$n bad=$bad mac=$(cat /sys/class/net/eth0/address)"'
)


@pytest.fixture(scope="module")
def pair(corral: Daemon) -> Iterator[tuple[Agent, Agent]]:
    with agent_pair(corral.state_dir / "images") as agents:
        yield agents


def _acked(text: str) -> int:
    return max((int(x) for x in re.findall(r"\bW(\d+)\b", text)), default=0)


def test_a_killed_primary_comes_back_on_the_secondary_with_every_acknowledged_write(
    pair: tuple[Agent, Agent],
) -> None:
    primary, secondary = pair
    tiny = next(m for m in ImageStore(primary.settings.images_dir).list() if m.name == "tiny")
    disk = int(tiny.root_disk.virtual_size or (512 << 20))
    digest = tiny.digest
    iid = f"i-ha{secrets.token_hex(4)}"
    for a in pair:
        call(a, "network_ensure", spec=_network(a), hosts=[])
    call(primary, "instance_start", spec=_spec(primary, iid, digest, disk))
    try:
        _fail_over(primary, secondary, iid, digest, disk)
    finally:
        call(secondary, "replica_drop", iid=iid)  # its daemon, when the test stopped early
        call(primary, "instance_destroy", iid=iid, tap="tmig0")


def _fail_over(primary: Agent, secondary: Agent, iid: str, digest: str, disk: int) -> None:
    con = Console(primary, iid)
    wait_for(lambda: "login:" in con.text(), 300, what="the guest's login prompt")
    con.type("root")

    # the replica: served by the secondary, mirrored write-blocking by the primary
    served = call(
        secondary,
        "replica_serve",
        spec=_spec(secondary, iid, digest, disk),
        sizes={},
        address=secondary.host.address,
        peer=primary.host.address,
    )
    qsd = served.pid  # type: ignore[attr-defined]
    assert "qemu-storage-daemon" in open(f"/proc/{qsd}/cmdline").read()
    disks = replicas.mirror_disks(_spec(primary, iid, digest, disk), served)  # type: ignore[arg-type]
    st = call(
        primary,
        "replica_mirror",
        iid=iid,
        address=served.address,  # type: ignore[attr-defined]
        port=served.port,  # type: ignore[attr-defined]
        disks=disks,
    )
    assert st.state in ("syncing", "in-sync"), st  # type: ignore[attr-defined]
    wait_for(
        lambda: call(primary, "replica_status", iid=iid).state == "in-sync",  # type: ignore[attr-defined]
        120,
        what="the replica in sync",
    )
    # a repeated serve answers the same daemon (the agent may have lost the first answer)
    again = call(
        secondary,
        "replica_serve",
        spec=_spec(secondary, iid, digest, disk),
        sizes={},
        address=secondary.host.address,
    )
    assert again.pid == qsd and again.port == served.port  # type: ignore[attr-defined]

    con.type(WRITER)
    wait_for(lambda: _acked(con.text()) >= 8, 120, what="the writer's records")

    # the primary dies: its QEMU killed, its link down
    pid = next(o.pid for o in call(primary, "instances") if o.id == iid)  # type: ignore[attr-defined]
    down = primary.host.exec("ip", "link", "set", "eth0", "down")
    os.kill(pid, signal.SIGKILL)
    assert down.returncode == 0, down.stderr
    acked = _acked(con.text())
    try:
        new_pid = call(secondary, "replica_promote", spec=_spec(secondary, iid, digest, disk))
        assert (
            not os.path.exists(f"/proc/{qsd}")
            or "qemu-storage-daemon" not in open(f"/proc/{qsd}/cmdline").read()
        )
        assert "qemu-system" in open(f"/proc/{new_pid}/cmdline").read()
        # the replica became the instance's own disk on the secondary (same base image)
        chain = [str(p) for p, _ in _chain(secondary.instance_dir(iid) / "disk.qcow2")]
        assert len(chain) == 2 and chain[1].startswith(str(secondary.settings.images_dir))
        scon = Console(secondary, iid)
        wait_for(lambda: "login:" in scon.text(), 300, what="the guest's login on the secondary")
        scon.type("root")
        before = scon.text()
        scon.type(CHECK.replace("kill %1; ", ""))
        m = wait_for(
            lambda: re.search(r"CHECK n=(\d+) bad=(\d) mac=(\S+)", scon.text()[len(before) :]),
            120,
            what="the guest's check of its records",
        )
    finally:
        primary.host.exec("ip", "link", "set", "eth0", "up")
    n, bad, mac = int(m.group(1)), int(m.group(2)), m.group(3)
    print(f"acknowledged {acked}, on the replica {n}")
    assert bad == 0, scon.text()[-2000:]
    assert n >= acked >= 8  # every acknowledged record (a later unacknowledged one may be too)
    assert mac == _spec(secondary, iid, digest, disk).mac


def _chain(disk: Path) -> list[tuple[Path, str]]:
    return asyncio.run(overlays.chain(disk))
