"""Is KVM usable here? ``/dev/kvm`` can exist and still hang a guest (nested virtualisation), so
we boot a tiny probe guest under KVM with a short timeout and cache the verdict per QEMU
version, host kernel and probe kernel. TCG is the fallback. ``CORRAL_ACCEL`` overrides."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from corral.fsutil import atomic_write_json
from corral.node.driver import qemu
from corral.node.spec import Accel

PROBE_TIMEOUT = 10.0
MARKER = b"CORRAL-PROBE-OK"


def _cache_key(kernel: Path) -> str:
    return f"{qemu.version()}|{os.uname().release}|{kernel.name}"


async def probe(forced: str, cache_file: Path, kernel: Path | None, initrd: Path | None) -> Accel:
    if forced in ("kvm", "tcg"):
        return Accel(accel=forced, reason=f"set by configuration (CORRAL_ACCEL={forced})")
    if not os.path.exists("/dev/kvm"):
        return Accel(accel="tcg", reason="/dev/kvm does not exist (no hardware virtualisation)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Accel(accel="tcg", reason="/dev/kvm is not readable and writable by this user")
    if kernel is None or initrd is None:
        return Accel(
            accel="tcg",
            reason="/dev/kvm exists but no image is built yet to probe it "
            "with; using TCG until one is (corral image build tiny)",
        )
    key = _cache_key(kernel)
    try:
        cached = json.loads(cache_file.read_text())
        if cached.get("key") == key:
            return Accel.model_validate(cached["verdict"])
    except (FileNotFoundError, ValueError, KeyError):
        pass
    verdict = await _boot_probe(kernel, initrd)
    atomic_write_json(cache_file, {"key": key, "verdict": verdict.model_dump()})
    return verdict


async def _boot_probe(kernel: Path, initrd: Path) -> Accel:
    argv = [
        qemu.binary(),
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-machine",
        "pc",
        "-m",
        "128M",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        "console=ttyS0 corral.probe panic=-1 quiet",
    ]
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return Accel(
            accel="tcg",
            probed=True,
            seconds=PROBE_TIMEOUT,
            reason="a KVM probe guest did not finish booting within "
            f"{PROBE_TIMEOUT:.0f} s "
            "(nested virtualisation hangs guests); using TCG",
        )
    seconds = round(time.monotonic() - t0, 2)
    if MARKER in out:
        return Accel(
            accel="kvm",
            probed=True,
            seconds=seconds,
            reason=f"a KVM probe guest booted in {seconds} s",
        )
    lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.strip()]
    why = lines[-1] if lines else f"exit code {proc.returncode}"
    return Accel(
        accel="tcg", probed=True, seconds=seconds, reason=f"QEMU with KVM failed ({why}); using TCG"
    )
