"""`corral volume …`: create, ls, show, rm, attach, detach, snapshot, snapshots, restore,
snapshot-rm, set."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from corral import models
from corral.cli.common import ago, console, fail, opts, wait_op
from corral.units import format_size

app = typer.Typer(
    help="Volumes: create, ls, show, rm, attach, detach, snapshot, restore.", no_args_is_help=True
)


def _label(v: models.Volume) -> str:
    return f"{v.name} ({v.id})" if v.name else v.id


def _follow(c: object, acc: models.VolumeAccepted, what: str, wait: bool) -> models.Volume:
    from corral.client import Client

    assert isinstance(c, Client)
    if wait and acc.operation is not None:
        wait_op(c, acc.operation, what)
        return c.volume_show(acc.volume.id)
    return acc.volume


@app.command("create")
def volume_create(
    ctx: typer.Context,
    size: str | None = typer.Argument(None, help="e.g. 1G or 10G (whole GiB)"),
    name: str | None = typer.Option(None, "--name", "-n", help="a name to use instead of the id"),
    fs: str | None = typer.Option(None, "--fs", help="format it: ext4 (labelled with its name)"),
    snapshot: str | None = typer.Option(None, "--snapshot", help="restore this snapshot"),
    no_wait: bool = typer.Option(False, "--no-wait"),
) -> None:
    """Create a volume: empty, formatted (--fs ext4) or from a snapshot."""
    c = opts(ctx).client()
    try:
        req = models.VolumeCreate(
            size=size,
            name=name,
            fs=fs,  # type: ignore[arg-type]
            snapshot=snapshot,
        )
    except ValueError as err:
        raise fail(str(err).splitlines()[-1]) from err
    acc = c.volume_create(req)
    vol = _follow(c, acc, f"creating {name or acc.volume.id}", not no_wait)
    console.print(f"volume {_label(vol)} is {vol.state} ({format_size(vol.size)})")


@app.command("ls")
def volume_ls(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List volumes: name, id, size, state, where attached."""
    rows = opts(ctx).client().volume_list()
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    table = Table(box=None, header_style="bold")
    for col in (
        "NAME",
        "ID",
        "SIZE",
        "STATE",
        "INSTANCE",
        "DEVICE",
        "ON-TERMINATION",
        "FROM",
        "AGE",
    ):
        table.add_column(col)
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    for v in rows:
        a = v.attachment
        table.add_row(
            v.name or "-",
            v.id,
            format_size(v.size),
            v.state + (f" ({a.state})" if a and a.state != "attached" else ""),
            (a.instance_name or a.instance_id) if a else "-",
            ("root" if v.root else a.device) if a else "-",
            "delete" if v.delete_on_termination else "keep",
            v.snapshot_id or "-",
            ago((now - v.created_at).total_seconds()),
        )
    console.print(table)


@app.command("show")
def volume_show(ctx: typer.Context, ref: str) -> None:
    """Everything about one volume, and its snapshots."""
    c = opts(ctx).client()
    vol = c.volume_show(ref)
    snaps = c.snapshot_list(vol.id)
    print(
        json.dumps(
            {
                **vol.model_dump(mode="json"),
                "snapshots": [s.model_dump(mode="json") for s in snaps],
            },
            indent=2,
        )
    )


@app.command("rm")
def volume_rm(
    ctx: typer.Context, ref: str, no_wait: bool = typer.Option(False, "--no-wait")
) -> None:
    """Delete a volume (refused while attached)."""
    c = opts(ctx).client()
    acc = c.volume_remove(ref)
    if not no_wait and acc.operation is not None:
        wait_op(c, acc.operation, f"deleting {ref}")
    console.print(f"deleted volume {_label(acc.volume)}")


@app.command("attach")
def volume_attach(
    ctx: typer.Context,
    ref: str,
    instance: str = typer.Argument(..., help="instance name or id"),
    device: str | None = typer.Option(
        None,
        help="a name like /dev/vdc (default: the next "
        "free); in the guest: /dev/disk/by-id/virtio-<serial>",
    ),
    delete_on_termination: bool | None = typer.Option(
        None,
        "--delete-on-termination/--keep-on-termination",
        help="delete the volume when the instance is terminated (default: keep)",
    ),
    no_wait: bool = typer.Option(False, "--no-wait"),
) -> None:
    """Attach a volume; a running instance gets it at once (hot-plug)."""
    c = opts(ctx).client()
    acc = c.volume_attach(
        ref,
        models.VolumeAttach(
            instance=instance, device=device, delete_on_termination=delete_on_termination
        ),
    )
    vol = _follow(c, acc, f"attaching {ref} to {instance}", not no_wait)
    a = vol.attachment
    serial = vol.id.replace("-", "")
    console.print(
        f"volume {_label(vol)} is {a.state if a else vol.state} on {instance}"
        + (f" as {a.device}; in the guest: /dev/disk/by-id/virtio-{serial}" if a else "")
    )


@app.command("detach")
def volume_detach(
    ctx: typer.Context,
    ref: str,
    force: bool = typer.Option(
        False,
        "--force",
        help="if the guest holds on to the disk, "
        "restart the instance without it (unsynced writes are lost)",
    ),
    timeout: float | None = typer.Option(
        None, help="seconds the guest gets to let go (default 20)"
    ),
    no_wait: bool = typer.Option(False, "--no-wait"),
) -> None:
    """Detach a volume; a running guest is asked to release it first."""
    c = opts(ctx).client()
    acc = c.volume_detach(ref, models.VolumeDetach(force=force, timeout=timeout))
    vol = _follow(c, acc, f"detaching {ref}", not no_wait)
    console.print(f"volume {_label(vol)} is {vol.state}")


@app.command("set")
def volume_set(
    ctx: typer.Context,
    ref: str,
    name: str | None = typer.Option(None, "--name", help="rename it"),
    delete_on_termination: bool | None = typer.Option(
        None,
        "--delete-on-termination/--keep-on-termination",
        help="whether it goes with the instance it is attached to",
    ),
) -> None:
    """Rename a volume or change whether it is deleted with its instance."""
    vol = (
        opts(ctx)
        .client()
        .volume_update(
            ref, models.VolumeUpdate(name=name, delete_on_termination=delete_on_termination)
        )
    )
    console.print(
        f"volume {_label(vol)}: on termination {'delete' if vol.delete_on_termination else 'keep'}"
    )


@app.command("snapshot")
def volume_snapshot(
    ctx: typer.Context,
    ref: str,
    description: str = typer.Option("", "--description", "-d"),
    no_wait: bool = typer.Option(False, "--no-wait"),
) -> None:
    """Snapshot a volume (also while its instance runs: a point-in-time copy)."""
    c = opts(ctx).client()
    acc = c.volume_snapshot(ref, description)
    if no_wait:
        console.print(f"snapshot {acc.snapshot.id} is pending; operation {acc.operation.id}")
        return
    op = wait_op(c, acc.operation, f"snapshotting {ref}")
    how = op.result.get("how", "")
    console.print(
        f"snapshot {acc.snapshot.id} of {ref} is completed"
        + (" (copied while the instance ran)" if how == "live" else "")
    )


@app.command("snapshots")
def volume_snapshots(
    ctx: typer.Context,
    ref: str | None = typer.Argument(None),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List snapshots (of one volume, or all)."""
    rows = opts(ctx).client().snapshot_list(ref)
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    table = Table(box=None, header_style="bold")
    for col in ("ID", "VOLUME", "SIZE", "STATE", "CREATED", "DESCRIPTION"):
        table.add_column(col)
    for s in rows:
        table.add_row(
            s.id,
            s.volume_id,
            format_size(s.size),
            s.state,
            s.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            s.description,
        )
    console.print(table)


@app.command("restore")
def volume_restore(
    ctx: typer.Context,
    snapshot: str = typer.Argument(..., help="the snapshot (snap-…)"),
    name: str | None = typer.Option(None, "--name", "-n", help="the new volume's name"),
    size: str | None = typer.Option(None, help="at least the snapshot's size"),
    no_wait: bool = typer.Option(False, "--no-wait"),
) -> None:
    """Restore a snapshot into a new volume."""
    c = opts(ctx).client()
    acc = c.volume_restore(snapshot, models.VolumeRestore(name=name, size=size))
    vol = _follow(c, acc, f"restoring {snapshot}", not no_wait)
    console.print(f"volume {_label(vol)} holds snapshot {snapshot} ({format_size(vol.size)})")


@app.command("snapshot-rm")
def snapshot_rm(
    ctx: typer.Context, snapshot: str, no_wait: bool = typer.Option(False, "--no-wait")
) -> None:
    """Delete a snapshot."""
    c = opts(ctx).client()
    op = c.snapshot_remove(snapshot)
    if not no_wait:
        wait_op(c, op, f"deleting {snapshot}")
    console.print(f"deleted snapshot {snapshot}")
