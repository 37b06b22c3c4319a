"""The client library: one method per API endpoint, returning the shared wire models. The CLI
uses nothing else to talk to Corral."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from corral import models, netmodels, viewmodels
from corral.appliances.plan import Plan
from corral.appliances.spec import ApplianceSpec
from corral.config import DEFAULT_PORT, DEFAULT_STATE_DIR
from corral.errors import Code, CorralError, EnvironmentProblem, Unauthorized
from corral.images.manifest import Manifest

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

TRANSFER_CHUNK = 1 << 20  # image uploads and downloads stream in pieces of this size
USER_CONFIG = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "corral"


class ApiError(CorralError):
    """An error answer from the API, keeping its code, field and HTTP status."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        err = body.get("error") or {}
        code = err.get("code", "internal")
        super().__init__(
            err.get("message") or f"HTTP {status}",
            code=Code(code) if code in Code.__members__.values() else Code.INTERNAL,
            field=err.get("field"),
            resource=err.get("resource"),
        )
        self.status = status


@dataclass
class Credentials:
    endpoint: str
    access_key_id: str
    secret_access_key: str
    source: str
    ca_bundle: str | None = None  # the CA an https endpoint's certificate comes from

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.endpoint.startswith("https") or not self.ca_bundle:
            return None
        return ssl.create_default_context(cafile=self.ca_bundle)


def find_credentials(state_dir: Path | None = None, endpoint: str | None = None) -> Credentials:
    """Environment, then ~/.config/corral/credentials, then <state-dir>/admin.credentials."""
    env_key, env_secret = os.environ.get("CORRAL_ACCESS_KEY"), os.environ.get("CORRAL_SECRET_KEY")
    env_endpoint = endpoint or os.environ.get("CORRAL_ENDPOINT")
    env_ca = os.environ.get("CORRAL_CA_BUNDLE") or None
    if env_key and env_secret:
        return Credentials(
            env_endpoint or f"http://127.0.0.1:{DEFAULT_PORT}",
            env_key,
            env_secret,
            "environment",
            env_ca,
        )
    sd = state_dir or Path(os.environ.get("CORRAL_STATE_DIR") or DEFAULT_STATE_DIR)
    candidates = [sd / "admin.credentials"]
    if state_dir is None and not os.environ.get("CORRAL_STATE_DIR"):
        candidates.insert(0, USER_CONFIG / "credentials")
    for path in candidates:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except PermissionError as err:
            raise Unauthorized(
                f"cannot read {path}: run as root (sudo) or set "
                "CORRAL_ACCESS_KEY and CORRAL_SECRET_KEY"
            ) from err
        except ValueError as err:
            raise Unauthorized(f"{path} is not valid JSON; remove it") from err
        return Credentials(
            env_endpoint or data.get("endpoint") or f"http://127.0.0.1:{DEFAULT_PORT}",
            data["access_key_id"],
            data["secret_access_key"],
            str(path),
            env_ca or data.get("ca_bundle"),
        )
    raise EnvironmentProblem(
        f"no Corral credentials found (looked in {', '.join(map(str, candidates))}); "
        "start Corral with `corral up` or set CORRAL_ACCESS_KEY and CORRAL_SECRET_KEY"
    )


class Client:
    def __init__(self, creds: Credentials, timeout: float = 60.0) -> None:
        self.creds = creds
        self.ssl = creds.ssl_context()
        self.http = httpx.Client(
            base_url=creds.endpoint,
            verify=self.ssl if self.ssl is not None else True,
            timeout=timeout,
            headers={"Authorization": f"Bearer {creds.access_key_id}:{creds.secret_access_key}"},
        )

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.ConnectError as err:
            raise EnvironmentProblem(
                f"Corral is not answering at {self.creds.endpoint}; start it with "
                "`corral up --detach` (or check `corral status`)"
            ) from err
        except httpx.TimeoutException as err:
            raise CorralError(f"Corral at {self.creds.endpoint} did not answer in time") from err
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {"error": {"code": "internal", "message": resp.text[:300]}}
            raise ApiError(resp.status_code, body)
        if resp.status_code == 204:
            return None
        ctype = resp.headers.get("content-type", "")
        return resp.json() if "json" in ctype else resp.text

    # -- system ----------------------------------------------------------------------------
    def health(self) -> dict[str, str]:
        return self._call("GET", "/v1/health")  # type: ignore[no-any-return]

    def system_show(self) -> models.SystemInfo:
        return models.SystemInfo.model_validate(self._call("GET", "/v1/system"))

    def system_shutdown(self, stop_instances: bool, timeout: float | None = None) -> None:
        self._call(
            "POST",
            "/v1/system/shutdown",
            json={"stop_instances": stop_instances, "timeout": timeout},
            timeout=(timeout or 60) + 120,
        )

    def node_token(self, ttl: str = "1h") -> models.NodeToken:
        body = models.NodeTokenCreate(ttl=ttl).model_dump()
        return models.NodeToken.model_validate(self._call("POST", "/v1/nodes/tokens", json=body))

    def node_show(self, ref: str) -> models.Node:
        return models.Node.model_validate(self._call("GET", f"/v1/nodes/{ref}"))

    def node_update(
        self, ref: str, labels: dict[str, str], remove: list[str] | None = None
    ) -> models.Node:
        body = models.NodeUpdate(labels=labels, remove_labels=remove or []).model_dump()
        return models.Node.model_validate(self._call("PATCH", f"/v1/nodes/{ref}", json=body))

    def node_cordon(self, ref: str, cordon: bool = True) -> models.Node:
        action = "cordon" if cordon else "uncordon"
        return models.Node.model_validate(self._call("POST", f"/v1/nodes/{ref}/{action}"))

    def node_remove(self, ref: str, force: bool = False) -> None:
        self._call("DELETE", f"/v1/nodes/{ref}", params={"force": str(force).lower()})

    def node_list(self) -> list[models.Node]:
        return [models.Node.model_validate(x) for x in self._call("GET", "/v1/nodes")]

    def node_drain(self, ref: str, timeout: float | None = None) -> models.DrainResult:
        params = {"timeout": str(timeout)} if timeout is not None else None
        return models.DrainResult.model_validate(
            self._call("POST", f"/v1/nodes/{ref}/drain", params=params)
        )

    def node_evacuate(
        self, ref: str, to: str | None = None, dry_run: bool = False
    ) -> models.EvacuateResult:
        body = models.EvacuateRequest(to=to, dry_run=dry_run).model_dump()
        return models.EvacuateResult.model_validate(
            self._call("POST", f"/v1/nodes/{ref}/evacuate", json=body)
        )

    def rebalance(
        self, max_moves: int = 10, dry_run: bool = False, timeout: float | None = None
    ) -> models.RebalancePlan:
        body: dict[str, Any] = {"max_moves": max_moves, "dry_run": dry_run}
        if timeout is not None:
            body["timeout"] = timeout
        return models.RebalancePlan.model_validate(self._call("POST", "/v1/rebalance", json=body))

    # -- instances -------------------------------------------------------------------------
    def instance_list(self, all: bool = True) -> list[models.Instance]:
        data = self._call("GET", "/v1/instances", params={"all": str(all).lower()})
        return [models.Instance.model_validate(x) for x in data]

    def instance_run(self, req: models.InstanceCreate) -> models.InstanceAccepted:
        data = self._call("POST", "/v1/instances", json=req.model_dump(exclude_none=True))
        return models.InstanceAccepted.model_validate(data)

    def instance_show(self, ref: str) -> models.Instance:
        return models.Instance.model_validate(self._call("GET", f"/v1/instances/{ref}"))

    def instance_update(self, ref: str, name: str | None = None) -> models.Instance:
        body = models.InstanceUpdate(name=name).model_dump(exclude_none=True)
        return models.Instance.model_validate(
            self._call("PATCH", f"/v1/instances/{ref}", json=body)
        )

    def instance_start(self, ref: str) -> models.InstanceAccepted:
        return models.InstanceAccepted.model_validate(
            self._call("POST", f"/v1/instances/{ref}/start")
        )

    def instance_stop(
        self, ref: str, timeout: float | None = None, force: bool = False
    ) -> models.InstanceAccepted:
        body = models.StopRequest(timeout=timeout, force=force).model_dump(exclude_none=True)
        return models.InstanceAccepted.model_validate(
            self._call("POST", f"/v1/instances/{ref}/stop", json=body)
        )

    def instance_reboot(self, ref: str, timeout: float | None = None) -> models.InstanceAccepted:
        body = models.RebootRequest(timeout=timeout).model_dump(exclude_none=True)
        return models.InstanceAccepted.model_validate(
            self._call("POST", f"/v1/instances/{ref}/reboot", json=body)
        )

    def instance_migrate(
        self, ref: str, to: str | None = None, timeout: float | None = None
    ) -> models.InstanceAccepted:
        body = models.MigrateRequest(to=to, timeout=timeout).model_dump(exclude_none=True)
        return models.InstanceAccepted.model_validate(
            self._call("POST", f"/v1/instances/{ref}/migrate", json=body)
        )

    def instance_terminate(
        self, ref: str, force: bool = False, timeout: float | None = None
    ) -> models.InstanceAccepted:
        params: dict[str, Any] = {"force": str(force).lower()}
        if timeout is not None:
            params["timeout"] = timeout
        return models.InstanceAccepted.model_validate(
            self._call("DELETE", f"/v1/instances/{ref}", params=params)
        )

    def instance_console_output(self, ref: str, tail: int = 65536) -> str:
        return str(self._call("GET", f"/v1/instances/{ref}/console-output", params={"tail": tail}))

    def instance_confinement(self, ref: str) -> models.Confinement:
        return models.Confinement.model_validate(
            self._call("GET", f"/v1/instances/{ref}/confinement")
        )

    def console_url(self, ref: str) -> str:
        return self.creds.endpoint.replace("http", "ws", 1) + f"/v1/instances/{ref}/console"

    def port_url(self, ref: str, port: int) -> str:
        """The WebSocket that carries a TCP stream to ``port`` of the instance."""
        return self.creds.endpoint.replace("http", "ws", 1) + f"/v1/instances/{ref}/ports/{port}"

    def auth_header(self) -> str:
        return f"Bearer {self.creds.access_key_id}:{self.creds.secret_access_key}"

    @contextlib.contextmanager
    def stream(self, url: str, timeout: float = 30.0) -> Iterator[ClientConnection]:
        """One of the API's WebSocket streams (console, ports), opened with this client's
        credentials and closed on leaving; a refusal raises the API's error, as for any other
        call. The handshake waits for the API to reach the guest's port (a node's agent gives
        up on a silent port after ``PORT_TIMEOUT``, 4 s), so ``timeout`` is well above that."""
        from websockets.exceptions import InvalidHandshake, InvalidStatus
        from websockets.sync.client import connect

        try:
            ws = connect(
                url,
                additional_headers={"Authorization": self.auth_header()},
                open_timeout=timeout,
                max_size=None,
                ssl=self.ssl if url.startswith("wss") else None,
                legacy=True,  # the connection itself; this generator closes it
            )
        except InvalidStatus as err:
            status = err.response.status_code
            try:
                body = json.loads(err.response.body or b"")
            except ValueError:
                body = {}
            if not isinstance(body, dict) or "error" not in body:
                body = {"error": {"code": "internal", "message": f"refused with HTTP {status}"}}
            raise ApiError(status, body) from err
        except (OSError, TimeoutError, InvalidHandshake) as err:
            raise EnvironmentProblem(
                f"Corral is not answering at {self.creds.endpoint} ({err}); check `corral status`"
            ) from err
        with ws:
            yield ws

    # -- images ----------------------------------------------------------------------------
    def image_list(self) -> list[models.Image]:
        return [models.Image.model_validate(x) for x in self._call("GET", "/v1/images")]

    def image_show(self, ref: str) -> models.Image:
        return models.Image.model_validate(self._call("GET", f"/v1/images/{ref}"))

    def image_build(self, recipe: str, force: bool = False) -> models.ImageAccepted:
        return models.ImageAccepted.model_validate(
            self._call("POST", "/v1/images/build", json={"recipe": recipe, "force": force})
        )

    def image_build_upload(self, archive: str, force: bool = False) -> models.ImageAccepted:
        """Build an uploaded recipe (``archive`` from corral.images.recipe_upload.pack)."""
        return models.ImageAccepted.model_validate(
            self._call("POST", "/v1/images/build", json={"archive": archive, "force": force})
        )

    def image_permissions(self, ref: str) -> models.ImagePermissions:
        return models.ImagePermissions.model_validate(
            self._call("GET", f"/v1/images/{ref}/permissions")
        )

    def image_permissions_update(
        self,
        ref: str,
        add: list[str] | None = None,
        remove: list[str] | None = None,
        public: bool | None = None,
    ) -> models.ImagePermissions:
        body = {"add": add or [], "remove": remove or [], "public": public}
        return models.ImagePermissions.model_validate(
            self._call("PATCH", f"/v1/images/{ref}/permissions", json=body)
        )

    def image_remove(self, ref: str) -> models.Image:
        return models.Image.model_validate(self._call("DELETE", f"/v1/images/{ref}"))

    def image_manifest(self, ref: str) -> Manifest:
        return Manifest.model_validate(self._call("GET", f"/v1/images/{ref}/manifest"))

    def image_import(
        self,
        path: Path,
        *,
        name: str | None = None,
        version: str | None = None,
        format: str | None = None,
        description: str = "",
        default_user: str | None = None,
        min_disk: str | None = None,
        boot_from: str | None = None,
        cmdline: str | None = None,
        sha256: str | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> models.ImageAccepted:
        """Upload a disk file or an export archive as a stream (never read whole)."""
        size = path.stat().st_size
        params = {
            k: v
            for k, v in {
                "name": name,
                "version": version,
                "format": format,
                "description": description,
                "default_user": default_user,
                "min_disk": min_disk,
                "boot_from": boot_from,
                "cmdline": cmdline,
                "sha256": sha256,
            }.items()
            if v
        }

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as fh:
                while chunk := fh.read(TRANSFER_CHUNK):
                    if on_bytes:
                        on_bytes(len(chunk))
                    yield chunk

        data = self._call(
            "POST",
            "/v1/images/import",
            params=params,
            content=chunks(),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            timeout=httpx.Timeout(60, read=600),
        )
        return models.ImageAccepted.model_validate(data)

    def image_export(self, ref: str, delta_from: str | None = None) -> models.ImageAccepted:
        body = models.ImageExport(delta_from=delta_from).model_dump(exclude_none=True)
        return models.ImageAccepted.model_validate(
            self._call("POST", f"/v1/images/{ref}/export", json=body)
        )

    def image_download(
        self, archive: str, out: Path, on_bytes: Callable[[int], None] | None = None
    ) -> str:
        """Stream an export archive to ``out`` (through a temporary file, renamed once its
        sha256 matches the server's); return the sha256."""
        tmp = out.with_name(f".{out.name}.part")
        h = hashlib.sha256()
        try:
            with self.http.stream(
                "GET", f"/v1/images/exports/{archive}", timeout=httpx.Timeout(60, read=600)
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise ApiError(resp.status_code, resp.json())
                want = resp.headers.get("x-corral-sha256", "")
                with open(tmp, "wb") as fh:
                    for chunk in resp.iter_bytes(TRANSFER_CHUNK):
                        h.update(chunk)
                        fh.write(chunk)
                        if on_bytes:
                            on_bytes(len(chunk))
            if want and h.hexdigest() != want:
                raise CorralError(
                    f"the download of {archive} is corrupt (sha256 "
                    f"{h.hexdigest()}, the server has {want}); download it again"
                )
            os.replace(tmp, out)
        except httpx.ConnectError as err:
            raise EnvironmentProblem(f"Corral is not answering at {self.creds.endpoint}") from err
        finally:
            tmp.unlink(missing_ok=True)
        return h.hexdigest()

    def image_verify(self, ref: str) -> models.ImageAccepted:
        return models.ImageAccepted.model_validate(self._call("POST", f"/v1/images/{ref}/verify"))

    def image_tag(self, ref: str, name: str, version: str = "1") -> models.Image:
        body = models.ImageTag(name=name, version=version).model_dump()
        return models.Image.model_validate(self._call("POST", f"/v1/images/{ref}/tags", json=body))

    # -- keys ------------------------------------------------------------------------------
    def key_list(self) -> list[models.KeyPair]:
        return [models.KeyPair.model_validate(x) for x in self._call("GET", "/v1/keys")]

    def key_add(
        self, name: str, public_key: str | None = None, key_type: str = "ed25519"
    ) -> models.KeyPairCreated:
        body = {"name": name, "public_key": public_key, "key_type": key_type}
        return models.KeyPairCreated.model_validate(self._call("POST", "/v1/keys", json=body))

    def key_show(self, name: str) -> models.KeyPair:
        return models.KeyPair.model_validate(self._call("GET", f"/v1/keys/{name}"))

    def key_remove(self, name: str) -> None:
        self._call("DELETE", f"/v1/keys/{name}")

    # -- placement -------------------------------------------------------------------------
    def placement_group_list(self) -> list[models.PlacementGroup]:
        data = self._call("GET", "/v1/placement-groups")
        return [models.PlacementGroup.model_validate(x) for x in data]

    def placement_group_create(self, req: models.PlacementGroupCreate) -> models.PlacementGroup:
        data = self._call("POST", "/v1/placement-groups", json=req.model_dump())
        return models.PlacementGroup.model_validate(data)

    def placement_group_show(self, ref: str) -> models.PlacementGroup:
        return models.PlacementGroup.model_validate(
            self._call("GET", f"/v1/placement-groups/{ref}")
        )

    def placement_group_remove(self, ref: str) -> None:
        self._call("DELETE", f"/v1/placement-groups/{ref}")

    # -- VPCs ------------------------------------------------------------------------------
    def vpc_list(self) -> list[models.Vpc]:
        return [models.Vpc.model_validate(x) for x in self._call("GET", "/v1/vpcs")]

    def vpc_create(self, req: models.VpcCreate) -> models.Vpc:
        return models.Vpc.model_validate(self._call("POST", "/v1/vpcs", json=req.model_dump()))

    def vpc_update(self, vpc_id: str, req: models.VpcUpdate) -> models.Vpc:
        return models.Vpc.model_validate(
            self._call("PATCH", f"/v1/vpcs/{vpc_id}", json=req.model_dump())
        )

    def vpc_show(self, vpc_id: str) -> models.Vpc:
        return models.Vpc.model_validate(self._call("GET", f"/v1/vpcs/{vpc_id}"))

    def vpc_remove(self, vpc_id: str) -> None:
        self._call("DELETE", f"/v1/vpcs/{vpc_id}")

    def subnet_list(self) -> list[models.Subnet]:
        return [models.Subnet.model_validate(x) for x in self._call("GET", "/v1/subnets")]

    def subnet_create(self, req: models.SubnetCreate) -> models.Subnet:
        data = self._call("POST", "/v1/subnets", json=req.model_dump())
        return models.Subnet.model_validate(data)

    def subnet_show(self, subnet_id: str) -> models.Subnet:
        return models.Subnet.model_validate(self._call("GET", f"/v1/subnets/{subnet_id}"))

    def subnet_remove(self, subnet_id: str) -> None:
        self._call("DELETE", f"/v1/subnets/{subnet_id}")

    def capacity_show(self) -> models.Capacity:
        return models.Capacity.model_validate(self._call("GET", "/v1/capacity"))

    # -- accounts --------------------------------------------------------------------------
    def account_list(self) -> list[models.Account]:
        return [models.Account.model_validate(x) for x in self._call("GET", "/v1/accounts")]

    def account_create(self, name: str) -> models.AccountCreated:
        return models.AccountCreated.model_validate(
            self._call("POST", "/v1/accounts", json={"name": name})
        )

    def credentials_create(self, account: str | None = None) -> models.AccessKeyCreated:
        params = {"account": account} if account else {}
        return models.AccessKeyCreated.model_validate(
            self._call("POST", "/v1/accounts/keys", params=params)
        )

    def credentials_delete(self, key_id: str) -> None:
        self._call("DELETE", f"/v1/accounts/keys/{key_id}")

    # -- operations ------------------------------------------------------------------------
    def operation_list(self, limit: int = 50, target: str | None = None) -> list[models.Operation]:
        params: dict[str, Any] = {"limit": limit}
        if target:
            params["target"] = target
        return [
            models.Operation.model_validate(x)
            for x in self._call("GET", "/v1/operations", params=params)
        ]

    def operation_show(self, op_id: str) -> models.Operation:
        return models.Operation.model_validate(self._call("GET", f"/v1/operations/{op_id}"))

    def operation_wait(self, op_id: str, timeout: float = 30, since: int = -1) -> models.Operation:
        return models.Operation.model_validate(
            self._call(
                "GET",
                f"/v1/operations/{op_id}/wait",
                params={"timeout": timeout, "since": since},
                timeout=timeout + 30,
            )
        )

    def operation_events(self, op_id: str, since: int = 0) -> list[models.OperationEvent]:
        return [
            models.OperationEvent.model_validate(x)
            for x in self._call("GET", f"/v1/operations/{op_id}/events", params={"since": since})
        ]

    def operation_cancel(self, op_id: str) -> models.Operation:
        return models.Operation.model_validate(self._call("DELETE", f"/v1/operations/{op_id}"))

    # -- volumes and snapshots -------------------------------------------------------------
    def volume_list(self) -> list[models.Volume]:
        return [models.Volume.model_validate(x) for x in self._call("GET", "/v1/volumes")]

    def volume_create(self, req: models.VolumeCreate) -> models.VolumeAccepted:
        return models.VolumeAccepted.model_validate(
            self._call("POST", "/v1/volumes", json=req.model_dump(exclude_none=True))
        )

    def volume_show(self, ref: str) -> models.Volume:
        return models.Volume.model_validate(self._call("GET", f"/v1/volumes/{ref}"))

    def volume_update(self, ref: str, req: models.VolumeUpdate) -> models.Volume:
        return models.Volume.model_validate(
            self._call("PATCH", f"/v1/volumes/{ref}", json=req.model_dump(exclude_none=True))
        )

    def volume_remove(self, ref: str) -> models.VolumeAccepted:
        return models.VolumeAccepted.model_validate(self._call("DELETE", f"/v1/volumes/{ref}"))

    def volume_attach(self, ref: str, req: models.VolumeAttach) -> models.VolumeAccepted:
        return models.VolumeAccepted.model_validate(
            self._call("POST", f"/v1/volumes/{ref}/attach", json=req.model_dump(exclude_none=True))
        )

    def volume_detach(self, ref: str, req: models.VolumeDetach) -> models.VolumeAccepted:
        return models.VolumeAccepted.model_validate(
            self._call("POST", f"/v1/volumes/{ref}/detach", json=req.model_dump(exclude_none=True))
        )

    def volume_snapshot(self, ref: str, description: str = "") -> models.SnapshotAccepted:
        body = models.SnapshotCreate(description=description).model_dump()
        return models.SnapshotAccepted.model_validate(
            self._call("POST", f"/v1/volumes/{ref}/snapshots", json=body)
        )

    def volume_restore(self, snapshot: str, req: models.VolumeRestore) -> models.VolumeAccepted:
        return models.VolumeAccepted.model_validate(
            self._call(
                "POST", f"/v1/snapshots/{snapshot}/restore", json=req.model_dump(exclude_none=True)
            )
        )

    def snapshot_list(self, volume: str | None = None) -> list[models.Snapshot]:
        params = {"volume": volume} if volume else {}
        return [
            models.Snapshot.model_validate(x)
            for x in self._call("GET", "/v1/snapshots", params=params)
        ]

    def snapshot_show(self, sid: str) -> models.Snapshot:
        return models.Snapshot.model_validate(self._call("GET", f"/v1/snapshots/{sid}"))

    def snapshot_remove(self, sid: str) -> models.Operation:
        return models.Operation.model_validate(self._call("DELETE", f"/v1/snapshots/{sid}"))

    # -- appliances and replacing ----------------------------------------------------------
    def appliance_plan(self, spec: ApplianceSpec) -> Plan:
        return Plan.model_validate(
            self._call("POST", "/v1/appliances/plan", json=spec.model_dump(mode="json"))
        )

    def appliance_apply(self, spec: ApplianceSpec) -> models.ApplianceAccepted:
        return models.ApplianceAccepted.model_validate(
            self._call("POST", "/v1/appliances/apply", json=spec.model_dump(mode="json"))
        )

    def instance_replace(self, ref: str, req: models.ReplaceRequest) -> models.InstanceAccepted:
        return models.InstanceAccepted.model_validate(
            self._call(
                "POST", f"/v1/instances/{ref}/replace", json=req.model_dump(exclude_none=True)
            )
        )

    # -- security groups, addresses, tags, types and zones (issue 15) ------------------------
    def security_group_list(self) -> list[netmodels.SecurityGroup]:
        data = self._call("GET", "/v1/security-groups")
        return [netmodels.SecurityGroup.model_validate(x) for x in data]

    def security_group_create(self, req: netmodels.SecurityGroupCreate) -> netmodels.SecurityGroup:
        data = self._call("POST", "/v1/security-groups", json=req.model_dump(exclude_none=True))
        return netmodels.SecurityGroup.model_validate(data)

    def security_group_show(self, ref: str) -> netmodels.SecurityGroup:
        data = self._call("GET", f"/v1/security-groups/{ref}")
        return netmodels.SecurityGroup.model_validate(data)

    def security_group_remove(self, ref: str) -> None:
        self._call("DELETE", f"/v1/security-groups/{ref}")

    def security_group_allow(
        self, ref: str, req: netmodels.RuleSpec
    ) -> netmodels.SecurityGroupRule:
        data = self._call(
            "POST", f"/v1/security-groups/{ref}/rules", json=req.model_dump(exclude_none=True)
        )
        return netmodels.SecurityGroupRule.model_validate(data)

    def security_group_revoke(self, ref: str, req: netmodels.RuleSpec) -> None:
        self._call(
            "POST",
            f"/v1/security-groups/{ref}/rules/revoke",
            json=req.model_dump(exclude_none=True),
        )

    def security_group_rule_remove(self, ref: str, rule_id: str) -> None:
        self._call("DELETE", f"/v1/security-groups/{ref}/rules/{rule_id}")

    def address_list(self) -> list[netmodels.Address]:
        return [netmodels.Address.model_validate(x) for x in self._call("GET", "/v1/addresses")]

    def address_allocate(self, tags: dict[str, str] | None = None) -> netmodels.Address:
        data = self._call("POST", "/v1/addresses", json={"tags": tags or {}})
        return netmodels.Address.model_validate(data)

    def address_show(self, ref: str) -> netmodels.Address:
        return netmodels.Address.model_validate(self._call("GET", f"/v1/addresses/{ref}"))

    def address_associate(
        self, ref: str, instance: str, allow_reassociation: bool = False
    ) -> netmodels.Address:
        body = netmodels.AddressAssociate(
            instance=instance, allow_reassociation=allow_reassociation
        ).model_dump()
        data = self._call("POST", f"/v1/addresses/{ref}/associate", json=body)
        return netmodels.Address.model_validate(data)

    def address_disassociate(self, ref: str) -> netmodels.Address:
        data = self._call("POST", f"/v1/addresses/{ref}/disassociate")
        return netmodels.Address.model_validate(data)

    def address_release(self, ref: str) -> None:
        self._call("DELETE", f"/v1/addresses/{ref}")

    def tag_list(self, resources: list[str] | None = None) -> list[netmodels.Tag]:
        data = self._call("GET", "/v1/tags", params={"resource": resources or []})
        return [netmodels.Tag.model_validate(x) for x in data]

    def tag_set(self, resources: list[str], tags: dict[str, str]) -> None:
        self._call("POST", "/v1/tags", json={"resources": resources, "tags": tags})

    def tag_remove(self, resources: list[str], keys: list[str] | None) -> None:
        self._call("POST", "/v1/tags/remove", json={"resources": resources, "keys": keys})

    def instance_type_list(self) -> list[netmodels.InstanceType]:
        data = self._call("GET", "/v1/instance-types")
        return [netmodels.InstanceType.model_validate(x) for x in data]

    def zone_list(self) -> list[netmodels.Zone]:
        return [netmodels.Zone.model_validate(x) for x in self._call("GET", "/v1/zones")]

    # -- operator views (issue 15) ---------------------------------------------------------
    def stats(self) -> viewmodels.Stats:
        return viewmodels.Stats.model_validate(self._call("GET", "/v1/stats"))

    def metrics(self) -> str:
        return str(self._call("GET", "/metrics"))

    def events(self, snapshot: bool = False) -> Iterator[viewmodels.Event | None]:
        """Server-sent events as they come (ends when the server ends the stream); None marks
        the end of the snapshot."""
        params = {"snapshot": "true"} if snapshot else {}
        try:
            with self.http.stream(
                "GET", "/v1/events", params=params, timeout=httpx.Timeout(60, read=None)
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise ApiError(resp.status_code, resp.json())
                data: list[str] = []
                name = ""
                for line in resp.iter_lines():
                    if line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        if name == "ready":
                            yield None
                        else:
                            yield viewmodels.Event.model_validate_json("\n".join(data))
                        data, name = [], ""
        except httpx.ConnectError as err:
            raise EnvironmentProblem(f"Corral is not answering at {self.creds.endpoint}") from err

    # -- quotas, usage and bills (controller/quotas.py, controller/metering.py) ---------------
    def quota_show(self, account: str | None = None) -> models.Quotas:
        params = {"account": account} if account else {}
        return models.Quotas.model_validate(self._call("GET", "/v1/quotas", params=params))

    def quota_set(self, account: str, name: str, value: int | None) -> models.Quotas:
        return models.Quotas.model_validate(
            self._call("PUT", f"/v1/quotas/{account}/{name}", json={"value": value})
        )

    def usage_show(
        self, account: str | None = None, start: str | None = None, end: str | None = None
    ) -> models.Usage:
        params = {k: v for k, v in (("account", account), ("start", start), ("end", end)) if v}
        return models.Usage.model_validate(self._call("GET", "/v1/usage", params=params))

    def bill_show(self, month: str, account: str | None = None) -> models.Bill:
        params = {"month": month, **({"account": account} if account else {})}
        return models.Bill.model_validate(self._call("GET", "/v1/bills", params=params))

    def instance_credits(self, ref: str) -> models.InstanceCredits:
        return models.InstanceCredits.model_validate(
            self._call("GET", f"/v1/instances/{ref}/credits")
        )

    def instance_credits_set(self, ref: str, mode: str) -> models.InstanceCredits:
        return models.InstanceCredits.model_validate(
            self._call("PUT", f"/v1/instances/{ref}/credits", json={"mode": mode})
        )
