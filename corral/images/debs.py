"""Debian packages as image ingredients: resolve versions, download, unpack (no host install)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from corral.errors import EnvironmentProblem
from corral.proc import run


def installed_version(package: str) -> str:
    out = run(["dpkg-query", "-W", "-f", "${Status}\t${Version}", package], check=False)
    status, _, version = out.partition("\t")
    if "install ok installed" not in status:
        raise EnvironmentProblem(
            f"the Debian package {package} is needed to build this image; "
            f"apt-get install {package} (scripts/setup does)"
        )
    return version


def resolve_depends(meta: str) -> str:
    """The package a meta-package points at (linux-image-cloud-amd64 -> linux-image-6.1…)."""
    out = run(["apt-cache", "depends", "--important", meta], check=False)
    for line in out.splitlines():
        m = re.match(r"\s*Depends:\s*(\S+)", line)
        if m:
            return m.group(1)
    raise EnvironmentProblem(
        f"apt does not know the package {meta}; run `apt-get update` (scripts/setup does)"
    )


def candidate_version(package: str) -> str:
    out = run(["apt-cache", "policy", package], check=False)
    m = re.search(r"Candidate:\s*(\S+)", out)
    if not m or m.group(1) == "(none)":
        raise EnvironmentProblem(f"apt has no candidate for {package}; run `apt-get update`")
    return m.group(1)


def fetch(package: str, version: str, cache: Path) -> Path:
    """Download ``package=version`` into ``cache`` (once) and return the .deb path."""
    cache.mkdir(parents=True, exist_ok=True)
    quoted = version.replace(":", "%3a")
    for deb in cache.glob(f"{package}_{quoted}_*.deb"):
        return deb
    staging = cache / ".download"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    run(["apt-get", "download", "-q", f"{package}={version}"], cwd=str(staging), timeout=900)
    debs = list(staging.glob("*.deb"))
    if not debs:
        raise EnvironmentProblem(f"apt-get download {package}={version} produced no .deb")
    target = cache / debs[0].name
    debs[0].replace(target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def unpack(deb: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    run(["dpkg-deb", "-x", str(deb), str(dest)], timeout=600)
