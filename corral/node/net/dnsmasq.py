"""One dnsmasq per network, inside Corral's namespace: DHCP with a fixed address per MAC, and
DNS for ``<name>.<domain>``. Hosts live in files re-read on SIGHUP; anything on the command
line (range, domain) needs a restart, which ``ensure`` does when the command line changed."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from corral.errors import EnvironmentProblem
from corral.fsutil import atomic_write, pid_alive, proc_cmdline, read_pidfile
from corral.node.net import netns
from corral.proc import arun, need


@dataclass(frozen=True)
class HostEntry:
    mac: str
    address: str
    names: tuple[str, ...]  # DNS names; the first answers reverse lookups
    hostname: str = ""  # the guest's host name (not sent by DHCP, never entered in DNS)
    zone: str = ""  # sent as the DHCP domain and search domain
    dhcp: bool = True  # False: a name only (the instance runs on another node of the segment)

    @property
    def tag(self) -> str:
        return "m" + self.mac.replace(":", "").lower()


class Dnsmasq:
    def __init__(
        self, *, namespace: str, bridge: str, cidr: str, gateway: str, domain: str, directory: Path
    ) -> None:
        self.namespace = namespace
        self.bridge = bridge
        self.cidr = ipaddress.ip_network(cidr)
        self.gateway = gateway
        self.domain = domain
        self.mtu = 0  # option 26 when set (a segment spanning nodes over VXLAN)
        self.dir = directory
        self.pidfile = directory / "dnsmasq.pid"
        self.hostsfile = directory / "dhcp-hosts"
        self.addn_hosts = directory / "hosts"
        self.optsfile = directory / "dhcp-opts"
        self.leases = directory / "leases"
        self.log = directory / "dnsmasq.log"
        self._hosts_lock = asyncio.Lock()  # one host update (maybe a restart) at a time

    def argv(self) -> list[str]:
        return [
            need("dnsmasq", "dnsmasq-base"),
            "--conf-file=/dev/null",
            f"--pid-file={self.pidfile}",
            "--bind-interfaces",
            f"--interface={self.bridge}",
            "--except-interface=lo",
            f"--listen-address={self.gateway}",
            f"--dhcp-range={self.cidr.network_address},static,{self.cidr.netmask},infinite",
            f"--dhcp-hostsfile={self.hostsfile}",
            f"--addn-hosts={self.addn_hosts}",
            f"--dhcp-optsfile={self.optsfile}",
            # DNS holds only the names Corral writes: not the names guests send, nor the DHCP
            # host names (unqualified, they would be one namespace for every account)
            "--dhcp-ignore-names",
            f"--dhcp-leasefile={self.leases}",
            f"--domain={self.domain}",
            f"--local=/{self.domain}/",
            "--domain-needed",
            "--no-resolv",
            "--no-hosts",
            "--dhcp-authoritative",
            f"--dhcp-option=option:router,{self.gateway}",
            f"--dhcp-option=option:dns-server,{self.gateway}",
            *([f"--dhcp-option=option:mtu,{self.mtu}"] if self.mtu else []),
            f"--log-facility={self.log}",
            "--user=root",
            "--group=root",
        ]

    def pid(self) -> int | None:
        pid = read_pidfile(self.pidfile)
        if pid and pid_alive(pid) and f"--pid-file={self.pidfile}" in proc_cmdline(pid):
            return pid
        return None

    async def ensure(self, hosts: list[HostEntry] | None = None) -> int:
        """dnsmasq running with this configuration; returns its pid."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if hosts is not None:
            self._write_hosts(hosts)
        for f in (self.hostsfile, self.addn_hosts, self.optsfile):
            if not f.exists():
                atomic_write(f, "")
        # dnsmasq makes its log 0640 and its lease file by umask; made first, they keep 0600
        for f in (self.log, self.leases):
            os.close(os.open(f, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
            os.chmod(f, 0o600)
        argv = self.argv()
        pid = self.pid()
        if pid is not None:
            if proc_cmdline(pid) == argv and hosts is None:
                return pid
            await self.stop()  # new hosts: restarted, never SIGHUP'd (see update_hosts)
        pid = await asyncio.to_thread(self._start, argv)
        if hosts is not None:
            await self.release_stale(hosts)
        return pid

    def _start(self, argv: list[str]) -> int:
        enter = netns.preexec(self.namespace)
        try:
            proc = subprocess.run(
                argv,
                preexec_fn=enter,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30,
                start_new_session=True,
            )
        finally:
            os.close(enter.fd)  # type: ignore[attr-defined]
        if proc.returncode != 0:
            raise EnvironmentProblem(
                f"dnsmasq failed to start for {self.bridge} in {self.namespace}: "
                f"{proc.stderr.decode(errors='replace').strip()}"
            )
        pid = self.pid()
        if pid is None:
            raise EnvironmentProblem(f"dnsmasq started but wrote no pid file at {self.pidfile}")
        os.chmod(self.pidfile, 0o600)  # dnsmasq sets its own umask (022)
        return pid

    def _write_hosts(self, hosts: list[HostEntry]) -> None:
        dhcp = "".join(f"{h.mac},set:{h.tag},{h.address},infinite\n" for h in hosts if h.dhcp)
        dns = "".join(f"{h.address} {' '.join(h.names)}\n" for h in hosts if h.names)
        opts = []
        for h in (h for h in hosts if h.dhcp):
            # (no option 12: dnsmasq refuses it in an options file; guests take their host
            # name from the metadata service)
            if h.zone:
                opts.append(f"tag:{h.tag},option:domain-name,{h.zone}\n")
                opts.append(f"tag:{h.tag},option:domain-search,{h.zone}\n")
        # options first: a host never gets its address before its own domain is there
        atomic_write(self.optsfile, "".join(opts))
        atomic_write(self.hostsfile, dhcp)
        atomic_write(self.addn_hosts, dns)

    async def update_hosts(self, hosts: list[HostEntry]) -> None:
        """New host files, read by a restarted dnsmasq. Not SIGHUP: dnsmasq 2.90 re-reading a
        dhcp-optsfile with tagged options crashes (segfault in libc) at the next DHCP exchange,
        which left a network without DNS until the next housekeeping pass; a restart takes
        tens of milliseconds and keeps the leases (they are in the lease file)."""
        async with self._hosts_lock:
            await self.ensure(hosts)

    def leases_held(self) -> list[tuple[str, str, str]]:
        """(mac, address, client id) of every lease dnsmasq has written down."""
        out = []
        try:
            lines = self.leases.read_text().splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            parts = line.split()
            if len(parts) >= 3 and parts[0] != "duid":
                client_id = parts[4] if len(parts) > 4 and parts[4] != "*" else ""
                out.append((parts[1], parts[2], client_id))
        return out

    async def release_stale(self, hosts: list[HostEntry]) -> list[str]:
        """Release leases that no host entry backs any more (a terminated instance's), so its
        address can go to a new MAC at once: dnsmasq refuses an address leased to another MAC,
        and our leases never expire. Idempotent; Neutron does the same with dhcp_release."""
        wanted = {(h.mac.lower(), h.address) for h in hosts}
        released = []
        for mac, address, client_id in self.leases_held():
            if (mac.lower(), address) in wanted:
                continue
            argv = [
                "ip",
                "netns",
                "exec",
                self.namespace,
                need("dhcp_release", "dnsmasq-utils"),
                self.bridge,
                address,
                mac,
            ]
            if client_id:
                argv.append(client_id)
            await arun(argv, check=False, timeout=10)
            released.append(address)
        return released

    async def stop(self, timeout: float = 5.0) -> None:
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while pid_alive(pid) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)
