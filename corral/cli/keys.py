"""`corral key …`: SSH key pairs."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.table import Table

from corral.cli.common import console, fail, opts

app = typer.Typer(help="SSH key pairs: list, add, create, remove.", no_args_is_help=True)


@app.command("ls")
def key_ls(ctx: typer.Context) -> None:
    """List key pairs."""
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "TYPE", "FINGERPRINT", "ID"):
        table.add_column(col)
    for k in opts(ctx).client().key_list():
        table.add_row(k.name, k.key_type, k.fingerprint, k.id)
    console.print(table)


@app.command("add")
def key_add(
    ctx: typer.Context,
    name: str,
    file: Path = typer.Argument(..., help="a public key file, e.g. ~/.ssh/id_ed25519.pub"),
) -> None:
    """Import a public key as a key pair."""
    if not file.is_file():
        raise fail(f"key file {file} does not exist")
    k = opts(ctx).client().key_add(name, file.read_text().strip())
    console.print(f"key pair {k.name} added ({k.key_type}, {k.fingerprint})")


@app.command("create")
def key_create(
    ctx: typer.Context,
    name: str,
    key_type: str = typer.Option("ed25519", "--type", help="ed25519 or rsa"),
    out: Path = typer.Option(..., "--out", "-o", help="where to write the private key"),
) -> None:
    """Create a key pair; the private key is written once to --out (mode 0600)."""
    if out.exists():
        raise fail(f"{out} exists; choose another --out")
    k = opts(ctx).client().key_add(name, None, key_type)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(k.private_key or "")
    console.print(f"key pair {k.name} created ({k.fingerprint}); private key in {out}")


@app.command("rm")
def key_rm(ctx: typer.Context, name: str) -> None:
    """Remove a key pair (instances keep the keys they were given)."""
    opts(ctx).client().key_remove(name)
    console.print(f"key pair {name} removed")
