"""One settings object for a Corral process: defaults, then ``<state_dir>/corral.toml``, then
``CORRAL_*`` environment variables, then explicit overrides (command-line flags). Read once."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.errors import Invalid

DEFAULT_STATE_DIR = Path("/var/lib/corral")
DEFAULT_PORT = 8773  # the port Eucalyptus and Nova gave their EC2 API


@dataclass(frozen=True)
class Settings:
    state_dir: Path = DEFAULT_STATE_DIR
    api_host: str = "127.0.0.1"
    api_port: int = DEFAULT_PORT
    db_url: str = ""  # empty: SQLite in the state directory
    accel: str = "auto"  # auto | kvm | tcg
    netns: str = ""  # empty: derived from the state directory
    subnet: str = "10.88.0.0/24"
    domain: str = "corral.internal"
    machine: str = "pc"
    stop_timeout: float = 30.0
    reconcile_interval: float = 5.0
    cache_dir: Path = Path("/var/cache/corral")
    region: str = "corral-1"
    node_name: str = ""  # empty: the host name
    migration_address: str = "127.0.0.1"  # this node's address for live migration traffic
    qemu: str = "qemu-system-x86_64"  # command or path of the QEMU binary
    uplink: str = "none"  # none | host | netns:NAME (the namespace standing for the outside)
    # elastic IPs: a documentation range, never routed; the addresses exist only inside
    # Corral's own namespaces (and, through the uplink, the outside world's)
    public_cidr: str = "198.51.100.0/24"
    # optional RFC 2136 updates of public records (<name>.<dns_zone> A <public IP>)
    dns_server: str = ""  # ADDRESS[:PORT] of the authoritative server; empty: off
    dns_zone: str = ""
    dns_tsig_name: str = ""
    dns_tsig_secret: str = ""  # base64
    dns_tsig_algorithm: str = "hmac-sha256"
    dns_ttl: int = 60
    max_access_keys: int = 2  # per non-admin account
    # placement (docs/operator-guide.md, "The scheduler")
    reserved_memory_mib: int = 512  # this node's memory kept for the host, not for instances
    cpu_allocation_ratio: float = 16.0  # host cores promised per real core (Nova's classic)
    memory_allocation_ratio: float = 1.0
    disk_allocation_ratio: float = 1.0  # root disks are thin qcow2 overlays
    scheduler_weigher: str = "spread"  # spread | pack
    scheduler_memory_weight: float = 1.0
    scheduler_cpu_weight: float = 1.0
    scheduler_disk_weight: float = 0.5
    scheduler_subset: int = 3  # a random pick among this many best nodes
    exclusion_tags: str = ""  # tag keys, comma-separated: equal values avoid sharing a node
    exclusion: str = "soft"  # soft (a weigher) | hard (a filter)
    # quotas per account (docs/quotas.md): the defaults; `corral quota set` overrides them per
    # account; -1 means unlimited
    quota_instances: int = 100  # instances not terminated (stopped ones count)
    quota_vcpus: int = 256
    quota_memory_mib: int = 262144
    quota_volumes: int = 500
    quota_volume_gib: int = 16384
    quota_snapshots: int = 1000
    quota_elastic_ips: int = 5
    quota_security_groups: int = 100
    prices_file: str = ""  # empty: <state_dir>/prices.toml (docs/billing.md)
    meter_interval: float = 60.0  # seconds between readings of CPU and network counters
    cpu_credit_max_hours: float = 24.0  # a burstable instance banks this many hours of baseline
    # clusters (docs/operator-guide.md, "A cluster of nodes")
    local_node: bool = True  # `corral up` runs a node agent of its own (off: a controller only)
    node_timeout: float = 30.0  # the controller's own node: silent this long, unreachable
    # failure detection and fencing (docs/operator-guide.md, "Failure detection and fencing")
    lease_interval: float = 1.0  # seconds between lease renewals (the controller's heartbeats)
    lease_timeout: float = 5.0  # seconds without a renewal: the lease expires, node unreachable
    fence_margin: float = 3.0  # seconds past expiry before a node is declared dead
    fence_watchdog: str = ""  # e.g. /dev/watchdog (softdog): the node's guard feeds it
    extra: dict[str, Any] = field(default_factory=dict)

    # -- derived paths ---------------------------------------------------------------------
    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite+aiosqlite:///{self.state_dir / 'corral.db'}"

    @property
    def namespace(self) -> str:
        if self.netns:
            return self.netns
        if self.state_dir == DEFAULT_STATE_DIR:
            return "corral"
        digest = hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:8]
        return f"corral-{digest}"

    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"

    @property
    def instances_dir(self) -> Path:
        return self.state_dir / "instances"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "corral.pid"

    @property
    def logfile(self) -> Path:
        return self.state_dir / "corral.log"

    @property
    def api_tls(self) -> bool:
        """The API serves HTTPS (certificate from the cluster CA) when it listens beyond
        loopback: it carries secrets."""
        if self.api_host == "localhost":
            return False
        try:
            return not ipaddress.ip_address(self.api_host).is_loopback
        except ValueError:
            return True

    @property
    def ca_bundle(self) -> Path:
        """The cluster CA's certificate: what the CLI and agents verify the API with."""
        return self.state_dir / "pki" / "ca.crt"

    @property
    def api_url(self) -> str:
        return f"{'https' if self.api_tls else 'http'}://{self.api_host}:{self.api_port}"

    @property
    def availability_zone(self) -> str:
        return f"{self.region}a"

    @property
    def exclusion_keys(self) -> list[str]:
        return [k.strip() for k in self.exclusion_tags.split(",") if k.strip()]

    @property
    def hostname(self) -> str:
        return self.node_name or os.uname().nodename

    def validate(self) -> None:
        if self.max_access_keys < 1:
            raise Invalid(
                f"max_access_keys {self.max_access_keys} must be at least 1",
                field="max_access_keys",
            )
        try:
            net = ipaddress.ip_network(self.subnet, strict=True)
        except ValueError as err:
            raise Invalid(
                f"subnet {self.subnet!r} is not a network (e.g. 10.88.0.0/24): {err}",
                field="subnet",
            ) from err
        if net.version != 4 or net.prefixlen > 29:
            raise Invalid(
                f"subnet {self.subnet} must be IPv4 with room for instances (/29 or larger)",
                field="subnet",
            )
        try:
            public = ipaddress.ip_network(self.public_cidr, strict=True)
        except ValueError as err:
            raise Invalid(
                f"public_cidr {self.public_cidr!r} is not a network (e.g. 198.51.100.0/24): {err}",
                field="public_cidr",
            ) from err
        if public.version != 4:
            raise Invalid(f"public_cidr {public} must be IPv4", field="public_cidr")
        if public.overlaps(net):
            raise Invalid(
                f"public_cidr {public} overlaps the instance subnet {net}; pick ranges apart",
                field="public_cidr",
            )
        if public.prefixlen > 28:
            raise Invalid(f"public_cidr {public} is too small (/28 or larger)", field="public_cidr")
        if not (self.uplink in ("none", "host") or self.uplink.startswith("netns:")):
            raise Invalid(
                f"uplink {self.uplink!r} must be none, host or netns:NAME", field="uplink"
            )
        if self.dns_server and not (self.dns_zone and self.dns_tsig_name and self.dns_tsig_secret):
            raise Invalid(
                "dns_server needs dns_zone, dns_tsig_name and dns_tsig_secret (updates "
                "are always signed)",
                field="dns_server",
            )
        if not 0 < self.api_port < 65536:
            raise Invalid(f"api_port {self.api_port} must be between 1 and 65535", field="api_port")
        if self.reconcile_interval <= 0:
            raise Invalid(
                f"reconcile_interval {self.reconcile_interval} must be more than 0 "
                "seconds (e.g. 5)",
                field="reconcile_interval",
            )
        if self.meter_interval <= 0:
            raise Invalid(
                f"meter_interval {self.meter_interval} must be more than 0 seconds (e.g. 60)",
                field="meter_interval",
            )
        if self.stop_timeout < 0:
            raise Invalid(
                f"stop_timeout {self.stop_timeout} must not be negative", field="stop_timeout"
            )
        scheme = self.db_url.partition("://")[0]
        if self.db_url and scheme not in DB_SCHEMES:
            raise Invalid(
                f"db: the URL scheme {scheme!r} is not a database Corral speaks; use "
                "postgresql://USER@HOST/DB (PostgreSQL, psycopg 3) or sqlite+aiosqlite:///PATH",
                field="db_url",
            )
        if self.accel not in ("auto", "kvm", "tcg"):
            raise Invalid(f"accel {self.accel!r} must be auto, kvm or tcg", field="accel")
        for name in ("cpu_allocation_ratio", "memory_allocation_ratio", "disk_allocation_ratio"):
            if getattr(self, name) <= 0:
                raise Invalid(
                    f"{name} {getattr(self, name)} must be more than 0 (1.0: no overcommit)",
                    field=name,
                )
        if self.scheduler_weigher not in ("spread", "pack"):
            raise Invalid(
                f"scheduler_weigher {self.scheduler_weigher!r} must be spread or pack",
                field="scheduler_weigher",
            )
        if self.scheduler_subset < 1:
            raise Invalid(
                f"scheduler_subset {self.scheduler_subset} must be at least 1",
                field="scheduler_subset",
            )
        if self.exclusion not in ("soft", "hard"):
            raise Invalid(f"exclusion {self.exclusion!r} must be soft or hard", field="exclusion")
        if self.reserved_memory_mib < 0:
            raise Invalid(
                f"reserved_memory_mib {self.reserved_memory_mib} must not be negative",
                field="reserved_memory_mib",
            )
        if self.cpu_credit_max_hours <= 0:
            raise Invalid(
                f"cpu_credit_max_hours {self.cpu_credit_max_hours} must be more than 0 (e.g. 24)",
                field="cpu_credit_max_hours",
            )
        for f in dataclasses.fields(self):
            if f.name.startswith("quota_") and getattr(self, f.name) < -1:
                raise Invalid(
                    f"{f.name} {getattr(self, f.name)} must be a limit of 0 or more, or -1 "
                    "(unlimited)",
                    field=f.name,
                )
        if self.machine not in ("pc", "q35"):
            raise Invalid(f"machine {self.machine!r} must be pc or q35", field="machine")


# database URLs: SQLite (the default in the state dir) or PostgreSQL through psycopg 3
DB_SCHEMES = ("sqlite", "sqlite+aiosqlite", "postgresql", "postgres", "postgresql+psycopg")

_ENV = {
    "CORRAL_STATE_DIR": "state_dir",
    "CORRAL_API_HOST": "api_host",
    "CORRAL_API_PORT": "api_port",
    "CORRAL_DB": "db_url",
    "CORRAL_ACCEL": "accel",
    "CORRAL_NETNS": "netns",
    "CORRAL_SUBNET": "subnet",
    "CORRAL_DOMAIN": "domain",
    "CORRAL_MACHINE": "machine",
    "CORRAL_STOP_TIMEOUT": "stop_timeout",
    "CORRAL_RECONCILE_INTERVAL": "reconcile_interval",
    "CORRAL_CACHE_DIR": "cache_dir",
    "CORRAL_REGION": "region",
    "CORRAL_PUBLIC_CIDR": "public_cidr",
    "CORRAL_NODE_NAME": "node_name",
    "CORRAL_MIGRATION_ADDRESS": "migration_address",
    "CORRAL_QEMU": "qemu",
    "CORRAL_UPLINK": "uplink",
    "CORRAL_DNS_SERVER": "dns_server",
    "CORRAL_DNS_ZONE": "dns_zone",
    "CORRAL_DNS_TSIG_NAME": "dns_tsig_name",
    "CORRAL_DNS_TSIG_SECRET": "dns_tsig_secret",
    "CORRAL_DNS_TSIG_ALGORITHM": "dns_tsig_algorithm",
    "CORRAL_DNS_TTL": "dns_ttl",
    "CORRAL_MAX_ACCESS_KEYS": "max_access_keys",
    "CORRAL_RESERVED_MEMORY_MIB": "reserved_memory_mib",
    "CORRAL_CPU_ALLOCATION_RATIO": "cpu_allocation_ratio",
    "CORRAL_MEMORY_ALLOCATION_RATIO": "memory_allocation_ratio",
    "CORRAL_DISK_ALLOCATION_RATIO": "disk_allocation_ratio",
    "CORRAL_SCHEDULER_WEIGHER": "scheduler_weigher",
    "CORRAL_SCHEDULER_SUBSET": "scheduler_subset",
    "CORRAL_EXCLUSION_TAGS": "exclusion_tags",
    "CORRAL_EXCLUSION": "exclusion",
    "CORRAL_CPU_CREDIT_MAX_HOURS": "cpu_credit_max_hours",
    "CORRAL_METER_INTERVAL": "meter_interval",
}


def _coerce(name: str, value: Any) -> Any:
    kind = {f.name: f.type for f in dataclasses.fields(Settings)}[name]
    try:
        if kind in ("Path", Path):
            return Path(value)
        if kind in ("int", int):
            return int(value)
        if kind in ("float", float):
            return float(value)
        if kind in ("bool", bool):
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return str(value).lower() in ("1", "true", "yes", "on")
            raise ValueError(value)
    except (TypeError, ValueError) as err:
        raise Invalid(f"setting {name}={value!r} is not a {kind}", field=name) from err
    return str(value)


def load(state_dir: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the settings: defaults < corral.toml < environment < ``overrides``."""
    values: dict[str, Any] = {}
    env_state = os.environ.get("CORRAL_STATE_DIR")
    sd = Path(state_dir or env_state or DEFAULT_STATE_DIR)
    config_file = sd / "corral.toml"
    if config_file.is_file():
        try:
            data = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise Invalid(f"{config_file} is not valid TOML: {err}; fix or remove it") from err
        known = {f.name for f in dataclasses.fields(Settings)}
        for key, value in data.items():
            if key not in known:
                raise Invalid(f"{config_file}: unknown setting {key!r}", field=key)
            values[key] = _coerce(key, value)
    for env, name in _ENV.items():
        if env in os.environ and os.environ[env] != "":
            values[name] = _coerce(name, os.environ[env])
    for name, value in overrides.items():
        if value is not None:
            values[name] = _coerce(name, value)
    given = overrides.get("state_dir")
    values["state_dir"] = sd if given is None else Path(given)
    settings = Settings(**values)
    settings.validate()
    return settings
