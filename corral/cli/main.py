"""The `corral` entry point: global options, command groups, and one error handler that turns
any CorralError into a one-line message and a non-zero exit."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.markup import escape

from corral.cli import (
    accounts,
    appliances,
    billing,
    cluster,
    daemon,
    images,
    instances,
    keys,
    observe,
    ops,
    placement,
    quotas,
    resources,
    security_groups,
    tunnel,
    volumes,
    vpcs,
)
from corral.cli.common import Options, err_console, invalid_input
from corral.errors import CorralError

app = typer.Typer(
    help="Corral: a self-hosted cloud for lightweight, disposable virtual servers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def root(
    ctx: typer.Context,
    state_dir: Path | None = typer.Option(
        None,
        "--state-dir",
        envvar="CORRAL_STATE_DIR",
        help="state directory (default /var/lib/corral)",
    ),
    endpoint: str | None = typer.Option(
        None, "--endpoint", envvar="CORRAL_ENDPOINT", help="API URL (default from the credentials)"
    ),
) -> None:
    ctx.obj = Options(state_dir=state_dir, endpoint=endpoint)


for sub in (
    daemon.app,
    instances.app,
    appliances.app,
    tunnel.app,
    placement.capacity_app,
    observe.app,
    billing.app,
):
    for command in sub.registered_commands:
        app.registered_commands.append(command)
app.add_typer(images.app, name="image")
app.add_typer(volumes.app, name="volume")
app.add_typer(keys.app, name="key")
app.add_typer(placement.app, name="placement-group")
app.add_typer(vpcs.app, name="vpc")
app.add_typer(vpcs.subnets, name="subnet")
app.add_typer(ops.app, name="op")
cluster.register(ops.nodes)
app.add_typer(ops.nodes, name="node")
app.add_typer(accounts.app, name="account")
app.add_typer(accounts.credentials, name="credentials")
# the native commands for what EC2 had first (issue 15)
app.add_typer(security_groups.app, name="sg")
app.add_typer(resources.ips, name="ip")
app.add_typer(resources.tags, name="tag")
app.add_typer(resources.types, name="type")
app.add_typer(resources.zones, name="zone")
app.add_typer(quotas.app, name="quota")


def main() -> None:
    try:
        app()
    except CorralError as err:
        where = f" [{err.field}]" if err.field else ""
        # escaped: "[memory]" is not rich markup (it was swallowed, so the field never showed)
        err_console.print(f"[red]error:[/red] {escape(err.message + where)}", highlight=False)
        sys.exit(1)
    except ValidationError as err:  # a request the client refused to send
        err_console.print(f"[red]error:[/red] {escape(invalid_input(err))}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
