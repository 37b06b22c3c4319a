"""A real Corral daemon for integration and e2e tests: its own state directory, port, subnet
and network namespace, started as a subprocess and torn down completely (instances, dnsmasq,
namespace, cgroups, files) even when a test fails."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import httpx

from corral import config
from corral.client import Client, Credentials
from corral.fsutil import pid_alive
from corral.node.net import netns

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# `corral run` options for a guest whose CPU cap is not what the test is about: a whole core
# (cr1.small) boots the tiny image in about half the time of the default's half core
# (cr1.micro, whose cap the lifecycle, observe and EC2 tests check)
WHOLE_CORE = ("--type", "cr1.small")
_subnet_counter = iter(range(1, 250))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def next_subnet(prefix: int = 24) -> str:
    # 10.201.N.0/24 per daemon in this test process (pid-salted across parallel runs)
    n = (next(_subnet_counter) + os.getpid()) % 250 + 1
    return f"10.{201 + os.getpid() % 40}.{n}.0/{prefix}"


@dataclass
class CliResult:
    rc: int
    out: str
    err: str

    def ok(self) -> CliResult:
        assert self.rc == 0, f"corral failed ({self.rc}):\n{self.out}\n{self.err}"
        return self


@dataclass
class Daemon:
    state_dir: Path
    port: int
    subnet: str
    home: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def settings(self) -> config.Settings:
        return config.load(self.state_dir, api_port=self.port, subnet=self.subnet)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "CORRAL_STATE_DIR": str(self.state_dir),
                "XDG_CONFIG_HOME": str(self.home),
                "CORRAL_ENDPOINT": self.url,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.pop("CORRAL_ACCESS_KEY", None)
        env.pop("CORRAL_SECRET_KEY", None)
        env.update(self.env_extra)
        return env

    def start(self, timeout: float = 90, extra: list[str] | None = None) -> None:
        log = open(self.state_dir / "daemon.log", "ab")
        argv = [
            PYTHON,
            "-m",
            "corral",
            "--state-dir",
            str(self.state_dir),
            "up",
            "--port",
            str(self.port),
            "--subnet",
            self.subnet,
            *(extra or []),
        ]
        self.proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=self.env(),
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"corral up exited {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"corral up did not answer in {timeout} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join((self.state_dir / "daemon.log").read_text().splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, stop_instances: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(Exception):
            self.client().system_shutdown(stop_instances, timeout=5)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def client(self) -> Client:
        data = json.loads((self.state_dir / "admin.credentials").read_text())
        return Client(
            Credentials(self.url, data["access_key_id"], data["secret_access_key"], "test")
        )

    def cli(self, *args: str, timeout: float = 180, input: str | None = None) -> CliResult:
        p = subprocess.run(
            [PYTHON, "-m", "corral", *args],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            input=input,
        )
        return CliResult(p.returncode, p.stdout, p.stderr)

    def ssh(self, name: str, command: str, timeout: float = 120, wait: int = 300) -> CliResult:
        """Run ``command`` in the guest; SSH gets ``wait`` s to answer (a guest booting on a
        loaded 2-core machine under TCG can take minutes), the command ``timeout`` s."""
        return self.cli("ssh", name, "--wait", str(wait), "--", command, timeout=timeout + wait)

    def guest_file(self, name: str, path: str, timeout: int = 60) -> str:
        """A file's content once it exists in the guest (user-data runs after SSH is up)."""
        wait = (
            f"i=0; while [ ! -s {path} ] && [ $i -lt {timeout * 2} ]; do sleep 0.5; "
            f"i=$((i+1)); done; cat {path}"
        )
        return self.ssh(name, wait, timeout=timeout + 60).ok().out

    def nsexec(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.settings.namespace, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def teardown(self) -> None:
        """Stop everything this daemon made, whatever state it is in."""
        self.stop(stop_instances=True)
        st = self.settings
        # a daemon started with `up --detach` is not our child: find it by its pid file
        with contextlib.suppress(ValueError, FileNotFoundError, ProcessLookupError):
            pid = int(st.pidfile.read_text())
            if str(self.state_dir).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGTERM)
                for _ in range(100):
                    if not pid_alive(pid):
                        break
                    time.sleep(0.1)
                else:
                    os.kill(pid, signal.SIGKILL)
        run_root = Path("/run/corral") / st.namespace
        for pid in _pids_matching(f"{run_root}/"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # HA replicas' qemu-storage-daemons (their own sessions, like QEMU)
        for pid in _pids_matching(f"{self.state_dir}/replicas/"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pidfile in (self.state_dir / "networks").glob("*/dnsmasq.pid"):
            with contextlib.suppress(ValueError, ProcessLookupError, FileNotFoundError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
        subprocess.run(["ip", "netns", "delete", st.namespace], capture_output=True)
        # its VPCs' namespaces (issue 12: named after the node's)
        for vpc_ns in Path("/run/netns").glob(f"{st.namespace}-vpc-*"):
            subprocess.run(["ip", "netns", "delete", vpc_ns.name], capture_output=True)
        for ctrl in ("cpu", "memory", "pids", "blkio", "devices", ""):
            base = Path("/sys/fs/cgroup") / ctrl / "corral" / st.namespace
            if base.is_dir():
                for child in base.iterdir():
                    if child.is_dir():
                        with contextlib.suppress(OSError):
                            child.rmdir()
                with contextlib.suppress(OSError):
                    base.rmdir()
        shutil.rmtree(run_root, ignore_errors=True)
        shutil.rmtree(self.state_dir.parent, ignore_errors=True)


def cmdline(pid: str | int) -> bytes:
    """A process's command line (NUL-separated), or b"" when it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def _pids_matching(fragment: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if fragment.encode() in (d / "cmdline").read_bytes():
                out.append(int(d.name))
    return out


@contextlib.contextmanager
def outside_namespace() -> Iterator[str]:
    """A namespace standing for the outside world (an uplink's far end), removed afterwards."""
    import secrets

    name = f"cout-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def new_daemon(subnet: str | None = None, **env: str) -> Daemon:
    base = Path(tempfile.mkdtemp(prefix="corral-it-", dir="/var/tmp"))
    state = base / "state"
    state.mkdir()
    home = base / "home"
    home.mkdir()
    return Daemon(
        state_dir=state,
        port=free_port(),
        subnet=subnet or next_subnet(),
        home=home,
        env_extra=dict(env),
    )


def dns_query(namespace: str, server: str, name: str, timeout: float) -> dns.message.Message:
    """An A query for ``name`` to ``server`` over UDP, sent from inside ``namespace``. Raises
    ``dns.exception.Timeout`` (or ``OSError``) when no answer comes in ``timeout`` seconds: the
    socket is non-blocking, since dnspython's timeout holds only for one that is (on a
    blocking socket it waited for ever on a lost reply)."""
    sock = netns.socket_in(namespace, socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        q = dns.message.make_query(name, dns.rdatatype.A)
        return dns.query.udp(q, server, timeout=timeout, sock=sock)
    finally:
        sock.close()


def dns_addresses(answer: dns.message.Message) -> list[str]:
    return sorted(str(rr) for rrset in answer.answer for rr in rrset)


def wait_for(predicate: Any, timeout: float, interval: float = 0.3, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}: {last!r}")
