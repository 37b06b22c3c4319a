"""`corral apply FILE` (show the plan, then converge on the service file) and
`corral replace NAME --image NEW` (upgrade one server, keeping its data, address and name)."""

from __future__ import annotations

from pathlib import Path

import typer

from corral import models
from corral.appliances import spec as specs
from corral.appliances.plan import Plan
from corral.cli import sshkey
from corral.cli.common import console, opts, wait_op

app = typer.Typer()

MARK = {
    "create": "[green]+ create[/green]",
    "replace": "[yellow]~ replace[/yellow]",
    "remove": "[red]- remove[/red]",
    "start": "[cyan]> start[/cyan]",
    "unchanged": "[dim]= unchanged[/dim]",
}


def show_plan(plan: Plan) -> None:
    console.print(f"appliance [bold]{plan.appliance}[/bold]:")
    for step in plan.steps:
        why = f" ({'; '.join(step.reasons)})" if step.reasons else ""
        console.print(f"  {MARK[step.action]} {step.instance}{why}", highlight=False)
        for v in step.volumes:
            console.print(f"      volume: {v}", highlight=False)
    if not plan.changes:
        console.print("no changes")
        return
    counts = ", ".join(
        f"{plan.count(a)} to {a}" for a in ("create", "replace", "start", "remove") if plan.count(a)
    )
    console.print(f"plan: {counts}, {plan.count('unchanged')} unchanged")


@app.command()
def apply(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="the service file (TOML; see docs/appliances.md)"),
    plan_only: bool = typer.Option(False, "--plan", help="show the plan and change nothing"),
    no_wait: bool = typer.Option(False, "--no-wait", help="return once the work has started"),
) -> None:
    """Converge on a service file: show the plan, then create what is missing, replace what
    changed, remove what is gone. A second run changes nothing."""
    spec = specs.load(file)
    _, own = sshkey.ensure()
    for svc in spec.services.values():  # `corral ssh` reaches every instance
        if own not in svc.public_keys:
            svc.public_keys.append(own)
    c = opts(ctx).client()
    plan = c.appliance_plan(spec)
    show_plan(plan)
    if plan_only or not plan.changes:
        return
    acc = c.appliance_apply(spec)
    if acc.operation is None:
        console.print("no changes")
        return
    if no_wait:
        console.print(f"applying: operation {acc.operation.id}")
        return
    op = wait_op(c, acc.operation, f"applying {spec.name}", timeout=7200)
    done = ", ".join(
        f"{k} {' '.join(v)}"
        for k, v in op.result.items()
        if k != "appliance" and isinstance(v, list)
    )
    console.print(f"applied {spec.name}: {done or 'nothing to do'}")


@app.command()
def replace(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="the instance to upgrade"),
    image: str = typer.Option(..., "--image", "-i", help="the new image"),
    check: str | None = typer.Option(
        None,
        "--check",
        help="health check: ssh (default), a TCP port (80) or port/path for "
        "HTTP (80/health); an appliance's declared check is the default",
    ),
    timeout: float = typer.Option(
        300.0, "--timeout", help="seconds the new instance gets to pass the check"
    ),
    after_timeout: float | None = typer.Option(
        None,
        "--after-timeout",
        help="seconds it gets to pass the check at the old address after taking over "
        "(default: --timeout, at most 60)",
    ),
    no_wait: bool = typer.Option(False, "--no-wait"),
) -> None:
    """Upgrade a server by replacing it: a new instance of IMAGE with the same config gets the
    data volumes, private address and DNS name once it is healthy; on failure, roll back."""
    c = opts(ctx).client()
    req = models.ReplaceRequest(
        image=image, check=check, timeout=timeout, after_timeout=after_timeout
    )
    acc = c.instance_replace(name, req)
    assert acc.operation is not None
    if no_wait:
        console.print(f"replacing {name}: operation {acc.operation.id}")
        return
    op = wait_op(c, acc.operation, f"replacing {name} with {image}", timeout=timeout + 600)
    r = op.result
    took = r.get("cutover_seconds")
    console.print(
        f"{name} now runs {image} as {r.get('instance_id')} at {r.get('address')}; "
        f"{r.get('replaced')} was terminated"
        + (f" (cutover {took:.1f} s)" if isinstance(took, int | float) else "")
    )
