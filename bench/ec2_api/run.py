"""EC2 API benchmark: Corral against moto's server, same calls, same run, same client.

DescribeInstances (the whole listing, no MaxResults) at 1, 100 and 1000 instances: Corral over
fake nodes (its API, controller and store are real, the reconciler runs at its normal interval,
each node is this machine's size; only VMs are not booted — labelled "fake node"), moto's
server as the baseline. Two ways:

* after a write (the headline): each request follows a CreateTags, so no cached answer can
  serve it; what a poller pays while the cloud changes;
* polled with nothing changing: Corral answers from its answer cache, moto has none; this
  row shows the cache, not a faster listing.

Paged listings are not compared: moto pages by reservation (MaxResults=100 of 1000 returned all
1,000 instances), Corral by instance. RunInstances -> running on real VMs through a real
all-in-one daemon (root and QEMU needed; skipped with --no-real). Each request is signed with
botocore's SigV4 and sent by one keep-alive httpx client, one at a time (closed loop).

    sudo .venv/bin/python -m bench.ec2_api.run [--no-real] [--seconds 10]

Writes bench/results/ec2_api-<date>.{json,md}."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
CORRAL = "corral (fake node)"  # the fake nodes are in-process, or behind the wire with --wire
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


class Target:
    def __init__(self, name: str, url: str, key: str, secret: str, region: str) -> None:
        self.name, self.url, self.region = name, url, region
        self.timings: Path | None = None  # the server's own time per request, when it logs it
        self.creds = Credentials(key, secret)
        self.http = httpx.Client(timeout=120)
        self.boto = boto3.client(
            "ec2",
            endpoint_url=url,
            region_name=region,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
        )

    def request(self, body: bytes) -> httpx.Response:
        req = AWSRequest(method="POST", url=self.url + "/", data=body, headers=dict(FORM))
        SigV4Auth(self.creds, "ec2", self.region).add_auth(req)
        p = req.prepare()
        resp = self.http.post(p.url, headers=dict(p.headers), content=p.body)
        if resp.status_code != 200:
            raise RuntimeError(f"{self.name}: HTTP {resp.status_code}: {resp.text[:300]}")
        return resp

    def count(self) -> int:
        n = 0
        for page in self.boto.get_paginator("describe_instances").paginate():
            n += sum(len(r["Instances"]) for r in page["Reservations"])
        return n

    def settle(self, timeout: float = 600) -> None:
        """Wait until no instance is pending: Corral's launches finish as operations after
        RunInstances answers, and their writes must not fall inside a measurement."""
        deadline = time.monotonic() + timeout
        pending = self.boto.get_paginator("describe_instances")
        while time.monotonic() < deadline:
            left = sum(
                len(r["Instances"])
                for page in pending.paginate(
                    Filters=[{"Name": "instance-state-name", "Values": ["pending"]}]
                )
                for r in page["Reservations"]
            )
            if left == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.name}: instances still pending after {timeout:.0f} s")

    def grow(self, image: str, total: int, itype: str) -> None:
        have = self.count()
        while have < total:
            k = min(100, total - have)
            self.boto.run_instances(ImageId=image, MinCount=k, MaxCount=k, InstanceType=itype)
            have += k


def tail(xs: list[float]) -> tuple[str, float]:
    """("p99", value) from 100 samples up, else ("max", the largest): a "p99" of fewer
    samples is only their maximum."""
    s = sorted(xs)
    if len(s) >= 100:
        return "p99", s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]
    return "max", s[-1]


def measure(
    t: Target, body: bytes, seconds: float, max_n: int = 2000, min_n: int = 10, between: Any = None
) -> dict[str, Any]:
    """Closed-loop latency of one request; ``between`` (untimed) runs before each one."""
    for _ in range(2):
        t.request(body)  # warm up (caches, connections)
    mark = t.timings.stat().st_size if t.timings and t.timings.exists() else 0
    lat: list[float] = []
    size = 0
    start = time.perf_counter()
    spent = 0.0  # time in ``between``, not part of the request rate
    while len(lat) < max_n and (len(lat) < min_n or time.perf_counter() - start - spent < seconds):
        if between is not None:
            b0 = time.perf_counter()
            between(len(lat))
            spent += time.perf_counter() - b0
        t0 = time.perf_counter()
        size = len(t.request(body).content)
        lat.append(time.perf_counter() - t0)
    total = time.perf_counter() - start - spent
    top, value = tail(lat)
    out = {
        "requests": len(lat),
        "rps": len(lat) / total,
        "p50_ms": statistics.median(lat) * 1000,
        "top": top,  # "p99" or "max", by the number of samples
        "top_ms": value * 1000,
        "bytes": size,
    }
    if t.timings is not None and t.timings.exists() and between is None:
        with open(t.timings) as fh:
            fh.seek(mark)
            server = [float(x) for x in fh.read().split()]
        if server:
            out["server_p50_ms"] = statistics.median(server)
            out["server_top"], out["server_top_ms"] = tail(server)
    return out


def start_moto(tmp: Path) -> tuple[subprocess.Popen[bytes], Target]:
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=open(tmp / "moto.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    wait_http(f"http://127.0.0.1:{port}/")
    return proc, Target("moto", f"http://127.0.0.1:{port}", "testing", "testing", "us-east-1")


def start_corral_fake(
    tmp: Path, nodes: int, wire: bool = False, db: str | None = None, tag: str = "corral-fake"
) -> tuple[subprocess.Popen[bytes], Target]:
    """The fake server (state in ``tmp/tag``, on database ``db`` or SQLite there); killed if
    it does not come up."""
    from bench.ec2_api import fake_server  # the server's module: its command line

    port = free_port()
    timings = tmp / f"{tag}-server-ms"
    proc = subprocess.Popen(
        fake_server.argv(port, tmp / tag, timings, nodes, wire, db),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=open(tmp / f"{tag}.log", "wb"),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"the fake server ended before serving; see {tmp / f'{tag}.log'}: "
                + " | ".join((tmp / f"{tag}.log").read_text().splitlines()[-5:])
            )
        creds = json.loads(line)
        wait_http(f"http://127.0.0.1:{port}/v1/health")
    except BaseException:
        proc.terminate()  # it stops its fake nodes' process on the way out
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        raise
    t = Target(
        CORRAL,
        f"http://127.0.0.1:{port}",
        creds["access_key_id"],
        creds["secret_access_key"],
        "corral-1",
    )
    t.timings = timings
    return proc, t


def run_to_running(t: Target, image: str, itype: str, n: int) -> dict[str, Any]:
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        iid = t.boto.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType=itype)[
            "Instances"
        ][0]["InstanceId"]
        while True:
            r = t.boto.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
            if r["State"]["Name"] == "running":
                break
            time.sleep(0.05)
        lat.append(time.perf_counter() - t0)
        t.boto.terminate_instances(InstanceIds=[iid])
        while (
            t.boto.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0][
                "State"
            ]["Name"]
            != "terminated"
        ):
            time.sleep(0.1)
    return {
        "runs": n,
        "p50_s": statistics.median(lat),
        "max_s": max(lat),
        "all_s": [round(x, 3) for x in lat],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    ap.add_argument("--no-real", action="store_true", help="skip the real-VM measurements")
    ap.add_argument("--runs", type=int, default=3, help="RunInstances -> running samples")
    ap.add_argument(
        "--wire",
        action="store_true",
        help="the fake nodes in a process of their own, reached over the real node wire",
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    load_before = os.getloadavg()
    results: dict[str, Any] = {
        "command": "python -m bench.ec2_api.run " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "load_before": load_before,
            "qemu_processes_before": _qemus(),
        },
        "describe_instances": [],
        "run_to_running": [],
    }
    sizes = (1, 100, 1000)
    nodes = nodes_for(max(sizes))
    results["fake_nodes"] = nodes
    results["wire"] = args.wire
    procs = []
    fake_proc = None
    try:
        moto_proc, moto = start_moto(tmp)
        procs.append(moto_proc)
        fake_proc, corral = start_corral_fake(tmp, nodes, args.wire)
        procs.append(fake_proc)
        moto_ami = moto.boto.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        corral_ami = corral.boto.describe_images(Owners=["corral"])["Images"][0]["ImageId"]
        body = b"Action=DescribeInstances&Version=2016-11-15"
        for n in sizes:
            moto.grow(moto_ami, n, "t2.micro")
            corral.grow(corral_ami, n, "cr1.nano")
            corral.settle()
            moto.settle()
            row: dict[str, Any] = {
                "instances": n,
                "load": os.getloadavg()[0],
                "qemu_processes": _qemus(),
                "after_write": {},
                "polled": {},
            }
            for t in (corral, moto):
                # each request follows a write (a tag changed on one instance, untimed), so
                # nothing cached can answer it
                first = t.boto.describe_instances(MaxResults=5)["Reservations"][0]["Instances"][0]

                def retag(i: int, t: Target = t, iid: str = first["InstanceId"]) -> None:
                    t.boto.create_tags(Resources=[iid], Tags=[{"Key": "bench", "Value": str(i)}])

                for kind, between in (("after_write", retag), ("polled", None)):
                    m = measure(t, body, args.seconds, between=between)
                    row[kind][t.name] = m
                    inside = (
                        f"; in the server p50 {m['server_p50_ms']:.1f} {m['server_top']} "
                        f"{m['server_top_ms']:.1f} ms"
                        if "server_p50_ms" in m
                        else ""
                    )
                    print(
                        f"DescribeInstances n={n:5d} {kind:11s} {t.name:20s} {m['rps']:8.1f} "
                        f"req/s p50 {m['p50_ms']:7.1f} ms {m['top']} {m['top_ms']:7.1f} ms "
                        f"({m['requests']} requests, {m['bytes']} bytes{inside})",
                        flush=True,
                    )
            for kind in ("after_write", "polled"):
                row[kind]["ratio_rps"] = row[kind][CORRAL]["rps"] / row[kind]["moto"]["rps"]
            results["describe_instances"].append(row)
        results["run_to_running"].append(
            {"target": "moto", **run_to_running(moto, moto_ami, "t2.micro", args.runs)}
        )
        results["run_to_running"].append(
            {
                "target": CORRAL,
                **run_to_running(corral, corral_ami, "cr1.nano", args.runs),
            }
        )
    finally:
        if fake_proc is not None:
            fake_proc.send_signal(signal.SIGINT)  # it writes its stats.json on the way out
        for p in procs:
            if p is not fake_proc:
                p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
    stats = tmp / "corral-fake" / "stats.json"
    if stats.exists():
        results["fake_server"] = json.loads(stats.read_text())
    if not args.no_real:
        results["real"] = real_vms(args.runs, args.seconds)
    results["machine"]["load_after"] = os.getloadavg()
    write(results)
    shutil.rmtree(tmp, ignore_errors=True)


def nodes_for(instances: int, memory_each: int = 128 << 20) -> int:
    """How many fake nodes of this machine's size hold ``instances`` cr1.nano instances: by
    memory and by CPU cores (each node promises its cores times the default allocation
    ratio)."""
    from corral.config import Settings
    from corral.controller import instance_types

    with open("/proc/meminfo") as fh:
        kib = next(int(ln.split()[1]) for ln in fh if ln.startswith("MemTotal:"))
    by_memory = math.ceil(instances * memory_each / (kib << 10))
    cores = instance_types.get("cr1.nano").cores * instances
    by_cpu = math.ceil(cores / ((os.cpu_count() or 1) * Settings.cpu_allocation_ratio))
    return max(1, by_memory, by_cpu)


def _qemus() -> int:
    n = 0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if b"qemu-system" in (d / "cmdline").read_bytes():
                    n += 1
            except OSError:
                pass
    return n


def real_vms(runs: int, seconds: float) -> dict[str, Any]:
    """A real all-in-one daemon: RunInstances -> running on real VMs, and DescribeInstances
    with one real instance."""
    sys.path.insert(0, str(ROOT))
    from tests.harness import new_daemon

    d = new_daemon()
    out: dict[str, Any] = {}
    try:
        d.start()
        d.cli("image", "build", "tiny", timeout=900).ok()
        creds = json.loads((d.state_dir / "admin.credentials").read_text())
        t = Target(
            "corral (real VMs)",
            d.url,
            creds["access_key_id"],
            creds["secret_access_key"],
            "corral-1",
        )
        ami = t.boto.describe_images(Owners=["corral"])["Images"][0]["ImageId"]
        out["run_to_running"] = run_to_running(t, ami, "cr1.small", runs)
        print(
            f"RunInstances -> running, real VM: p50 {out['run_to_running']['p50_s']:.2f} s",
            flush=True,
        )
        iid = t.boto.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="cr1.small")[
            "Instances"
        ][0]["InstanceId"]
        t.boto.get_waiter("instance_running").wait(InstanceIds=[iid])
        out["describe_instances_1"] = measure(
            t, b"Action=DescribeInstances&Version=2016-11-15", seconds
        )
        m = out["describe_instances_1"]
        print(
            f"DescribeInstances n=1 real VM {m['rps']:.1f} req/s p50 {m['p50_ms']:.1f} ms "
            f"{m['top']} {m['top_ms']:.1f} ms",
            flush=True,
        )
        t.boto.terminate_instances(InstanceIds=[iid])
    finally:
        d.teardown()
    return out


def _table(rows: list[dict[str, Any]], kind: str) -> list[str]:
    out = [
        "| instances | Corral (fake node) req/s | p50 ms | top ms | moto req/s | p50 ms "
        "| top ms | Corral/moto | load (1 min), other VMs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        c, mo = row[kind][CORRAL], row[kind]["moto"]
        out.append(
            f"| {row['instances']} | {c['rps']:.1f} | {c['p50_ms']:.1f} | "
            f"{c['top']} {c['top_ms']:.1f} | {mo['rps']:.1f} | {mo['p50_ms']:.1f} | "
            f"{mo['top']} {mo['top_ms']:.1f} | {row[kind]['ratio_rps']:.1f}x | "
            f"{row['load']:.2f}, {row['qemu_processes']} |"
        )
    return out


def write(results: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M")
    (RESULTS / f"ec2_api-{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    fake = results.get("fake_server", {})
    rows = results["describe_instances"]
    lines = [
        f"# EC2 API benchmark {results['date']}",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {m['cpus']} cores; load average before {m['load_before']}, after "
        f"{m.get('load_after')}; QEMU processes running before: "
        f"{m['qemu_processes_before']}  ",
        f"Corral's side: the real API, controller and store over {results.get('fake_nodes')} "
        + (
            "fake nodes in a process of their own behind the agent's real server, reached "
            "through the real node client over unix sockets (the wire), "
            if results.get("wire")
            else "fake nodes in the controller's process, "
        )
        + "each this machine's size "
        f"({fake.get('node_cpus', '?')} CPUs, {fake.get('node_memory', 0) / 2**30:.1f} GiB); "
        f"the reconciler at its normal interval ({fake.get('reconcile_interval_s', '?')} s, "
        f"{fake.get('reconcile_passes', '?')} passes during the run).",
        "",
        'One closed-loop keep-alive client, one request at a time. "top" is the p99 where '
        "a row has 100 or more requests, else the maximum (named in each cell).",
        "",
        "## DescribeInstances right after a write (the headline: no cached answer)",
        "",
        "Each request follows a CreateTags on one instance (untimed), so the whole listing is "
        "read and rendered every time.",
        "",
        *_table(rows, "after_write"),
        "",
        "## DescribeInstances polled with nothing changing (Corral's answer cache)",
        "",
        "Corral answers a repeated listing from its answer cache (invalidated by any write); "
        "moto has no such cache, so this row compares a cache with a listing, not two "
        "listings.",
        "",
        *_table(rows, "polled"),
        "",
        "Paged listings are not compared: moto pages by reservation and its MaxResults=100 "
        "returned all 1,000 instances.",
        "",
        "## RunInstances -> running",
        "",
        "| target | runs | p50 s | max s |",
        "|---|---:|---:|---:|",
    ]
    for r in results["run_to_running"]:
        lines.append(f"| {r['target']} | {r['runs']} | {r['p50_s']:.3f} | {r['max_s']:.3f} |")
    real = results.get("real", {})
    if real.get("run_to_running"):
        r = real["run_to_running"]
        lines.append(
            f"| corral (real VM, TCG, cr1.small) | {r['runs']} | {r['p50_s']:.2f} | "
            f"{r['max_s']:.2f} |"
        )
    if real.get("describe_instances_1"):
        x = real["describe_instances_1"]
        lines += [
            "",
            f"DescribeInstances with one real VM (polled): {x['rps']:.1f} req/s, p50 "
            f"{x['p50_ms']:.1f} ms, {x['top']} {x['top_ms']:.1f} ms.",
        ]
    (RESULTS / f"ec2_api-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
