"""Image recipes: a ``recipe.toml`` plus the files it names. Built-in recipes ship in the package.

The format is documented in docs/images.md. A recipe is checked completely when it is loaded
(every key, every file it names), so a build never starts on a recipe it cannot finish."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from corral.errors import Invalid, NotFound
from corral.units import parse_size

BUILTIN = Path(__file__).parent / "recipes"
NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"
VERSION = r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,62}$"
PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
# 2025-05-20 00:00 UTC: file times newer than this are clamped to it (debian kind)
DEFAULT_EPOCH = 1747699200

Kind = Literal["busybox", "debian"]


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME)
    version: str = Field("1", pattern=VERSION)
    kind: Kind
    description: str = ""
    default_user: str = Field("root", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    root_disk_size: str = "1G"
    # busybox: host packages whose files go in (their versions key the build);
    # debian: packages apt installs into the image
    packages: list[str] = Field(default_factory=list)
    kernel_package: str = "linux-image-cloud-amd64"
    modules: list[str] = Field(default_factory=list)  # kernel modules in the initramfs
    cmdline: str = "console=ttyS0,115200"
    base: str | None = None  # debian: build on this image (name, name:version or id)
    files: dict[str, str] = Field(default_factory=dict)  # image path -> recipe-relative path
    first_boot: str | None = None  # recipe-relative script, run once per instance
    suite: str = Field("bookworm", pattern=r"^[a-z]+$")
    mirror: str | None = None  # default: the host's apt mirror for the suite
    security_mirror: str | None = None
    upgrade: bool = False  # built on a base: upgrade its packages too
    source_date_epoch: int = Field(DEFAULT_EPOCH, ge=0)

    # set by load(): where the recipe's files are (not part of the format)
    directory: Path | None = Field(None, exclude=True)

    @field_validator("packages")
    @classmethod
    def _package_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not PACKAGE.match(name):
                raise ValueError(f"{name!r} is not a Debian package name (e.g. openssh-server)")
        return value

    @field_validator("files")
    @classmethod
    def _file_targets(cls, value: dict[str, str]) -> dict[str, str]:
        for target in value:
            path = PurePosixPath(target)
            if not path.is_absolute() or ".." in path.parts:
                raise ValueError(
                    f"{target!r} must be an absolute path in the image, "
                    "without '..' (e.g. /etc/motd)"
                )
        return value

    @field_validator("root_disk_size")
    @classmethod
    def _disk_size(cls, value: str) -> str:
        if parse_size(value, field="root_disk_size") < 64 << 20:
            raise ValueError(f"{value} is too small; give at least 64M")
        return value

    @property
    def disk_size(self) -> int:
        return parse_size(self.root_disk_size, field="root_disk_size")

    def path(self, rel: str) -> Path:
        assert self.directory is not None
        return self.directory / rel

    def inputs(self) -> list[Path]:
        """Every file the build reads from the recipe directory, the recipe itself first."""
        assert self.directory is not None
        found = [self.directory / "recipe.toml"]
        rels = list(self.files.values()) + ([self.first_boot] if self.first_boot else [])
        if self.kind == "busybox":
            rels += ["init", "rootfs"]  # the initramfs script and the root tree, by convention
        for rel in sorted(set(rels)):
            p = self.path(rel)
            if p.is_dir():
                found += sorted(x for x in p.rglob("*") if x.is_file() or x.is_symlink())
            elif p.exists():
                found.append(p)
        return found

    def content_hash(self) -> str:
        """sha256 over the recipe and every file it uses (path, mode, bytes): its identity."""
        assert self.directory is not None
        h = hashlib.sha256()
        for path in self.inputs():
            h.update(str(path.relative_to(self.directory)).encode() + b"\0")
            if path.is_symlink():
                h.update(b"link\0" + str(path.readlink()).encode() + b"\0")
                continue
            h.update(str(path.stat().st_mode & 0o777).encode() + b"\0")
            h.update(path.read_bytes())
        return h.hexdigest()


def builtin_names() -> list[str]:
    return sorted(p.name for p in BUILTIN.iterdir() if (p / "recipe.toml").is_file())


def _field_of(err: ValidationError) -> str:
    errors = err.errors()
    loc = errors[0].get("loc", ()) if errors else ()
    return ".".join(str(p) for p in loc) or "recipe"


def _check_files(recipe: Recipe, path: Path) -> None:
    assert recipe.directory is not None
    root = recipe.directory.resolve()
    named = [(f"files.{t}", s) for t, s in recipe.files.items()]
    if recipe.first_boot:
        named.append(("first_boot", recipe.first_boot))
    for field, rel in named:
        src = (recipe.directory / rel).resolve()
        if not src.is_relative_to(root):
            raise Invalid(
                f"recipe {path}: {field} = {rel!r} points outside the recipe's "
                "directory; keep the files beside recipe.toml",
                field=field,
            )
        if not src.exists():
            raise Invalid(
                f"recipe {path}: {field} names {rel!r}, which does not exist in {recipe.directory}",
                field=field,
            )
    if recipe.kind == "busybox" and recipe.base:
        raise Invalid(
            f"recipe {path}: base is for the debian kind; busybox images are built whole",
            field="base",
        )


def parse(text: str, directory: Path, where: str = "recipe.toml") -> Recipe:
    """A recipe from TOML text whose files live in ``directory``."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise Invalid(f"recipe {where} is not valid TOML: {err}", field="recipe") from err
    if "directory" in data:
        raise Invalid(
            f"recipe {where}: 'directory' is not a recipe key; remove it", field="directory"
        )
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        field = _field_of(err)
        first = err.errors()[0]
        msg = first.get("msg", "is not valid")
        if first.get("type") == "extra_forbidden":
            msg = "is not a recipe key (see docs/images.md for the format)"
        raise Invalid(f"recipe {where}: {field}: {msg}", field=field) from err
    recipe.directory = directory
    _check_files(recipe, Path(where))
    return recipe


def load(ref: str | Path) -> Recipe:
    """Load a recipe by built-in name (``tiny``), directory, or ``recipe.toml`` path."""
    path = Path(ref)
    try:
        if not path.exists() and (BUILTIN / str(ref) / "recipe.toml").is_file():
            path = BUILTIN / str(ref)
        if path.is_dir():
            path = path / "recipe.toml"
        found = path.is_file()
    except (OSError, ValueError):  # a name too long for a path, or holding a NUL
        found = False
    if not found:
        raise NotFound(
            f"no image recipe {ref!r}: give a recipe.toml path or a built-in name "
            f"({', '.join(builtin_names())})",
            field="recipe",
            resource="recipe",
        )
    return parse(path.read_text(), path.parent, str(path))
