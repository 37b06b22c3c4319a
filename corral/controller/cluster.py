"""Nodes joining the cluster: single-use join tokens, certificates from the controller's CA,
and the connections to joined nodes (made again after a restart from the nodes' rows).

A token is ``K1.<secret>.<sha256 of the CA certificate>``: the secret proves the admin sent the
node; the fingerprint lets the node check, before it sends anything, that it talks to this
controller. Only the secret's sha256 is stored, with its expiry; it is spent by the join."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ipaddress
import logging
import re
import secrets
import ssl
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sqlalchemy import select, update

from corral import pki
from corral.errors import Invalid, Unauthorized
from corral.store.models import JoinToken, Node, utcnow

if TYPE_CHECKING:
    from corral.controller.service import Controller

log = logging.getLogger(__name__)

TOKEN_PREFIX = "K1"
DEFAULT_TTL = 3600.0
MAX_TTL = 7 * 86400.0
CONNECT_EVERY = 2.0  # seconds between attempts to reach a joined node that is not connected
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
TTL = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")


def parse_ttl(value: str | float) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``2d`` → seconds."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = TTL.match(value.strip())
        if not m:
            raise Invalid(f"ttl {value!r}: use seconds or 15m, 1h, 2d", field="ttl")
        seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if not 0 < seconds <= MAX_TTL:
        raise Invalid(f"ttl {value!r}: between 1 s and 7 days", field="ttl")
    return seconds


def split_token(token: str) -> tuple[str, str]:
    """(secret, CA fingerprint) of a token, or Invalid naming the fix."""
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not re.fullmatch(r"[0-9a-f]{64}", parts[2]):
        raise Unauthorized(
            "join token refused: it is not a Corral join token (K1.<secret>.<fingerprint>); "
            "copy it whole from `corral node token` on the controller"
        )
    return parts[1], parts[2]


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def node_address(address: str) -> tuple[str, int]:
    """``https://IP:PORT`` (or ``IP:PORT``) where a node's agent serves → (ip, port)."""
    url = address if "://" in address else f"https://{address}"
    parts = urlsplit(url)
    try:
        ip = ipaddress.ip_address(parts.hostname or "")
        port = parts.port
    except ValueError:
        ip, port = None, None
    if parts.scheme != "https" or ip is None or not port or ip.is_unspecified:
        raise Invalid(
            f"node address {address!r}: give the address and port other hosts reach the agent "
            "at, as IP:PORT (e.g. --listen 192.0.2.11:8774); not 0.0.0.0",
            field="address",
        )
    return str(ip), port


class Cluster:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        self._ca: pki.CertificateAuthority | None = None
        self._client_ssl: ssl.SSLContext | None = None
        self._connecting: set[str] = set()

    @property
    def ca(self) -> pki.CertificateAuthority:
        if self._ca is None:
            self._ca = pki.CertificateAuthority.load_or_create(
                self.ctrl.settings.state_dir / "pki", f"Corral {self.ctrl.settings.region}"
            )
        return self._ca

    def client_ssl(self) -> ssl.SSLContext:
        """The controller's TLS as a client of its nodes (its own client certificate)."""
        if self._client_ssl is None:
            key, cert = self.ca.own("controller", pki.CONTROLLER_CN, [], "client")
            self._client_ssl = pki.client_context(self.ca.cert_path, cert, key)
        return self._client_ssl

    # -- tokens ------------------------------------------------------------------------------
    async def new_token(self, ttl: float) -> tuple[str, dt.datetime]:
        secret = secrets.token_urlsafe(24).replace(".", "_")
        expires = utcnow() + dt.timedelta(seconds=ttl)
        async with self.ctrl.store.write() as s:
            s.add(JoinToken(hash=_hash(secret), expires_at=expires))
        return f"{TOKEN_PREFIX}.{secret}.{self.ca.fingerprint}", expires

    async def _spend(self, token: str, node_name: str) -> None:
        """Spend a token (atomically: two joins with one token, one wins) or say why not."""
        secret, fp = split_token(token)
        if fp != self.ca.fingerprint:
            raise Unauthorized(
                "join token refused: it was made by another controller (its CA fingerprint "
                "differs); make one with `corral node token` on this controller"
            )
        digest, now = _hash(secret), utcnow()
        async with self.ctrl.store.write() as s:
            res = await s.execute(
                update(JoinToken)
                .where(
                    JoinToken.hash == digest,
                    JoinToken.used_at.is_(None),
                    JoinToken.expires_at > now,
                )
                .values(used_at=now, used_by=node_name)
            )
            if int(getattr(res, "rowcount", 0) or 0) == 1:
                return
            row = await s.get(JoinToken, digest)
        fix = "make a new one with `corral node token` on the controller"
        if row is None:
            raise Unauthorized(f"join token refused: this controller never issued it; {fix}")
        if row.used_at is not None:
            raise Unauthorized(
                f"join token refused: it was already used (by node {row.used_by} at "
                f"{row.used_at:%Y-%m-%d %H:%M:%S} UTC) and tokens are single-use; {fix}"
            )
        raise Unauthorized(
            f"join token refused: it expired at {row.expires_at:%Y-%m-%d %H:%M:%S} UTC; {fix}"
        )

    # -- join --------------------------------------------------------------------------------
    async def join(
        self,
        token: str,
        certificate_request: str,
        name: str,
        address: str,
        zone: str | None,
        labels: dict[str, str],
    ) -> tuple[str, bytes]:
        """Admit a node: spend its token, sign its certificate for its address, record it (the
        connector reaches it once its agent serves). Returns (node id, certificate PEM)."""
        if not NAME.match(name):
            raise Invalid(
                f"node name {name!r}: lower-case letters, digits and '-', at most 32",
                field="name",
            )
        ip, port = node_address(address)
        await self._spend(token, name)
        cert = self.ca.sign(certificate_request, name, [ip, name], "server")
        node_id = f"node-{name}"[:32]
        async with self.ctrl.store.write() as s:
            row = await s.scalar(select(Node).where(Node.name == name))
            if row is None:
                row = Node(id=node_id, name=name, state="joining")
                s.add(row)
            row.address = f"https://{ip}:{port}"
            row.zone = zone or row.zone or ""
            if labels:
                row.labels = dict(labels)
        self.ctrl.nodes.pop(row.id, None)  # a node joining again: reach it at its new address
        log.info("node %s joined from https://%s:%d", name, ip, port)
        return row.id, cert

    # -- connections -------------------------------------------------------------------------
    async def connect_joined(self) -> None:
        """Reach every joined node (address ``https://…``) that is not connected yet."""
        async with self.ctrl.store.read() as s:
            rows = list(await s.scalars(select(Node).where(Node.address.like("https://%"))))
        for row in rows:
            if row.id in self.ctrl.nodes or row.id in self._connecting:
                continue
            self._connecting.add(row.id)
            try:
                await self._connect(row.id, row.name, row.address, row.zone)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.debug("node %s at %s: not reachable yet (%s)", row.name, row.address, err)
            finally:
                self._connecting.discard(row.id)

    async def _connect(self, node_id: str, name: str, address: str, zone: str) -> None:
        from corral.node.remote import RETRY_WINDOW, connect_node

        # a node that is away fails this first call at once; once connected, calls retry
        client, remote = connect_node(address, retry_window=0.0, ssl_context=self.client_ssl())
        try:
            info = await client.info()
        except BaseException:
            await remote.aclose()
            raise
        remote.retry_window = RETRY_WINDOW
        old = self.ctrl.remotes.pop(node_id, None)
        if old is not None:
            await old.aclose()
        self.ctrl.remotes[node_id] = remote
        await self.ctrl.add_node(client, name, address, zone=zone or None)
        net = await self.ctrl.networks.ensure_default(node_id, info.netns or None)
        await self.ctrl.networks.ensure_on_node(net.id)
        self.ctrl.reconciler.poke()
        log.info("node %s connected at %s", name, address)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.connect_joined()
            await asyncio.sleep(CONNECT_EVERY)
