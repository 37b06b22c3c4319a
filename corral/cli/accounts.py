"""`corral account …` and `corral credentials create`: accounts and access keys, printed with
a ready AWS CLI profile so boto3 and `aws` work against Corral at once."""

from __future__ import annotations

import typer
from rich.table import Table

from corral import models
from corral.cli.common import console, opts

app = typer.Typer(help="Accounts (admin): create, list.", no_args_is_help=True)
credentials = typer.Typer(
    help="Access keys: create one and print an AWS CLI profile.", no_args_is_help=True
)


def profile_snippet(key: models.AccessKeyCreated, endpoint: str) -> str:
    name = f"corral-{key.account_name}"
    return f"""\
access key for account {key.account_name} ({key.account_id}); the secret is shown only now.

  aws_access_key_id     = {key.access_key_id}
  aws_secret_access_key = {key.secret_access_key}

# ~/.aws/credentials
[{name}]
aws_access_key_id = {key.access_key_id}
aws_secret_access_key = {key.secret_access_key}

# ~/.aws/config
[profile {name}]
region = {key.region}
endpoint_url = {endpoint}

# then:  aws --profile {name} ec2 describe-instances
# (or pass --endpoint-url {endpoint}; boto3:
#  boto3.Session(profile_name="{name}").client("ec2"))"""


@app.command("create")
def account_create(ctx: typer.Context, name: str) -> None:
    """Create an account with a first access key, and print its AWS CLI profile."""
    c = opts(ctx).client()
    made = c.account_create(name)
    print(profile_snippet(made.key, c.creds.endpoint))


@app.command("ls")
def account_ls(ctx: typer.Context) -> None:
    """List accounts."""
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "ID", "ADMIN", "CREATED"):
        table.add_column(col)
    for a in opts(ctx).client().account_list():
        table.add_row(a.name, a.id, "yes" if a.admin else "", f"{a.created_at:%Y-%m-%d %H:%M}")
    console.print(table)


@credentials.command("create")
def credentials_create(
    ctx: typer.Context,
    account: str | None = typer.Option(
        None, "--account", "-a", help="account name or id (default: your own)"
    ),
) -> None:
    """Create an access key and print it with a ready AWS CLI profile."""
    c = opts(ctx).client()
    print(profile_snippet(c.credentials_create(account), c.creds.endpoint))


@credentials.command("delete")
def credentials_delete(
    ctx: typer.Context, key_id: str = typer.Argument(..., help="the access key id")
) -> None:
    """Delete an access key (a non-admin account holds at most two; this frees one)."""
    opts(ctx).client().credentials_delete(key_id)
    console.print(f"access key {key_id} deleted")
