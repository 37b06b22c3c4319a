"""A data-centre LAN for multi-node tests, made of network namespaces on this machine: a "lan"
namespace holding the bridge that stands for the LAN's switch, N "host" namespaces each joined
to it by a veth with an underlay address from 192.0.2.0/24 (192.0.2.11, .12, …), and an
"outside" namespace standing for the internet (on the LAN at 192.0.2.254, the hosts' default
route). Every name carries a tag unique to the run; everything is removed on exit, also when the
body or the set-up fails.

``cluster(n)`` builds on it: a whole Corral cluster on this machine (see its docstring)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness import CliResult, Daemon, next_subnet, wait_for

UNDERLAY = ipaddress.ip_network("192.0.2.0/24")  # TEST-NET-1: never a real network
FIRST_HOST = 11
OUTSIDE_ADDRESS = ipaddress.ip_address("192.0.2.254")
BRIDGE = "lan0"
HOST_IFACE = "eth0"  # the underlay link's name inside each host namespace
PREFIX = "ccl"  # every namespace of these LANs: ccl<pid>-<random>-<role>


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True, timeout=30)


def namespaces() -> set[str]:
    """The network namespaces that exist now (by name)."""
    out = subprocess.run(
        ["ip", "-json", "netns", "list"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return {n["name"] for n in json.loads(out or "[]")}


@dataclass(frozen=True)
class Host:
    """One "hypervisor host": its namespace and its address on the underlay."""

    name: str  # host1, host2, …
    netns: str
    address: str

    def exec(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command inside this host's namespace (an argv list, never a shell)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@dataclass
class Lan:
    tag: str
    netns: str  # the LAN's own namespace (the bridge)
    outside: str  # the namespace standing for the internet
    hosts: list[Host] = field(default_factory=list)

    @property
    def namespaces(self) -> list[str]:
        return [self.netns, self.outside, *(h.netns for h in self.hosts)]


@contextlib.contextmanager
def lan(hosts: int = 3) -> Iterator[Lan]:
    """Build the LAN with ``hosts`` host namespaces; tear it all down on exit."""
    if not 1 <= hosts <= UNDERLAY.num_addresses - FIRST_HOST - 2:
        raise ValueError(f"hosts={hosts}: between 1 and {UNDERLAY.num_addresses - FIRST_HOST - 2}")
    sweep_stale()
    # the tag: the test process's pid (for the sweep) and a random part
    tag = f"{os.getpid()}-{secrets.token_hex(3)}"
    net = Lan(tag=tag, netns=f"{PREFIX}{tag}-lan", outside=f"{PREFIX}{tag}-out")
    made: list[str] = []
    try:
        for ns in (net.netns, net.outside):
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", net.netns, "link", "add", BRIDGE, "type", "bridge")
        _ip("-n", net.netns, "link", "set", BRIDGE, "up")
        _attach(net, net.outside, "out", OUTSIDE_ADDRESS)
        for n in range(1, hosts + 1):
            host = Host(
                name=f"host{n}",
                netns=f"{PREFIX}{tag}-h{n}",
                address=str(UNDERLAY.network_address + FIRST_HOST + n - 1),
            )
            _ip("netns", "add", host.netns)
            made.append(host.netns)
            net.hosts.append(host)
            _ip("-n", host.netns, "link", "set", "lo", "up")
            _attach(net, host.netns, f"h{n}", ipaddress.ip_address(host.address))
            _ip("-n", host.netns, "route", "add", "default", "via", str(OUTSIDE_ADDRESS))
        yield net
    finally:
        teardown(made)


def _attach(
    net: Lan, ns: str, port: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> None:
    """A veth from the LAN's bridge (port ``port``) to ``HOST_IFACE`` in ``ns``, addressed."""
    _ip(
        "-n", net.netns, "link", "add", port, "type", "veth", "peer", "name", HOST_IFACE,
        "netns", ns,
    )  # fmt: skip
    _ip("-n", net.netns, "link", "set", port, "master", BRIDGE, "up")
    _ip("-n", ns, "addr", "add", f"{address}/{UNDERLAY.prefixlen}", "dev", HOST_IFACE)
    _ip("-n", ns, "link", "set", HOST_IFACE, "up")


def sweep_stale() -> None:
    """Delete the LANs of test processes that are gone (killed before their teardown ran)."""
    for ns in namespaces():
        m = re.fullmatch(rf"{PREFIX}(\d+)-[0-9a-f]+-\w+", ns)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)


def teardown(names: list[str]) -> None:
    """Delete the namespaces (their links, bridge and addresses go with them)."""
    for ns in reversed(names):
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)


# -- a cluster: controller on PostgreSQL, one joined agent per host ---------------------------
API_PORT = 8773
AGENT_PORT = 8774
PYTHON = sys.executable


@dataclass
class Agent:
    """A node agent in a host namespace, joined with `corral node join`, with its own state
    directory (so its data-plane namespace, cgroups and runtime paths are its own)."""

    host: Host
    base: Path  # removed at teardown; the state directory is base/state
    proc: subprocess.Popen[bytes] | None = None
    token: str = ""  # the token it joined with (spent)

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def state_dir(self) -> Path:
        return self.base / "state"

    @property
    def address(self) -> str:
        return f"{self.host.address}:{AGENT_PORT}"

    @property
    def log(self) -> Path:
        return self.base / "agent.log"

    def _spawn(self, argv: list[str]) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                # nsenter switches only the network namespace: the namespaces the agent names
                # (`ip netns add`) must outlive it, which they do not from inside `ip netns
                # exec`'s private mount namespace
                ["nsenter", f"--net=/run/netns/{self.host.netns}", PYTHON, "-m", "corral",
                 "--state-dir", str(self.state_dir), *argv],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    def join(self, url: str, token: str, *extra: str) -> None:
        """`corral node join` (it goes on running as the agent)."""
        self.token = token
        self._spawn(["node", "join", url, "--token", token, "--listen", self.address,
                     "--name", self.name, "--accel", "tcg", *extra])  # fmt: skip

    def restart(self) -> None:
        """The agent again, from what the join kept (`corral agent`)."""
        self._spawn(["agent", "--accel", "tcg"])

    def kill9(self) -> None:
        """SIGKILL the agent (nsenter execs it: the pid is the agent's)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def teardown(self) -> None:
        """Its VMs, dnsmasqs, namespace, cgroups and files (as the all-in-one harness does)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.state_dir.exists():
            Daemon(
                state_dir=self.state_dir, port=1, subnet=next_subnet(), home=self.base
            ).teardown()
        shutil.rmtree(self.base, ignore_errors=True)


@dataclass
class Cluster:
    """A running cluster: ``cli(...)`` runs the CLI as the admin (in the outside namespace, the
    controller's), ``token()`` makes a join token, ``join(host)`` joins one more agent."""

    lan: Lan
    db_url: str
    base: Path
    settings: dict[str, Any] = field(default_factory=dict)  # the controller's corral.toml
    agents: dict[str, Agent] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    subnet: str = ""  # the controller's --subnet, the same at every start

    @property
    def state_dir(self) -> Path:
        return self.base / "controller"

    @property
    def url(self) -> str:
        return f"https://{OUTSIDE_ADDRESS}:{API_PORT}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        env.update(
            CORRAL_STATE_DIR=str(self.state_dir),
            XDG_CONFIG_HOME=str(self.base / "home"),
            PYTHONUNBUFFERED="1",
        )
        return env

    def cli(self, *args: str, timeout: float = 180, input: str | None = None) -> CliResult:
        """The CLI as the admin, where the API is reachable (the outside namespace)."""
        p = subprocess.run(
            ["ip", "netns", "exec", self.lan.outside, PYTHON, "-m", "corral", *args],
            capture_output=True, text=True, env=self.env(), timeout=timeout, input=input,
        )  # fmt: skip
        return CliResult(p.returncode, p.stdout, p.stderr)

    def ssh(self, name: str, command: str, timeout: float = 120, wait: int = 300) -> CliResult:
        return self.cli("ssh", name, "--wait", str(wait), "--", command, timeout=timeout + wait)

    def token(self, ttl: str = "10m") -> str:
        return self.cli("node", "token", "--ttl", ttl).ok().out.split()[0]

    def log_tail(self, n: int = 40) -> str:
        try:
            text = (self.base / "controller.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-n:])

    def start(self, timeout: float = 120) -> None:
        """`corral up --no-local-node` on PostgreSQL, serving HTTPS on the LAN (a restart
        keeps the subnet: another one would be an operator's change of the nodes' networks)."""
        self.subnet = self.subnet or next_subnet()
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.settings:
            (self.state_dir / "corral.toml").write_text(
                "".join(f"{k} = {json.dumps(v)}\n" for k, v in self.settings.items())
            )
        with open(self.base / "controller.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.lan.outside, PYTHON, "-m", "corral", "up",
                 "--host", str(OUTSIDE_ADDRESS), "--port", str(API_PORT), "--db", self.db_url,
                 "--no-local-node", "--subnet", self.subnet],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=self.env(),
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"corral up exited {self.proc.returncode}:\n{self.log_tail()}")
            if (self.state_dir / "admin.credentials").exists() and self.cli("status").rc == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"the controller did not answer in {timeout} s:\n{self.log_tail()}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def join(self, host: Host, *extra: str, timeout: float = 120) -> Agent:
        """Join ``host`` with a fresh token and wait until the controller lists it ready."""
        agent = Agent(
            host, Path(tempfile.mkdtemp(prefix=f"corral-node-{host.name}-", dir="/var/tmp"))
        )
        self.agents[host.name] = agent
        agent.join(self.url, self.token(), *extra)
        wait_for(
            lambda: (
                self.node(host.name).get("state") == "ready"
                or (agent.proc is not None and agent.proc.poll() is not None)
            ),
            timeout,
            what=f"node {host.name} ready",
        )
        if agent.proc is not None and agent.proc.poll() is not None:
            raise RuntimeError(f"node {host.name}: the join failed:\n{agent.log_tail()}")
        return agent

    def join_on_underlay(self) -> None:
        """Join every host, each agent's address for migration and replica (NBD) traffic its
        underlay address (``CORRAL_MIGRATION_ADDRESS``; the default is loopback)."""
        for host in self.lan.hosts:
            os.environ["CORRAL_MIGRATION_ADDRESS"] = host.address
            try:
                self.join(host)
            finally:
                del os.environ["CORRAL_MIGRATION_ADDRESS"]

    def nodes(self) -> list[dict[str, Any]]:
        r = self.cli("node", "ls", "--json")
        return list(json.loads(r.out)) if r.rc == 0 else []

    def node(self, name: str) -> dict[str, Any]:
        return next((n for n in self.nodes() if n["name"] == name), {})

    def teardown(self) -> None:
        def one(agent: Agent) -> None:
            try:
                agent.teardown()
            except Exception as err:  # the others and the controller still go
                print(f"teardown of {agent.name}: {err!r}", file=sys.stderr)

        # the agents at once (each waits for its own processes: seconds each, one by one)
        with concurrent.futures.ThreadPoolExecutor(max(1, len(self.agents))) as pool:
            list(pool.map(one, self.agents.values()))
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def cluster(
    db_url: str, nodes: int = 3, join: bool = True, settings: dict[str, Any] | None = None
) -> Iterator[Cluster]:
    """A Corral cluster on this machine, torn down on exit (also when the body or the set-up
    fails): ``lan(nodes)`` (host namespaces host1.. at 192.0.2.11.., the outside namespace at
    192.0.2.254); the controller (`corral up --no-local-node --db db_url`) in the outside
    namespace, serving HTTPS at https://192.0.2.254:8773 with a certificate from its CA; and,
    with ``join``, one agent per host joined with `corral node join` from its host namespace,
    each with its own state directory (so its data-plane namespace, cgroups, dnsmasq and runtime
    paths are its own), listening at <host address>:8774.

    ``db_url`` is a fresh database, e.g. from the ``postgres_server`` fixture::

        @pytest.fixture(scope="module")
        def three(postgres_server):
            with postgres_server.database() as url, cluster(url, 3) as c:
                yield c

    Then ``c.cli("run", ...)`` runs the CLI as the admin, ``c.agents["host1"]`` is an agent
    (``kill9()``, ``restart()``), ``c.join(host)`` joins another host, ``c.kill9()`` kills the
    controller and ``c.start()`` starts it again on the same state and database."""
    with lan(nodes) as net:
        base = Path(tempfile.mkdtemp(prefix="corral-cluster-", dir="/var/tmp"))
        c = Cluster(net, db_url, base, dict(settings or {}))
        try:
            c.start()
            if join:
                for host in net.hosts:
                    c.join(host)
            yield c
        except BaseException:
            print(f"controller log:\n{c.log_tail(60)}", file=sys.stderr)
            for agent in c.agents.values():
                print(f"agent {agent.name} log:\n{agent.log_tail(30)}", file=sys.stderr)
            raise
        finally:
            c.teardown()


@contextlib.contextmanager
def bench_cluster(nodes: int = 3, settings: dict[str, Any] | None = None) -> Iterator[Cluster]:
    """A benchmark's cluster: its own PostgreSQL, ``nodes`` agents joined with their
    migration and replica traffic on the underlay, the tiny image built."""
    from tests.postgres import PostgresServer

    with (
        PostgresServer() as pg,
        pg.database() as url,
        cluster(url, nodes, join=False, settings=settings) as c,
    ):
        c.join_on_underlay()
        c.cli("image", "build", "tiny", timeout=900).ok()
        yield c
