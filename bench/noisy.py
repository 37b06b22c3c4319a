"""Noisy neighbours (issue 14, section 3): does a neighbour's storm reach a victim?

A victim instance answers a small request loop (a persistent ``nc -ll -e cat`` echo server in
the guest); the benchmark, outside the guest (in the node's namespace), sends a 32-byte request
and waits for its echo, ``--samples`` times per phase, and records each round trip. Four
neighbour instances on the same node sit idle, then all run one hog — CPU (a shell loop), disk
(``dd`` with fsync to the root disk), network (zeros sent as fast as the guest can, read by a
sink in the node's namespace),
memory (filling a tmpfs, over and over) — one kind at a time, then one of each at once.

The same scene runs twice: with Corral's limits (victim ``cr1.small``, neighbours ``cr1.nano``:
cgroup CPU quota and weight, memory cap, the type's tc buckets and root-disk throttling, IO
weight), and as the baseline with raw QEMU processes booting the same image with no limits at
all (no cgroup, no tc, no throttling). Target (docs/SPEC.md): with Corral's limits the victim's
p99 within 1.1x of alone for each hog; the unlimited baseline's damage beside it.

The guests take their orders on a control port, reached from the node's namespace, so raw and
Corral guests are driven the same way (no SSH). Results: bench/results/noisy.{json,md},
committed by the benchmark itself (``--no-commit`` to leave them uncommitted)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, machine, median, new_daemon, popen_in, raw_argv, tail, wait
from corral import models, netmodels
from corral.node.net import netns

HOGS = ("cpu", "disk", "net", "mem")
PHASES = ("alone", *HOGS, "all")
ECHO_PORT, CONTROL_PORT, FLOOD_PORT = 7000, 7101, 7200

VICTIM_USER_DATA = (
    "#!/bin/sh\n"
    f"(while :; do nc -ll -p {ECHO_PORT} -e /bin/cat; sleep 0.2; done) >/dev/null 2>&1 &\n"
)


def neighbour_user_data(mem_mib: int) -> str:
    """A hog runner. Orders come in on the control port (one line: idle | cpu | disk | mem),
    and a connection to the flood port gets zeros as fast as the guest can send them (the
    network hog). The node's own namespace is closed to guests (its input chain lets them reach
    DHCP, DNS and metadata only), so every connection starts from the benchmark."""
    return f"""#!/bin/sh
cat > /run/hog <<'EOF'
#!/bin/sh
while [ -e /run/on.$1 ]; do
  case "$1" in
  cpu) i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done ;;
  disk) dd if=/dev/zero of=/var/hog bs=1M count=32 conv=fsync 2>/dev/null; rm -f /var/hog ;;
  mem) dd if=/dev/zero of=/tmp/m bs=1M count={mem_mib} 2>/dev/null; rm -f /tmp/m ;;
  esac
done
EOF
cat > /run/ctl <<'EOF'
#!/bin/sh
read want
for k in cpu disk mem; do rm -f /run/on.$k; done
case "$want" in cpu|disk|mem) touch /run/on.$want; /run/hog $want </dev/null >/dev/null 2>&1 & ;; esac
echo "ok $want"
EOF
cat > /run/flood <<'EOF'
#!/bin/sh
exec dd if=/dev/zero bs=64k 2>/dev/null
EOF
chmod +x /run/hog /run/ctl /run/flood
(while :; do nc -ll -p {CONTROL_PORT} -e /run/ctl; sleep 0.2; done) >/dev/null 2>&1 &
(while :; do nc -ll -p {FLOOD_PORT} -e /run/flood; sleep 0.2; done) >/dev/null 2>&1 &
"""


class Control:
    """The benchmark's side: orders to the neighbours (their control ports), and sinks that
    read the network hogs' floods."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.sunk = 0
        self._floods: list[tuple[threading.Event, threading.Thread]] = []

    def tell(self, address: str, order: str) -> bool:
        try:
            s = netns.socket_in(self.namespace)
            s.settimeout(20)
            with s:
                s.connect((address, CONTROL_PORT))
                s.sendall(order.encode() + b"\n")
                return s.recv(64).startswith(b"ok")
        except OSError:
            return False

    def flood(self, address: str) -> None:
        stop = threading.Event()

        def sink() -> None:
            while not stop.is_set():
                try:
                    s = netns.socket_in(self.namespace)
                    s.settimeout(5)
                    with s:
                        s.connect((address, FLOOD_PORT))
                        while not stop.is_set() and (data := s.recv(1 << 16)):
                            self.sunk += len(data)
                except OSError:
                    time.sleep(0.5)

        t = threading.Thread(target=sink, daemon=True)
        t.start()
        self._floods.append((stop, t))

    def calm(self) -> None:
        for stop, t in self._floods:
            stop.set()
            t.join(10)
        self._floods.clear()


def round_trips(namespace: str, address: str, samples: int, gap: float) -> dict[str, Any]:
    """``samples`` request/echo round trips (ms) over one connection (made again if lost)."""
    out: list[float] = []
    failures = 0
    sock: socket.socket | None = None
    payload = b"x" * 31 + b"\n"
    deadline = time.monotonic() + max(600.0, samples * 1.0)
    while len(out) < samples and time.monotonic() < deadline:
        try:
            if sock is None:
                sock = netns.socket_in(namespace)
                sock.settimeout(10)
                sock.connect((address, ECHO_PORT))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t0 = time.perf_counter()
            sock.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = sock.recv(64)
                if not chunk:
                    raise ConnectionError("closed")
                got += chunk
            out.append((time.perf_counter() - t0) * 1000)
        except OSError:
            failures += 1
            if sock is not None:
                sock.close()
            sock = None
            time.sleep(0.5)
        time.sleep(gap)
    if sock is not None:
        sock.close()
    s = sorted(out)
    p50 = median(out)
    kind, top = tail(out)
    return {"samples": len(out), "failures": failures, "p50_ms": p50, kind + "_ms": top, "ms": s}


def wait_until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(1)
    raise TimeoutError(f"timed out waiting for {what}")


def echo_answers(namespace: str, address: str) -> bool:
    try:
        return round_trips(namespace, address, 1, 0)["samples"] == 1
    except OSError:
        return False


def run_scene(kind: str, d: Any, work: Path, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    """One scene (``corral`` or ``raw``): boot, every phase, tear down."""
    from corral.images.store import ImageStore
    from corral.node.storage import overlays

    c = d.client()
    ns = d.settings.namespace
    raws: list[subprocess.Popen[bytes]] = []
    made: list[str] = []
    control: Control | None = None
    try:
        names = ["victim"] + [f"n{i}" for i in range(len(HOGS))]
        insts: dict[str, Any] = {}
        for name in names:
            ud = VICTIM_USER_DATA if name == "victim" else None
            if kind == "corral":
                t = args.victim_type if name == "victim" else args.neighbour_type
                req = models.InstanceCreate(image="tiny", name=f"{kind}-{name}", instance_type=t)
            else:  # a custom size: no type, so no tc caps on its tap; raw QEMU: no cgroup
                req = models.InstanceCreate(image="tiny", name=f"{kind}-{name}", memory="256M")
            if ud is None:
                ud = ""  # the neighbours' user-data is set below
            insts[name] = (req, ud)
        # the ports the benchmark reaches (its connections start in the node's namespace)
        for port in (ECHO_PORT, CONTROL_PORT, FLOOD_PORT):
            with contextlib.suppress(Exception):  # already there from the other scene
                c.security_group_allow(
                    "default", netmodels.RuleSpec(from_port=port, cidr="0.0.0.0/0")
                )
        control = Control(ns)
        mem_mib = 48 if kind == "corral" else 96
        accs: dict[str, Any] = {}
        for name in names:
            req, ud = insts[name]
            req.user_data = ud if name == "victim" else neighbour_user_data(mem_mib)
            accs[name] = c.instance_run(req)
            wait(c, accs[name])
            made.append(accs[name].instance.id)
        if kind == "raw":  # stop the records, boot the same disks' worth with raw QEMU
            store = ImageStore(d.settings.images_dir)
            tiny = next(m for m in store.list() if m.name == "tiny")
            kernel, initrd = store.kernel_path(tiny), store.initrd_path(tiny)
            assert kernel and initrd
            for name in names:
                inst = accs[name].instance
                wait(c, c.instance_stop(inst.id, force=True))
                disk = work / f"{name}.qcow2"
                asyncio.run(
                    overlays.create(
                        disk,
                        store.root_disk_path(tiny),
                        "qcow2",
                        tiny.root_disk.virtual_size or 0,
                    )
                )
                argv = raw_argv(
                    kernel,
                    initrd,
                    tiny.cmdline,
                    disk,
                    "t" + inst.id[2:14],
                    inst.mac,
                    work / f"{name}.log",
                )
                raws.append(popen_in(ns, argv))
        ips = {n: c.instance_show(accs[n].instance.id).private_ip for n in names}
        assert all(ips.values()), ips
        log(f"{kind}: waiting for the victim's echo and the neighbours' control ports")
        wait_until(lambda: echo_answers(ns, ips["victim"]), 900, "the victim's echo server")
        for n in names[1:]:
            wait_until(lambda n=n: control.tell(ips[n], "idle"), 900, f"{n}'s control port")
        phases: dict[str, Any] = {}
        for phase in PHASES:
            if phase == "alone":
                orders = {n: "idle" for n in names[1:]}
            elif phase == "all":
                orders = dict(zip(names[1:], HOGS, strict=True))
            else:
                orders = {n: phase for n in names[1:]}
            control.calm()
            for n, order in orders.items():
                if order == "net":
                    control.tell(ips[n], "idle")
                    control.flood(ips[n])
                elif not control.tell(ips[n], order):
                    raise RuntimeError(f"{n} did not take the order {order}")
            time.sleep(args.settle)
            load0 = os.getloadavg()
            sunk0 = control.sunk
            r = round_trips(ns, ips["victim"], args.samples, args.gap)
            r["loadavg"] = [load0, os.getloadavg()]
            r["sink_bytes"] = control.sunk - sunk0
            phases[phase] = r
            log(
                f"{kind} {phase}: p50 {r['p50_ms']:.2f} ms, "
                f"{'p99' if 'p99_ms' in r else 'max'} "
                f"{r.get('p99_ms', r.get('max_ms')):.2f} ms, {r['samples']} samples, "
                f"{r['failures']} failures, load {load0[0]:.1f}"
            )
        control.calm()
        for n in names[1:]:
            control.tell(ips[n], "idle")
        return phases
    finally:
        if control is not None:
            control.calm()
        for p in raws:
            p.kill()
            p.wait(10)
        for iid in made:
            try:
                wait(c, c.instance_terminate(iid, force=True))
            except Exception as err:
                log(f"could not terminate {iid}: {err}")


def summary(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        "# Noisy neighbours: the victim's request round trips",
        "",
        f"Measured {m['time']} on {m['cpus']} CPUs, {m['qemu']}; load average at start "
        f"{m['loadavg_start'][0]:.1f}, at end {m['loadavg_end'][0]:.1f}. The machine is shared "
        "with other engineers' VMs and tests (TCG, no KVM), so the load moves during the run; "
        "each phase records its own load.",
        f"`{data['command']}`; {data['samples']} round trips per phase (32 bytes, "
        f"{data['gap_ms']:.0f} ms apart), victim {data['victim_type']}, four neighbours "
        f"{data['neighbour_type']} (Corral) or raw QEMU with no limits (baseline).",
        "",
        "| phase | Corral p50 ms | Corral p99 ms | Corral p99 / alone | raw p50 ms | raw p99 ms "
        "| raw p99 / alone |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def p99(r: dict[str, Any]) -> float:
        return float(r.get("p99_ms", r.get("max_ms", float("nan"))))

    scenes = data["scenes"]
    for phase in PHASES:
        row = [phase]
        for kind in ("corral", "raw"):
            sc = scenes.get(kind) or {}
            r = sc.get(phase)
            if r is None:
                row += ["-", "-", "-"]
                continue
            alone = sc.get("alone")
            ratio = p99(r) / p99(alone) if alone and p99(alone) else float("nan")
            row += [f"{r['p50_ms']:.2f}", f"{p99(r):.2f}", f"{ratio:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Target: Corral's p99 with each hog within 1.1x of alone. " + (data.get("verdict") or ""),
    ]
    if data.get("errors"):
        lines += ["", "Errors: " + "; ".join(data["errors"])]
    return "\n".join(lines)


def verdict(data: dict[str, Any]) -> str:
    sc = data["scenes"].get("corral") or {}
    if "alone" not in sc:
        return "Not measured (the Corral scene did not finish)."
    alone = sc["alone"].get("p99_ms") or sc["alone"].get("max_ms")
    over = [
        f"{h} {(sc[h].get('p99_ms') or sc[h].get('max_ms')) / alone:.2f}x"
        for h in (*HOGS, "all")
        if h in sc and (sc[h].get("p99_ms") or sc[h].get("max_ms")) > 1.1 * alone
    ]
    return "Met for every hog." if not over else "Not met: " + ", ".join(over) + "."


def commit(paths: list[Path]) -> None:
    rel = [str(p.relative_to(ROOT)) for p in paths]
    subprocess.run(["git", "-C", str(ROOT), "add", *rel], check=True)
    subprocess.run(
        ["git", "-C", str(ROOT), "commit", "-m", "bench/noisy: results of a run", "--", *rel],
        check=False,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1000, help="round trips per phase (>= 100)")
    ap.add_argument("--gap", type=float, default=0.005, help="seconds between round trips")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after a phase starts")
    ap.add_argument("--scenes", default="corral,raw", help="corral,raw or one of them")
    ap.add_argument("--victim-type", default="cr1.small")
    ap.add_argument("--neighbour-type", default="cr1.nano")
    ap.add_argument("--no-commit", action="store_true", help="leave the results uncommitted")
    args = ap.parse_args()
    info = machine()
    data: dict[str, Any] = {
        "machine": info,
        "samples": args.samples,
        "gap_ms": args.gap * 1000,
        "victim_type": args.victim_type,
        "neighbour_type": args.neighbour_type,
        "scenes": {},
        "errors": [],
    }

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    d = new_daemon()
    work = Path(tempfile.mkdtemp(prefix="corral-bench-noisy-", dir="/var/tmp"))
    try:
        d.start()
        d.cli("image", "build", "tiny", timeout=900).ok()
        for kind in args.scenes.split(","):
            try:
                data["scenes"][kind] = run_scene(kind, d, work, args, log)
            except Exception as err:
                data["errors"].append(f"{kind}: {err}")
                log(f"{kind} failed: {err}")
    finally:
        d.teardown()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    for sc in data["scenes"].values():  # keep the raw samples out of the summary's way
        for r in sc.values():
            r["ms"] = [round(x, 3) for x in r["ms"]]
    data["verdict"] = verdict(data)
    path = write_results_noisy(data)
    if not args.no_commit:
        commit([path, path.with_suffix(".md")])


def write_results_noisy(data: dict[str, Any]) -> Path:
    from bench.common import write_results

    return write_results("noisy", data, summary)


if __name__ == "__main__":
    main()
