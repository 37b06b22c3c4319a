"""Prometheus metrics: the API's requests (by route template, never the raw path, and status)
with their latency, counted by an ASGI middleware; and, at each scrape, the nodes' and
instances' counters, the instances by state and the scheduler's view of capacity."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.controller import capacity as cap
from corral.controller.observe import REGISTRY, Sample
from corral.controller.scheduler import Policy

REQUESTS = Counter(
    "corral_api_requests",
    "API requests answered, by method, route template and status",
    ["method", "route", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "corral_api_request_duration_seconds",
    "Time to answer API requests (to the response's start), by method and route template",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)


class RequestMetrics:
    """Counts every HTTP request by the template of the route that served it ("unmatched"
    when none did), so ids in paths never become labels."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                LATENCY.labels(scope["method"], route).observe(time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            REQUESTS.labels(scope["method"], route, str(status)).inc()


class Snapshot(Collector):
    """One scrape's figures, gathered (async) before the registry is rendered."""

    def __init__(
        self, sample: Sample, by_state: dict[str, int], report: cap.Report | None, p: Policy
    ) -> None:
        self.sample, self.by_state, self.report, self.policy = sample, by_state, report, p

    def collect(self) -> Iterator[Metric]:
        yield from self._nodes()
        yield from self._instances()
        states = GaugeMetricFamily("corral_instances", "Instances by state", labels=["state"])
        for state, n in sorted(self.by_state.items()):
            states.add_metric([state], n)
        yield states
        if self.report is not None:
            yield from self._capacity(self.report)

    def _nodes(self) -> Iterator[Metric]:
        lab = ["node"]
        up = GaugeMetricFamily("corral_node_up", "1 when the node's agent answered", labels=lab)
        cpus = GaugeMetricFamily("corral_node_cpus", "Host CPUs", labels=lab)
        cpu = CounterMetricFamily(
            "corral_node_cpu_seconds", "Host CPU time spent busy (all CPUs)", labels=lab
        )
        mem = GaugeMetricFamily("corral_node_memory_bytes", "Host memory", labels=lab)
        avail = GaugeMetricFamily(
            "corral_node_memory_available_bytes", "Host memory available", labels=lab
        )
        load = GaugeMetricFamily("corral_node_load1", "Host load average over 1 minute", labels=lab)
        for n in self.sample.nodes:
            up.add_metric([n.name], 1 if n.stats else 0)
            if n.stats is None:
                continue
            cpus.add_metric([n.name], n.stats.cpus)
            cpu.add_metric([n.name], n.stats.cpu_seconds)
            mem.add_metric([n.name], n.stats.memory_total)
            avail.add_metric([n.name], n.stats.memory_available)
            load.add_metric([n.name], n.stats.load1)
        yield from (up, cpus, cpu, mem, avail, load)

    def _instances(self) -> Iterator[Metric]:
        lab = ["instance", "name", "node", "account"]

        def c(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=lab)

        def g(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=lab)

        cpu = c("corral_instance_cpu_seconds", "CPU time the instance's QEMU used")
        limit = g("corral_instance_cpu_limit_cores", "Host cores the instance may use")
        mem = g("corral_instance_memory_bytes", "Memory the instance's QEMU holds")
        mem_limit = g("corral_instance_memory_limit_bytes", "The guest's memory")
        rd = c("corral_instance_disk_read_bytes", "Bytes read from the instance's disks")
        wr = c("corral_instance_disk_written_bytes", "Bytes written to the instance's disks")
        rx = c("corral_instance_network_receive_bytes", "Bytes the guest received")
        tx = c("corral_instance_network_transmit_bytes", "Bytes the guest sent")
        started = g("corral_instance_start_time_seconds", "When its QEMU started (epoch s)")
        for i in self.sample.instances:
            s = i.stats
            if s is None:
                continue
            v = [i.id, i.name, i.node_name, i.account_id]
            limit.add_metric(v, s.cpu_limit or float(s.vcpus))
            mem_limit.add_metric(v, s.memory_limit)
            for family, value in (
                (cpu, s.cpu_seconds),
                (mem, s.memory_bytes),
                (rd, s.disk_read_bytes),
                (wr, s.disk_write_bytes),
                (rx, s.net_rx_bytes),
                (tx, s.net_tx_bytes),
                (started, s.started_at),
            ):
                if value is not None:
                    family.add_metric(v, value)
        yield from (cpu, limit, mem, mem_limit, rd, wr, rx, tx, started)

    def _capacity(self, rep: cap.Report) -> Iterator[Metric]:
        p, lab = self.policy, ["node"]
        families = {
            "memory_capacity": GaugeMetricFamily(
                "corral_node_memory_capacity_bytes", "Memory for instances", labels=lab
            ),
            "memory_claimed": GaugeMetricFamily(
                "corral_node_memory_claimed_bytes", "Memory claimed by instances", labels=lab
            ),
            "cores_capacity": GaugeMetricFamily(
                "corral_node_cores_capacity", "Cores for instances (x allocation ratio)", labels=lab
            ),
            "cores_claimed": GaugeMetricFamily(
                "corral_node_cores_claimed", "Cores claimed by instances", labels=lab
            ),
            "schedulable": GaugeMetricFamily(
                "corral_node_schedulable", "1 when the scheduler may place here", labels=lab
            ),
        }
        for n in rep.nodes:
            name = [n.view.name]
            families["memory_capacity"].add_metric(name, n.view.memory_capacity(p))
            families["memory_claimed"].add_metric(name, n.view.claimed_memory)
            families["cores_capacity"].add_metric(name, n.view.cores_capacity(p))
            families["cores_claimed"].add_metric(name, n.view.claimed_cores)
            families["schedulable"].add_metric(name, 1 if n.schedulable else 0)
        yield from families.values()
        fits = GaugeMetricFamily(
            "corral_scheduler_fits",
            "How many more instances of each type fit in the cluster",
            labels=["instance_type"],
        )
        for t, k in sorted(rep.fits.items()):
            fits.add_metric([t], k)
        yield fits
        yield GaugeMetricFamily(
            "corral_scheduler_n_plus_one",
            "1 when any one node could fail and its instances fit on the others",
            value=1 if rep.n_plus_one else 0,
        )


def render(snapshot: Snapshot) -> bytes:
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(snapshot)
    return generate_latest(REGISTRY) + generate_latest(scrape)
