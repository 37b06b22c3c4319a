"""A throw-away PostgreSQL server for the tests: Debian's binaries, ``initdb`` into a temporary
directory owned by an unprivileged user (initdb refuses root), listening only on a unix socket in
that directory (no TCP), stopped and removed afterwards. One server per test session; each test
(or module) gets a fresh database copied from a migrated template."""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
USER = "corral"  # the database superuser initdb makes (trust auth on the private socket)


def binaries() -> Path | None:
    """The newest installed PostgreSQL's bin directory, or None when it is not installed."""
    for d in BIN_DIRS:
        if (d / "initdb").exists() and (d / "postgres").exists():
            return d
    return None


def sweep_stale() -> None:
    """Remove the directories of servers whose test process is gone (killed with -9: the
    server went with it through its parent-death signal, its directory did not)."""
    for d in Path(tempfile.gettempdir()).glob("corral-pg-*-*"):
        pid = d.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


def _quote(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"unsafe database name {name!r}")
    return f'"{name}"'


class PostgresServer:
    """``start()`` it, ask it for ``url(db)``, ``create_database`` / ``drop_database``, ``stop()``
    (also removes its directory). Use as a context manager to stop it on any exit."""

    def __init__(self, bindir: Path | None = None) -> None:
        found = bindir or binaries()
        if found is None:
            raise RuntimeError("PostgreSQL is not installed (scripts/setup installs it)")
        self.bindir = found
        sweep_stale()
        self.root = Path(tempfile.mkdtemp(prefix=f"corral-pg-{os.getpid()}-"))
        self.data = self.root / "data"
        self.socket_dir = self.root  # the socket lives beside the data, nowhere else
        self.proc: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)

    # -- running as the postgres user when we are root (initdb and postgres refuse root) ------
    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        return [
            "setpriv",
            f"--reuid={self._owner.pw_uid}",
            f"--regid={self._owner.pw_gid}",
            "--clear-groups",
            "--pdeathsig=TERM",  # the server goes with the test process, also on kill -9
            "--",
            *argv,
        ]

    @property
    def _owner(self) -> pwd.struct_passwd:
        return pwd.getpwnam("postgres")

    def start(self) -> PostgresServer:
        try:
            if os.geteuid() == 0:
                os.chown(self.root, self._owner.pw_uid, self._owner.pw_gid)
            subprocess.run(
                self._as_owner(
                    [
                        str(self.bindir / "initdb"),
                        "-D",
                        str(self.data),
                        "-U",
                        USER,
                        "--auth=trust",
                        "--encoding=UTF8",
                        "--locale=C",
                        "--no-sync",
                    ]
                ),
                check=True,
                capture_output=True,
                timeout=120,
            )
            self.proc = subprocess.Popen(
                self._as_owner(
                    [
                        str(self.bindir / "postgres"),
                        "-D",
                        str(self.data),
                        "-k",
                        str(self.socket_dir),
                        "-c",
                        "listen_addresses=",  # unix socket only
                        "-c",
                        "fsync=off",  # a test server: speed over durability
                        "-c",
                        "synchronous_commit=off",
                        "-c",
                        "full_page_writes=off",
                        "-c",
                        "max_connections=200",
                    ]
                ),
                stdout=subprocess.DEVNULL,
                stderr=open(self.root / "server.log", "ab"),
            )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited at start: {self.log_tail()}")
            try:
                with psycopg.connect(self._dsn("postgres"), connect_timeout=5):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start: {self.log_tail()}") from None
                time.sleep(0.1)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return " | ".join((self.root / "server.log").read_text().splitlines()[-5:])
        return ""

    def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL after a timeout, then remove the directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- databases ------------------------------------------------------------------------------
    def _dsn(self, db: str) -> str:
        return f"host={self.socket_dir} user={USER} dbname={db}"

    def url(self, db: str) -> str:
        """SQLAlchemy URL of database ``db`` (psycopg 3 over the unix socket)."""
        return f"postgresql+psycopg://{USER}@/{db}?host={self.socket_dir}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.encode())

    def create_database(self, name: str | None = None, template: str | None = None) -> str:
        name = name or f"t{os.getpid()}_{next(self._names)}"
        tmpl = f" TEMPLATE {_quote(template)}" if template else ""
        self._admin(f"CREATE DATABASE {_quote(name)}{tmpl}")
        return name

    def drop_database(self, name: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)")

    @contextlib.contextmanager
    def database(self, template: str | None = None) -> Iterator[str]:
        """A fresh database (maybe a copy of ``template``), dropped after; yields its URL."""
        name = self.create_database(template=template)
        try:
            yield self.url(name)
        finally:
            self.drop_database(name)
