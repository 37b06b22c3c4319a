"""Image recipes: a ``recipe.toml`` plus files beside it. Built-in recipes ship in the package."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from corral.errors import Invalid, NotFound

BUILTIN = Path(__file__).parent / "recipes"


class Recipe(BaseModel):
    name: str
    version: str = "1"
    kind: str  # busybox | debian
    description: str = ""
    default_user: str = "root"
    root_disk_size: str = "1G"
    packages: list[str] = Field(default_factory=list)
    kernel_package: str = "linux-image-cloud-amd64"
    modules: list[str] = Field(default_factory=list)
    cmdline: str = "console=ttyS0,115200"
    base: str | None = None
    files: dict[str, str] = Field(default_factory=dict)
    first_boot: str | None = None
    suite: str = "bookworm"

    # set by load()
    directory: Path | None = None

    def content_hash(self) -> str:
        """sha256 over the recipe file and every file beside it (the recipe's identity)."""
        assert self.directory is not None
        h = hashlib.sha256()
        for path in sorted(self.directory.rglob("*")):
            if path.is_file():
                h.update(str(path.relative_to(self.directory)).encode() + b"\0")
                h.update(str(path.stat().st_mode & 0o777).encode() + b"\0")
                h.update(path.read_bytes())
        return h.hexdigest()


def builtin_names() -> list[str]:
    return sorted(p.name for p in BUILTIN.iterdir() if (p / "recipe.toml").is_file())


def load(ref: str | Path) -> Recipe:
    """Load a recipe by built-in name (``tiny``), directory, or ``recipe.toml`` path."""
    path = Path(ref)
    if not path.exists() and (BUILTIN / str(ref) / "recipe.toml").is_file():
        path = BUILTIN / str(ref)
    if path.is_dir():
        path = path / "recipe.toml"
    if not path.is_file():
        raise NotFound(
            f"no image recipe {ref!r}: give a recipe.toml path or a built-in name "
            f"({', '.join(builtin_names())})",
            field="recipe", resource="recipe",
        )
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
        recipe = Recipe.model_validate(data)
    except (tomllib.TOMLDecodeError, ValidationError) as err:
        raise Invalid(f"recipe {path} is not valid: {err}", field="recipe") from err
    recipe.directory = path.parent
    return recipe
