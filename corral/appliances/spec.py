"""Service files: what an appliance is made of, in TOML (format in docs/appliances.md).

An appliance is a named set of services; each service is an image, a size, its config (files,
templates, a command to run) and its data volumes, run ``count`` times. The CLI reads the file
and the files it names and sends the result (this model, with every file's content inline) to
the server, which checks it again: the same model on both sides. Every error names the field as
it is written in the file, e.g. ``services.web.volumes[0].size``."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from corral.errors import Invalid, NotFound
from corral.units import parse_size

SERVICE_NAME = r"^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$"
VOLUME_NAME = r"^[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?$"  # also its file system label (16 chars)
MAX_COUNT = 50
RestartPolicy = Literal["always", "on-failure", "never"]


class FileSpec(BaseModel):
    """A file written into the instance: ``content`` as it is, or rendered as a template
    (``${name}``, ``${service}``, ``${index}``, ``${count}``, ``${domain}``, ``${fqdn}``,
    ``${appliance}``) with ``template = true``. In the service file ``source`` may name a file
    beside it instead; the CLI reads it into ``content``."""

    model_config = ConfigDict(extra="forbid")
    content: str | None = None
    source: str | None = None
    template: bool = False
    mode: str = Field("0644", pattern=r"^0?[0-7]{3}$")

    @model_validator(mode="after")
    def _one_of(self) -> FileSpec:
        if (self.content is None) == (self.source is None):
            raise ValueError("give exactly one of content or source")
        return self


class VolumeSpec(BaseModel):
    """A data volume of each instance of the service: ``<instance>-<name>``, formatted ext4
    with the label ``name``, mounted at ``mount``. It outlives the instance: a replace moves it
    to the new one, a removal keeps it."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=VOLUME_NAME)
    size: str | int = "1G"
    mount: str

    @field_validator("size")
    @classmethod
    def _size(cls, v: str | int) -> str | int:
        size = _size_of(v, "G")
        if size <= 0 or size % (1 << 30):
            raise ValueError(f"{v!r}: volumes come in whole GiB (e.g. 1G)")
        return v

    @field_validator("mount")
    @classmethod
    def _mount(cls, v: str) -> str:
        return _abs_path(v)

    @property
    def gib(self) -> int:
        return parse_size(self.size, field="size", default_unit="G") >> 30


class HealthSpec(BaseModel):
    """When an instance counts as up: it accepts TCP connections on ``port``, or with ``path``
    answers an HTTP GET with a status below 400, within ``timeout`` seconds of starting."""

    model_config = ConfigDict(extra="forbid")
    port: int = Field(22, ge=1, le=65535)
    path: str | None = Field(None, pattern=r"^/[!-~]*$")
    timeout: float = Field(300.0, gt=0, le=3600)


class Service(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(min_length=1, description="image name, name:version or ami- id")
    type: str | None = Field(None, description="an instance type; or cpus and memory")
    cpus: int | None = Field(None, ge=1, le=64)
    memory: str | None = None
    disk: str | None = Field(None, description="root disk size (default: the image's)")
    count: int = Field(1, ge=0, le=MAX_COUNT)
    keys: list[str] = Field(default_factory=list, description="key pair names")
    public_keys: list[str] = Field(default_factory=list)
    files: dict[str, FileSpec] = Field(default_factory=dict)
    run: str = Field("", description="shell command started at every boot, volumes mounted")
    reload: str = Field(
        "",
        description="shell command run when a volume arrives or the "
        "address moved in (after a replace)",
    )
    volumes: list[VolumeSpec] = Field(default_factory=list)
    health: HealthSpec = Field(default_factory=HealthSpec)
    restart: RestartPolicy = "on-failure"
    ha: bool = Field(False, description="high availability: disks replicated to a second node")

    @field_validator("files")
    @classmethod
    def _paths(cls, v: dict[str, FileSpec]) -> dict[str, FileSpec]:
        for path in v:
            _abs_path(path)
        return v

    @field_validator("memory", "disk")
    @classmethod
    def _sizes(cls, v: str | None) -> str | None:
        if v is not None:
            _size_of(v, "M")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Service:
        if self.type is not None and (self.cpus is not None or self.memory is not None):
            raise ValueError("give type, or cpus and memory, not both")
        names = [v.name for v in self.volumes]
        if len(set(names)) != len(names):
            raise ValueError(f"volume names repeat: {', '.join(names)}")
        mounts = [v.mount for v in self.volumes]
        if len(set(mounts)) != len(mounts):
            raise ValueError(f"two volumes mount at the same place: {', '.join(mounts)}")
        return self


class ApplianceSpec(BaseModel):
    """A whole service file."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=SERVICE_NAME, description="the appliance's name")
    services: dict[str, Service] = Field(default_factory=dict)

    @field_validator("services")
    @classmethod
    def _service_names(cls, v: dict[str, Service]) -> dict[str, Service]:
        for name in v:
            if not re.match(SERVICE_NAME, name):
                raise ValueError(
                    f"service name {name!r} must be 1-42 lower-case letters, "
                    "digits or hyphens (it starts the instances' host names)"
                )
        return v

    @model_validator(mode="after")
    def _names_unique(self) -> ApplianceSpec:
        seen: dict[str, str] = {}
        for svc, s in self.services.items():
            for n in instance_names(svc, s.count):
                if n in seen:
                    raise ValueError(
                        f"services {seen[n]} and {svc} would both name an instance {n}; rename one"
                    )
                seen[n] = svc
        return self


def instance_names(service: str, count: int) -> list[str]:
    """A service's instances: the service's name when it runs once, else ``name-1`` …"""
    if count == 1:
        return [service]
    return [f"{service}-{i}" for i in range(1, count + 1)]


def _size_of(v: str | int, unit: str) -> int:
    try:
        return parse_size(v, default_unit=unit)
    except Invalid as err:  # inside a validator: pydantic names the field
        raise ValueError(f"{v!r} is not a size; write it like 512M or 1G") from err


def _abs_path(v: str) -> str:
    p = PurePosixPath(v)
    if not p.is_absolute() or ".." in p.parts or str(p) in ("/", "") or "'" in v or "\n" in v:
        raise ValueError(f"{v!r} must be an absolute path in the guest (no '..' and no quotes)")
    return str(p)


# -- loading and checking -------------------------------------------------------------------


def field_of(err: ValidationError) -> str:
    """The first error's location as the file writes it: services.web.volumes[0].size."""
    loc = err.errors()[0].get("loc", ()) or ("services",)
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not re.match(r"^[A-Za-z0-9_-]+$", part):
            out += f'."{part}"' if out else f'"{part}"'
        else:
            out += f".{part}" if out else str(part)
    return out


def validate(data: Any, where: str = "the service file") -> ApplianceSpec:
    """Check a parsed service file; errors name the field and say what to write."""
    try:
        return ApplianceSpec.model_validate(data)
    except ValidationError as err:
        field = field_of(err)
        first = err.errors()[0]
        msg = str(first.get("msg", "is not valid")).removeprefix("Value error, ")
        if first.get("type") == "extra_forbidden":
            msg = "is not a service file key (see docs/appliances.md)"
        elif first.get("type") == "missing":
            msg = "is missing"
        raise Invalid(f"{where}: {field}: {msg}", field=field) from err


def parse(text: str, directory: Path, where: str, default_name: str) -> ApplianceSpec:
    """A service file from TOML text; ``source`` files are read from ``directory`` and put
    inline, so the result is complete on its own."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise Invalid(f"{where} is not valid TOML: {err}", field="file") from err
    data.setdefault("name", default_name)
    spec = validate(data, where)
    for svc_name, svc in spec.services.items():
        for path, f in svc.files.items():
            if f.source is None:
                continue
            field = f'services.{svc_name}.files."{path}".source'
            src = (directory / f.source).resolve()
            if not src.is_file():
                raise NotFound(
                    f"{where}: {field}: {f.source} does not exist beside the "
                    f"service file (looked for {src})",
                    field=field,
                    resource="file",
                )
            try:
                f.content = src.read_text()
            except UnicodeDecodeError as err:
                raise Invalid(
                    f"{where}: {field}: {f.source} is not UTF-8 text; config files "
                    "travel in user-data",
                    field=field,
                ) from err
            f.source = None
    return spec


def load(path: Path) -> ApplianceSpec:
    if not path.is_file():
        raise NotFound(f"service file {path} does not exist", field="file", resource="file")
    stem = re.sub(r"[^a-z0-9-]+", "-", path.stem.lower()).strip("-") or "appliance"
    return parse(path.read_text(), path.parent, str(path), stem[:42].strip("-"))


def check_inline(spec: ApplianceSpec) -> None:
    """The server's check: every file's content must be inline (the server cannot read the
    client's files)."""
    for svc_name, svc in spec.services.items():
        for path, f in svc.files.items():
            if f.source is not None:
                field = f'services.{svc_name}.files."{path}".source'
                raise Invalid(
                    f"{field}: the server cannot read {f.source}; send its content (the CLI does)",
                    field=field,
                )
