"""`corral top` (a live table of instances and nodes, like `xm top`) and `corral events`
(the event stream). Both read the API only: GET /v1/stats and GET /v1/events."""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import asdict, dataclass

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table

from corral import viewmodels as vm
from corral.cli.common import console, fail, opts
from corral.units import format_duration, format_size

app = typer.Typer()


@dataclass
class Row:
    """One instance as `top` shows it: rates over the last interval."""

    id: str
    name: str
    node: str
    state: str
    cpu_pct: float | None  # % of its allowance (cpu_limit, or one core per vCPU)
    memory: int | None
    memory_limit: int
    disk_read_bps: float | None
    disk_write_bps: float | None
    net_rx_bps: float | None
    net_tx_bps: float | None
    uptime: float | None


def _rate(a: float | None, b: float | None, seconds: float) -> float | None:
    if a is None or b is None or seconds <= 0 or b < a:
        return None  # a counter that went back: the QEMU restarted between the samples
    return (b - a) / seconds


def rows(before: vm.Stats, after: vm.Stats) -> list[Row]:
    old = {i.id: i for i in before.instances}
    out = []
    for i in after.instances:
        p = old.get(i.id)
        secs = (i.time or 0) - (p.time or 0) if p is not None and p.time and i.time else 0.0
        cores = i.cpu_limit or float(i.vcpus)
        cpu = _rate(p.cpu_seconds if p else None, i.cpu_seconds, secs)
        out.append(
            Row(
                id=i.id,
                name=i.name,
                node=i.node or "-",
                state=i.state,
                cpu_pct=None if cpu is None else 100.0 * cpu / cores,
                memory=i.memory_bytes,
                memory_limit=i.memory_limit,
                disk_read_bps=_rate(p.disk_read_bytes if p else None, i.disk_read_bytes, secs),
                disk_write_bps=_rate(p.disk_write_bytes if p else None, i.disk_write_bytes, secs),
                net_rx_bps=_rate(p.net_rx_bytes if p else None, i.net_rx_bytes, secs),
                net_tx_bps=_rate(p.net_tx_bytes if p else None, i.net_tx_bytes, secs),
                uptime=(i.time - i.started_at) if i.time and i.started_at else None,
            )
        )
    return out


def node_rows(before: vm.Stats, after: vm.Stats) -> list[dict[str, object]]:
    old = {n.id: n for n in before.nodes}
    out: list[dict[str, object]] = []
    for n in after.nodes:
        p = old.get(n.id)
        secs = (n.time or 0) - (p.time or 0) if p and p.time and n.time else 0.0
        busy = _rate(p.cpu_seconds if p else None, n.cpu_seconds, secs)
        out.append(
            {
                "name": n.name,
                "state": n.state + (" (cordoned)" if n.cordoned else ""),
                "answered": n.answered,
                "instances": n.instances,
                "cpu_pct": None if busy is None or not n.cpus else 100.0 * busy / n.cpus,
                "load1": n.load1,
                "memory_used": (n.memory_total - n.memory_available)
                if n.memory_total is not None and n.memory_available is not None
                else None,
                "memory_total": n.memory_total,
            }
        )
    return out


SORTS = {
    "name": lambda r: (r.name,),
    "cpu": lambda r: (-(r.cpu_pct or 0.0), r.name),
    "memory": lambda r: (-(r.memory or 0), r.name),
    "disk": lambda r: (-((r.disk_read_bps or 0) + (r.disk_write_bps or 0)), r.name),
    "net": lambda r: (-((r.net_rx_bps or 0) + (r.net_tx_bps or 0)), r.name),
    "node": lambda r: (r.node, r.name),
    "state": lambda r: (r.state, r.name),
}


def _bps(v: float | None) -> str:
    return "-" if v is None else f"{format_size(int(v))}/s"


def _table(insts: list[Row], nodes: list[dict[str, object]]) -> Group:
    nt = Table(box=None, header_style="bold", title="nodes", title_justify="left")
    for col in ("NODE", "STATE", "INSTANCES", "CPU%", "LOAD", "MEMORY"):
        nt.add_column(col)
    for n in nodes:
        mem_used, mem_total = n["memory_used"], n["memory_total"]
        nt.add_row(
            str(n["name"]),
            str(n["state"]) + ("" if n["answered"] else " (no figures)"),
            str(n["instances"]),
            "-" if n["cpu_pct"] is None else f"{n['cpu_pct']:.0f}",
            "-" if n["load1"] is None else f"{n['load1']:.2f}",
            f"{format_size(int(mem_used))}/{format_size(int(mem_total))}"  # type: ignore[call-overload]
            if mem_used is not None and mem_total is not None
            else "-",
        )
    it = Table(box=None, header_style="bold", title="instances", title_justify="left")
    for col in (
        "NAME",
        "STATE",
        "NODE",
        "CPU%",
        "MEMORY",
        "DISK R",
        "DISK W",
        "NET RX",
        "NET TX",
        "UPTIME",
    ):
        it.add_column(col)
    for r in insts:
        it.add_row(
            r.name,
            r.state,
            r.node,
            "-" if r.cpu_pct is None else f"{r.cpu_pct:.0f}",
            "-" if r.memory is None else f"{format_size(r.memory)}/{format_size(r.memory_limit)}",
            _bps(r.disk_read_bps),
            _bps(r.disk_write_bps),
            _bps(r.net_rx_bps),
            _bps(r.net_tx_bps),
            "-" if r.uptime is None else format_duration(r.uptime),
        )
    return Group(nt, it) if nodes else Group(it)


@app.command("top")
def top(
    ctx: typer.Context,
    interval: float = typer.Option(2.0, "--interval", "-n", help="seconds between samples"),
    sort: str = typer.Option("cpu", "--sort", "-s", help=f"one of {', '.join(SORTS)}"),
    match: str | None = typer.Option(
        None, "--filter", "-f", help="only instances whose name, node or state contains this"
    ),
    once: bool = typer.Option(False, "--once", help="one table (two samples) and exit"),
    as_json: bool = typer.Option(False, "--json", help="with --once: JSON for scripts"),
) -> None:
    """A live table of instances (CPU % of their allowance, memory, disk and network rates,
    uptime) and node totals, like `xm top`."""
    if sort not in SORTS:
        raise fail(f"--sort {sort!r}: use one of {', '.join(SORTS)}")
    if interval <= 0:
        raise fail("--interval must be above 0 seconds")
    if as_json and not once:
        raise fail("--json goes with --once")
    c = opts(ctx).client()

    def view(before: vm.Stats, after: vm.Stats) -> tuple[list[Row], list[dict[str, object]]]:
        insts = [
            r
            for r in rows(before, after)
            if not match or any(match in f for f in (r.name, r.node, r.state))
        ]
        return sorted(insts, key=SORTS[sort]), node_rows(before, after)

    before = c.stats()
    time.sleep(interval)
    after = c.stats()
    if once:
        insts, nodes = view(before, after)
        if as_json:
            print(json.dumps({"nodes": nodes, "instances": [asdict(r) for r in insts]}, indent=2))
        else:
            console.print(_table(insts, nodes))
        return
    with Live(_table(*view(before, after)), console=console, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                before, after = after, c.stats()
                live.update(_table(*view(before, after)))
        except KeyboardInterrupt:
            pass


@app.command("events")
def events(
    ctx: typer.Context,
    follow: bool = typer.Option(False, "--follow", "-f", help="keep following new events"),
    count: int | None = typer.Option(None, "--count", help="stop after this many events"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
) -> None:
    """State changes of instances, operations, nodes and volumes. Without -f: the current
    state of everything (as "snapshot" events) and exit; with -f: then every change."""
    c = opts(ctx).client()
    seen = 0
    for ev in c.events(snapshot=not follow):
        if ev is None:  # the snapshot is complete
            if follow:
                continue
            break
        if as_json:
            print(ev.model_dump_json(), flush=True)
        else:
            when = dt.datetime.fromtimestamp(ev.time).strftime("%H:%M:%S")
            what = " ".join(f"{k}={v}" for k, v in ev.data.items() if v not in (None, ""))
            console.print(f"{when} {ev.kind} {ev.id} {ev.change} {what}", highlight=False)
        seen += 1
        if count is not None and seen >= count:
            break
