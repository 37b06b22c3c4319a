"""What every command shares: the client, output helpers, and waiting on operations."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from corral import models
from corral.client import Client, find_credentials
from corral.errors import CorralError

# not a terminal (pipes, tests): wide enough that tables are never cut
console = Console() if sys.stdout.isatty() else Console(width=250)
err_console = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=250)


@dataclass
class Options:
    state_dir: Path | None = None
    endpoint: str | None = None
    _client: Client | None = None

    def client(self) -> Client:
        if self._client is None:
            self._client = Client(find_credentials(self.state_dir, self.endpoint))
        return self._client


def opts(ctx: typer.Context) -> Options:
    obj = ctx.find_root().obj
    if not isinstance(obj, Options):
        obj = Options()
        ctx.find_root().obj = obj
    return obj


# request fields and the command-line options that set them, for error messages
OPTIONS = {
    "cpus": "--cpus",
    "memory": "--memory",
    "disk": "--disk",
    "restart_policy": "--restart",
    "net_limit_mbit": "--net-limit",
    "metadata_tokens": "--imds-tokens",
    "metadata_hop_limit": "--imds-hop-limit",
    "instance_type": "--type",
    "timeout": "--timeout",
    "name": "--name",
    "address": "--address",
    "check": "--check",
    "security_groups": "--sg",
}


def invalid_input(err: ValidationError) -> str:
    """A request model's refusal as ``field (--option): what is wrong (got X)``, one per bad
    field, instead of pydantic's text that ends in a link and names no option."""
    parts = []
    for e in err.errors():
        loc = [str(p) for p in e.get("loc", ())]
        field = ".".join(loc) or "input"
        option = OPTIONS.get(loc[0]) if loc else None
        msg = str(e.get("msg", "is not valid")).removeprefix("Value error, ")
        got = e.get("input")
        shown = (
            f" (got {got!r})" if isinstance(got, (str, int, float)) and str(got) not in msg else ""
        )
        parts.append(f"{field}{f' ({option})' if option else ''}: {msg}{shown}")
    return "; ".join(parts)


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    return typer.Exit(code)


def wait_op(
    client: Client, op: models.Operation, what: str, quiet: bool = False, timeout: float = 3600
) -> models.Operation:
    """Follow an operation to its end with a progress bar; raise on failure."""
    deadline = time.monotonic() + timeout
    show = not quiet and sys.stderr.isatty()
    seq = op.seq
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not show,
    ) as progress:
        task = progress.add_task(what, total=1.0)
        while op.status not in ("succeeded", "failed", "cancelled"):
            if time.monotonic() > deadline:
                raise CorralError(
                    f"{what}: still {op.status} after {timeout:.0f} s "
                    f"(operation {op.id}; `corral op wait {op.id}`)"
                )
            op = client.operation_wait(op.id, timeout=20, since=seq)
            seq = op.seq
            progress.update(
                task,
                completed=op.progress,
                description=f"{what}: {op.message}" if op.message else what,
            )
            if not show and op.message and not quiet:
                pass
    if op.status != "succeeded":
        msg = op.error.message if op.error else op.status
        raise CorralError(f"{what} failed: {msg}")
    return op


def ago(seconds: float) -> str:
    from corral.units import format_duration

    return format_duration(seconds)
