"""From a service to its instances: names, rendered config files, the user-data script that
installs them (``bootstrap.py``), and a config hash that changes exactly when something that
needs a new instance changes. Pure: no store, no I/O."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import shlex
import string
from dataclasses import dataclass, field

from corral.appliances import bootstrap
from corral.appliances.spec import ApplianceSpec, Service, VolumeSpec, instance_names
from corral.errors import Invalid

USER_DATA_MAX = 16 * 1024
# tags Corral keeps on an appliance's instances (keys starting with "corral:" are Corral's)
TAG_APPLIANCE, TAG_SERVICE, TAG_CONFIG, TAG_PARTS = (
    "corral:appliance",
    "corral:service",
    "corral:config",
    "corral:parts",
)
TAG_HEALTH = "corral:health"


@dataclass
class Desired:
    """One instance as the service file wants it."""

    name: str
    service: str
    index: int
    svc: Service
    image_id: str  # resolved by the server
    user_data: str
    parts: dict[str, str]  # what the config is made of, each part hashed: for plan reasons
    config: str  # hash of all parts
    volumes: list[VolumeSpec] = field(default_factory=list)

    def volume_name(self, v: VolumeSpec) -> str:
        return f"{self.name}-{v.name}"

    @property
    def health(self) -> str:
        h = self.svc.health
        return f"{h.port}{h.path or ''}"

    def tags(self, appliance: str) -> dict[str, str]:
        return {
            TAG_APPLIANCE: appliance,
            TAG_SERVICE: self.service,
            TAG_CONFIG: self.config,
            TAG_PARTS: ";".join(f"{k}={v}" for k, v in sorted(self.parts.items())),
            TAG_HEALTH: self.health,
        }


def desired(spec: ApplianceSpec, image_ids: dict[str, str], domain: str) -> list[Desired]:
    """Every instance the file asks for, in file order."""
    out = []
    for svc_name, svc in spec.services.items():
        names = instance_names(svc_name, svc.count)
        for index, name in enumerate(names, 1):
            env = {
                "name": name,
                "service": svc_name,
                "index": str(index),
                "count": str(svc.count),
                "domain": domain,
                "fqdn": f"{name}.{domain}",
                "appliance": spec.name,
            }
            files = _render_files(svc_name, svc, env)
            user_data = script(spec.name, svc_name, name, svc, files)
            if len(user_data.encode()) > USER_DATA_MAX:
                raise Invalid(
                    f"services.{svc_name}: the config of {name} makes "
                    f"{len(user_data.encode())} bytes of user-data; the limit is "
                    "16 KiB: keep large files in the image or on a volume",
                    field=f"services.{svc_name}.files",
                )
            parts = {
                "image": image_ids[svc_name],
                "size": _h(svc.type, svc.cpus, svc.memory, svc.disk),
                "keys": _h(sorted(svc.keys), sorted(svc.public_keys)),
                "files": _h(sorted(files.items())),
                "run": _h(svc.run, svc.reload),
                "volumes": _h([(v.name, v.mount) for v in svc.volumes]),
                "health": _h(svc.health.model_dump()),
                "restart": svc.restart,
            }
            config = _h(sorted(parts.items()))
            out.append(
                Desired(
                    name=name,
                    service=svc_name,
                    index=index,
                    svc=svc,
                    image_id=image_ids[svc_name],
                    user_data=user_data,
                    parts=parts,
                    config=config,
                    volumes=list(svc.volumes),
                )
            )
    return out


def _h(*values: object) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _render_files(svc_name: str, svc: Service, env: dict[str, str]) -> dict[str, tuple[str, str]]:
    """path -> (content, mode)."""
    out = {}
    for path, f in svc.files.items():
        content = f.content or ""
        if f.template:
            try:
                content = string.Template(content).substitute(env)
            except (KeyError, ValueError) as err:
                field = f'services.{svc_name}.files."{path}".content'
                raise Invalid(
                    f"{field}: the template uses {err}, which is not a placeholder; "
                    f"use ${{{'}, ${'.join(sorted(env))}}} (write $$ for a dollar)",
                    field=field,
                ) from err
        out[path] = (content, f.mode.rjust(4, "0"))
    return out


def parse_parts(value: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in value.split(";") if "=" in p)


def script(
    appliance: str, service: str, name: str, svc: Service, files: dict[str, tuple[str, str]]
) -> str:
    """The user-data: a shell script run once per instance by cloud-init or tiny's init."""
    lines = [
        "#!/bin/sh",
        f"# Corral appliance {appliance}, service {service}: {name}. Written by "
        "`corral apply`; runs once per instance.",
        "umask 022",
        "mkdir -p /etc/corral",
    ]
    volumes = " ".join(f"{v.name}:{v.mount}" for v in svc.volumes)
    written = {
        **{p: (c, m) for p, (c, m) in files.items()},
        "/etc/corral/appliance.env": (f"VOLUMES={shlex.quote(volumes)}\n", "0644"),
        "/etc/corral/run": (f"#!/bin/sh\n{svc.run}\n", "0755"),
        "/etc/corral/reload": (f"#!/bin/sh\n{svc.reload}\n", "0755"),
        "/etc/corral/appliance": (bootstrap.HELPER, "0755"),
        **{p: (c, "0644") for p, c in bootstrap.UNITS.items()},
    }
    for path, (content, mode) in written.items():
        parent = path.rsplit("/", 1)[0] or "/"
        # gzip (mtime 0: the same config gives the same bytes) keeps the 16 KiB for config
        data = base64.encodebytes(gzip.compress(content.encode(), 9, mtime=0)).decode()
        lines += [
            f"mkdir -p {shlex.quote(parent)}",
            f"base64 -d <<'CORRAL_EOF' | gzip -dc > {shlex.quote(path)}",
            data.rstrip("\n"),
            "CORRAL_EOF",
            f"chmod {mode} {shlex.quote(path)}",
        ]
    lines.append(bootstrap.INSTALL)
    return "\n".join(lines) + "\n"
