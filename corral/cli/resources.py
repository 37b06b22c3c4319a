"""`corral ip …` (elastic addresses), `corral tag …`, `corral type ls` and `corral zone ls`."""

from __future__ import annotations

import json
import re

import typer
from rich.table import Table

from corral.cli.common import console, fail, opts
from corral.cli.security_groups import parse_tags
from corral.units import format_size

ips = typer.Typer(
    help="Elastic addresses: allocate, associate, disassociate, release, ls.", no_args_is_help=True
)
tags = typer.Typer(help="Tags on any resource: ls, set, rm.", no_args_is_help=True)
types = typer.Typer(help="Instance types.", no_args_is_help=True)
zones = typer.Typer(help="Availability zones.", no_args_is_help=True)

ID = re.compile(r"^[a-z]+-[0-9a-f]{8,17}$")


@ips.command("allocate")
def ip_allocate(
    ctx: typer.Context, tag: list[str] = typer.Option([], "--tag", help="KEY=VALUE")
) -> None:
    """Take a public address from the pool."""
    a = opts(ctx).client().address_allocate(parse_tags(tag))
    console.print(f"address {a.public_ip} allocated ({a.id})")


@ips.command("ls")
def ip_ls(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List your addresses and where they point."""
    rows = opts(ctx).client().address_list()
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    table = Table(box=None, header_style="bold")
    for col in ("ADDRESS", "ID", "INSTANCE", "PRIVATE-IP", "TAGS"):
        table.add_column(col)
    for a in rows:
        table.add_row(
            a.public_ip,
            a.id,
            (a.instance_name or a.instance_id) if a.instance_id else "-",
            a.private_ip or "-",
            ",".join(f"{k}={v}" for k, v in a.tags.items()) or "-",
        )
    console.print(table)


@ips.command("show")
def ip_show(ctx: typer.Context, address: str) -> None:
    """One address (public IP or allocation id) as JSON."""
    print(json.dumps(opts(ctx).client().address_show(address).model_dump(mode="json"), indent=2))


@ips.command("associate")
def ip_associate(
    ctx: typer.Context,
    address: str = typer.Argument(..., help="public IP or allocation id"),
    instance: str = typer.Argument(..., help="instance name or id"),
    force: bool = typer.Option(False, "--force", help="move it from another instance"),
) -> None:
    """Point an address at an instance (NAT in force when this returns)."""
    a = opts(ctx).client().address_associate(address, instance, allow_reassociation=force)
    console.print(f"address {a.public_ip} -> {a.instance_name or a.instance_id} ({a.private_ip})")


@ips.command("disassociate")
def ip_disassociate(ctx: typer.Context, address: str) -> None:
    a = opts(ctx).client().address_disassociate(address)
    console.print(f"address {a.public_ip} is not associated")


@ips.command("release")
def ip_release(ctx: typer.Context, address: str) -> None:
    """Give the address back to the pool (disassociate it first)."""
    opts(ctx).client().address_release(address)
    console.print(f"address {address} released")


def _resource(ctx: typer.Context, ref: str) -> str:
    """An id as given; anything else is an instance name."""
    return ref if ID.match(ref) else opts(ctx).client().instance_show(ref).id


@tags.command("ls")
def tag_ls(
    ctx: typer.Context,
    resources: list[str] = typer.Argument(None, help="ids or instance names (default: all)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Tags of your resources."""
    rids = [_resource(ctx, r) for r in resources or []]
    rows = opts(ctx).client().tag_list(rids)
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    table = Table(box=None, header_style="bold")
    for col in ("RESOURCE", "TYPE", "KEY", "VALUE"):
        table.add_column(col)
    for t in rows:
        table.add_row(t.resource_id, t.resource_type, t.key, t.value)
    console.print(table)


@tags.command("set")
def tag_set(
    ctx: typer.Context,
    resource: str = typer.Argument(..., help="an id (i-, vol-, sg-, eipalloc- …) or instance name"),
    pairs: list[str] = typer.Argument(..., help="KEY=VALUE …"),
) -> None:
    """Set tags on a resource, e.g. `corral tag set web1 service=shop env=prod`."""
    wanted = parse_tags(pairs, "tag")
    opts(ctx).client().tag_set([_resource(ctx, resource)], wanted)
    console.print(f"{resource}: {', '.join(f'{k}={v}' for k, v in wanted.items())}")


@tags.command("rm")
def tag_rm(
    ctx: typer.Context,
    resource: str,
    keys: list[str] = typer.Argument(None, help="keys to remove"),
    remove_all: bool = typer.Option(False, "--all", help="every tag of the resource"),
) -> None:
    """Remove tags by key (or --all)."""
    if bool(keys) == remove_all:
        raise fail("name the keys to remove, or --all (not both)")
    opts(ctx).client().tag_remove([_resource(ctx, resource)], None if remove_all else keys)
    console.print(f"{resource}: {'every tag' if remove_all else ', '.join(keys)} removed")


@types.command("ls")
def type_ls(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """The instance types: vCPUs, the host cores they may use, memory."""
    rows = opts(ctx).client().instance_type_list()
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "VCPUS", "CORES", "MEMORY", "BURSTABLE", "DESCRIPTION"):
        table.add_column(col)
    for t in rows:
        table.add_row(
            t.name,
            str(t.vcpus),
            f"{t.cores:g}",
            format_size(t.memory),
            "yes" if t.burstable else "no",
            t.description,
        )
    console.print(table)


@zones.command("ls")
def zone_ls(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """The zones and how many nodes are up in each."""
    rows = opts(ctx).client().zone_list()
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    table = Table(box=None, header_style="bold")
    for col in ("ZONE", "REGION", "STATE", "NODES"):
        table.add_column(col)
    for z in rows:
        table.add_row(z.name, z.region, z.state, str(z.nodes))
    console.print(table)
