"""The controller: store, operations, resource managers, reconciler, node clients."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

from sqlalchemy import delete, select, update

from corral.config import Settings
from corral.controller import placement_claims
from corral.controller.accounts import Accounts, Caller
from corral.controller.appliances import Appliances
from corral.controller.claims import LEASE, Claims, owner_name
from corral.controller.cluster import Cluster, Remote
from corral.controller.credits import Credits
from corral.controller.elastic_ips import ElasticIps
from corral.controller.image_publishing import ImagePublishing
from corral.controller.image_push import ImagePush
from corral.controller.images import Images
from corral.controller.instances import Instances
from corral.controller.keypairs import KeyPairs
from corral.controller.metering import Metering
from corral.controller.networks import Networks
from corral.controller.operations import Operations
from corral.controller.placement_groups import PlacementGroups
from corral.controller.quotas import Quotas
from corral.controller.reconciler import Reconciler
from corral.controller.replace import Replacements
from corral.controller.secrets_box import SecretBox
from corral.controller.security_groups import SecurityGroupRules, SecurityGroups
from corral.controller.snapshots import Snapshots
from corral.controller.tags import Tags
from corral.controller.volumes import Volumes
from corral.controller.vpcs import Vpcs
from corral.errors import NotFound
from corral.images.store import ImageStore
from corral.node.client import NodeClient
from corral.node.spec import Event, ExitInfo
from corral.store import Store
from corral.store.models import Instance, Node, Tag, utcnow

log = logging.getLogger(__name__)

TERMINATED_TTL = dt.timedelta(hours=1)  # terminated instances stay visible this long, as on EC2
EVENT_WAIT = 25.0  # seconds a node holds an event poll open


class Controller:
    def __init__(self, settings: Settings, store: Store, image_store: ImageStore) -> None:
        self.settings = settings
        self.store = store
        self.image_store = image_store
        self.nodes: dict[str, NodeClient] = {}
        # this controller's name on its claims and operations in the (maybe shared) database
        self.owner = owner_name(settings.hostname, str(settings.state_dir))
        self.claims = Claims(store, self.owner)
        self.ops = Operations(store, self.owner)
        self.accounts = Accounts(
            store,
            SecretBox.from_file(settings.state_dir / "secrets.key"),
            settings.max_access_keys,
        )
        self.networks = Networks(self)
        from corral.controller.network_push import NetworkPushes

        # security-group, elastic-IP and rename changes reach the nodes as operations
        self.network_pushes = NetworkPushes(self)
        self.images = Images(self)
        self.instances = Instances(self)
        self.keypairs = KeyPairs(self)
        self.tags = Tags(self)
        self.security_groups = SecurityGroups(self)
        self.security_group_rules = SecurityGroupRules(self.security_groups)
        self.elastic_ips = ElasticIps(self)
        self.volumes = Volumes(self)
        self.snapshots = Snapshots(self)
        self.placement_groups = PlacementGroups(self)
        self.quotas = Quotas(store, settings, self.accounts)
        self.metering = Metering(store, settings, self.accounts)  # records usage from here on
        self.credits = Credits(self)
        self.vpcs = Vpcs(self)
        from corral.controller.overlays import Overlays

        self.overlays = Overlays(self)  # subnets spanning nodes over VXLAN (issue 12)
        self.replacements = Replacements(self)
        self.appliances = Appliances(self)
        self.image_publishing = ImagePublishing(self)
        self.reconciler = Reconciler(self)
        from corral.controller.migrations import Migrations

        self.migrations = Migrations(self)  # live migration (issue 13)
        from corral.controller.evacuations import Evacuations

        self.evacuations = Evacuations(self)  # cold moves of stopped instances (issue 13)
        from corral.controller.replicas import Replicas

        self.replicas = Replicas(self)  # high availability (issue 16)
        # joined nodes (corral node join): certificates, tokens, connections kept here; a node
        # declared dead there hands its HA instances to replicas.fail_over_node
        self.cluster = Cluster(self)
        self.image_push = ImagePush(self)  # images to nodes on first use
        self.remotes: dict[str, Remote] = {}
        self.imds_nodes: set[str] = set()  # nodes that serve metadata from pushed documents
        self.admin: Caller | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._followers: dict[str, asyncio.Task[None]] = {}  # node id -> its event follower
        self._closing = False

    def node(self, node_id: str | None) -> NodeClient:
        if node_id is None or node_id not in self.nodes:
            raise NotFound(f"node {node_id} is not connected to this controller", resource="node")
        return self.nodes[node_id]

    async def add_node(
        self,
        client: NodeClient,
        name: str,
        address: str = "local",
        zone: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> str:
        """Register a node (idempotent by name) and remember its client. Its zone is
        ``zone``, else the one it reports, else this controller's availability zone; its
        cordon and claimed totals are kept across re-registration."""
        info = await client.info()
        async with self.store.write() as s:
            row = await s.scalar(select(Node).where(Node.name == name))
            if row is None:
                row = Node(id=f"node-{name}"[:32], name=name)
                s.add(row)
            row.address = address
            row.state = "up"
            row.cpus, row.memory = info.cpus, info.memory
            row.accel, row.accel_reason = info.accel.accel, info.accel.reason
            row.qemu_version = info.qemu_version
            row.facts = dict(info.facts)
            row.last_seen = utcnow()
            row.zone = zone or info.zone or row.zone or self.settings.availability_zone
            if labels is not None:
                row.labels = dict(labels)
            row.arch, row.disk = info.arch, info.disk
            row.memory_overhead, row.memory_reserved = info.memory_overhead, info.memory_reserved
        self.nodes[row.id] = client
        # a joined node answers its guests' metadata from pushed documents (Networks.sync)
        if info.metadata:
            self.imds_nodes.add(row.id)
        else:
            self.imds_nodes.discard(row.id)
        if info.accel.accel == "probing":
            self._tasks.append(
                asyncio.create_task(self._accel_settled(row.id, client), name="accel-settled")
            )
        follower = asyncio.create_task(self._follow_events(row.id, client), name=f"events-{row.id}")
        old = self._followers.pop(row.id, None)
        if old is not None:  # the node connected again (a new client): follow with that one
            old.cancel()
        self._followers[row.id] = follower
        self._tasks.append(follower)
        return row.id

    async def _accel_settled(self, node_id: str, client: NodeClient, every: float = 1.0) -> None:
        """A node still probing its accelerator when it joined: record the verdict once known
        (the probe boots a guest for seconds, and nothing waits for it)."""
        for _ in range(600):
            await asyncio.sleep(every)
            try:
                accel = (await client.info()).accel
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("node %s did not answer", node_id)
                continue
            if accel.accel == "probing":
                continue
            async with self.store.write() as s:
                row = await s.get(Node, node_id)
                if row is not None:
                    row.accel, row.accel_reason = accel.accel, accel.reason
            return

    async def _follow_events(self, node_id: str, client: NodeClient) -> None:
        """Follow the node's event log from where this controller last stood (kept in the
        database, so a restarted controller resumes); a gap (events dropped, or a log started
        afresh) is made good by a full reconcile."""
        async with self.store.read() as s:
            row = await s.get(Node, node_id)
            epoch, seq = (row.event_epoch, row.event_seq) if row is not None else ("", 0)
        delay = 1.0
        while not self._closing:
            try:
                batch = await client.events(seq, epoch, EVENT_WAIT)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if self._closing:
                    return
                log.warning("node %s: following its events failed (%s); retrying", node_id, err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            delay = 1.0
            if batch.gap:
                if epoch:
                    log.info("node %s: events were missed; reconciling in full", node_id)
                self.reconciler.poke()
            for ev in batch.events:
                self.on_node_event(node_id, ev)
            new_seq = batch.events[-1].seq if batch.events else batch.last if batch.gap else seq
            if (batch.epoch, new_seq) != (epoch, seq):
                epoch, seq = batch.epoch, new_seq
                async with self.store.write() as s:
                    await s.execute(
                        update(Node)
                        .where(Node.id == node_id)
                        .values(event_epoch=epoch, event_seq=seq)
                    )

    def on_node_event(self, node_id: str, ev: Event) -> None:
        """Something happened on a node. A QEMU exited: reconcile now rather than at the next
        tick (a start is the controller's own doing)."""
        if ev.kind == "instance-exited":
            info = ExitInfo.model_validate(ev.payload.get("exit") or {"reason": "unknown"})
            log.info("instance %s exited (%s %s)", ev.payload.get("id"), info.reason, info.detail)
            self.reconciler.poke()

    async def start(self) -> None:
        """Bring the controller up: admin account, images, networks, unfinished operations,
        one reconcile pass, then the background loops. Nodes are added before this."""
        sealed = await self.accounts.seal_stored()
        if sealed:
            log.info("sealed %d access-key secrets stored in the clear", sealed)
        self.admin = await self.accounts.ensure_admin(
            self.settings.state_dir / "admin.credentials",
            self.settings.api_url,
            str(self.settings.ca_bundle) if self.settings.api_tls else None,
        )
        await self.images.sync_from_store()
        async with self.store.write() as s:
            await placement_claims.recount(s)  # claims made before a crash or an upgrade
        await self.metering.backfill()  # resources made before metering existed
        for node_id in self.nodes:
            net = await self.networks.ensure_default(node_id, self.settings.namespace)
            await self.networks.ensure_on_node(net.id)
        await self.cluster.connect_joined()  # nodes that joined before a restart
        await self.ops.resume()
        await self.reconciler.reconcile_once()
        self._tasks.append(asyncio.create_task(self.reconciler.run(), name="reconciler"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        self._tasks.append(asyncio.create_task(self._leases(), name="leases"))
        self._tasks.append(asyncio.create_task(self.cluster.run(), name="cluster"))
        self._tasks.append(asyncio.create_task(self.cluster.heartbeats(), name="heartbeats"))
        self._tasks.append(
            asyncio.create_task(
                self.metering.run(lambda: self.nodes, self.cluster.reachable), name="metering"
            )
        )

    async def _leases(self) -> None:
        """Keep this controller's leases (claims, operations) alive, and take over the
        operations of a controller that stopped renewing its own."""
        while True:
            await asyncio.sleep(LEASE / 3)
            try:
                await self.claims.renew()
                await self.ops.renew()
                await self.ops.take_over()
            except Exception:
                log.exception("renewing leases")

    async def instance_released(self, iid: str) -> None:
        """A terminated instance lets go of what it held: its elastic address is disassociated,
        its volumes detached (and deleted where DeleteOnTermination says so)."""
        async with self.store.read() as s:
            inst = await s.get(Instance, iid)
            had_public = bool(await self.elastic_ips.by_instance(s, [iid]))
        if inst is not None and had_public:
            await self.elastic_ips.publish(inst.node_id, remove=[inst.name], strict=False)
        async with self.store.write() as s:
            await self.elastic_ips.on_instance_terminated(s, iid)
            doomed = await self.volumes.on_instance_terminated(s, iid)
            ops = []
            for vid in doomed:
                row = await s.get(Instance, iid)
                op = self.ops.new(
                    "volume-delete",
                    account_id=row.account_id if row else None,
                    target_kind="volume",
                    target_id=vid,
                    requested_by="system",
                )
                s.add(op)
                ops.append(op)
        for op in ops:
            self.ops.start(op)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(60)
            try:
                await self.purge_terminated()
                async with self.store.write() as s:
                    await placement_claims.recount(s)
                for node_id in list(self.nodes):
                    if not self.cluster.reachable(node_id):
                        continue
                    async with self.store.read() as s:
                        net = await self.networks.default(s, node_id)
                    await self.networks.ensure_on_node(net.id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("housekeeping failed")

    async def purge_terminated(self) -> int:
        cutoff = utcnow() - TERMINATED_TTL
        async with self.store.write() as s:
            gone = select(Instance.id).where(
                Instance.state == "terminated",
                Instance.desired_state == "terminated",
                Instance.terminated_at < cutoff,
            )
            await s.execute(delete(Tag).where(Tag.resource_id.in_(gone)))
            res = await s.execute(
                delete(Instance).where(
                    Instance.state == "terminated",
                    Instance.desired_state == "terminated",
                    Instance.terminated_at < cutoff,
                )
            )
        return int(getattr(res, "rowcount", 0) or 0)

    async def close(self) -> None:
        self._closing = True
        pending = set(self._tasks)
        while pending:
            for t in pending:
                t.cancel()
            # a cancellation can be lost on the way (a library turning it into another error,
            # or Python 3.11's wait_for swallowing it): cancel again until every task is done
            _, pending = await asyncio.wait(pending, timeout=1.0)
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                t.result()
        await self.ops.close()
        await self.cluster.lock.close()
        for remote in self.remotes.values():
            with contextlib.suppress(Exception):
                await remote.aclose()
        self.remotes.clear()

    async def stop_all(self, timeout: float | None = None) -> None:
        """Stop every running instance (``corral down --stop-instances``) and wait."""
        assert self.admin is not None
        async with self.store.read() as s:
            rows = list(
                await s.scalars(select(Instance).where(Instance.state.in_(("pending", "running"))))
            )
        pending = []
        for inst in rows:
            caller = Caller(inst.account_id, "", False, "system")
            _, op = await self.instances.stop(caller, inst.id, timeout=timeout)
            if op is not None:
                pending.append(op.id)
        for op_id in pending:
            await self.ops.wait(op_id, timeout=(timeout or self.settings.stop_timeout) + 30)
