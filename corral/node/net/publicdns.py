"""Public DNS records kept on an external authoritative server by RFC 2136 updates signed with
TSIG (dnspython): `<name>.<zone> A <public IP>` while an instance holds a public address.
Records go before the address can be reused. The node sends them: with an uplink they leave
from Corral's namespace, where the outside world is reachable; otherwise from the host."""

from __future__ import annotations

import asyncio
import logging
import socket

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.tsigkeyring
import dns.update

from corral.config import Settings
from corral.errors import CorralError, EnvironmentProblem
from corral.node.net import netns

log = logging.getLogger(__name__)


class PublicDns:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enabled = bool(settings.dns_server)
        if not self.enabled:
            return
        host, _, port = settings.dns_server.rpartition(":")
        if not host or not port.isdigit():
            host, port = settings.dns_server, "53"
        self.server = host
        self.port = int(port)
        self.zone = dns.name.from_text(settings.dns_zone)
        self.keyring = dns.tsigkeyring.from_text({settings.dns_tsig_name: settings.dns_tsig_secret})
        self.keyname = dns.name.from_text(settings.dns_tsig_name)
        self.algorithm = dns.name.from_text(settings.dns_tsig_algorithm)
        self.namespace = settings.namespace if settings.uplink != "none" else None

    def fqdn(self, name: str) -> dns.name.Name:
        return dns.name.from_text(name, origin=self.zone)

    def _update(self) -> dns.update.UpdateMessage:
        return dns.update.UpdateMessage(
            self.zone, keyring=self.keyring, keyname=self.keyname, keyalgorithm=self.algorithm
        )

    async def set(self, name: str, address: str) -> None:
        """``name`` resolves to ``address`` and nothing else."""
        if not self.enabled:
            return
        up = self._update()
        up.replace(self.fqdn(name), self.settings.dns_ttl, "A", address)
        await self._send(up, f"set {name} -> {address}")

    async def remove(self, name: str) -> None:
        if not self.enabled:
            return
        up = self._update()
        up.delete(self.fqdn(name), "A")
        await self._send(up, f"remove {name}")

    async def _send(self, up: dns.update.UpdateMessage, what: str) -> None:
        try:
            resp = await asyncio.to_thread(self._query, up)
        except (OSError, dns.exception.DNSException) as err:
            raise EnvironmentProblem(
                f"DNS update ({what}) to {self.server}:{self.port} failed: {err}"
            ) from err
        rcode = resp.rcode()
        if rcode != dns.rcode.NOERROR:
            raise CorralError(
                f"DNS server {self.server} refused the update ({what}): "
                f"{dns.rcode.to_text(rcode)}; check the zone and TSIG key"
            )
        log.info("public DNS: %s", what)

    def _query(self, up: dns.update.UpdateMessage) -> dns.message.Message:
        sock: socket.socket | None = None
        if self.namespace:
            sock = netns.socket_in(self.namespace)
            sock.settimeout(5)
            sock.connect((self.server, self.port))
            sock.setblocking(False)
        try:
            return dns.query.tcp(up, self.server, port=self.port, timeout=5, sock=sock)
        finally:
            if sock is not None:
                sock.close()
