"""Builder for busybox appliances (the built-in ``tiny`` image).

Debian's cloud kernel (downloaded and unpacked, never installed on the host), an initramfs that
loads the virtio modules and mounts the root disk, and an ext4 root disk holding busybox-static,
dropbear and the recipe's files. Same recipe and package versions give the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from corral.errors import Invalid
from corral.fsutil import staging_dir
from corral.images import cpio, debs, disk
from corral.images.manifest import Manifest
from corral.images.recipe import Recipe
from corral.images.space import space_errors
from corral.images.store import ImageStore
from corral.proc import need, run
from corral.units import parse_size

Progress = Callable[[float, str], None]
BUILDER_VERSION = "busybox-5"
EPOCH = 1700000000  # fixed file times: builds are reproducible

DROPBEAR_FILES = ["/usr/sbin/dropbear", "/usr/bin/dropbearkey", "/usr/bin/dbclient"]
# resize2fs grows the root file system to the instance's disk on boot (busybox has none)
RESIZE_FILES = ["/usr/sbin/resize2fs"]
FIRST_BOOT = "/etc/corral/first-boot"  # run once per instance by rcS


def _noop(_f: float, _m: str) -> None:
    pass


def build_key(recipe: Recipe, versions: dict[str, str]) -> str:
    h = hashlib.sha256()
    h.update(BUILDER_VERSION.encode())
    h.update(recipe.content_hash().encode())
    for name in sorted(versions):
        h.update(f"{name}={versions[name]}\n".encode())
    return h.hexdigest()


def resolve_versions(recipe: Recipe) -> dict[str, str]:
    versions = {p: debs.installed_version(p) for p in recipe.packages}
    kpkg = debs.resolve_depends(recipe.kernel_package)
    versions[kpkg] = debs.candidate_version(kpkg)
    return versions


def _module_order(moddir: Path, wanted: list[str]) -> list[str]:
    """Module paths (relative to ``moddir``) in load order, dependencies first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[Path(path).name.removesuffix(".ko").replace("-", "_")] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in reversed(deps.get(path, [])):
            visit(dep)
        order.append(path)

    for name in wanted:
        key = name.replace("-", "_")
        if key not in by_name:
            raise Invalid(f"kernel module {name} is not in {moddir}", field="modules")
        visit(by_name[key])
    return order


def _ldd_libs(binary: str) -> list[str]:
    libs = []
    for line in run(["ldd", binary]).splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            libs.append(parts[2])
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


def _copy(src: str | Path, root: Path, dest: str | None = None) -> None:
    target = root / (dest or str(src)).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(src), target)


def _add_recipe_files(recipe: Recipe, rootfs: Path) -> None:
    for target, rel in sorted(recipe.files.items()):
        src, dest = recipe.path(rel), rootfs / target.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dest)
    if recipe.first_boot:
        dest = rootfs / FIRST_BOOT.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(recipe.path(recipe.first_boot), dest)
        dest.chmod(0o755)


def _fix_times(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (EPOCH, EPOCH), follow_symlinks=False)
    os.utime(root, (EPOCH, EPOCH))


def build(
    recipe: Recipe,
    store: ImageStore,
    cache: Path,
    progress: Progress = _noop,
    force: bool = False,
    base: str | None = None,
) -> str:
    """Build ``recipe`` into ``store``; return the manifest digest (cached by build key).
    Busybox images are always whole (``base`` must be None)."""
    if base is not None:
        raise Invalid("busybox images are built whole, not on a base", field="base")
    with space_errors(store.root, f"building {recipe.name}"):
        return _build(recipe, store, cache, progress, force)


def _build(recipe: Recipe, store: ImageStore, cache: Path, progress: Progress, force: bool) -> str:
    need("mke2fs", "e2fsprogs")
    need("qemu-img", "qemu-utils")
    busybox = need("busybox", "busybox-static")
    progress(0.02, "resolving package versions")
    versions = resolve_versions(recipe)
    key = build_key(recipe, versions)
    if not force and (digest := store.cached_build(key)):
        progress(1.0, f"cached build {digest[:12]}")
        return digest
    store.ensure()
    assert recipe.directory is not None
    with staging_dir(store.tmp, f"build-{recipe.name}-") as work:
        kpkg = next(p for p in versions if p.startswith("linux-image-"))
        progress(0.05, f"fetching {kpkg} {versions[kpkg]}")
        deb = debs.fetch(kpkg, versions[kpkg], cache / "debs")
        progress(0.30, f"unpacking {deb.name}")
        kroot = work / "kernel"
        debs.unpack(deb, kroot)
        vmlinuz = next((kroot / "boot").glob("vmlinuz-*"))
        kver = vmlinuz.name.removeprefix("vmlinuz-")
        moddir = kroot / "lib" / "modules" / kver
        run([busybox, "depmod", "-b", str(kroot), kver], timeout=120)

        progress(0.45, "making the initramfs")
        initrd_root = work / "initrd"
        for d in ("bin", "dev", "proc", "sys", "newroot", "etc", "lib/modules"):
            (initrd_root / d).mkdir(parents=True, exist_ok=True)
        _copy(busybox, initrd_root, "/bin/busybox")
        os.symlink("busybox", initrd_root / "bin" / "sh")
        shutil.copy2(recipe.directory / "init", initrd_root / "init")
        os.chmod(initrd_root / "init", 0o755)
        order = _module_order(moddir, recipe.modules)
        for rel in order:
            shutil.copy2(moddir / rel, initrd_root / "lib" / "modules" / Path(rel).name)
        (initrd_root / "etc" / "modules.order").write_text(
            "\n".join(Path(r).name for r in order) + "\n"
        )
        _fix_times(initrd_root)
        initrd = work / "initrd.cpio"
        cpio.write(initrd_root, initrd, EPOCH)

        progress(0.60, "making the root file system")
        rootfs = work / "rootfs"
        for d in (
            "bin",
            "sbin",
            "usr/bin",
            "usr/sbin",
            "etc",
            "dev",
            "proc",
            "sys",
            "run",
            "tmp",
            "root",
            "var/log",
            "var/lib/corral",
            "etc/dropbear",
            "lib",
            "lib64",
        ):
            (rootfs / d).mkdir(parents=True, exist_ok=True)
        _copy(busybox, rootfs, "/bin/busybox")
        for applet in run([busybox, "--list-full"]).split():
            link = rootfs / applet
            if link.exists() or link.is_symlink() or applet == "bin/busybox":
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink("/bin/busybox", link)
        libs: set[str] = set()
        for binary in DROPBEAR_FILES + RESIZE_FILES:
            _copy(binary, rootfs)
            libs.update(_ldd_libs(binary))
        for lib in sorted(libs):
            _copy(lib, rootfs)
        shutil.copytree(recipe.directory / "rootfs", rootfs, dirs_exist_ok=True, symlinks=True)
        _add_recipe_files(recipe, rootfs)
        etc = rootfs / "etc"
        (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (etc / "group").write_text("root:x:0:\n")
        (etc / "shadow").write_text("root::19000:0:99999:7:::\n")
        os.chmod(etc / "shadow", 0o600)
        (etc / "shells").write_text("/bin/sh\n/bin/ash\n")
        (etc / "hosts").write_text("127.0.0.1 localhost\n")
        (etc / "hostname").write_text(recipe.name + "\n")
        (etc / "os-release").write_text(
            f'NAME="Corral {recipe.name}"\nID=corral-{recipe.name}\nVERSION_ID="{recipe.version}"\n'
        )
        os.chmod(rootfs / "root", 0o700)
        os.chmod(rootfs / "tmp", 0o1777)
        _fix_times(rootfs)

        size = parse_size(recipe.root_disk_size, field="root_disk_size")
        raw = work / "root.raw"
        disk.make_ext4(rootfs, raw, size, fs_uuid=str(uuid.UUID(key[:32])), epoch=EPOCH)
        disk.fix_times(raw, EPOCH)
        progress(0.80, "converting the root disk to qcow2")
        qcow = work / "root.qcow2"
        run(
            ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(qcow)],
            timeout=300,
        )

        progress(0.90, "adding to the image store")
        kernel_blob = store.add_blob(vmlinuz, move=True)
        initrd_blob = store.add_blob(initrd, move=True)
        disk_blob = store.add_blob(qcow, fmt="qcow2", virtual_size=size, move=True)
        manifest = Manifest(
            name=recipe.name,
            version=recipe.version,
            kind=recipe.kind,
            description=recipe.description,
            kernel=kernel_blob,
            initrd=initrd_blob,
            root_disk=disk_blob,
            cmdline=recipe.cmdline,
            default_user=recipe.default_user,
            min_disk=size,
            packages=versions,
            build_key=key,
        )
        digest = store.put_manifest(manifest)
        store.record_build(key, digest)
    progress(1.0, f"built {recipe.name} {digest[:12]}")
    return digest
