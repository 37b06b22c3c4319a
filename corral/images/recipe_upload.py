"""A recipe directory sent to the server as content, never as a server path: the CLI packs it
into a gzip tar (base64 in the JSON body), the server unpacks it into a directory of its own.
Only plain files and directories travel: a link could make the build read or write host files
outside the recipe (the builders run as root)."""

from __future__ import annotations

import base64
import binascii
import io
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from corral.errors import Invalid

MAX_PACKED = 16 << 20  # bytes of the gzip tar
MAX_UNPACKED = 128 << 20  # bytes of files, all together
MAX_MEMBERS = 10_000


def pack(directory: Path) -> str:
    """The recipe in ``directory`` (holding recipe.toml) as base64 of a gzip tar."""
    if not (directory / "recipe.toml").is_file():
        raise Invalid(f"{directory} holds no recipe.toml", field="recipe")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for root, dirs, files in os.walk(directory):
            dirs.sort()
            for name in sorted(dirs + files):
                path = Path(root) / name
                rel = path.relative_to(directory)
                if path.is_symlink() or not (path.is_file() or path.is_dir()):
                    raise Invalid(
                        f"{rel} in the recipe is a link or a special file; Corral sends only "
                        "plain files and directories (copy the file in its place)",
                        field="recipe",
                    )
                tar.add(path, arcname=str(rel), recursive=False)
    data = buf.getvalue()
    if len(data) > MAX_PACKED:
        raise Invalid(
            f"the recipe directory packs to {len(data)} bytes; the limit is {MAX_PACKED}: "
            "keep large content out of the recipe (install it from packages)",
            field="recipe",
        )
    return base64.b64encode(data).decode()


def unpack(archive: str, dest: Path) -> Path:
    """Unpack a recipe sent by :func:`pack` into ``dest`` (made here, 0700) and return it."""
    try:
        data = base64.b64decode(archive, validate=True)
    except (binascii.Error, ValueError) as err:
        raise Invalid(
            "archive is not base64; send what `corral image build DIR` sends", field="archive"
        ) from err
    if len(data) > MAX_PACKED:
        raise Invalid(f"archive is over {MAX_PACKED} bytes", field="archive")
    dest.mkdir(mode=0o700, parents=True)
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = tar.getmembers()
            if len(members) > MAX_MEMBERS:
                raise Invalid(f"archive holds over {MAX_MEMBERS} entries", field="archive")
            for m in members:
                if not (m.isfile() or m.isdir()):
                    raise Invalid(
                        f"archive entry {m.name!r} is a link or a special file; a recipe "
                        "holds plain files and directories only",
                        field="archive",
                    )
                rel = PurePosixPath(m.name)
                if rel.is_absolute() or ".." in rel.parts or "\0" in m.name:
                    raise Invalid(
                        f"archive entry {m.name!r} is outside the recipe directory",
                        field="archive",
                    )
                total += m.size
                if total > MAX_UNPACKED:
                    raise Invalid(f"archive unpacks to over {MAX_UNPACKED} bytes", field="archive")
            for m in members:
                target = dest.joinpath(*PurePosixPath(m.name).parts)
                if m.isdir():
                    target.mkdir(mode=0o700, parents=True, exist_ok=True)
                    os.chmod(target, (m.mode & 0o755) | 0o700)
                    continue
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None
                # O_EXCL|O_NOFOLLOW: an entry never replaces or follows what is there
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(src, out)
                # the recipe's modes go into the image; never setuid or writable by others
                # (the top directory is 0700, so no other local user reaches these files)
                os.chmod(target, m.mode & 0o755)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise Invalid(f"archive is not a gzip tar of a recipe: {err}", field="archive") from err
    if not (dest / "recipe.toml").is_file():
        raise Invalid("archive holds no recipe.toml at its top", field="archive")
    return dest
