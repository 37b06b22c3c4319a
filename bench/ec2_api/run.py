"""EC2 API benchmark: Corral against moto's server, same calls, same run, same client.

DescribeInstances (the whole listing, no MaxResults) at 1, 100 and 1000 instances: Corral over
a fake node (its API, controller and store are real; only VMs are not booted — labelled
"fake node"), moto's server as the baseline. RunInstances -> running on real VMs through a real
all-in-one daemon (root and QEMU needed; skipped with --no-real). Each request is signed with
botocore's SigV4 and sent by one keep-alive httpx client, one at a time (closed loop).

    sudo .venv/bin/python -m bench.ec2_api.run [--no-real] [--seconds 10]

Writes bench/results/ec2_api-<date>.{json,md}."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
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
    lat.sort()
    out = {
        "requests": len(lat),
        "rps": len(lat) / total,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "bytes": size,
    }
    if t.timings is not None and t.timings.exists() and between is None:
        with open(t.timings) as fh:
            fh.seek(mark)
            server = sorted(float(x) for x in fh.read().split())
        if server:
            out["server_p50_ms"] = statistics.median(server)
            out["server_p99_ms"] = server[min(len(server) - 1, int(len(server) * 0.99))]
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


def start_corral_fake(tmp: Path) -> tuple[subprocess.Popen[bytes], Target]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.ec2_api.fake_server",
            "--port",
            str(port),
            "--state",
            str(tmp / "corral-fake"),
            "--timings",
            str(tmp / "server-ms"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=open(tmp / "corral.log", "wb"),
    )
    assert proc.stdout is not None
    creds = json.loads(proc.stdout.readline())
    wait_http(f"http://127.0.0.1:{port}/v1/health")
    t = Target(
        "corral (fake node)",
        f"http://127.0.0.1:{port}",
        creds["access_key_id"],
        creds["secret_access_key"],
        "corral-1",
    )
    t.timings = tmp / "server-ms"
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
    procs = []
    try:
        moto_proc, moto = start_moto(tmp)
        procs.append(moto_proc)
        fake_proc, corral = start_corral_fake(tmp)
        procs.append(fake_proc)
        moto_ami = moto.boto.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        corral_ami = corral.boto.describe_images(Owners=["corral"])["Images"][0]["ImageId"]
        body = b"Action=DescribeInstances&Version=2016-11-15"
        for n in (1, 100, 1000):
            moto.grow(moto_ami, n, "t2.micro")
            corral.grow(corral_ami, n, "cr1.nano")
            corral.settle()
            moto.settle()
            row: dict[str, Any] = {
                "instances": n,
                "load": os.getloadavg()[0],
                "qemu_processes": _qemus(),
            }
            for t in (corral, moto):
                m = measure(t, body, args.seconds)
                row[t.name] = m
                inside = (
                    f"; in the server p50 {m['server_p50_ms']:.1f} p99 {m['server_p99_ms']:.1f} ms"
                    if "server_p50_ms" in m
                    else ""
                )
                print(
                    f"DescribeInstances n={n:5d} {t.name:20s} {m['rps']:8.1f} req/s "
                    f"p50 {m['p50_ms']:7.1f} ms p99 {m['p99_ms']:7.1f} ms "
                    f"({m['requests']} requests, {m['bytes']} bytes{inside})",
                    flush=True,
                )
            row["ratio_rps"] = row["corral (fake node)"]["rps"] / row["moto"]["rps"]
            results["describe_instances"].append(row)
        # the same listing when every request follows a write (a tag changed), so nothing
        # cached can answer it: what a poller pays while the cloud is changing
        cold = {}
        for t in (corral, moto):
            first = t.boto.describe_instances(MaxResults=5)["Reservations"][0]["Instances"][0]

            def retag(i: int, t: Target = t, iid: str = first["InstanceId"]) -> None:
                t.boto.create_tags(Resources=[iid], Tags=[{"Key": "bench", "Value": str(i)}])

            cold[t.name] = measure(t, body, args.seconds, between=retag)
            print(
                f"DescribeInstances n=1000 after a write {t.name:20s} "
                f"{cold[t.name]['rps']:8.1f} req/s p50 {cold[t.name]['p50_ms']:7.1f} ms "
                f"p99 {cold[t.name]['p99_ms']:7.1f} ms",
                flush=True,
            )
        results["describe_instances_after_write_at_1000"] = cold
        page = b"Action=DescribeInstances&Version=2016-11-15&MaxResults=100"
        paged = {t.name: measure(t, page, args.seconds) for t in (corral, moto)}
        results["describe_instances_page_of_100_at_1000"] = paged
        for name, m in paged.items():
            print(
                f"DescribeInstances MaxResults=100 of 1000 {name:20s} {m['rps']:8.1f} req/s "
                f"p50 {m['p50_ms']:7.1f} ms p99 {m['p99_ms']:7.1f} ms",
                flush=True,
            )
        results["run_to_running"].append(
            {"target": "moto", **run_to_running(moto, moto_ami, "t2.micro", args.runs)}
        )
        results["run_to_running"].append(
            {
                "target": "corral (fake node)",
                **run_to_running(corral, corral_ami, "cr1.nano", args.runs),
            }
        )
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    if not args.no_real:
        results["real"] = real_vms(args.runs, args.seconds)
    results["machine"]["load_after"] = os.getloadavg()
    write(results)
    shutil.rmtree(tmp, ignore_errors=True)


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
            f"p99 {m['p99_ms']:.1f} ms",
            flush=True,
        )
        t.boto.terminate_instances(InstanceIds=[iid])
    finally:
        d.teardown()
    return out


def write(results: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M")
    (RESULTS / f"ec2_api-{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    lines = [
        f"# EC2 API benchmark {results['date']}",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {m['cpus']} cores; load average before {m['load_before']}, after "
        f"{m.get('load_after')}; QEMU processes running before: "
        f"{m['qemu_processes_before']}",
        "",
        "## DescribeInstances, whole listing (one closed-loop client)",
        "",
        "| instances | Corral (fake node) req/s | p50 ms | p99 ms | moto req/s | p50 ms "
        "| p99 ms | Corral/moto | Corral p50/p99 inside the server ms "
        "| load (1 min), other VMs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in results["describe_instances"]:
        c, mo = row["corral (fake node)"], row["moto"]
        lines.append(
            f"| {row['instances']} | {c['rps']:.1f} | {c['p50_ms']:.1f} | "
            f"{c['p99_ms']:.1f} | {mo['rps']:.1f} | {mo['p50_ms']:.1f} | "
            f"{mo['p99_ms']:.1f} | {row['ratio_rps']:.2f}x | "
            f"{c.get('server_p50_ms', 0):.1f} / {c.get('server_p99_ms', 0):.1f} | "
            f"{row['load']:.2f}, {row['qemu_processes']} |"
        )
    cold = results.get("describe_instances_after_write_at_1000", {})
    if cold:
        lines += [
            "",
            "## DescribeInstances of 1000 right after a write (no cached answer)",
            "",
            "Each request follows a CreateTags on one instance (untimed), so the whole "
            "listing is read and rendered every time.",
            "",
            "| target | req/s | p50 ms | p99 ms |",
            "|---|---:|---:|---:|",
        ]
        for name, x in cold.items():
            lines.append(f"| {name} | {x['rps']:.1f} | {x['p50_ms']:.1f} | {x['p99_ms']:.1f} |")
    paged = results.get("describe_instances_page_of_100_at_1000", {})
    if paged:
        lines += [
            "",
            "## DescribeInstances, MaxResults=100 of 1000",
            "",
            "| target | req/s | p50 ms | p99 ms |",
            "|---|---:|---:|---:|",
        ]
        for name, x in paged.items():
            lines.append(f"| {name} | {x['rps']:.1f} | {x['p50_ms']:.1f} | {x['p99_ms']:.1f} |")
    lines += [
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
            f"DescribeInstances with one real VM: {x['rps']:.1f} req/s, p50 "
            f"{x['p50_ms']:.1f} ms, p99 {x['p99_ms']:.1f} ms.",
        ]
    (RESULTS / f"ec2_api-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
