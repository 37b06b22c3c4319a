"""Instance commands in the spirit of `xm`: run, ls, show, ssh, console, logs, stop, start,
reboot, rm."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import sys
import time
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.table import Table

from corral import models
from corral.cli import sshkey, tunnel
from corral.cli.common import ago, console, err_console, fail, invalid_input, opts, wait_op
from corral.errors import CorralError
from corral.images import fields
from corral.units import format_size

app = typer.Typer()

DETACH_KEY = b"\x1d"  # Ctrl-]


def _keys(values: list[str]) -> tuple[list[str], list[str]]:
    """Split --key values into key-pair names and public keys read from files. A file is named
    as a path (with a /, or ~) or ends in .pub; anything else is a key pair name, even when a
    local file has that name (reading it would send a file the user never meant to send)."""
    names, inline = [], []
    for v in values:
        path = Path(v).expanduser()
        if path.suffix == ".pub" or "/" in v or v.startswith("~"):
            if not path.is_file():
                raise fail(
                    f"key file {v} does not exist; give a public key file "
                    "(e.g. ~/.ssh/id_ed25519.pub) or a key pair name"
                )
            inline.append(path.read_text().strip())
        else:
            names.append(v)
    return names, inline


def _pairs(values: list[str], option: str) -> dict[str, str]:
    out = {}
    for v in values:
        k, sep, val = v.partition("=")
        if not sep or not k:
            raise fail(f"{option} {v!r} must be KEY=VALUE (e.g. {option} disk=ssd)")
        out[k] = val
    return out


@app.command()
def run(
    ctx: typer.Context,
    image: str = typer.Argument(..., help="image name (tiny), name:version or ami- id"),
    name: str | None = typer.Option(None, "--name", "-n"),
    instance_type: str | None = typer.Option(
        None,
        "--type",
        "-t",
        help="an instance type (cr1.nano … cr1.large): sets CPUs, CPU share and memory",
    ),
    cpus: int = typer.Option(1, "--cpus", "-c"),
    memory: str = typer.Option("256M", "--memory", "-m"),
    disk: str | None = typer.Option(None, "--disk", help="root disk size (default: the image's)"),
    key: list[str] = typer.Option(
        [], "--key", "-k", help="a key pair name or a public key file; repeatable"
    ),
    user_data: Path | None = typer.Option(None, "--user-data", help="a script run at first boot"),
    restart: str = typer.Option("on-failure", help="always, on-failure or never"),
    address: str | None = typer.Option(None, help="a fixed private address"),
    net_limit: float | None = typer.Option(
        None, "--net-limit", help="bandwidth cap each way, in Mbit/s"
    ),
    imds_tokens: str = typer.Option(
        "optional", "--imds-tokens", help="IMDSv2 tokens optional or required"
    ),
    imds_hop_limit: int = typer.Option(
        1, "--imds-hop-limit", help="IP hops an IMDSv2 token may travel"
    ),
    zone: str | None = typer.Option(None, "--zone", help="the availability zone to run in"),
    node: str | None = typer.Option(None, "--node", help="pin to this node (name or id)"),
    node_selector: list[str] = typer.Option(
        [], "--node-selector", help="k=v: a label the node must carry; repeatable"
    ),
    placement_group: str | None = typer.Option(
        None, "--placement-group", help="a placement group (`corral placement-group create`)"
    ),
    subnet: str | None = typer.Option(
        None, "--subnet", help="the subnet (subnet- id; default: the default VPC's)"
    ),
    tag: list[str] = typer.Option([], "--tag", help="k=v: a tag on the instance; repeatable"),
    sg: list[str] = typer.Option(
        [], "--sg", help="a security group (`corral sg create`); repeatable; default: default"
    ),
    ha: bool = typer.Option(
        False,
        "--ha",
        help="high availability: disks replicated to a second node, restarted "
        "there if this one dies",
    ),
    no_wait: bool = typer.Option(False, "--no-wait", help="return at once with the operation"),
) -> None:
    """Run a new instance."""
    c = opts(ctx).client()
    names, inline = _keys(key)
    _, own = sshkey.ensure()
    inline.append(own)
    ud = None
    if user_data is not None:
        if not user_data.is_file():
            raise fail(f"user-data file {user_data} does not exist")
        ud = user_data.read_text()
    try:
        req = models.InstanceCreate(
            image=image,
            name=name,
            instance_type=instance_type,
            cpus=cpus,
            memory=memory,
            disk=disk,
            keys=names,
            public_keys=inline,
            user_data=ud,
            restart_policy=restart,
            address=address,  # type: ignore[arg-type]
            net_limit_mbit=net_limit,
            metadata_tokens=imds_tokens,  # type: ignore[arg-type]
            metadata_hop_limit=imds_hop_limit,
            zone=zone,
            node=node,
            node_selector=_pairs(node_selector, "--node-selector"),
            placement_group=placement_group,
            subnet=subnet,
            tags=_pairs(tag, "--tag"),
            security_groups=sg,
            ha=ha,
        )
    except ValidationError as err:
        raise fail(invalid_input(err)) from err
    try:
        acc = c.instance_run(req)
    except CorralError as err:
        if err.field == "keys" and names:
            raise fail(
                f"{err.message}; to use a public key file, give its path "
                f"(./{names[0]} or a name ending in .pub)"
            ) from err
        raise
    inst = acc.instance
    if no_wait or acc.operation is None:
        op_id = acc.operation.id if acc.operation else "-"
        console.print(f"{inst.name} ({inst.id}) {inst.state}; operation {op_id}")
        return
    wait_op(c, acc.operation, f"starting {inst.name}")
    inst = c.instance_show(inst.id)
    console.print(
        f"{inst.name} ({inst.id}) is {inst.state} at {inst.private_ip}; "
        f"`corral ssh {inst.name}` to log in"
    )


def _uptime(i: models.Instance) -> str:
    if i.state != "running" or i.started_at is None:
        return "-"
    return ago((dt.datetime.now(dt.UTC) - i.started_at).total_seconds())


@app.command("ls")
def ls(
    ctx: typer.Context,
    all: bool = typer.Option(False, "--all", "-a", help="include terminated instances"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List instances: name, id, state, node, cpus, memory, address, uptime."""
    rows = opts(ctx).client().instance_list(all=all)
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2))
        return
    table = Table(box=None, header_style="bold")
    ha = any(i.ha for i in rows)  # the replica column only where HA instances exist
    cols = ["NAME", "ID", "STATE", "NODE", "CPUS", "MEMORY", "ADDRESS", "IMAGE", "UPTIME"]
    for col in cols + (["REPLICA"] if ha else []):
        table.add_column(col)
    colors = {"running": "green", "stopped": "yellow", "terminated": "dim", "pending": "cyan"}
    for i in rows:
        color = colors.get(i.state, "white")
        extra = [replica_text(i)] if ha else []
        table.add_row(
            i.name,
            i.id,
            f"[{color}]{i.state}[/{color}]",
            (i.node or "-").removeprefix("node-"),
            str(i.cpus),
            format_size(i.memory),
            i.private_ip or "-",
            i.image_name or i.image_id,
            _uptime(i),
            *extra,
        )
    console.print(table)


def replica_text(i: models.Instance) -> str:
    """An HA instance's replica in a few words: ``in-sync → node-b``, ``syncing 42% → …``."""
    if not i.ha:
        return "-"
    state = i.replica_state or "pending"
    if state == "syncing":
        state = f"syncing {i.replica_percent:.0f}%"
    return f"{state} → {(i.secondary_node or '?').removeprefix('node-')}"


@app.command()
def show(ctx: typer.Context, name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Everything about one instance."""
    i = opts(ctx).client().instance_show(name)
    if as_json:
        print(i.model_dump_json(indent=2))
        return
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in i.model_dump().items():
        if k in ("memory", "disk_size"):
            v = format_size(v)
        elif isinstance(v, dt.datetime):
            v = v.strftime("%Y-%m-%d %H:%M:%S UTC")
        table.add_row(k, "-" if v in (None, "") else str(v))
    table.add_row("uptime", _uptime(i))
    if i.state == "running":
        with contextlib.suppress(CorralError):  # it may stop between the two calls
            c = opts(ctx).client().instance_confinement(i.id)
            table.add_row("qemu user", f"uid {c.uid} gid {c.gid}, capabilities {c.capabilities}")
            table.add_row("qemu sandbox", f"seccomp {c.seccomp}: {c.sandbox or 'off'}")
            table.add_row("qemu jail", c.jail or "none (the host's root)")
            table.add_row("qemu cgroup", c.cgroup)
            table.add_row("qemu devices", c.devices)
            table.add_row("qemu block io", c.block_io)
    with contextlib.suppress(CorralError):
        cr = opts(ctx).client().instance_credits(i.id)
        if cr.burstable:
            table.add_row(
                "cpu", f"baseline {cr.baseline:g} of a core, bursting to {cr.ceiling:g} ({cr.mode})"
            )
            if cr.balance is not None:
                state = ", held to its baseline" if cr.held else ""
                table.add_row(
                    "cpu credits",
                    f"{cr.balance:.1f} of {cr.maximum or 0:.0f} core-seconds{state}"
                    + (f", surplus {cr.surplus:.1f}" if cr.surplus else ""),
                )
    console.print(table)


def ssh_argv(
    proxy: str,
    login: str,
    key: Path,
    inst_id: str,
    identity: Path | None,
    tty: bool,
    command: list[str],
) -> list[str]:
    """ssh's argv: options (the API tunnel as ProxyCommand), then ``--``, then the destination
    and the command. The login is checked to be a user name, so nothing an image or a user
    names becomes an ssh option."""
    if not re.fullmatch(fields.DEFAULT_USER, login or ""):
        raise fail(
            f"user {login!r} is not a user name (1-32 lower-case letters, digits, '_' or '-', "
            "starting with a letter or '_'); give another with -l"
        )
    argv = [
        "ssh",
        "-i",
        str(key),
        "-o",
        f"ProxyCommand={proxy}",
        "-o",
        f"UserKnownHostsFile={sshkey.KNOWN_HOSTS}",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        f"HostKeyAlias={inst_id}",
        "-o",
        "LogLevel=ERROR",
    ]
    if identity is not None:
        argv += ["-i", str(identity)]
    if not tty:
        argv.append("-T")
    return [*argv, "-l", login, "--", inst_id, *command]


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ssh(
    ctx: typer.Context,
    name: str,
    identity: Path | None = typer.Option(None, "-i", help="another private key to offer"),
    user: str | None = typer.Option(None, "-l", help="user (default: the image's)"),
    wait: float = typer.Option(90, help="seconds to wait for SSH to answer"),
) -> None:
    """SSH into an instance, through the API's authenticated stream to its port 22 (nothing
    listens on the host). Put a command after `--` to run it instead of a shell."""
    c = opts(ctx).client()
    inst = c.instance_show(name)
    if inst.state != "running":
        raise fail(f"instance {inst.name} is {inst.state}; start it first")
    if not tunnel.wait_banner(c, inst.id, 22, wait):
        raise fail(
            f"SSH on {name} ({inst.private_ip}) did not answer within {wait:.0f} s; "
            f"see `corral logs {name}`"
        )
    if user is None:
        user = "root"
        with contextlib.suppress(CorralError):
            user = c.image_show(inst.image_id).default_user
    key, _ = sshkey.ensure()
    extra = list(ctx.args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    argv = ssh_argv(
        tunnel.proxy_command(inst.id, 22), user, key, inst.id, identity, sys.stdin.isatty(), extra
    )
    # the tunnel (ssh's child) finds the same API and credentials in its environment, never
    # on its command line, which every local user can read
    os.environ.update(
        {
            "CORRAL_ENDPOINT": c.creds.endpoint,
            "CORRAL_ACCESS_KEY": c.creds.access_key_id,
            "CORRAL_SECRET_KEY": c.creds.secret_access_key,
        }
    )
    if c.creds.ca_bundle:  # an https API: the tunnel verifies it with the same CA
        os.environ["CORRAL_CA_BUNDLE"] = c.creds.ca_bundle
    sys.stdout.flush()
    try:
        os.execvp("ssh", argv)
    except FileNotFoundError as err:
        raise fail("ssh is not installed; apt-get install openssh-client") from err


@app.command("console")
def console_cmd(ctx: typer.Context, name: str) -> None:
    """Attach to the serial console. Ctrl-] detaches."""
    import termios
    import threading
    import tty

    from websockets.exceptions import ConnectionClosed

    c = opts(ctx).client()
    inst = c.instance_show(name)
    stack = contextlib.ExitStack()
    try:
        ws = stack.enter_context(c.stream(c.console_url(inst.id)))
    except CorralError as err:
        raise fail(f"cannot attach to the console of {name}: {err.message}") from err
    interactive = sys.stdin.isatty()
    err_console.print(f"[dim]connected to {name}'s console; Ctrl-] detaches[/dim]")
    old = termios.tcgetattr(sys.stdin) if interactive else None
    done = threading.Event()

    def pump_in() -> None:
        fd = sys.stdin.fileno()
        try:
            while not done.is_set():
                data = os.read(fd, 1024)
                if not data or DETACH_KEY in data:
                    data = data.split(DETACH_KEY)[0]
                    if data:
                        ws.send(data)
                    break
                ws.send(data)
        except (OSError, ConnectionClosed):
            pass
        finally:
            done.set()
            ws.close()

    try:
        if interactive:
            tty.setraw(sys.stdin.fileno())
        threading.Thread(target=pump_in, daemon=True).start()
        while not done.is_set():
            try:
                msg = ws.recv(timeout=0.5)
            except TimeoutError:
                continue
            except ConnectionClosed:
                break
            out = msg if isinstance(msg, bytes) else msg.encode()
            os.write(sys.stdout.fileno(), out)
    finally:
        done.set()
        stack.close()
        if old is not None:
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, old)
    err_console.print("\n[dim]detached[/dim]")


@app.command()
def logs(
    ctx: typer.Context,
    name: str,
    tail: int = typer.Option(65536, help="bytes from the end"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new output"),
) -> None:
    """The console output so far (boot messages, logins, user-data)."""
    c = opts(ctx).client()
    text = c.instance_console_output(name, tail)
    sys.stdout.write(text)
    sys.stdout.flush()
    while follow:
        time.sleep(1)
        new = c.instance_console_output(name, tail)
        if new != text:
            # print what follows the old text's end (the log only grows)
            overlap = text[-4096:]
            idx = new.rfind(overlap) if overlap else -1
            sys.stdout.write(new[idx + len(overlap) :] if idx >= 0 else new)
            sys.stdout.flush()
            text = new


def _lifecycle(
    ctx: typer.Context, names: list[str], verb: str, no_wait: bool, **kw: object
) -> None:
    c = opts(ctx).client()
    call = {
        "stop": c.instance_stop,
        "start": c.instance_start,
        "reboot": c.instance_reboot,
        "rm": c.instance_terminate,
    }[verb]
    pending = []
    failed = 0
    for name in names:
        try:
            acc = call(name, **kw)  # type: ignore[operator]
        except CorralError as err:
            err_console.print(f"[red]error:[/red] {name}: {err.message}")
            failed += 1
            continue
        if acc.operation is None:
            console.print(f"{acc.instance.name}: already {acc.instance.state}")
        else:
            pending.append((acc.instance.name, acc.operation))
    for name, op in pending:
        if no_wait:
            console.print(f"{name}: {verb} requested (operation {op.id})")
            continue
        try:
            done = wait_op(c, op, f"{verb} {name}")
            how = done.result.get("how")
            done_word = {
                "rm": "terminated",
                "stop": "stopped",
                "start": "started",
                "reboot": "rebooted",
            }[verb]
            console.print(f"{name}: {done_word}" + (f" ({how})" if how else ""))
        except CorralError as err:
            err_console.print(f"[red]error:[/red] {err.message}")
            failed += 1
    if failed:
        raise typer.Exit(1)


@app.command()
def rename(ctx: typer.Context, name: str, new_name: str) -> None:
    """Give an instance a new name; its DNS names follow at once."""
    inst = opts(ctx).client().instance_update(name, name=new_name)
    console.print(f"{name} is now {inst.name} ({inst.hostname})")


@app.command()
def stop(
    ctx: typer.Context,
    names: list[str],
    timeout: float | None = typer.Option(None, help="seconds before forcing (default 30)"),
    force: bool = typer.Option(False, "--force", "-f", help="power off at once"),
    no_wait: bool = typer.Option(False, "--no-wait"),
) -> None:
    """Stop instances: ACPI power-off, forced after the timeout."""
    _lifecycle(ctx, names, "stop", no_wait, timeout=timeout, force=force)


@app.command()
def start(
    ctx: typer.Context, names: list[str], no_wait: bool = typer.Option(False, "--no-wait")
) -> None:
    """Start stopped instances."""
    _lifecycle(ctx, names, "start", no_wait)


@app.command()
def reboot(
    ctx: typer.Context,
    names: list[str],
    timeout: float | None = typer.Option(None, help="seconds before a hard reset"),
    no_wait: bool = typer.Option(False, "--no-wait"),
) -> None:
    """Reboot instances (Ctrl-Alt-Del to the guest, a hard reset after the timeout)."""
    _lifecycle(ctx, names, "reboot", no_wait, timeout=timeout)


@app.command()
def migrate(
    ctx: typer.Context,
    name: str,
    to: str | None = typer.Option(None, "--to", help="the destination node (default: chosen)"),
    timeout: float | None = typer.Option(
        None, help="seconds before the migration is called off and the instance stays (600)"
    ),
    no_wait: bool = typer.Option(False, "--no-wait"),
) -> None:
    """Move a running instance to another node while it runs, its disks with it. A migration
    that does not finish within the timeout is called off: the instance runs on where it was."""
    c = opts(ctx).client()
    try:
        acc = c.instance_migrate(name, to, timeout)
    except ValidationError as err:
        raise fail(invalid_input(err)) from err
    except CorralError as err:
        raise fail(err.message) from err
    op = acc.operation
    assert op is not None
    if no_wait:
        console.print(f"{name}: migration requested (operation {op.id}; `corral op show {op.id}`)")
        return
    try:
        done = wait_op(c, op, f"migrate {name}")
    except CorralError as err:
        raise fail(err.message) from err
    console.print(f"{name}: now on {done.result.get('node')} (from {done.result.get('from')})")


@app.command()
def rm(
    ctx: typer.Context,
    names: list[str],
    force: bool = typer.Option(False, "--force", "-f", help="do not wait for the guest"),
    timeout: float | None = typer.Option(None),
    no_wait: bool = typer.Option(False, "--no-wait"),
) -> None:
    """Terminate instances: stop them and remove their disks and addresses."""
    _lifecycle(ctx, names, "rm", no_wait, force=force, timeout=timeout)
