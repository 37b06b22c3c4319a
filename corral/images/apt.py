"""apt for image builds, kept apart from the host's own apt state.

The builder's package lists live in a cache directory (``<cache>/apt/lists``) that the host's
apt reads to work out which versions a build will install (the build key), and that is mounted
into the image's chroot so the build installs exactly those. Downloads are cached the same way.
Nothing here touches the host's apt lists, status or caches."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from corral.errors import EnvironmentProblem, Invalid
from corral.proc import CommandFailed, need, run

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY = "http://deb.debian.org/debian-security"
SOURCES_DIRS = (Path("/etc/apt/sources.list.d"), Path("/etc/apt"))


@dataclass(frozen=True)
class Mirrors:
    main: str
    security: str | None

    def sources(self, suite: str) -> str:
        """A sources.list for ``suite``, its updates and its security updates."""
        signed = f"[signed-by={KEYRING}] " if Path(KEYRING).exists() else ""
        lines = [
            f"deb {signed}{self.main} {suite} main",
            f"deb {signed}{self.main} {suite}-updates main",
        ]
        if self.security:
            lines.append(f"deb {signed}{self.security} {suite}-security main")
        return "\n".join(lines) + "\n"


def _host_entries() -> list[tuple[str, list[str]]]:
    """(URI, suites) of the host's Debian sources, one-line and deb822 formats."""
    entries: list[tuple[str, list[str]]] = []
    files = [Path("/etc/apt/sources.list")]
    for d in SOURCES_DIRS[:1]:
        if d.is_dir():
            files += sorted(d.glob("*.list")) + sorted(d.glob("*.sources"))
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.MULTILINE))
                if "deb" in fields.get("Types", "").split():
                    for uri in fields.get("URIs", "").split():
                        entries.append((uri.rstrip("/"), fields.get("Suites", "").split()))
        else:
            for line in text.splitlines():
                m = re.match(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m:
                    entries.append((m.group(1).rstrip("/"), [m.group(2)]))
    return entries


def host_mirrors(suite: str, main: str | None = None, security: str | None = None) -> Mirrors:
    """The host's mirror for ``suite`` (Debian's own when the host names none)."""
    entries = _host_entries()
    if main is None:
        main = next((u for u, s in entries if suite in s), DEFAULT_MIRROR)
    if security is None:
        security = next((u for u, s in entries if f"{suite}-security" in s), DEFAULT_SECURITY)
    return Mirrors(main=main.rstrip("/"), security=security.rstrip("/") if security else None)


class AptCache:
    """Package lists and downloaded packages for one suite and mirror set, under ``root``."""

    def __init__(self, root: Path, suite: str, mirrors: Mirrors) -> None:
        self.root = root
        self.suite = suite
        self.mirrors = mirrors
        self.lists = root / "lists"
        self.archives = root / "archives"
        self.etc = root / "etc"
        self.state = root / "state"

    @property
    def sources_file(self) -> Path:
        return self.etc / "sources.list"

    def ensure(self) -> None:
        for d in (
            self.lists / "partial",
            self.archives / "partial",
            self.etc,
            self.state,
            self.root / "pkgcache",
        ):
            d.mkdir(parents=True, exist_ok=True)
        self.sources_file.write_text(self.mirrors.sources(self.suite))
        (self.state / "status").touch()

    def _options(self) -> list[str]:
        opts = {
            "Dir::Etc::SourceList": str(self.sources_file),
            "Dir::Etc::SourceParts": "/nonexistent",
            "Dir::State::Lists": str(self.lists),
            "Dir::State::status": str(self.state / "status"),
            "Dir::State::extended_states": str(self.state / "extended_states"),
            "Dir::Cache": str(self.root / "pkgcache"),
            "Dir::Cache::archives": str(self.archives),
            "APT::Install-Recommends": "false",
            "APT::Get::List-Cleanup": "false",
            "Debug::NoLocking": "false",
        }
        out: list[str] = []
        for k, v in opts.items():
            out += ["-o", f"{k}={v}"]
        return out

    def update(self) -> None:
        need("apt-get", "apt")
        self.ensure()
        try:
            run(["apt-get", "-q", *self._options(), "update"], timeout=600)
        except CommandFailed as err:
            raise EnvironmentProblem(
                f"cannot read the package lists of {self.mirrors.main} ({self.suite}): "
                f"{err.message}; check the mirror (recipe key mirror) and the network"
            ) from err

    def resolve(self, packages: list[str]) -> dict[str, str]:
        """The versions apt would install for ``packages`` (with every dependency and the
        essential set) into an empty system: the closure a build of them gets."""
        try:
            out = run(["apt-get", "-s", "-q", *self._options(), "install", *packages], timeout=300)
        except CommandFailed as err:
            tail = " / ".join(err.stderr.strip().splitlines()[-2:])
            raise Invalid(
                f"apt cannot install the recipe's packages from {self.mirrors.main} "
                f"({self.suite}): {tail}; fix the names in packages",
                field="packages",
            ) from err
        return dict(re.findall(r"^Inst (\S+) \((\S+) ", out, re.MULTILINE))
