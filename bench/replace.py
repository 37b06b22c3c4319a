"""Replace benchmark: how long a server's DNS name does not answer while it is upgraded.

An appliance (one tiny web server, busybox httpd, with a 1 GiB data volume and an HTTP health
check) is upgraded back and forth between two images, alternately by

* ``corral replace`` (the new instance boots beside the old one on an address of its own and
  passes its health check; then the old one stops, name, address and volume move, the new one
  re-asks DHCP: see corral/controller/replace.py), and
* the naive upgrade as a user would script it with the same API: stop and remove the old
  instance, run the new image with the same name, address and user-data, attach the volume.

A prober inside Corral's network namespace, every 50 ms, resolves the name with the node's
dnsmasq and connects to the service port of the address it got (0.5 s timeout per attempt). The
outage is the sum of the gaps without a good answer (each from the start of a failed probe to
the start of the next good one; the resolution is the probe period) from the request until
WINDOW seconds after the server first answered again, so a server that flaps after its first
good answer is counted too; each gap is kept with its start relative to the request. After
each upgrade the name must resolve to the address it had before, the instance called by that
name must be a new one at that address, and the data on its volume must be there. The
upgrade's own duration (request to done) and the server's cutover time (old stopping -> new
healthy at the old address) are reported beside it.

The tiny image stops through busybox init, which sleeps 1 s after SIGTERM and 1 s more before
powering off (init/init.c: run_shutdown_and_kill_processes, pause_and_low_level_reboot): its
old server refuses connections for those 2 s in either kind of upgrade. ``--fast-shutdown``
gives the appliance an /etc/init.d/rcK that ends in ``poweroff -f`` (no init sleeps), to show
the ratio without that fixed timer.

    sudo .venv/bin/python -m bench.replace [--runs 5] [--image tiny|debian] [--fast-shutdown]

With ``--image debian`` the server is Debian (python3's http.server) upgraded from debian:12 to
itself (a new instance all the same); it boots in about 60-90 s under TCG, so use few runs."""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype

from bench.common import Daemon, machine, median, new_daemon, write_results
from corral import models
from corral.appliances import render
from corral.appliances import spec as specs
from corral.images.recipe import BUILTIN
from corral.naming import account_zone, private_dns_name
from corral.node.net import netns
from tests.harness import dns_addresses, dns_query

PERIOD = 0.05
PROBE_TIMEOUT = 0.5
WINDOW = 5.0  # seconds measured after the server first answers again
# the prober's samples may be at most this far apart in a measured window: a prober that stalls
# (or dies) would otherwise read as a server that never went down
SAMPLE_GAP_MAX = 1.5

# /etc/init.d/rcK for --fast-shutdown: what tiny's does, then power off at once (busybox init
# would otherwise sleep 2 s in all before powering off)
FAST_RCK = """\
#!/bin/sh
echo "corral-tiny: shutting down (fast)" > /dev/console
killall httpd dropbear udhcpc acpid 2>/dev/null
sync
mount -o remount,ro / 2>/dev/null
poweroff -f
"""

TINY = """\
name = "bench"

[services.web]
image = "{image}"
run = "ln -sfn /srv/data /srv/www/data; httpd -p 80 -h /srv/www"
health = {{ port = 80, path = "/health", timeout = 120 }}

[services.web.files]
"/srv/www/health" = {{ content = "ok\\n" }}

[[services.web.volumes]]
name = "data"
size = "1G"
mount = "/srv/data"
"""

DEBIAN = """\
name = "bench"

[services.web]
image = "{image}"
memory = "512M"
run = '''mkdir -p /srv/www &&
(setsid python3 -m http.server 80 -d /srv/www > /dev/null 2>&1 < /dev/null &)'''
health = {{ port = 80, path = "/health", timeout = 400 }}

[services.web.files]
"/srv/www/health" = {{ content = "ok\\n" }}

[[services.web.volumes]]
name = "data"
size = "1G"
mount = "/srv/data"
"""


class Prober(threading.Thread):
    """Resolve NAME (in its account's zone, corral/naming.py) with dnsmasq and connect to its
    port 80, every PERIOD, in the namespace."""

    def __init__(self, d: Daemon, name: str, account_id: str) -> None:
        super().__init__(daemon=True)
        st = d.settings
        self.ns = st.namespace
        self.fqdn = private_dns_name(name, account_id, st.domain)
        self.dns = str(next(ipaddress.ip_network(st.subnet).hosts()))
        self.samples: list[tuple[float, bool]] = []
        self.why: dict[float, str] = {}  # a failed probe's time -> what failed
        self.running = True

    def probe(self) -> bool:
        try:
            why = self._probe()
        except Exception as err:  # any failure is a failed probe, never the prober's end
            why = f"probe: {type(err).__name__}: {err}"[:200]
        if why:
            self.why[time.monotonic()] = why
        return not why

    def _probe(self) -> str:
        """ "" when the name answers, else what failed (kept to explain outages)."""
        try:
            addresses = dns_addresses(dns_query(self.ns, self.dns, self.fqdn, PROBE_TIMEOUT))
            if not addresses:
                return "dns: no address"
        except (OSError, dns.exception.DNSException) as err:
            return f"dns: {type(err).__name__}"
        try:
            tcp = netns.socket_in(self.ns)
            tcp.settimeout(PROBE_TIMEOUT)
            try:
                tcp.connect((addresses[0], 80))
                return ""
            finally:
                tcp.close()
        except OSError as err:
            return f"connect {','.join(addresses)}: {type(err).__name__}"

    def run(self) -> None:
        nxt = time.monotonic()
        while self.running:
            start = time.monotonic()
            self.samples.append((start, self.probe()))
            nxt = max(nxt + PERIOD, time.monotonic())
            time.sleep(max(0.0, nxt - time.monotonic()))

    def reasons(self, since: float, until: float) -> dict[str, int]:
        """How often each kind of failure was seen between ``since`` and ``until``."""
        out: dict[str, int] = {}
        for t, why in self.why.items():
            if since <= t <= until:
                out[why] = out.get(why, 0) + 1
        return out

    def sampled(self, since: float, until: float) -> tuple[int, float]:
        """How many probes ran between ``since`` and ``until``, and the longest time without
        one (from ``since``, between two, and up to ``until``)."""
        times = [t for t, _ in self.samples if since <= t <= until]
        edges = [since, *times, until]
        return len(times), max(b - a for a, b in itertools.pairwise(edges))

    def outage(self, since: float, until: float) -> list[tuple[float, float]]:
        """The gaps without a good answer between ``since`` and ``until``: (start relative to
        ``since``, length) each. Raises when the prober did not sample the whole window."""
        count, longest = self.sampled(since, until)
        if not self.is_alive() or longest > SAMPLE_GAP_MAX:
            frame = sys._current_frames().get(self.ident or 0)
            where = "".join(traceback.format_stack(frame)[-4:]) if frame is not None else "-"
            raise RuntimeError(
                f"the prober did not watch the whole upgrade ({count} probes, {longest:.1f} s "
                f"without one, alive: {self.is_alive()}): no outage can be read from it; "
                f"the prober is at:\n{where}"
            )
        gaps: list[tuple[float, float]] = []
        down_at = None
        for t, ok in self.samples:
            if t < since:
                continue
            if t > until and down_at is None:
                break
            if not ok and down_at is None:
                down_at = t
            elif ok and down_at is not None:
                gaps.append((round(down_at - since, 3), round(t - down_at, 3)))
                down_at = None
        if down_at is not None:
            gaps.append((round(down_at - since, 3), round(self.samples[-1][0] - down_at, 3)))
        return gaps


def tiny_next(work: Path) -> Path:
    """The tiny recipe as tiny-next:2 (another image, the same software)."""
    d = work / "tiny-next"
    shutil.copytree(BUILTIN / "tiny", d)
    text = (d / "recipe.toml").read_text().replace('name = "tiny"', 'name = "tiny-next"')
    (d / "recipe.toml").write_text(text.replace('version = "1"', 'version = "2"'))
    return d


def wait(c: Any, op: models.Operation | None, timeout: float = 900) -> models.Operation | None:
    deadline = time.monotonic() + timeout
    while op is not None and op.status not in ("succeeded", "failed", "cancelled"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"operation {op.id} still {op.status}")
        op = c.operation_wait(op.id, timeout=60)
    if op is not None and op.status != "succeeded":
        raise RuntimeError(f"operation {op.id} {op.status}: {op.error}")
    return op


def healthy(prober: Prober, timeout: float) -> None:
    """Until a probe made after this call began answers (a stalled prober's last sample is no
    answer)."""
    since = time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        if prober.samples and prober.samples[-1][1] and prober.samples[-1][0] >= since:
            return
        if not prober.is_alive():
            raise RuntimeError("the prober stopped")
        time.sleep(0.1)
    raise RuntimeError("the server did not come back")


def upgrade_replace(c: Any, image: str, timeout: float) -> dict[str, Any]:
    # the check named, as for any server: after a naive upgrade "web" is a plain instance
    # whose default check (SSH) would pass before its user-data has started the service
    acc = c.instance_replace(
        "web", models.ReplaceRequest(image=image, timeout=timeout, check="80/health")
    )
    op = wait(c, acc.operation)
    assert op is not None
    events = c.operation_events(op.id)
    stop = next((e.time for e in events if "stopping the old" in e.message), None)
    return {
        "cutover_seconds": op.result.get("cutover_seconds"),
        "cutover_began_after": round((stop - op.created_at).total_seconds(), 3)
        if stop is not None
        else None,
    }


def upgrade_naive(c: Any, image: str, timeout: float) -> dict[str, Any]:
    """Stop the old, run the new with the same name, address, user-data; attach the volume."""
    old = c.instance_show("web")
    wait(c, c.instance_terminate("web", timeout=30).operation)
    req = models.InstanceCreate(
        image=image,
        name="web",
        memory=f"{old.memory >> 20}M",
        address=old.private_ip,
        user_data=NAIVE_USER_DATA["text"],
        public_keys=[sshkey_line()],
    )
    acc = c.instance_run(req)
    c.volume_attach("web-data", models.VolumeAttach(instance=acc.instance.id))
    wait(c, acc.operation)
    return {}


NAIVE_USER_DATA: dict[str, str] = {"text": ""}


def sshkey_line() -> str:
    return NAIVE_USER_DATA["key"]


def resolve(prober: Prober) -> list[str]:
    """The addresses the node's dnsmasq gives for the server's name."""
    return dns_addresses(dns_query(prober.ns, prober.dns, prober.fqdn, 2))


def kept(rows: list[dict[str, Any]]) -> str:
    """ "yes in every run", or which run lost what (and which failed and rolled back)."""
    keys = ("data_kept", "address_kept", "name_kept", "new_instance")
    lost = [
        f"run {i + 1}: not {', '.join(k for k in keys if not r[k])}"
        for i, r in enumerate(rows)
        if not all(r[k] for k in keys)
    ]
    lost += [f"run {i + 1} failed and rolled back" for i, r in enumerate(rows) if "failed" in r]
    return "yes in every run" if not lost else "; ".join(lost)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="upgrades of each kind")
    ap.add_argument("--image", choices=("tiny", "debian"), default="tiny")
    ap.add_argument(
        "--fast-shutdown",
        action="store_true",
        help="tiny: an rcK that powers off at once (no busybox init sleeps)",
    )
    args = ap.parse_args()
    if args.fast_shutdown and args.image != "tiny":
        ap.error("--fast-shutdown is for the tiny image")
    info = machine()
    d = new_daemon()
    work = Path(tempfile.mkdtemp(prefix="bench-replace-"))
    prober: Prober | None = None
    results: dict[str, list[dict[str, Any]]] = {"replace": [], "naive": []}
    try:
        d.start()
        if args.image == "tiny":
            d.cli("image", "build", "tiny", timeout=900).ok()
            d.cli("image", "build", str(tiny_next(work)), timeout=900).ok()
            images, text, boot = ["tiny:1", "tiny-next:2"], TINY, 120.0
        else:
            d.cli("image", "build", "debian", timeout=3600).ok()
            images, text, boot = ["debian:12", "debian:12"], DEBIAN, 400.0
        path = work / "bench.toml"
        if args.fast_shutdown:
            rck = '"/etc/init.d/rcK" = {{ content = """\n' + FAST_RCK + '""", mode = "755" }}\n'
            text = text.replace("[services.web.files]\n", "[services.web.files]\n" + rck)
        path.write_text(text.format(image=images[0]))
        d.cli("apply", str(path), timeout=900).ok()
        c = d.client()
        # the naive upgrade gives the new instance the same user-data the appliance has
        account = c.instance_show("web").account_id
        zone = account_zone(account, d.settings.domain)
        desired = render.desired(specs.load(path), {"web": "-"}, zone)
        NAIVE_USER_DATA["text"] = desired[0].user_data
        NAIVE_USER_DATA["key"] = (d.home / "corral" / "id_ed25519.pub").read_text().strip()
        d.ssh("web", "echo bench | $(command -v sudo) tee /srv/data/proof > /dev/null && sync").ok()
        prober = Prober(d, "web", account)
        prober.start()
        healthy(prober, boot)
        address = c.instance_show("web").private_ip
        assert address and resolve(prober) == [address]
        before_id = c.instance_show("web").id
        current = 0
        for n in range(args.runs * 2):
            kind = "replace" if n % 2 == 0 else "naive"
            target = images[1 - current]
            time.sleep(2.0)  # steady state before
            start = time.monotonic()
            try:
                extra = (upgrade_replace if kind == "replace" else upgrade_naive)(c, target, boot)
            except RuntimeError as err:
                # a replace that fails rolls back (the old server keeps serving): recorded, and
                # its outage counted like any other; the image did not change
                extra, target = {"failed": str(err)[:500]}, images[current]
            healthy(prober, boot)
            end = time.monotonic()
            # measure on after the first good answer: a server that flaps counts too
            time.sleep(WINDOW)
            until = time.monotonic()
            gaps = prober.outage(start, until)
            probes, unwatched = prober.sampled(start, until)
            down = sum(length for _, length in gaps)
            proof = d.ssh("web", "cat /srv/data/proof").out.strip()
            now = c.instance_show("web")
            row = {
                "kind": kind,
                "to": target,
                "outage_seconds": round(down, 3),
                "gaps": gaps,
                "gaps_after_first_good_answer": [g for g in gaps if g[0] > end - start],
                "failures": prober.reasons(start, until),
                "probes": probes,
                "longest_without_probe": round(unwatched, 3),
                "upgrade_seconds": round(end - start, 3),
                "measured_until_seconds": round(until - start, 3),
                "data_kept": proof == "bench",
                "address_kept": now.private_ip == address,
                "name_kept": resolve(prober) == [address],
                "new_instance": now.id != before_id and now.image_name == target.split(":")[0],
                "load": list(os.getloadavg()),
                **extra,
            }
            if "failed" in row:  # rolled back: the same instance serves on, by design
                row["new_instance"] = now.id == before_id
            before_id = now.id
            results[kind].append(row)
            print(row, flush=True)
            if "failed" not in row:
                current = 1 - current
    finally:
        if prober is not None:  # stopped before its namespace goes
            prober.running = False
            prober.join(5)
        d.teardown()
        shutil.rmtree(work, ignore_errors=True)
    rep = [r["outage_seconds"] for r in results["replace"]]
    naive = [r["outage_seconds"] for r in results["naive"]]
    rep_up = [r["upgrade_seconds"] for r in results["replace"]]
    naive_up = [r["upgrade_seconds"] for r in results["naive"]]
    cut = [r["cutover_seconds"] for r in results["replace"] if r.get("cutover_seconds")]
    data = {
        "machine": info,
        "image": args.image,
        "runs": args.runs,
        "period": PERIOD,
        "probe_timeout": PROBE_TIMEOUT,
        "results": results,
        "median": {
            "replace_outage": median(rep),
            "naive_outage": median(naive),
            "replace_upgrade": median(rep_up),
            "naive_upgrade": median(naive_up),
            "replace_cutover_server": median(cut),
        },
    }
    ratio = median(naive) / median(rep) if median(rep) else float("nan")
    summary = "\n".join(
        [
            f"# replace outage ({args.image}, {args.runs} upgrades each way, probe every "
            f"{PERIOD * 1000:.0f} ms)",
            "",
            "Time the DNS name does not answer: dnsmasq lookup + TCP connect to port 80 from "
            f"inside Corral's namespace, {PROBE_TIMEOUT} s timeout per probe. Each run's gaps "
            "(start after the request, length) are in the JSON.",
            "",
            "| upgrade | runs | outage median | outage min-max | whole upgrade median "
            "| data, address, name kept; a new instance |",
            "|---|---:|---:|---:|---:|---|",
            f"| `corral replace` | {len(rep)} | {median(rep):.2f} s | "
            f"{min(rep):.2f}-{max(rep):.2f} s | {median(rep_up):.1f} s | "
            f"{kept(results['replace'])} |",
            f"| naive stop-then-start (baseline) | {len(naive)} | {median(naive):.2f} s | "
            f"{min(naive):.2f}-{max(naive):.2f} s | {median(naive_up):.1f} s | "
            f"{kept(results['naive'])} |",
            "",
            f"Outage ratio naive / replace: {ratio:.1f}x. Server-side cutover (old stopping -> "
            f"new healthy at the old address) median {median(cut):.2f} s. Each outage counts "
            f"every gap until {WINDOW:.0f} s after the first good answer.",
            (
                "Guest shutdown: fast (an rcK ending in `poweroff -f`)."
                if args.fast_shutdown
                else "Guest shutdown: the image's own"
                + (" (busybox init: 2 s of fixed sleeps)." if args.image == "tiny" else ".")
            ),
            f"Load average at start {info['loadavg_start'][0]:.2f}, at end "
            f"{os.getloadavg()[0]:.2f} (2 cores, TCG).",
        ]
    )
    name = "replace" + ("" if args.image == "tiny" else f"-{args.image}")
    name += "-fast-shutdown" if args.fast_shutdown else ""
    write_results(name, data, summary, module="bench.replace")


if __name__ == "__main__":
    main()
