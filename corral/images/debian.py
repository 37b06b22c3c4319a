"""Builder for Debian images (the built-in ``debian`` recipe and recipes built on it).

A whole build: ``debootstrap`` a minimal tree from the Debian mirror, install the recipe's
packages, the cloud kernel and an initramfs with the virtio drivers with apt in a chroot, write
Corral's guest configuration (guest.py), then make a partitioned ext4 disk from the tree without
mounting it. Time stamps, UUIDs and host keys are fixed or removed, so the same recipe and
package versions give the same bytes (tests/integration/images checks it).

A build on a base (``base = "debian:12"``): the base's disk is mounted through a loop device and
changed in place by apt in a chroot, then stored as a qcow2 overlay holding only the clusters
that changed (qcow.make_delta). That is what makes deltas small; it is not bit-reproducible,
because the kernel's ext4 driver stamps change times and picks block placement itself."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from corral.errors import CorralError, Invalid
from corral.images import apt, disk, guest, qcow, tree
from corral.images.chroot import Chroot, host_env, mounted, stream_lines
from corral.images.manifest import Manifest
from corral.images.recipe import Recipe
from corral.images.space import space_errors
from corral.images.store import ImageStore
from corral.images.tree import (
    build_dir,
    clamp_times,
    installed_packages,
    normalize_shadow,
    remove_globs,
)
from corral.proc import need, run

Progress = Callable[[float, str], None]
BUILDER_VERSION = "debian-1"
APT_ARGS = [
    "-y",
    "-q",
    "-o",
    "Dpkg::Options::=--force-unsafe-io",
    "-o",
    "Dpkg::Options::=--force-confdef",
    "-o",
    "Dpkg::Options::=--force-confold",
    "-o",
    "Dir::Cache::pkgcache=",
    "-o",
    "Dir::Cache::srcpkgcache=",
    "-o",
    "APT::Install-Recommends=false",
]
_lock = threading.Lock()  # one Debian build at a time: they share the apt and debootstrap caches


def _noop(_f: float, _m: str) -> None:
    pass


def _builder_hash() -> str:
    """The builder's own code: a change to it (or to what every image gets) rebuilds."""
    h = hashlib.sha256(BUILDER_VERSION.encode())
    for module in (guest, disk, tree, qcow):
        h.update(Path(module.__file__ or "").read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()


BUILDER_HASH = _builder_hash()  # of the code this process runs (read once, at import)


def build_key(recipe: Recipe, versions: dict[str, str], base: str | None) -> str:
    h = hashlib.sha256()
    h.update(BUILDER_HASH.encode() + b"\0" + recipe.content_hash().encode() + b"\0")
    h.update(f"base={base or ''}\n".encode())
    for name in sorted(versions):
        h.update(f"{name}={versions[name]}\n".encode())
    return h.hexdigest()


def apt_cache(recipe: Recipe, cache: Path) -> apt.AptCache:
    mirrors = apt.host_mirrors(recipe.suite, recipe.mirror, recipe.security_mirror)
    tag = hashlib.sha256(f"{recipe.suite} {mirrors}".encode()).hexdigest()[:10]
    return apt.AptCache(cache / "apt" / f"{recipe.suite}-{tag}", recipe.suite, mirrors)


def build(
    recipe: Recipe,
    store: ImageStore,
    cache: Path,
    progress: Progress = _noop,
    force: bool = False,
    base: str | None = None,
) -> str:
    """Build ``recipe`` into ``store`` and return the manifest digest (cached by build key).
    ``base`` is the manifest digest of the recipe's base image, resolved by the caller."""
    for binary, package in (
        ("debootstrap", "debootstrap"),
        ("mke2fs", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("qemu-img", "qemu-utils"),
        ("chroot", "coreutils"),
        ("losetup", "mount"),
    ):
        need(binary, package)
    if recipe.base and base is None:
        raise Invalid(
            f"recipe {recipe.name} is built on {recipe.base}, which is not resolved", field="base"
        )
    aptc = apt_cache(recipe, cache)
    with (
        _lock,
        _cache_lock(aptc.root, progress),
        space_errors(store.root, f"building {recipe.name}"),
    ):
        progress(0.01, f"reading the package lists of {aptc.mirrors.main} {recipe.suite}")
        aptc.update()
        if base is None:
            wanted = ["apt", *guest.REQUIRED, recipe.kernel_package, *recipe.packages]
        else:
            base_manifest = store.get_manifest(base)
            wanted = list(recipe.packages)
            if recipe.upgrade:
                wanted += sorted(base_manifest.packages)
        versions = aptc.resolve(sorted(set(wanted))) if wanted else {}
        key = build_key(recipe, versions, base)
        if not force and (digest := store.cached_build(key)):
            progress(1.0, f"cached build {digest[:12]}")
            return digest
        store.ensure()
        with build_dir(store.tmp, f"build-{recipe.name}-") as work:
            if base is None:
                digest = _build_whole(recipe, store, cache, aptc, key, work, progress)
            else:
                digest = _build_on_base(recipe, store, aptc, key, base, work, progress)
        store.record_build(key, digest)
    progress(1.0, f"built {recipe.name} {digest[:12]}")
    return digest


@contextlib.contextmanager
def _cache_lock(root: Path, progress: Progress) -> Iterator[None]:
    """One build at a time per cache, across processes (apt and debootstrap share it)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build-lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(0.0, f"waiting for another build that uses {root}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


# -- a whole image -------------------------------------------------------------------------
def _build_whole(
    recipe: Recipe,
    store: ImageStore,
    cache: Path,
    aptc: apt.AptCache,
    key: str,
    work: Path,
    progress: Progress,
) -> str:
    root = work / "root"
    env = host_env(recipe.source_date_epoch)
    progress(0.03, f"debootstrap {recipe.suite}")
    seen = [0]

    def on_debootstrap(line: str) -> None:
        if line.startswith("I: "):
            seen[0] += 1
            progress(0.03 + 0.27 * min(1.0, seen[0] / 420), f"debootstrap: {line[3:]}")

    stream_lines(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=systemd-sysv,udev",
            f"--cache-dir={_debootstrap_cache(cache)}",
            recipe.suite,
            str(root),
            aptc.mirrors.main,
        ],
        on_debootstrap,
        env=env,
        timeout=1800,
    )
    _write_config(recipe, root, aptc)
    packages = sorted({*guest.REQUIRED, recipe.kernel_package, *recipe.packages})
    with _chroot(root, env, aptc) as ch:
        progress(0.32, "upgrading the base system from the updates and security suites")
        ch.run(["apt-get", *APT_ARGS, "dist-upgrade"])
        _apt_install(ch, packages, 0.40, 0.75, progress)
        _customize(recipe, root, ch)
    progress(0.78, "cleaning the tree (host keys, machine id, logs, caches)")
    _clean(root, recipe.source_date_epoch)
    return _store_tree(recipe, store, root, work, key, progress)


def _debootstrap_cache(cache: Path) -> Path:
    path = cache / "debootstrap"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_config(recipe: Recipe, root: Path, aptc: apt.AptCache) -> None:
    """Corral's guest configuration, apt's sources and the initramfs settings, written before
    the packages that read them are installed."""
    for target, text in guest.FILES.items():
        path = root / target.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "etc/hostname").write_text(f"{recipe.name}\n")
    (root / "etc/apt/sources.list").write_text(aptc.mirrors.sources(recipe.suite))
    initramfs = root / "etc/initramfs-tools"
    (initramfs / "conf.d").mkdir(parents=True, exist_ok=True)
    if recipe.modules:
        (initramfs / "modules").write_text(
            "# the drivers the root disk and network need (Corral's recipe: modules)\n"
            + "".join(f"{m}\n" for m in recipe.modules)
        )
    (initramfs / "conf.d/corral.conf").write_text(
        f"MODULES={'list' if recipe.modules else 'most'}\nCOMPRESS=zstd\n"
    )


def _chroot(root: Path, env: dict[str, str], aptc: apt.AptCache) -> Chroot:
    aptc.ensure()
    return Chroot(
        root,
        env,
        binds={"/var/lib/apt/lists": aptc.lists, "/var/cache/apt/archives": aptc.archives},
    )


def _apt_install(
    ch: Chroot, packages: list[str], start: float, end: float, progress: Progress
) -> None:
    if not packages:
        return
    total = max(1, len(packages) * 3)
    done = [0]

    def on_line(line: str) -> None:
        m = re.match(r"^(Unpacking|Setting up) (\S+)", line)
        if m:
            done[0] += 1
            progress(start + (end - start) * min(1.0, done[0] / total), f"apt: {line[:80]}")

    progress(start, f"installing {len(packages)} packages: {' '.join(packages)[:120]}")
    ch.stream(["apt-get", *APT_ARGS, "install", *packages], on_line)


def _customize(recipe: Recipe, root: Path, ch: Chroot) -> None:
    """The recipe's files and first-boot script, and the services Corral's images rely on."""
    for target, rel in sorted(recipe.files.items()):
        src = recipe.path(rel)
        dest = root / target.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dest)
    if recipe.first_boot:
        dest = root / guest.FIRST_BOOT.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(recipe.path(recipe.first_boot), dest)
        dest.chmod(0o755)
    ch.run(["systemctl", "enable", "systemd-networkd.service"])
    ch.run(["systemctl", "enable", "serial-getty@ttyS0.service"])
    ch.run(["systemctl", "mask", *guest.MASKED_UNITS])


def _clean(root: Path, epoch: int) -> None:
    remove_globs(root, guest.REMOVE_GLOBS)
    (root / "etc/machine-id").write_text("")  # empty: systemd makes one on first boot
    normalize_shadow(root, epoch)


def _kernel_files(root: Path) -> tuple[Path, Path]:
    """The newest installed kernel and its initramfs in the tree's /boot."""
    kernels = installed_packages(root, "linux-image-[0-9]*")
    if not kernels:
        raise CorralError("no kernel was installed in the image (kernel_package)")
    newest = max(kernels, key=lambda name: _version_key(kernels[name]))
    release = newest.removeprefix("linux-image-")
    vmlinuz, initrd = root / f"boot/vmlinuz-{release}", root / f"boot/initrd.img-{release}"
    for p in (vmlinuz, initrd):
        if not p.is_file():
            raise CorralError(
                f"the image has no {p.relative_to(root)}; is initramfs-tools installed?"
            )
    return vmlinuz, initrd


def _version_key(version: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", version)]


def _store_tree(
    recipe: Recipe, store: ImageStore, root: Path, work: Path, key: str, progress: Progress
) -> str:
    epoch = recipe.source_date_epoch
    vmlinuz, initrd = _kernel_files(root)
    kernel_copy, initrd_copy = work / "vmlinuz", work / "initrd"
    shutil.copyfile(vmlinuz, kernel_copy)
    shutil.copyfile(initrd, initrd_copy)
    packages = installed_packages(root)
    clamp_times(root, epoch)
    progress(0.82, f"making the {recipe.root_disk_size} root disk (ext4 on partition 1)")
    raw = work / "root.raw"
    size = recipe.disk_size
    disk.partitioned(root, raw, size, key=key, epoch=epoch)
    shutil.rmtree(root)
    progress(0.90, "converting the root disk to qcow2")
    qcow = work / "root.qcow2"
    disk.to_qcow2(raw, qcow)
    raw.unlink()
    progress(0.96, "adding to the image store")
    manifest = Manifest(
        name=recipe.name,
        version=recipe.version,
        kind="debian",
        description=recipe.description,
        kernel=store.add_blob(kernel_copy, move=True),
        initrd=store.add_blob(initrd_copy, move=True),
        root_disk=store.add_blob(qcow, fmt="qcow2", virtual_size=size, move=True),
        cmdline=recipe.cmdline,
        default_user=recipe.default_user,
        min_disk=size,
        packages=packages,
        build_key=key,
    )
    return store.put_manifest(manifest)


# -- on a base -----------------------------------------------------------------------------
def _build_on_base(
    recipe: Recipe,
    store: ImageStore,
    aptc: apt.AptCache,
    key: str,
    base: str,
    work: Path,
    progress: Progress,
) -> str:
    base_manifest = store.verify(base)
    if base_manifest.kind != "debian" or base_manifest.kernel is None:
        raise Invalid(
            f"recipe {recipe.name}: base {recipe.base} is a {base_manifest.kind} "
            "image; a debian recipe builds on a debian image",
            field="base",
        )
    base_disk = store.root_disk_path(base_manifest)
    raw = work / "root.raw"
    progress(0.05, f"unpacking the base {base_manifest.name}:{base_manifest.version}")
    run(
        ["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", str(base_disk), str(raw)],
        timeout=1800,
    )
    env = host_env(recipe.source_date_epoch)
    mnt = work / "mnt"
    with mounted(["-o", f"loop,offset={disk.PART_START},noatime", "-t", "ext4", str(raw)], mnt):
        with _chroot(mnt, env, aptc) as ch:
            if recipe.upgrade:
                progress(0.15, "upgrading the base's packages")
                ch.run(["apt-get", *APT_ARGS, "dist-upgrade"])
            _apt_install(ch, sorted(recipe.packages), 0.25, 0.70, progress)
            _customize(recipe, mnt, ch)
        _clean(mnt, recipe.source_date_epoch)
        vmlinuz, initrd = _kernel_files(mnt)
        kernel_copy, initrd_copy = work / "vmlinuz", work / "initrd"
        shutil.copyfile(vmlinuz, kernel_copy)
        shutil.copyfile(initrd, initrd_copy)
        packages = installed_packages(mnt)
        # freed blocks (deleted files, apt's temporary files) read back as zeros
        run(["fstrim", str(mnt)], timeout=300, check=False)
        subprocess.run(["sync", "-f", str(mnt)], check=False, timeout=300)
    progress(0.80, "storing the changes as an overlay on the base")
    overlay = work / "overlay.qcow2"
    qcow.make_delta(raw, "raw", base_disk, overlay, backing_name=base_manifest.root_disk.sha256)
    raw.unlink()
    progress(0.95, "adding to the image store")
    manifest = Manifest(
        name=recipe.name,
        version=recipe.version,
        kind="debian",
        description=_inherit(recipe, "description", base_manifest.description),
        kernel=store.add_blob(kernel_copy, move=True),
        initrd=store.add_blob(initrd_copy, move=True),
        root_disk=store.add_blob(
            overlay, fmt="qcow2", virtual_size=base_manifest.root_disk.virtual_size, move=True
        ),
        cmdline=_inherit(recipe, "cmdline", base_manifest.cmdline),
        default_user=_inherit(recipe, "default_user", base_manifest.default_user),
        min_disk=base_manifest.min_disk,
        base=base,
        packages=packages,
        build_key=key,
    )
    return store.put_manifest(manifest)


def _inherit(recipe: Recipe, key: str, from_base: str) -> str:
    """A recipe built on a base keeps the base's value unless it sets its own."""
    value: str = getattr(recipe, key)
    return value if key in recipe.model_fields_set else from_base
