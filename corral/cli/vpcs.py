"""`corral vpc …` and `corral subnet …`: private networks (issue 12). Every account has a
default VPC with a default subnet per zone; `corral run --subnet` picks another subnet."""

from __future__ import annotations

import typer
from rich.table import Table

from corral import models
from corral.cli.common import console, opts

app = typer.Typer(help="VPCs: an account's private networks.", no_args_is_help=True)
subnets = typer.Typer(help="Subnets: a VPC's CIDR ranges, one zone each.", no_args_is_help=True)


@app.command("ls")
def vpc_ls(ctx: typer.Context) -> None:
    """List your VPCs (the default one is made on first use)."""
    table = Table(box=None, header_style="bold")
    for col in ("ID", "CIDR", "DEFAULT", "SUBNETS", "GATEWAY"):
        table.add_column(col)
    for v in opts(ctx).client().vpc_list():
        table.add_row(
            v.id,
            v.cidr,
            "yes" if v.is_default else "",
            str(len(v.subnets)),
            v.internet_gateway or "",
        )
    console.print(table)


HOSTNAMES_HELP = "its instances get names in the VPC's DNS (<name>.<domain>)"


@app.command("create")
def vpc_create(
    ctx: typer.Context,
    cidr: str,
    dns_hostnames: bool = typer.Option(
        True, "--dns-hostnames/--no-dns-hostnames", help=HOSTNAMES_HELP
    ),
) -> None:
    """Create a VPC with an IPv4 CIDR from /16 to /28 (e.g. 10.0.0.0/16)."""
    v = opts(ctx).client().vpc_create(models.VpcCreate(cidr=cidr, dns_hostnames=dns_hostnames))
    console.print(f"vpc {v.id} ({v.cidr})")


@app.command("set")
def vpc_set(
    ctx: typer.Context,
    vpc_id: str,
    dns_hostnames: bool = typer.Option(
        ..., "--dns-hostnames/--no-dns-hostnames", help=HOSTNAMES_HELP
    ),
) -> None:
    """Change a VPC: names for its instances in its DNS, or none (the default VPC keeps them)."""
    v = opts(ctx).client().vpc_update(vpc_id, models.VpcUpdate(dns_hostnames=dns_hostnames))
    console.print(f"vpc {v.id}: dns hostnames {v.dns_hostnames}")


@app.command("show")
def vpc_show(ctx: typer.Context, vpc_id: str) -> None:
    """A VPC, its subnets and its internet gateway."""
    v = opts(ctx).client().vpc_show(vpc_id)
    console.print(f"{v.id}: {v.cidr}{' (default)' if v.is_default else ''}")
    console.print(f"  dns support {v.dns_support}, dns hostnames {v.dns_hostnames}")
    console.print(f"  internet gateway {v.internet_gateway or '-'}")
    for sid in v.subnets:
        console.print(f"  subnet {sid}")


@app.command("rm")
def vpc_rm(ctx: typer.Context, vpc_id: str) -> None:
    """Remove a VPC without subnets or an attached gateway."""
    opts(ctx).client().vpc_remove(vpc_id)
    console.print(f"removed vpc {vpc_id}")


@subnets.command("ls")
def subnet_ls(ctx: typer.Context) -> None:
    """List your subnets."""
    table = Table(box=None, header_style="bold")
    for col in ("ID", "VPC", "CIDR", "ZONE", "DEFAULT"):
        table.add_column(col)
    for s in opts(ctx).client().subnet_list():
        table.add_row(s.id, s.vpc_id, s.cidr, s.zone, "yes" if s.is_default else "")
    console.print(table)


@subnets.command("create")
def subnet_create(
    ctx: typer.Context,
    vpc_id: str,
    cidr: str,
    zone: str | None = typer.Option(None, "--zone", help="availability zone (default: first)"),
) -> None:
    """Create a subnet of a VPC: a CIDR inside it, apart from its other subnets."""
    s = opts(ctx).client().subnet_create(models.SubnetCreate(vpc=vpc_id, cidr=cidr, zone=zone))
    console.print(f"subnet {s.id} ({s.cidr} in {s.zone}, vpc {s.vpc_id})")


@subnets.command("show")
def subnet_show(ctx: typer.Context, subnet_id: str) -> None:
    """A subnet and its live instances."""
    s = opts(ctx).client().subnet_show(subnet_id)
    console.print(
        f"{s.id}: {s.cidr} in {s.zone}, vpc {s.vpc_id}{' (default)' if s.is_default else ''}"
    )
    for iid in s.instances:
        console.print(f"  {iid}")


@subnets.command("rm")
def subnet_rm(ctx: typer.Context, subnet_id: str) -> None:
    """Remove a subnet without instances."""
    opts(ctx).client().subnet_remove(subnet_id)
    console.print(f"removed subnet {subnet_id}")
