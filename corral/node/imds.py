"""The metadata service on a node joined to a cluster: the agent answers 169.254.169.254 in each
of its networks from the documents the controller pushed (``metadata_put``: a network's whole
set, made by controller/imds_docs.py), never from the database. The documents are kept on disk
(``<state>/networks/<id>/metadata.json``, written atomically), so the service answers from the
agent's start on, also while the controller is down. The HTTP side is corral/imds.py, shared
with the all-in-one daemon; tokens are signed with the agent's own key (``metadata.key``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

from corral import imds
from corral.fsutil import atomic_write_json
from corral.node import server
from corral.node.net import netns
from corral.node.spec import InstanceMetadata, NetworkSpec

log = logging.getLogger("corral.agent.imds")

ADDRESS = "169.254.169.254"
FILE = "metadata.json"


class MetadataService:
    """Documents per network; with ``serve``, one listener per namespace (a VPC's may hold
    several of its networks)."""

    def __init__(self, directory: Path, key_file: Path, serve: bool) -> None:
        self.directory = directory  # <state>/networks
        self.key_file = key_file
        self.serve = serve
        self.networks: dict[str, NetworkSpec] = {}
        self.docs: dict[str, dict[str, InstanceMetadata]] = {}  # network -> address -> doc
        self._servers: dict[str, tuple[server.Server, asyncio.Task[None]]] = {}
        self._key: bytes | None = None

    def load(self) -> None:
        """What was pushed before this agent started."""
        for path in sorted(self.directory.glob(f"*/{FILE}")):
            try:
                data = json.loads(path.read_text())
                spec = NetworkSpec.model_validate(data["network"])
                docs = [InstanceMetadata.model_validate(d) for d in data["documents"]]
            except (OSError, ValueError, KeyError) as err:
                log.warning("%s: unreadable (%s); waiting for the controller's push", path, err)
                continue
            self._keep(spec, docs)

    def _keep(self, spec: NetworkSpec, documents: list[InstanceMetadata]) -> None:
        self.networks[spec.id] = spec
        self.docs[spec.id] = {d.address: d for d in documents if d.address}

    async def start(self) -> None:
        self.load()
        for spec in list(self.networks.values()):
            await self.listen(spec)

    async def put(self, spec: NetworkSpec, documents: list[InstanceMetadata]) -> None:
        atomic_write_json(
            self.directory / spec.id / FILE,
            {
                "network": spec.model_dump(mode="json"),
                "documents": [d.model_dump(mode="json") for d in documents],
            },
        )
        self._keep(spec, documents)
        await self.listen(spec)

    def lookup(self, namespace: str, address: str) -> InstanceMetadata | None:
        """The document of the instance at ``address`` in ``namespace`` (a VPC's namespace may
        hold several of its subnets, whose addresses never overlap)."""
        for network_id, spec in self.networks.items():
            if spec.namespace == namespace and (doc := self.docs[network_id].get(address)):
                return doc
        return None

    async def listen(self, spec: NetworkSpec) -> None:
        """The listener of ``spec``'s namespace, once per namespace (when this agent serves
        metadata). A namespace not there yet (a restart before the controller's push) is
        tried again at the next push."""
        running = self._servers.get(spec.namespace)
        if not (self.serve or spec.vpc) or (running is not None and not running[1].done()):
            return
        try:
            sock = netns.listen_in(spec.namespace, ADDRESS, 80)
        except Exception as err:
            log.warning("metadata service of %s: not listening yet (%s)", spec.id, err)
            return
        if self._key is None:
            self._key = imds.token_key(self.key_file)
        namespace = spec.namespace

        async def resolve(address: str) -> InstanceMetadata | None:
            return self.lookup(namespace, address)

        srv = server.server(imds.create_app(resolve, self._key))
        task = asyncio.create_task(srv.serve(sockets=[sock]), name=f"metadata-{namespace}")
        self._servers[namespace] = (srv, task)
        log.info("metadata service listening in %s", namespace)

    async def forget(self, network_id: str) -> None:
        """The network left the node; its namespace's listener stops with the last of them."""
        spec = self.networks.pop(network_id, None)
        self.docs.pop(network_id, None)
        (self.directory / network_id / FILE).unlink(missing_ok=True)
        if spec is not None and not any(
            n.namespace == spec.namespace for n in self.networks.values()
        ):
            await self._stop(spec.namespace)

    async def _stop(self, namespace: str) -> None:
        running = self._servers.pop(namespace, None)
        if running is None:
            return
        srv, task = running
        srv.should_exit = True
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(task, 10)

    async def close(self) -> None:
        for namespace in list(self._servers):
            await self._stop(namespace)
