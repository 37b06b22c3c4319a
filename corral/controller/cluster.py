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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from sqlalchemy import func, select, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncSession

from corral import pki
from corral.controller.leader import ControllerLock
from corral.errors import Invalid, NotFound, Unauthorized, WrongState
from corral.node.spec import HEARD_WITHIN
from corral.pki import TOKEN_PREFIX, split_token
from corral.store.models import Instance, JoinToken, Node, UTCDateTime, utcnow

if TYPE_CHECKING:
    from corral.config import Settings
    from corral.controller.service import Controller
    from corral.node.client import NodeClient


class Remote(Protocol):
    """The closing side of a node client (``corral.node.remote.RemoteNode``)."""

    retry_window: float

    async def aclose(self) -> None: ...


Connector = Callable[[str, float, ssl.SSLContext], tuple["NodeClient", Remote]]
RETRY = 30.0  # seconds a connected node's calls keep trying a node that refuses connections

log = logging.getLogger(__name__)

DEFAULT_TTL = 3600.0
MAX_TTL = 7 * 86400.0
CONNECT_EVERY = 2.0  # seconds between attempts to reach a joined node that is not connected
PING_TIMEOUT = 5.0
QUIET_WAIT = 0.3  # seconds a pass waits for a node that missed its last ping
UP, UNREACHABLE, REMOVED = "up", "unreachable", "removed"
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


async def db_now(s: AsyncSession, dialect: str) -> dt.datetime:
    """The database's clock (one clock for every controller sharing the database)."""
    expr = func.timezone("UTC", func.now()) if dialect == "postgresql" else func.current_timestamp()
    value = await s.scalar(select(type_coerce(expr, UTCDateTime())))
    assert value is not None
    return value


def fence_after(settings: Settings) -> float:
    """How long a node counts on its lease after a recorded renewal reached it: a second
    (at least a renewal interval) short of the lease's timeout, so the node fences before the
    controller's view of the lease expires, let alone the margin past it."""
    return max(settings.lease_timeout - max(settings.lease_interval, 1.0), 0.5)


def lease_start(
    last_seen: dt.datetime | None, lock_since: dt.datetime | None
) -> dt.datetime | None:
    """When a node's lease was last renewed, as far as this controller counts: never before
    it took the controller lock (while no controller renewed leases, the nodes' VMs ran on
    and nothing fenced; they get a whole lease from the takeover)."""
    if last_seen is None:
        return lock_since
    if lock_since is None:
        return last_seen
    return max(last_seen, lock_since)


async def mark_node_lost(ctrl: Controller, node_id: str) -> list[str]:
    """The dead node's non-HA instances that were running (or starting) are recorded stopped
    with the reason ``node-lost``; they still want to run, so they start again (or are found
    running and adopted) when the node returns. Returns their ids."""
    async with ctrl.store.write() as s:
        now = await db_now(s, ctrl.store.dialect)
        rows = list(
            await s.scalars(
                select(Instance).where(
                    Instance.node_id == node_id,
                    Instance.state.in_(("pending", "running", "stopping", "rebooting")),
                    Instance.ha.is_(False),
                )
            )
        )
        node = await s.get(Node, node_id)
        name = node.name if node is not None else node_id
        for row in rows:
            row.state = "stopped"
            row.pid = None
            row.stopped_at = now
            row.state_reason = (
                f"node-lost: its node {name} stopped renewing its lease and was declared "
                "dead; it starts again when the node returns"
            )
    for row in rows:
        log.warning("instance %s: node-lost (node %s is dead)", row.name or row.id, name)
    return [r.id for r in rows]


def node_state(row: Node) -> str:
    """What `corral node ls` says: ready, cordoned, unreachable (or joining)."""
    if row.state == UNREACHABLE:
        return UNREACHABLE
    if row.state == "joining":
        return "joining"
    return "cordoned" if row.cordoned else "ready"


class Cluster:
    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        self._ca: pki.CertificateAuthority | None = None
        self._client_ssl: ssl.SSLContext | None = None
        self._connecting: set[str] = set()
        self.unreachable: set[str] = set()  # node ids silent longer than node_timeout
        self.boots: dict[str, str] = {}  # node id -> its agent's last heartbeat answer
        # leases (issue 16): this controller's heartbeat numbering, what each node answered
        # and what the database recorded; nodes declared dead; the controller lock
        self.session = secrets.token_hex(8)
        self._seq: dict[str, int] = {}
        # nodes whose last ping went unanswered: pinged on the side, so that a silent node's
        # ping timeout never holds up the other nodes' heartbeats (and so their leases)
        self._quiet: dict[str, asyncio.Task[bool] | None] = {}
        self._answered: dict[str, int] = {}
        self._confirmed: dict[str, int] = {}
        self.addresses: dict[str, str] = {}  # node id -> its agent's https:// address
        self.dead: set[str] = set()
        self.partial: set[str] = set()  # lease expired, but a peer reaches it
        self.lock = ControllerLock(ctrl.store, ctrl.owner)
        self._renewing: set[asyncio.Task[None]] = set()
        # how to reach a node at an https:// address: ``corral.node.remote.connect_node``,
        # given by whoever runs the controller (the controller knows nodes only by their wire)
        self.connector: Connector | None = None

    def lease_view(self, row: Node) -> str:
        """What ``corral node show`` says of a node's lease ("" for the controller's own)."""
        if not row.address.startswith("https://"):
            return ""
        if row.id in self.dead:
            return "dead"
        if row.id in self.partial:
            return "expired-peers-reach-it"
        return "expired" if row.id in self.unreachable else "held"

    def reachable(self, node_id: str) -> bool:
        return node_id not in self.unreachable

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
                row = Node(id=node_id, name=name)
                s.add(row)
            row.state = "joining"
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
            if row.id in self.ctrl.nodes or row.id in self._connecting or row.state == REMOVED:
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
        if self.connector is None:
            raise WrongState(f"node {name} at {address}: this controller cannot reach nodes")
        # a node that is away fails this first call at once; once connected, calls retry
        client, remote = self.connector(address, 0.0, self.client_ssl())
        try:
            info = await client.info()
        except BaseException:
            await remote.aclose()
            raise
        remote.retry_window = RETRY
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

    # -- liveness: leases (docs/operator-guide.md, "Failure detection and fencing") ---------
    def _peers(self, node_id: str) -> list[str]:
        """The other joined nodes' agents (IP:PORT), which a node probes before it fences."""
        out = []
        for other, address in self.addresses.items():
            if other != node_id and address.startswith("https://"):
                out.append(address.removeprefix("https://"))
        return sorted(out)

    async def _ping(self, node_id: str) -> bool:
        client = self.ctrl.nodes.get(node_id)
        if client is None:
            return False
        settings = self.ctrl.settings
        seq = self._seq.get(node_id, 0) + 1
        self._seq[node_id] = seq
        joined = self.addresses.get(node_id, "").startswith("https://")
        try:
            answer = await asyncio.wait_for(
                client.heartbeat(
                    self.session,
                    seq,
                    self._confirmed.get(node_id, 0),
                    fence_after(settings) if joined else 0.0,
                    self._peers(node_id),
                ),
                min(PING_TIMEOUT, settings.lease_timeout / 2),
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            return False
        self._answered[node_id] = seq
        before = self.boots.get(node_id)
        self.boots[node_id] = answer
        if before is not None and before != answer:
            log.info("node %s: its agent restarted; pushing its networks again", node_id)
            self._renew(node_id)
        return True

    def _renew(self, node_id: str) -> None:
        task = asyncio.create_task(self._push_networks(node_id), name=f"renew-{node_id}")
        self._renewing.add(task)
        task.add_done_callback(self._renewing.discard)

    async def _push_networks(self, node_id: str) -> None:
        """An agent that restarted or came back gets its networks' desired state again (it
        keeps the VMs; what it rebuilt at start may lack the latest hosts or policy), then a
        full reconcile re-adopts what runs there."""
        from corral.store.models import Network

        try:
            async with self.ctrl.store.read() as s:
                nets = list(await s.scalars(select(Network.id).where(Network.node_id == node_id)))
            for net_id in nets:
                await self.ctrl.networks.ensure_on_node(net_id)
            self.ctrl.overlays.forget(node_id)  # its subnet segments again (issue 12)
            await self.ctrl.overlays.sync()
        except Exception:
            log.exception("node %s: pushing its networks again failed", node_id)
        self.ctrl.reconciler.poke()

    async def _ping_all(self) -> list[str]:
        """The nodes that answered this pass. A node that did not answer its last ping is
        pinged on the side: this pass waits at most ``QUIET_WAIT`` for it, and an answer that
        comes later counts at the next pass."""
        ids = list(self.ctrl.nodes)
        for n in ids:
            if n in self._quiet and self._quiet[n] is None:
                self._quiet[n] = asyncio.create_task(self._ping(n), name=f"ping-{n}")
        loud = [n for n in ids if n not in self._quiet]
        answers = await asyncio.gather(*(self._ping(n) for n in loud))
        alive = [n for n, ok in zip(loud, answers, strict=True) if ok]
        self._quiet.update({n: None for n, ok in zip(loud, answers, strict=True) if not ok})
        side = [t for n, t in self._quiet.items() if t is not None and n in ids]
        if side:
            await asyncio.wait(side, timeout=QUIET_WAIT)
        for n, t in list(self._quiet.items()):
            if n not in self.ctrl.nodes:
                if t is not None:
                    t.cancel()
                del self._quiet[n]
            elif t is not None and t.done():
                if not t.cancelled() and t.exception() is None and t.result():
                    alive.append(n)
                    del self._quiet[n]
                else:
                    self._quiet[n] = None  # pinged again next pass
        return alive

    async def heartbeat_once(self) -> None:
        """Renew every connected node's lease: ping it (the ping carries the lease's terms,
        node/fence.py), record who answered with the database's clock. A node whose lease
        expired (``lease_timeout`` without a renewal) is unreachable (its instances are left
        as they are: the agent keeps them running); one that answers again is re-adopted (a
        full reconcile reads what runs there). A node unreachable past ``fence_margin`` more,
        and reached by no peer either, is declared dead by the controller holding the lock
        (``_declare_dead``)."""
        alive = await self._ping_all()
        settings = self.ctrl.settings
        timeout = dt.timedelta(seconds=settings.lease_timeout)
        margin = dt.timedelta(seconds=settings.fence_margin)
        back: list[str] = []
        gone: list[str] = []
        expired: dict[str, dt.datetime | None] = {}  # silent node -> its last renewal
        async with self.ctrl.store.write() as s:
            now = await db_now(s, self.ctrl.store.dialect)
            if alive:
                await s.execute(update(Node).where(Node.id.in_(alive)).values(last_seen=now))
                await s.execute(  # back from unreachable; other states are not the heartbeat's
                    update(Node)
                    .where(Node.id.in_(alive), Node.state == UNREACHABLE)
                    .values(state=UP)
                )
            rows = list(
                await s.scalars(select(Node).where(Node.address != "", Node.state != REMOVED))
            )
            for row in rows:
                self.addresses[row.id] = row.address
                if row.id in alive:
                    if row.id in self.unreachable:
                        back.append(row.id)
                    continue
                if row.state == "joining":
                    continue
                joined = row.address.startswith("https://")
                # the controller's own node (all-in-one) keeps the old, lenient timeout: it
                # shares the controller's host, is never fenced nor declared dead, and its
                # agent may take a while to come back after a restart
                limit = timeout if joined else dt.timedelta(seconds=settings.node_timeout)
                silent = row.last_seen is None or now - row.last_seen > limit
                if silent and row.state != UNREACHABLE:
                    row.state = UNREACHABLE
                if silent:
                    if row.id not in self.unreachable:
                        gone.append(row.id)
                    if joined:
                        expired[row.id] = row.last_seen
        for node_id in alive:  # recorded: the next heartbeat tells the node so
            self._confirmed[node_id] = self._answered.get(node_id, 0)
        for node_id in gone:
            self.unreachable.add(node_id)
            log.warning(
                "node %s: its lease expired (no renewal for %.0f s): unreachable; its "
                "instances are unknown until it answers again",
                node_id,
                timeout.total_seconds(),
            )
        for node_id in back:
            self.unreachable.discard(node_id)
            self.partial.discard(node_id)
            if node_id in self.dead:
                self.dead.discard(node_id)
                log.info("node %s, declared dead, answers again: it rejoins", node_id)
            else:
                log.info("node %s answers again: re-adopting what runs there", node_id)
            self._renew(node_id)
        if not await self.lock.ensure(now):
            return  # another controller holds the lock: it declares nodes dead, not this one
        for node_id, last_seen in expired.items():
            renewed = lease_start(last_seen, self.lock.since)
            if renewed is not None and now - renewed <= timeout + margin:
                continue
            try:
                await self._declare_dead(node_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("node %s: handling its death failed (tried again)", node_id)

    async def _reached_by_peer(self, node_id: str) -> bool:
        """Whether any live node's agent heard a hello from this node's agent lately
        (``HEARD_WITHIN``): then it is cut off from the controller only, has not fenced (the
        answered hello is what keeps its HA instances, node/fence.py), and must not be declared
        dead. A hung agent says no hello, so its guard has fired once that long has passed."""
        address = self.addresses.get(node_id, "")
        if not address.startswith("https://"):
            return False
        target = address.removeprefix("https://")

        async def probe(client: Any) -> bool:
            try:
                ago = (await asyncio.wait_for(client.peer_heard([target]), PING_TIMEOUT))[0]
                return ago is not None and ago <= HEARD_WITHIN
            except asyncio.CancelledError:
                raise
            except Exception:
                return False

        peers = [
            client
            for other, client in list(self.ctrl.nodes.items())
            if other != node_id and other not in self.unreachable
        ]
        return any(await asyncio.gather(*(probe(c) for c in peers)))  # all at once: one wait

    async def _declare_dead(self, node_id: str) -> None:
        """A node whose lease expired past the margin (this controller holds the lock): its
        non-HA instances become stopped with the reason ``node-lost`` (they start again when
        it returns); its HA instances go to ``replicas.fail_over_node``. Repeated each pass
        while the node stays dead (each step is idempotent). The peers are asked only before
        the declaration: a dead node stays dead until it answers the controller again, and
        asking on every pass (each probe of a silent address waits out its timeout) would slow
        the heartbeats of every other node past their own leases."""
        if node_id not in self.dead and await self._reached_by_peer(node_id):
            if node_id not in self.partial:
                self.partial.add(node_id)
                log.warning(
                    "node %s: its lease expired but another node still reaches it: cut off "
                    "from the controller only; not declared dead (its instances stay there)",
                    node_id,
                )
            return
        self.partial.discard(node_id)
        if node_id not in self.dead:
            self.dead.add(node_id)
            log.warning(
                "node %s declared dead (lease expired + %.0f s margin, no peer reaches it, "
                "controller lock epoch %d)",
                node_id,
                self.ctrl.settings.fence_margin,
                self.lock.epoch,
            )
        await mark_node_lost(self.ctrl, node_id)
        await self.ctrl.replicas.fail_over_node(node_id)

    async def heartbeats(self) -> None:
        while True:
            try:
                await self.heartbeat_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("heartbeats")
            await asyncio.sleep(self.ctrl.settings.lease_interval)

    async def instances_unknown(self, s: AsyncSession) -> set[str]:
        """Ids of the live instances on unreachable nodes (their state is unknown; on a node
        declared dead it is known: stopped, node-lost, or failed over)."""
        unknown = self.unreachable - self.dead
        if not unknown:
            return set()
        rows = await s.scalars(
            select(Instance.id).where(Instance.node_id.in_(unknown), Instance.state != "terminated")
        )
        return set(rows)

    # -- node administration (`corral node …`) ----------------------------------------------
    async def node_row(self, s: AsyncSession, ref: str) -> Node:
        row = await s.get(Node, ref) or await s.scalar(select(Node).where(Node.name == ref))
        if row is None:
            raise NotFound(f"node {ref!r} does not exist; see `corral node ls`", resource="node")
        return row

    async def cordon(self, ref: str, cordoned: bool) -> None:
        """A cordoned node takes no new instances; what runs there stays."""
        async with self.ctrl.store.write() as s:
            (await self.node_row(s, ref)).cordoned = cordoned

    async def label(self, ref: str, set_: dict[str, str], remove: list[str]) -> None:
        async with self.ctrl.store.write() as s:
            row = await self.node_row(s, ref)
            labels = {str(k): str(v) for k, v in (row.labels or {}).items()}
            labels.update(set_)
            for key in remove:
                labels.pop(key, None)
            row.labels = labels

    async def remove(self, ref: str, force: bool) -> None:
        """Forget a node. One that still has instances is refused unless ``force``d (then its
        instances are recorded terminated: the node is gone with them)."""
        async with self.ctrl.store.write() as s:
            row = await self.node_row(s, ref)
            live = list(
                await s.scalars(
                    select(Instance).where(
                        Instance.node_id == row.id, Instance.state != "terminated"
                    )
                )
            )
            if live and not force:
                names = ", ".join(sorted(i.name or i.id for i in live)[:5])
                raise WrongState(
                    f"node {row.name} still has {len(live)} instance(s) ({names}); terminate "
                    "them first, or remove it with --force (they are then recorded terminated)",
                    resource="node",
                )
            node_id = row.id
        if live:
            for inst in live:
                await self.ctrl.instances._set(
                    inst.id,
                    state="terminated",
                    desired_state="terminated",
                    pid=None,
                    terminated_at=utcnow(),
                    state_reason="its node was removed",
                )
                await self.ctrl.instance_released(inst.id)
        # the row stays (instances' history and networks point at it), marked removed: no
        # listing, no placement, no connection; a join under the same name takes it up again
        async with self.ctrl.store.write() as s:
            from corral.controller import placement_claims

            gone = await s.get(Node, node_id)
            if gone is not None:
                gone.state, gone.address, gone.cordoned = REMOVED, "", False
            await placement_claims.recount(s)
        self.ctrl.nodes.pop(node_id, None)
        self.unreachable.discard(node_id)
        remote = self.ctrl.remotes.pop(node_id, None)
        if remote is not None:
            await remote.aclose()
        log.info("node %s removed", node_id)
