"""Crash points for every kind of operation: start one on a real daemon, `kill -9` the daemon
a given time into it, start the daemon again, let the operation finish, and check that the
cloud agrees with itself (every operation ended; every instance's state is what it should be
and what QEMU shows; no stray QEMU; no reason a crash made up). Shared by the bounded
integration test (tests/integration/test_crash_points.py) and the full matrix (bench/crash.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

from corral import models
from tests.harness import Daemon, cmdline, wait_for

VM = "crashvm"  # the instance the cases share (cases leave it running)
VOLUME = "crashvol"


@dataclass
class Case:
    """One operation kind: ``prepare`` brings the world to where the operation can start (no
    crash), ``trigger`` starts it and returns its operation id, ``expect`` checks its result."""

    kind: str
    trigger: Callable[[Daemon], str]
    prepare: Callable[[Daemon], None] = lambda d: None
    expect: Callable[[Daemon], None] = lambda d: None
    # offsets count from when the operation reports this much progress: the window that
    # matters (CreateImage at 0.3 has powered the guest off and copies its disk)
    point: float = 0.0


def ec2(d: Daemon) -> Any:
    data = json.loads((d.state_dir / "admin.credentials").read_text())
    return boto3.client(
        "ec2",
        endpoint_url=d.url,
        region_name="corral-1",
        aws_access_key_id=data["access_key_id"],
        aws_secret_access_key=data["secret_access_key"],
        config=Config(retries={"max_attempts": 1}),
    )


def show(d: Daemon, ref: str) -> models.Instance | None:
    try:
        return d.client().instance_show(ref)
    except Exception:
        return None


def wait_op(d: Daemon, op_id: str, timeout: float = 300) -> models.Operation:
    c = d.client()
    deadline = time.monotonic() + timeout
    while True:
        op = c.operation_wait(op_id, timeout=20)
        if op.status in ("succeeded", "failed", "cancelled"):
            return op
        assert time.monotonic() < deadline, f"operation {op.type} still {op.status}"


def ensure_vm(d: Daemon, state: str = "running") -> models.Instance:
    """The shared instance, made or brought to ``state`` (no crash involved)."""
    c = d.client()
    inst = show(d, VM)
    if inst is None or inst.state == "terminated":
        acc = c.instance_run(models.InstanceCreate(image="tiny", name=VM, memory="128M"))
        assert acc.operation is not None
        assert wait_op(d, acc.operation.id).status == "succeeded"
        inst = c.instance_show(VM)
    if inst.state != state:
        acc = c.instance_start(VM) if state == "running" else c.instance_stop(VM, force=True)
        if acc.operation is not None:
            wait_op(d, acc.operation.id)
        inst = c.instance_show(VM)
    assert inst.state == state, inst
    return inst


def ensure_volume(d: Daemon, attached: bool) -> models.Volume:
    c = d.client()
    ensure_vm(d)
    try:
        vol = c.volume_show(VOLUME)
    except Exception:
        acc = c.volume_create(models.VolumeCreate(size="1G", name=VOLUME))
        if acc.operation is not None:
            wait_op(d, acc.operation.id)
        vol = c.volume_show(VOLUME)
    if attached and vol.attachment is None:
        ensure_vm(d)
        acc = c.volume_attach(VOLUME, models.VolumeAttach(instance=VM))
        if acc.operation is not None:
            wait_op(d, acc.operation.id)
    elif not attached and vol.attachment is not None:
        acc = c.volume_detach(VOLUME, models.VolumeDetach(force=True))
        if acc.operation is not None:
            wait_op(d, acc.operation.id)
    return c.volume_show(VOLUME)


# -- the operations --------------------------------------------------------------------------
def _op(acc: Any) -> str:
    assert acc.operation is not None, "expected an operation"
    return str(acc.operation.id)


def _running(d: Daemon, ref: str = VM) -> None:
    inst = d.client().instance_show(ref)
    assert (inst.state, inst.desired_state) == ("running", "running"), inst


def _stopped(d: Daemon, ref: str = VM) -> None:
    inst = d.client().instance_show(ref)
    assert (inst.state, inst.desired_state) == ("stopped", "stopped"), inst


def _run_trigger(d: Daemon) -> str:
    acc = d.client().instance_run(
        models.InstanceCreate(image="tiny", name="crashrun", memory="128M")
    )
    return _op(acc)


def _run_expect(d: Daemon) -> None:
    _running(d, "crashrun")
    wait_op(d, _op(d.client().instance_terminate("crashrun", force=True)))


def _terminate_prepare(d: Daemon) -> None:
    acc = d.client().instance_run(
        models.InstanceCreate(image="tiny", name="crashterm", memory="128M")
    )
    wait_op(d, _op(acc))


def _terminated(d: Daemon) -> None:
    inst = d.client().instance_show("crashterm")
    assert (inst.state, inst.desired_state) == ("terminated", "terminated"), inst


def _image_trigger(d: Daemon) -> str:
    iid = d.client().instance_show(VM).id
    image_id = ec2(d).create_image(InstanceId=iid, Name=f"crash-{time.monotonic_ns()}")["ImageId"]
    ops = d.client().operation_list(target=image_id)
    assert ops, "CreateImage made no operation"
    return ops[0].id


def _image_expect(d: Daemon) -> None:
    inst = d.client().instance_show(VM)
    assert (inst.state, inst.desired_state) == ("running", "running"), inst
    assert "InstanceInitiatedShutdown" not in inst.state_reason, inst.state_reason


def _replace_trigger(d: Daemon) -> str:
    return _op(d.client().instance_replace(VM, models.ReplaceRequest(image="tiny", timeout=300)))


def _one_vm(d: Daemon) -> None:
    live = [i for i in d.client().instance_list() if i.name == VM and i.state != "terminated"]
    assert len(live) == 1 and live[0].state == "running", live


def _volume_create_prepare(d: Daemon) -> None:
    for v in d.client().volume_list():
        if v.name == "crashnew":
            wait_op(d, _op(d.client().volume_remove(v.id)))


def _volume_available(name: str) -> Callable[[Daemon], None]:
    def check(d: Daemon) -> None:
        vol = d.client().volume_show(name)
        assert vol.state == "available" and vol.attachment is None, vol

    return check


def _volume_in_use(d: Daemon) -> None:
    vol = d.client().volume_show(VOLUME)
    assert vol.state == "in-use" and vol.attachment is not None, vol
    _running(d)


def _snapshot_trigger(d: Daemon) -> str:
    return _op(d.client().volume_snapshot(VOLUME, "crash"))


def _snapshot_done(d: Daemon) -> None:
    snaps = d.client().snapshot_list()
    assert snaps and all(s.state in ("completed", "error") for s in snaps), snaps
    assert any(s.state == "completed" for s in snaps), snaps


def _snapshot_delete_prepare(d: Daemon) -> None:
    ensure_volume(d, attached=False)
    wait_op(d, _op(d.client().volume_snapshot(VOLUME, "to delete")))


def _snapshot_delete_trigger(d: Daemon) -> str:
    snaps = [s for s in d.client().snapshot_list() if s.description == "to delete"]
    return d.client().snapshot_remove(snaps[0].id).id


def _vm_running(d: Daemon) -> None:
    ensure_vm(d, "running")


def _vm_stopped(d: Daemon) -> None:
    ensure_vm(d, "stopped")


def _volume_free(d: Daemon) -> None:
    ensure_volume(d, attached=False)


def _volume_attached(d: Daemon) -> None:
    ensure_volume(d, attached=True)


def _volume_delete_prepare(d: Daemon) -> None:
    if not any(v.name == "crashnew" for v in d.client().volume_list()):
        wait_op(d, _op(d.client().volume_create(models.VolumeCreate(size="1G", name="crashnew"))))


def _snapshot_gone(d: Daemon) -> None:
    left = [s for s in d.client().snapshot_list() if s.description == "to delete"]
    assert not left, left


CASES: dict[str, Case] = {
    c.kind: c
    for c in [
        Case("instance-run", _run_trigger, expect=_run_expect),
        Case(
            "instance-stop",
            lambda d: _op(d.client().instance_stop(VM)),
            prepare=_vm_running,
            expect=_stopped,
        ),
        Case(
            "instance-start",
            lambda d: _op(d.client().instance_start(VM)),
            prepare=_vm_stopped,
            expect=_running,
        ),
        Case(
            "instance-reboot",
            lambda d: _op(d.client().instance_reboot(VM)),
            prepare=_vm_running,
            expect=_running,
        ),
        Case(
            "instance-terminate",
            lambda d: _op(d.client().instance_terminate("crashterm")),
            prepare=_terminate_prepare,
            expect=_terminated,
        ),
        Case(
            "image-capture",  # CreateImage with reboot: the crash
            _image_trigger,
            prepare=_vm_running,
            expect=_image_expect,
            point=0.3,
        ),
        Case(
            "instance-replace",
            _replace_trigger,
            prepare=_vm_running,
            expect=_one_vm,
            point=0.2,
        ),
        Case(
            "volume-create",
            lambda d: _op(
                d.client().volume_create(models.VolumeCreate(size="1G", name="crashnew"))
            ),
            prepare=_volume_create_prepare,
            expect=_volume_available("crashnew"),
        ),
        Case(
            "volume-attach",
            lambda d: _op(d.client().volume_attach(VOLUME, models.VolumeAttach(instance=VM))),
            prepare=_volume_free,
            expect=_volume_in_use,
        ),
        Case(
            "volume-detach",
            lambda d: _op(d.client().volume_detach(VOLUME, models.VolumeDetach(force=True))),
            prepare=_volume_attached,
            expect=_volume_available(VOLUME),
        ),
        Case(
            "snapshot-create",
            _snapshot_trigger,
            prepare=_volume_free,
            expect=_snapshot_done,
        ),
        Case(
            "snapshot-delete",
            _snapshot_delete_trigger,
            prepare=_snapshot_delete_prepare,
            expect=_snapshot_gone,
        ),
        Case(
            "volume-delete",
            lambda d: _op(d.client().volume_remove("crashnew")),
            prepare=_volume_delete_prepare,
            expect=lambda d: _gone_volume(d, "crashnew"),
        ),
        Case(
            "image-verify",
            lambda d: _op(d.client().image_verify("tiny")),
        ),
    ]
}


def _gone_volume(d: Daemon, name: str) -> None:
    assert not [v for v in d.client().volume_list() if v.name == name]


# -- the crash and the checks ----------------------------------------------------------------
@dataclass
class Outcome:
    kind: str
    offset: float
    op_status: str
    op_error: str
    recovered_s: float
    problems: list[str]


def crash_at(d: Daemon, case: Case, offset: float) -> Outcome:
    """Prepare, start the operation, kill -9 the daemon ``offset`` seconds in (after the case's
    progress point), start it again, wait for the operation, and check everything agrees."""
    case.prepare(d)
    op_id = case.trigger(d)
    if case.point > 0:
        _reach(d, op_id, case.point)
    time.sleep(offset)
    d.kill9()
    t0 = time.monotonic()
    d.start()
    op = wait_op(d, op_id)
    recovered = time.monotonic() - t0
    problems = consistency(d)
    if op.status == "succeeded":
        try:
            case.expect(d)
        except AssertionError as err:
            problems.append(f"{case.kind}: {err}")
    elif op.error is None or not op.error.message:
        problems.append(f"{case.kind}: ended {op.status} with no error message")
    return Outcome(
        case.kind,
        offset,
        op.status,
        op.error.message if op.error else "",
        round(recovered, 2),
        problems,
    )


def _reach(d: Daemon, op_id: str, point: float, timeout: float = 300) -> None:
    """Return once the operation reports ``point`` progress (or has ended)."""
    c = d.client()
    seq = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        op = c.operation_wait(op_id, timeout=5, since=seq)
        seq = op.seq
        if op.progress >= point or op.status in _DONE:
            return
    raise AssertionError(f"operation {op_id} never reached {point:.0%}")


def consistency(d: Daemon, timeout: float = 120) -> list[str]:
    """What disagrees once every operation has ended and the reconciler had a pass: an
    instance whose state is not its desired state, or not what QEMU shows; a made-up reason;
    a stray QEMU."""
    c = d.client()
    wait_for(
        lambda: not [o for o in c.operation_list(limit=200) if o.status not in _DONE],
        timeout,
        what="every operation to end",
    )
    problems: list[str] = []

    def settled() -> bool:
        problems.clear()
        for inst in c.instance_list():
            if inst.state == "terminated":
                if inst.desired_state != "terminated":
                    problems.append(f"{inst.name}: terminated but wanted {inst.desired_state}")
                continue
            if inst.state != inst.desired_state:
                problems.append(f"{inst.name}: {inst.state}, wanted {inst.desired_state}")
            alive = inst.pid is not None and f"process=corral:{inst.id}".encode() in cmdline(
                inst.pid
            )
            if inst.state == "running" and not alive:
                problems.append(f"{inst.name}: running in the store, no QEMU (pid {inst.pid})")
            if inst.state == "stopped" and alive:
                problems.append(f"{inst.name}: stopped in the store, QEMU {inst.pid} runs")
            if "InstanceInitiatedShutdown" in inst.state_reason:
                problems.append(f"{inst.name}: reason {inst.state_reason!r} (no guest did that)")
        for node in c.node_list():
            problems.extend(f"stray: {s}" for s in node.strays)
        return not problems

    try:
        wait_for(settled, 60, interval=1, what="the cloud to agree with itself")
    except AssertionError:
        pass
    return list(problems)


_DONE = ("succeeded", "failed", "cancelled")


def cleanup(d: Daemon) -> None:
    """Remove what the cases made (the daemon's teardown removes the rest)."""
    c = d.client()
    for inst in c.instance_list():
        if inst.state != "terminated" and inst.name.startswith("crash"):
            acc = c.instance_terminate(inst.id, force=True)
            if acc.operation is not None:
                wait_op(d, acc.operation.id)
    for vol in c.volume_list():
        if vol.name in (VOLUME, "crashnew"):
            removed = c.volume_remove(vol.id)
            if removed.operation is not None:
                wait_op(d, removed.operation.id)
