"""`corral node token` (on the controller) and `corral node join` (on the new host)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import json
import ssl

import httpx
import typer
from rich.table import Table

from corral import config, pki
from corral.cli.common import console, fail, opts
from corral.errors import CorralError
from corral.fsutil import atomic_write, atomic_write_json
from corral.units import format_size

DEFAULT_AGENT_PORT = 8774


def register(nodes: typer.Typer) -> None:
    nodes.command("ls")(node_ls)
    nodes.command("show")(node_show)
    nodes.command("label")(node_label)
    nodes.command("cordon")(node_cordon)
    nodes.command("uncordon")(node_uncordon)
    nodes.command("rm")(node_rm)
    nodes.command("token")(token)
    nodes.command("join")(join)


def _ago(when: dt.datetime | None) -> str:
    if when is None:
        return "never"
    return f"{max(0.0, (dt.datetime.now(dt.UTC) - when).total_seconds()):.0f}s ago"


def node_ls(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Nodes: state (ready, cordoned, unreachable), zone, capacity free, instances, heartbeat."""
    nodes = opts(ctx).client().node_list()
    if as_json:
        print(json.dumps([n.model_dump(mode="json") for n in nodes], indent=2))
        return
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "STATE", "ZONE", "ADDRESS", "CPUS", "CORES FREE", "MEMORY",
                "MEM FREE", "ACCEL", "INSTANCES", "HEARTBEAT"):  # fmt: skip
        table.add_column(col)
    for n in nodes:
        table.add_row(
            n.name, n.state, n.zone, n.address, str(n.cpus), f"{n.cores_free:g}",
            format_size(n.memory), format_size(max(0, n.memory_free)), n.accel,
            str(n.instances), _ago(n.last_seen),
        )  # fmt: skip
    console.print(table)


def node_show(ctx: typer.Context, ref: str) -> None:
    """One node (by name or id), as JSON."""
    print(opts(ctx).client().node_show(ref).model_dump_json(indent=2))


def node_label(
    ctx: typer.Context,
    ref: str,
    labels: list[str] = typer.Argument(..., help="key=value to set, key- to remove"),
) -> None:
    """Set (key=value) or remove (key-) a node's labels (what --node-selector matches)."""
    add = _labels([x for x in labels if not x.endswith("-")])
    remove = [x[:-1] for x in labels if x.endswith("-")]
    n = opts(ctx).client().node_update(ref, add, remove)
    console.print(
        f"{n.name}: " + (", ".join(f"{k}={v}" for k, v in n.labels.items()) or "no labels")
    )


def node_cordon(ctx: typer.Context, ref: str) -> None:
    """Take no new instances on this node (what runs there stays)."""
    n = opts(ctx).client().node_cordon(ref, True)
    console.print(f"{n.name} is {n.state}")


def node_uncordon(ctx: typer.Context, ref: str) -> None:
    """Let the node take new instances again."""
    n = opts(ctx).client().node_cordon(ref, False)
    console.print(f"{n.name} is {n.state}")


def node_rm(
    ctx: typer.Context,
    ref: str,
    force: bool = typer.Option(False, "--force", help="even with instances (recorded terminated)"),
) -> None:
    """Forget a node; refused while it has instances unless --force."""
    opts(ctx).client().node_remove(ref, force)
    console.print(f"node {ref} removed")


def token(
    ctx: typer.Context,
    ttl: str = typer.Option("1h", help="how long the token is valid: 90s, 15m, 1h, 2d (max 7d)"),
) -> None:
    """Print a single-use token that lets one host join (admin)."""
    t = opts(ctx).client().node_token(ttl)
    console.print(t.token, soft_wrap=True, highlight=False)
    console.print(
        f"[dim]valid until {t.expires_at:%Y-%m-%d %H:%M:%S} UTC, once. On the new host:\n"
        f"  corral node join {t.api_url} --token {t.token} --listen ADDRESS:{DEFAULT_AGENT_PORT}"
        "[/dim]",
        soft_wrap=True,
        highlight=False,
    )


def _labels(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key:
            raise fail(f"--label {v!r}: give it as key=value")
        out[key] = value
    return out


def _listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
        ok = bool(sep) and port.isdigit() and 0 < int(port) < 65536 and not ip.is_unspecified
    except ValueError:
        ok = False
    if not ok:
        raise fail(
            f"--listen {value!r}: give the address other hosts reach this one at, with a port "
            f"(e.g. --listen 192.0.2.11:{DEFAULT_AGENT_PORT}); not 0.0.0.0"
        )
    return f"https://{host}:{port}"


def _answer_error(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {resp.status_code}: {resp.text[:200]}"


def join(
    ctx: typer.Context,
    url: str = typer.Argument(..., help="the controller's API URL (https://…)"),
    token_: str = typer.Option(..., "--token", help="from `corral node token` on the controller"),
    listen: str = typer.Option(
        ...,
        help=f"ADDRESS:PORT the agent serves on, reached by the controller (port {DEFAULT_AGENT_PORT})",
    ),
    name: str | None = typer.Option(None, help="node name (default: the host name)"),
    zone: str | None = typer.Option(None, help="availability zone (default: the controller's)"),
    label: list[str] = typer.Option([], "--label", help="key=value, repeatable"),
    accel: str | None = typer.Option(None, help="auto, kvm or tcg (default auto: probed)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Join this host to a cluster and run its node agent (in the foreground; run it again as
    `corral agent` after a restart)."""
    from corral import agentd

    o = opts(ctx)
    try:
        settings = config.load(o.state_dir, accel=accel)
        _, fp = pki.split_token(token_)
    except CorralError as err:
        raise fail(err.message) from err
    node_name = (name or settings.hostname).lower()
    address = _listen(listen)
    labels = _labels(label)
    base = url.rstrip("/")
    if not base.startswith("https://"):
        raise fail(f"{url}: the controller's API is https://… in a cluster (`corral up --host`)")
    state = settings.state_dir
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    d = agentd.pki_dir(state)
    d.mkdir(mode=0o700, exist_ok=True)
    # who is the controller? its CA, checked against the fingerprint the token carries
    try:
        ca_pem = httpx.get(f"{base}/v1/cluster/ca.crt", verify=False, timeout=30).text
        ok = pki.fingerprint(ca_pem) == fp
    except (httpx.HTTPError, ValueError) as err:
        raise fail(f"cannot reach the controller at {base} ({err})") from err
    if not ok:
        raise fail(
            f"the controller at {base} is not the one that made this token (its CA fingerprint "
            "differs); check the URL, or make a token there with `corral node token`"
        )
    atomic_write(d / "ca.crt", ca_pem, 0o644)
    key = pki.new_key()
    request = pki.csr(key, node_name)
    body = {
        "token": token_,
        "certificate_request": request.decode(),
        "name": node_name,
        "address": address,
        "zone": zone,
        "labels": labels,
    }
    verify = ssl.create_default_context(cafile=str(d / "ca.crt"))
    try:
        resp = httpx.post(f"{base}/v1/nodes/join", json=body, verify=verify, timeout=60)
    except httpx.HTTPError as err:
        raise fail(f"cannot reach the controller at {base} ({err})") from err
    if resp.status_code >= 400:
        raise fail(f"the controller refused the join: {_answer_error(resp)}")
    answer = resp.json()
    atomic_write(d / "node.key", pki.key_pem(key), 0o600)
    atomic_write(d / "node.crt", answer["certificate"], 0o644)
    atomic_write(d / "ca.crt", answer["ca_certificate"], 0o644)
    atomic_write_json(
        agentd.node_file(state),
        {
            "controller": base,
            "node_id": answer["node_id"],
            "name": node_name,
            "address": address,
            "zone": zone,
            "labels": labels,
        },
    )
    console.print(
        f"joined {base} as node {node_name} ({answer['node_id']}); serving {address}. "
        f"CA bundle: {d / 'ca.crt'} (for the CLI: CORRAL_CA_BUNDLE). "
        f"After a restart: corral --state-dir {state} agent",
        soft_wrap=True,
        highlight=False,
    )
    try:
        agentd.main(dataclasses.replace(settings, node_name=node_name), address, verbose)
    except CorralError as err:
        raise fail(err.message) from err
