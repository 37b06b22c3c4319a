"""Commands for the service itself: up, down, status, doctor."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import typer
from rich.table import Table

from corral import config, filemodes
from corral.cli.common import console, err_console, fail, opts
from corral.errors import CorralError
from corral.fsutil import pid_alive, read_pidfile

app = typer.Typer()


@app.command()
def up(
    ctx: typer.Context,
    detach: bool = typer.Option(False, "--detach", "-d", help="run in the background"),
    port: int | None = typer.Option(None, help="API port (default 8773)"),
    host: str | None = typer.Option(None, help="API address (default 127.0.0.1)"),
    subnet: str | None = typer.Option(None, help="instance subnet (default 10.88.0.0/24)"),
    domain: str | None = typer.Option(None, help="DNS domain (default corral.internal)"),
    accel: str | None = typer.Option(None, help="auto, kvm or tcg (default auto: probed)"),
    db: str | None = typer.Option(
        None,
        help="database URL: postgresql://USER@HOST/DB for a cluster (default SQLite in the state dir)",
    ),
    local_node: bool | None = typer.Option(
        None,
        "--local-node/--no-local-node",
        help="run a node agent here too (default yes; no: a cluster's controller only)",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the all-in-one cloud: API, controller and node agent in one process."""
    o = opts(ctx)
    try:
        settings = config.load(
            o.state_dir,
            api_port=port,
            api_host=host,
            subnet=subnet,
            domain=domain,
            accel=accel,
            db_url=db,
            local_node=local_node,
        )
    except CorralError as err:
        raise fail(err.message) from err
    if not detach:
        from corral import daemon

        try:
            daemon.main(settings, verbose)
        except CorralError as err:
            raise fail(err.message) from err
        except KeyboardInterrupt:
            pass
        return
    pid = read_pidfile(settings.pidfile)
    if pid and pid_alive(pid):
        console.print(f"Corral already runs (pid {pid}) at {settings.api_url}")
        return
    settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "corral", "--state-dir", str(settings.state_dir), "up"]
    for flag, value in (
        ("--port", port),
        ("--host", host),
        ("--subnet", subnet),
        ("--domain", domain),
        ("--accel", accel),
        ("--db", db),
    ):
        if value is not None:
            argv += [flag, str(value)]
    if local_node is False:
        argv.append("--no-local-node")
    if verbose:
        argv.append("-v")
    with open(settings.logfile, "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = settings.logfile.read_text(errors="replace").strip().splitlines()[-5:]
            raise fail("Corral did not start:\n  " + "\n  ".join(tail))
        try:
            verify: str | bool = str(settings.ca_bundle) if settings.api_tls else True
            if settings.api_tls and not settings.ca_bundle.exists():
                raise httpx.ConnectError("no CA yet")
            health = httpx.get(f"{settings.api_url}/v1/health", timeout=1, verify=verify)
            if health.status_code == 200:
                console.print(
                    f"Corral is up at {settings.api_url} (pid {proc.pid}); log: {settings.logfile}"
                )
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise fail(f"Corral did not answer within 120 s; see {settings.logfile}")


@app.command()
def agent(
    ctx: typer.Context,
    listen: str | None = typer.Option(
        None, help="where to serve the node API: unix:PATH (default: beside the runtime files)"
    ),
    accel: str | None = typer.Option(None, help="auto, kvm or tcg (default auto: probed)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the node agent alone (`corral up` starts one itself)."""
    o = opts(ctx)
    try:
        settings = config.load(o.state_dir, accel=accel)
        from corral import agentd

        agentd.main(settings, listen, verbose)
    except CorralError as err:
        raise fail(err.message) from err


@app.command()
def down(
    ctx: typer.Context,
    stop_instances: bool = typer.Option(
        False, "--stop-instances", help="stop every instance first (default: leave them running)"
    ),
    timeout: float | None = typer.Option(None, help="seconds each guest gets to power off"),
) -> None:
    """Stop the daemon. Instances keep running unless --stop-instances."""
    o = opts(ctx)
    settings = config.load(o.state_dir)
    pid = read_pidfile(settings.pidfile)
    try:
        o.client().system_shutdown(stop_instances, timeout)
    except CorralError as err:
        if not (pid and pid_alive(pid)):
            raise fail(f"Corral is not running ({err.message})") from err
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while pid and pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid and pid_alive(pid):
        raise fail(f"Corral (pid {pid}) is still running after 60 s")
    console.print(
        "Corral is down" + ("; instances stopped" if stop_instances else "; instances keep running")
    )


@app.command()
def status(ctx: typer.Context) -> None:
    """Is Corral running, where, and with how many instances."""
    o = opts(ctx)
    settings = config.load(o.state_dir)
    pid = read_pidfile(settings.pidfile)
    try:
        c = o.client()
        health = c.health()
        instances = c.instance_list(all=False)
    except CorralError as err:
        raise fail(f"Corral is not running: {err.message}") from err
    running = sum(1 for i in instances if i.state == "running")
    console.print(
        f"Corral {health['version']} is up at {c.creds.endpoint}"
        + (f" (pid {pid})" if pid and pid_alive(pid) else "")
        + f": {len(instances)} instances, {running} running"
    )


@app.command()
def doctor(ctx: typer.Context) -> None:
    """Check this host and the running Corral: QEMU, accelerator, namespace, dnsmasq, nft,
    cgroups."""
    o = opts(ctx)
    table = Table(title="corral doctor", show_lines=False)
    table.add_column("check")
    table.add_column("ok")
    table.add_column("detail", overflow="fold")
    bad = 0

    def row(name: str, ok: bool, detail: str) -> None:
        nonlocal bad
        bad += 0 if ok else 1
        table.add_row(name, "[green]yes[/green]" if ok else "[red]no[/red]", detail)

    row("root", os.geteuid() == 0, "the daemon needs root (namespaces, taps, cgroups)")
    for binary, pkg in (
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
        ("dnsmasq", "dnsmasq-base"),
        ("nft", "nftables"),
        ("ip", "iproute2"),
        ("ssh", "openssh-client"),
    ):
        path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
        row(binary, path is not None, path or f"missing: apt-get install {pkg}")
    kvm = Path("/dev/kvm")
    row(
        "/dev/kvm",
        True,
        "present (usability is probed by the daemon)"
        if kvm.exists()
        else "absent: guests run under TCG (software emulation)",
    )
    state_dir = config.load(o.state_dir).state_dir
    open_files = filemodes.audit(state_dir)
    row(
        "state files",
        not open_files,
        f"{state_dir} 0700, files 0600"
        if not open_files
        else f"{len(open_files)} open to other local users (restart the daemon to tighten): "
        + "; ".join(open_files[:5]),
    )
    try:
        info = o.client().system_show()
    except CorralError as err:
        row("daemon", False, f"{err.message}")
        console.print(table)
        raise typer.Exit(1) from None
    node = info.node
    accel = node.get("accel", {})
    row("daemon", True, f"Corral {info.version}, state {info.state_dir}, db {info.database}")
    row("qemu version", True, str(node.get("qemu_version", "")))
    row("accelerator", True, f"{accel.get('accel', '?')}: {accel.get('reason', '')}")
    facts = node.get("facts") or {}
    row("qemu cgroup", True, str(node.get("cgroup", "")))
    for key in ("qemu_user", "qemu_sandbox", "qemu_jail", "qemu_devices", "qemu_block_io"):
        if key in facts:
            row(key.replace("_", " "), True, str(facts[key]))
    for check in info.checks:
        row(str(check["name"]), bool(check["ok"]), str(check["detail"]))
    console.print(table)
    if bad:
        err_console.print(f"{bad} check(s) failed")
        raise typer.Exit(1)
