"""`corral image …`: list, show, build, remove."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from corral.cli.common import console, opts, wait_op
from corral.units import format_size

app = typer.Typer(help="Images: list, show, build, remove.", no_args_is_help=True)


@app.command("ls")
def image_ls(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List images."""
    rows = opts(ctx).client().image_list()
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "VERSION", "ID", "KIND", "SIZE", "DISK", "DIGEST", "DESCRIPTION"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.name, r.version, r.id, r.kind, format_size(r.size),
                      format_size(r.virtual_size), r.digest[:12], r.description)
    console.print(table)


@app.command("show")
def image_show(ctx: typer.Context, ref: str) -> None:
    """Everything about one image."""
    print(opts(ctx).client().image_show(ref).model_dump_json(indent=2))


@app.command("build")
def image_build(ctx: typer.Context,
                recipe: str = typer.Argument(..., help="a built-in recipe (tiny) or a recipe path"),
                force: bool = typer.Option(False, help="rebuild even if cached"),
                no_wait: bool = typer.Option(False, "--no-wait")) -> None:
    """Build an image from a recipe (cached: the same recipe and packages build once)."""
    c = opts(ctx).client()
    acc = c.image_build(recipe, force)
    if no_wait:
        console.print(f"building {recipe}: operation {acc.operation.id}")
        return
    op = wait_op(c, acc.operation, f"building {recipe}")
    r = op.result
    console.print(f"image {r.get('name')}:{r.get('version')} ({r.get('image_id')}) is ready")


@app.command("rm")
def image_rm(ctx: typer.Context, ref: str) -> None:
    """Remove an image (refused while instances use it)."""
    img = opts(ctx).client().image_remove(ref)
    console.print(f"removed image {img.name}:{img.version} ({img.id})")
