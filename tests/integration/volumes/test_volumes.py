"""Volumes on real VMs (tiny): data written to a volume stays on it across instances; hot
attach and detach on a running VM (the guest's kernel sees the disk come and go, serial = the
volume id); a guest that does not answer the unplug keeps the volume attached, with a clear
error, until forced; a volume attached elsewhere is refused; a snapshot taken while the guest
writes restores to exactly the data of that moment."""

from __future__ import annotations

from corral import models
from tests.harness import Daemon, wait_for
from tests.integration.ec2.test_boto3 import cli_key
from tests.integration.volumes.conftest import guest_disk, serial, ssh, volume


def _qmp(d: Daemon, iid: str, command: str) -> None:
    """A command on the instance's debugging QMP socket (here: pause or resume the guest)."""
    import asyncio

    from qemu.qmp import QMPClient

    sock = f"/run/corral/{d.settings.namespace}/{iid}/qmp-debug.sock"

    async def go() -> None:
        c = QMPClient("test")
        await c.connect(sock)
        try:
            await c.execute(command)
        finally:
            await c.disconnect()

    asyncio.run(go())


def test_data_written_to_a_volume_outlives_the_instance(corral: Daemon, cleanup: list[str]) -> None:
    cleanup += ["vol-a", "vol:keep"]
    corral.cli("volume", "create", "1G", "--name", "keep", "--fs", "ext4").ok()
    corral.cli("run", "tiny", "--name", "vol-a").ok()
    corral.cli("volume", "attach", "keep", "vol-a").ok()
    vid = volume(corral, "keep")["id"]
    dev = wait_for(lambda: guest_disk(corral, "vol-a", vid), 30, what="the disk in the guest")
    ssh(
        corral,
        "vol-a",
        f"mkdir -p /data && mount /dev/{dev} /data && "
        "echo kept-across-instances > /data/proof && umount /data",
    )
    corral.cli("rm", "vol-a").ok()
    shown = volume(corral, "keep")
    assert shown["state"] == "available" and shown["attachment"] is None  # it outlived it
    cleanup.remove("vol-a")
    cleanup.insert(0, "vol-b")
    corral.cli("run", "tiny", "--name", "vol-b").ok()
    corral.cli("volume", "attach", "keep", "vol-b").ok()
    dev = wait_for(lambda: guest_disk(corral, "vol-b", vid), 30, what="the disk in the guest")
    out = ssh(corral, "vol-b", f"mkdir -p /data && mount /dev/{dev} /data && cat /data/proof")
    assert "kept-across-instances" in out


def test_hot_attach_and_detach_on_a_running_vm(corral: Daemon, cleanup: list[str]) -> None:
    cleanup += ["hot", "vol:hotvol"]
    corral.cli("run", "tiny", "--name", "hot").ok()
    before = ssh(corral, "hot", "ls /sys/block")
    corral.cli("volume", "create", "1G", "--name", "hotvol").ok()
    vid = volume(corral, "hotvol")["id"]
    out = corral.cli("volume", "attach", "hotvol", "hot").ok().out
    assert f"virtio-{serial(vid)}" in out
    shown = volume(corral, "hotvol")
    assert shown["state"] == "in-use" and shown["attachment"]["state"] == "attached"
    dev = wait_for(lambda: guest_disk(corral, "hot", vid), 30, what="the hot-plugged disk")
    assert dev not in before.split()
    assert int(ssh(corral, "hot", f"cat /sys/block/{dev}/size")) * 512 == 1 << 30
    corral.cli("volume", "detach", "hotvol").ok()
    assert volume(corral, "hotvol")["state"] == "available"
    assert dev not in ssh(corral, "hot", "ls /sys/block").split()
    # and back in: QEMU released the file when the guest let go
    corral.cli("volume", "attach", "hotvol", "hot").ok()
    wait_for(lambda: guest_disk(corral, "hot", vid), 30, what="the disk plugged in again")


def test_a_guest_that_does_not_let_go_keeps_the_volume_until_forced(
    corral: Daemon, cleanup: list[str]
) -> None:
    cleanup += ["held", "vol:heldvol"]
    # a paused guest cannot take the ACPI power button either: forcing the detach powers it
    # off, which waits out the instance's stop timeout first. A short one (the daemon's
    # default is 30 s) lets that happen in seconds; the same ladder (button, then quit) runs.
    c = corral.client()
    run = c.instance_run(
        models.InstanceCreate(
            image="tiny", name="held", public_keys=[cli_key(corral)], stop_timeout=3
        )
    )
    assert run.operation is not None
    op_id = run.operation.id
    done = wait_for(
        lambda: (o := c.operation_show(op_id)).status in ("succeeded", "failed") and o,
        300,
        what="held started",
    )
    assert done.status == "succeeded", done.error
    corral.cli("volume", "create", "1G", "--name", "heldvol").ok()
    corral.cli("volume", "attach", "heldvol", "held").ok()
    vid = volume(corral, "heldvol")["id"]
    wait_for(lambda: guest_disk(corral, "held", vid), 30, what="the disk in the guest")
    iid = corral.client().instance_show("held").id
    _qmp(corral, iid, "stop")  # a paused guest cannot answer the unplug request
    try:
        res = corral.cli("volume", "detach", "heldvol", "--timeout", "3")
        assert res.rc != 0
        assert "did not release" in res.err and "force" in res.err
        shown = volume(corral, "heldvol")
        assert shown["state"] == "in-use" and shown["attachment"]["state"] == "attached"
        # force: the instance is restarted without the disk
        corral.cli("volume", "detach", "heldvol", "--force", "--timeout", "3").ok()
    finally:
        _qmp(corral, iid, "cont")
    assert volume(corral, "heldvol")["state"] == "available"
    wait_for(
        lambda: ssh(corral, "held", "echo up").strip() == "up", 120, interval=1, what="held back up"
    )
    assert guest_disk(corral, "held", vid) == ""


def test_a_volume_attached_elsewhere_is_refused(corral: Daemon, cleanup: list[str]) -> None:
    cleanup += ["own-a", "own-b", "vol:owned"]
    corral.cli("run", "tiny", "--name", "own-a").ok()
    corral.cli("run", "tiny", "--name", "own-b").ok()
    corral.cli("volume", "create", "1G", "--name", "owned").ok()
    corral.cli("volume", "attach", "owned", "own-a").ok()
    res = corral.cli("volume", "attach", "owned", "own-b")
    assert res.rc != 0 and "attached to own-a" in res.err and "detach it first" in res.err
    assert volume(corral, "owned")["attachment"]["instance_name"] == "own-a"
    client = corral.client()
    from corral import models
    from corral.client import ApiError

    try:
        client.volume_attach("owned", models.VolumeAttach(instance="own-b"))
        raise AssertionError("attached twice")
    except ApiError as err:
        assert err.status == 409 and err.code == "wrong_state"


def test_a_snapshot_of_a_running_volume_restores_the_data_of_that_moment(
    corral: Daemon, cleanup: list[str]
) -> None:
    cleanup += ["snap", "vol:live", "vol:restored"]
    corral.cli("run", "tiny", "--name", "snap").ok()
    corral.cli("volume", "create", "1G", "--name", "live", "--fs", "ext4").ok()
    corral.cli("volume", "attach", "live", "snap").ok()
    live = volume(corral, "live")["id"]
    dev = wait_for(lambda: guest_disk(corral, "snap", live), 30, what="the disk in the guest")
    # a writer that never stops, and a marker written before the snapshot
    ssh(
        corral,
        "snap",
        f"mkdir -p /live && mount /dev/{dev} /live && "
        "echo before > /live/marker && sync && "
        "(i=0; while :; do echo $i >> /live/log; sync; i=$((i+1)); "
        "sleep 0.05; done) > /dev/null 2>&1 < /dev/null & "
        # return once the writer is writing
        "until [ -s /live/log ] && [ $(wc -l < /live/log) -ge 3 ]; do sleep 0.1; done",
    )
    out = corral.cli("volume", "snapshot", "live").ok().out
    assert "while the instance ran" in out  # a QEMU backup job, not a file copy
    snap = out.split()[1]
    # the marker changes after the snapshot, and the writer goes on for a few more lines
    ssh(
        corral,
        "snap",
        "echo after > /live/marker; n=$(wc -l < /live/log); "
        "until [ $(wc -l < /live/log) -ge $((n + 3)) ]; do sleep 0.1; done; sync",
    )
    final = ssh(corral, "snap", "cat /live/log").split()
    corral.cli("volume", "restore", snap, "--name", "restored").ok()
    corral.cli("volume", "attach", "restored", "snap").ok()
    rid = volume(corral, "restored")["id"]
    rdev = wait_for(lambda: guest_disk(corral, "snap", rid), 30, what="the restored disk")
    got = ssh(
        corral,
        "snap",
        f"mkdir -p /restored && mount /dev/{rdev} /restored && "
        "cat /restored/marker; echo ---; cat /restored/log",
    ).split("---")
    assert got[0].strip() == "before"  # the snapshot's moment, not what came after
    lines = got[1].split()
    assert lines == [str(i) for i in range(len(lines))]  # whole lines, in order
    assert 0 < len(lines) < len(final)  # writing went on after the snapshot
    assert final[: len(lines)] == lines
