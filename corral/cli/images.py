"""`corral image …`: list, show, build, import, export, verify, tag, remove."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from corral.cli.common import console, err_console, fail, opts, wait_op
from corral.images import recipe_upload
from corral.units import format_size

app = typer.Typer(
    help="Images: list, show, build, import, export, verify, tag, remove.", no_args_is_help=True
)


@app.command("ls")
def image_ls(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List images."""
    rows = opts(ctx).client().image_list()
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    by_digest = {r.digest: f"{r.name}:{r.version}" for r in rows}
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "VERSION", "ID", "KIND", "SIZE", "DISK", "DIGEST", "BASE", "DESCRIPTION"):
        table.add_column(col)
    for r in rows:
        base = by_digest.get(r.base, r.base[:12]) if r.base else ""
        table.add_row(
            r.name,
            r.version,
            r.id,
            r.kind,
            format_size(r.size),
            format_size(r.virtual_size),
            r.digest[:12],
            base,
            r.description,
        )
    console.print(table)


@app.command("show")
def image_show(
    ctx: typer.Context,
    ref: str,
    packages: bool = typer.Option(False, help="list every installed package"),
) -> None:
    """Everything about one image: its record and its manifest (parts, base, command line)."""
    c = opts(ctx).client()
    image = c.image_show(ref).model_dump(mode="json")
    manifest = c.image_manifest(ref).model_dump(mode="json")
    if not packages:
        manifest["packages"] = f"{len(manifest['packages'])} packages (--packages lists them)"
    print(json.dumps({**image, "manifest": manifest}, indent=2))


@app.command("build")
def image_build(
    ctx: typer.Context,
    recipe: str = typer.Argument(
        ..., help="a built-in recipe (tiny, debian) or a recipe directory (uploaded)"
    ),
    force: bool = typer.Option(False, help="rebuild even if cached"),
    no_wait: bool = typer.Option(False, "--no-wait"),
) -> None:
    """Build an image from a recipe (cached: the same recipe and packages build once)."""
    c = opts(ctx).client()
    path = Path(recipe)
    if path.exists():
        # the server never reads a path of ours: the recipe directory travels as content
        directory = path.parent if path.is_file() else path
        acc = c.image_build_upload(recipe_upload.pack(directory), force)
    else:
        acc = c.image_build(recipe, force)
    if no_wait:
        console.print(f"building {recipe}: operation {acc.operation.id}")
        return
    op = wait_op(c, acc.operation, f"building {recipe}")
    r = op.result
    console.print(f"image {r.get('name')}:{r.get('version')} ({r.get('image_id')}) is ready")


def _bar(total: int, what: str) -> Progress:
    return Progress(
        TextColumn(what),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err_console,
        transient=True,
        disable=not sys.stderr.isatty(),
    )


@app.command("import")
def image_import(
    ctx: typer.Context,
    file: Path = typer.Argument(
        ...,
        exists=True,
        dir_okay=False,
        help="a qcow2 or raw disk file, or a `corral image export` archive",
    ),
    name: str | None = typer.Option(None, help="image name (disk files)"),
    version: str | None = typer.Option(None, help="image version (default 1)"),
    format: str | None = typer.Option(None, help="qcow2 or raw (found from the file)"),
    description: str = typer.Option(""),
    default_user: str | None = typer.Option(None, help="user `corral ssh` logs in as"),
    min_disk: str | None = typer.Option(None, help="smallest root disk, e.g. 4G"),
    boot_from: str | None = typer.Option(
        None, help="boot with this image's kernel and initramfs (a disk without boot loader)"
    ),
    cmdline: str | None = typer.Option(None, help="kernel command line (with --boot-from)"),
    sha256: str | None = typer.Option(None, help="refuse the file unless its sha256 is this"),
) -> None:
    """Import a disk file or an export archive (streamed; checked before it is stored)."""
    c = opts(ctx).client()
    size = file.stat().st_size
    with _bar(size, f"uploading {file.name}") as bar:
        task = bar.add_task("upload", total=size)
        acc = c.image_import(
            file,
            name=name,
            version=version,
            format=format,
            description=description,
            default_user=default_user,
            min_disk=min_disk,
            boot_from=boot_from,
            cmdline=cmdline,
            sha256=sha256,
            on_bytes=lambda n: bar.advance(task, n),
        )
    op = wait_op(c, acc.operation, f"importing {file.name}")
    r = op.result
    console.print(
        f"image {r.get('name')}:{r.get('version')} ({r.get('image_id')}) is ready; "
        f"digest {r.get('digest')}"
    )


@app.command("export")
def image_export(
    ctx: typer.Context,
    ref: str,
    output: Path = typer.Option(..., "-o", "--output", help="archive file to write"),
    delta_from: str | None = typer.Option(
        None, "--delta-from", help="ship only the difference to BASE (the image's base)"
    ),
) -> None:
    """Write an image to an archive for `corral image import` on another Corral."""
    c = opts(ctx).client()
    if output.is_dir():
        raise fail(f"{output} is a directory; give a file name, e.g. {output}/image.tar")
    acc = c.image_export(ref, delta_from)
    op = wait_op(c, acc.operation, f"exporting {ref}")
    r = op.result
    size = int(r.get("size", 0))
    with _bar(size, f"downloading {r['archive'][:16]}…") as bar:
        task = bar.add_task("download", total=size)
        sha = c.image_download(r["archive"], output, on_bytes=lambda n: bar.advance(task, n))
    kind = f"delta against {delta_from}" if delta_from else "whole image"
    console.print(f"wrote {output} ({format_size(size)}, {kind}); sha256 {sha}")


@app.command("verify")
def image_verify(ctx: typer.Context, ref: str) -> None:
    """Check the sha256 of every part of an image (and of the images it is built on)."""
    c = opts(ctx).client()
    op = wait_op(c, c.image_verify(ref).operation, f"verifying {ref}")
    r = op.result
    console.print(
        f"{ref}: ok ({r.get('parts')} parts of {r.get('images')} image(s), "
        f"{format_size(int(r.get('bytes', 0)))} checked)"
    )


@app.command("tag")
def image_tag(
    ctx: typer.Context, ref: str, tag: str = typer.Argument(..., help="NAME or NAME:VERSION")
) -> None:
    """Give an image another name:version (the same content)."""
    name, _, version = tag.partition(":")
    img = opts(ctx).client().image_tag(ref, name, version or "1")
    console.print(f"tagged {ref} as {img.name}:{img.version} ({img.id})")


@app.command("share")
def image_share(
    ctx: typer.Context,
    ref: str,
    accounts: list[str] = typer.Argument(None, help="12-digit account ids to share with"),
    remove: list[str] = typer.Option([], "--remove", help="an account id to stop sharing with"),
    public: bool | None = typer.Option(
        None, "--public/--private", help="everyone may launch it (admins only) / only shares"
    ),
) -> None:
    """Who may launch an image of yours: accounts you share it with (they launch it by id)."""
    p = opts(ctx).client().image_permissions_update(ref, accounts or [], remove, public)
    who = ", ".join(p.accounts) or "no other account"
    console.print(f"{ref}: {'public' if p.public else 'private'}, shared with {who}")


@app.command("rm")
def image_rm(ctx: typer.Context, ref: str) -> None:
    """Remove an image (refused while instances use it or images are built on it)."""
    img = opts(ctx).client().image_remove(ref)
    console.print(f"removed image {img.name}:{img.version} ({img.id})")
