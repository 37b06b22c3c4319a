"""`corral sg …`: security groups and their rules (create, ls, show, allow, revoke, rm)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from corral import netmodels
from corral.cli.common import console, fail, opts

app = typer.Typer(
    help="Security groups: create, ls, show, allow, revoke, rm.", no_args_is_help=True
)


def parse_tags(pairs: list[str], option: str = "--tag") -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise fail(f"{option} {pair!r}: write KEY=VALUE (e.g. {option} env=prod)")
        out[key] = value
    return out


def parse_ports(text: str | None) -> tuple[int | None, int | None]:
    """``22`` or ``8000-8100`` (ICMP: ``TYPE`` or ``TYPE-CODE``, -1 for all)."""
    if text is None:
        return None, None
    first, dash, last = text.partition("-") if not text.startswith("-") else (text, "", "")
    try:
        return int(first), int(last) if dash else None
    except ValueError:
        raise fail(
            f"--port {text!r}: write a port (22) or a range (8000-8100); for ICMP, TYPE or "
            "TYPE-CODE"
        ) from None


def rule_spec(
    protocol: str,
    port: str | None,
    cidr: str | None,
    source_group: str | None,
    egress: bool,
    description: str,
) -> netmodels.RuleSpec:
    from_port, to_port = parse_ports(port)
    return netmodels.RuleSpec(
        direction="egress" if egress else "ingress",
        protocol=protocol,
        from_port=from_port,
        to_port=to_port,
        cidr=cidr,
        source_group=source_group,
        description=description,
    )


def describe(r: netmodels.SecurityGroupRule) -> tuple[str, str, str]:
    if r.from_port is None:
        ports = "all"
    elif r.protocol == "icmp":
        ports = f"type {r.from_port} code {r.to_port}".replace("-1", "all")
    else:
        ports = str(r.from_port) if r.from_port == r.to_port else f"{r.from_port}-{r.to_port}"
    proto = "all" if r.protocol == "-1" else r.protocol
    return proto, ports, r.cidr or r.source_group or "-"


@app.command("create")
def sg_create(
    ctx: typer.Context,
    name: str,
    description: str | None = typer.Option(None, "--description", "-d"),
    tag: list[str] = typer.Option([], "--tag", help="KEY=VALUE (repeatable)"),
    vpc: str | None = typer.Option(None, "--vpc", help="a VPC of yours (default: the default VPC)"),
) -> None:
    """Create a group (it allows all egress and no ingress until you `allow`)."""
    req = netmodels.SecurityGroupCreate(
        name=name, description=description, tags=parse_tags(tag), vpc=vpc
    )
    g = opts(ctx).client().security_group_create(req)
    console.print(f"security group {g.name} created ({g.id})")


@app.command("ls")
def sg_ls(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List your groups."""
    rows = opts(ctx).client().security_group_list()
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "ID", "INGRESS", "EGRESS", "DESCRIPTION"):
        table.add_column(col)
    for g in rows:
        ing = sum(r.direction == "ingress" for r in g.rules)
        table.add_row(g.name, g.id, str(ing), str(len(g.rules) - ing), g.description)
    console.print(table)


@app.command("show")
def sg_show(ctx: typer.Context, group: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """One group and its rules (by name or id)."""
    g = opts(ctx).client().security_group_show(group)
    if as_json:
        print(json.dumps(g.model_dump(mode="json"), indent=2))
        return
    console.print(f"[bold]{g.name}[/bold] {g.id}: {g.description}", highlight=False)
    if g.tags:
        console.print("tags: " + ", ".join(f"{k}={v}" for k, v in g.tags.items()))
    table = Table(box=None, header_style="bold")
    for col in ("RULE", "DIRECTION", "PROTOCOL", "PORTS", "PEER", "DESCRIPTION"):
        table.add_column(col)
    for r in g.rules:
        table.add_row(r.id, r.direction, *describe(r), r.description)
    console.print(table)


PROTO = typer.Option("tcp", "--proto", "-p", help="tcp, udp, icmp, all or a number")
PORT = typer.Option(None, "--port", help="22 or 8000-8100 (icmp: TYPE or TYPE-CODE)")
CIDR = typer.Option(None, "--cidr", help="peer addresses, e.g. 0.0.0.0/0")
FROM_GROUP = typer.Option(None, "--group", "-g", help="peer group (name or id) instead of --cidr")
EGRESS = typer.Option(False, "--egress", help="an outbound rule (default: inbound)")


@app.command("allow")
def sg_allow(
    ctx: typer.Context,
    group: str,
    protocol: str = PROTO,
    port: str | None = PORT,
    cidr: str | None = CIDR,
    source_group: str | None = FROM_GROUP,
    egress: bool = EGRESS,
    description: str = typer.Option("", "--description", "-d"),
) -> None:
    """Add a rule, e.g. `corral sg allow web --port 22 --cidr 0.0.0.0/0`; it is in force on
    the nodes when this returns."""
    spec = rule_spec(protocol, port, cidr, source_group, egress, description)
    r = opts(ctx).client().security_group_allow(group, spec)
    proto, ports, peer = describe(r)
    console.print(f"{group}: rule {r.id} allows {r.direction} {proto} {ports} {peer}")


@app.command("revoke")
def sg_revoke(
    ctx: typer.Context,
    group: str,
    rule_id: str | None = typer.Argument(None, help="a rule id (sgr-…) from `corral sg show`"),
    protocol: str = PROTO,
    port: str | None = PORT,
    cidr: str | None = CIDR,
    source_group: str | None = FROM_GROUP,
    egress: bool = EGRESS,
) -> None:
    """Remove a rule, by its id or by the same options that allowed it."""
    c = opts(ctx).client()
    if rule_id:
        if port or cidr or source_group:
            raise fail("give a rule id or --port/--cidr/--group, not both")
        c.security_group_rule_remove(group, rule_id)
        console.print(f"{group}: rule {rule_id} revoked")
        return
    c.security_group_revoke(group, rule_spec(protocol, port, cidr, source_group, egress, ""))
    console.print(f"{group}: rule revoked")


@app.command("rm")
def sg_rm(ctx: typer.Context, group: str) -> None:
    """Delete a group (refused while instances use it)."""
    opts(ctx).client().security_group_remove(group)
    console.print(f"security group {group} removed")
