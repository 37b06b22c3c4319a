"""`corral ssh` reaches a guest through the API's authenticated stream (its ProxyCommand is
`corral tunnel`), and nothing the daemon opens on the host lets another local user reach a
guest: while a session runs, the user `nobody` finds no listening socket of the daemon that
leads to the guest's SSH server, and the stream without credentials is refused."""

from __future__ import annotations

import json
import os
import subprocess

import psutil

from tests.harness import PYTHON, Daemon, wait_for

# run as nobody with Debian's own Python (stdlib only): try every TCP listener given on stdin
# for an SSH banner, and the API's stream without credentials
PROBE = r"""
import json, socket, sys
spec = json.load(sys.stdin)
out = {"whoami": __import__("os").geteuid(), "banners": {}, "ws": None}
for port in spec["tcp"]:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(2)
            try:
                out["banners"][str(port)] = s.recv(64).decode(errors="replace")
            except OSError as err:
                out["banners"][str(port)] = f"no answer: {err}"
    except OSError as err:
        out["banners"][str(port)] = f"refused: {err}"
for path in spec["unix"]:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(path)
            out["banners"][path] = "connected: " + s.recv(64).decode(errors="replace")
    except OSError as err:
        out["banners"][path] = f"refused: {err}"
with socket.create_connection(("127.0.0.1", spec["api"]), timeout=5) as s:
    s.sendall(
        f"GET /v1/instances/{spec['iid']}/ports/22 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
    )
    s.settimeout(5)
    out["ws"] = s.recv(200).decode(errors="replace").splitlines()[0]
print(json.dumps(out))
"""


def _listeners(pid: int) -> tuple[list[int], list[str]]:
    """TCP ports on the host's loopback or any address, and unix socket paths, that ``pid``
    and its descendants listen on (sockets inside Corral's namespaces are left out: the host
    cannot reach them, and the tests send nothing beyond loopback)."""
    tcp: set[int] = set()
    unix: set[str] = set()
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    host_ns = os.readlink("/proc/self/ns/net")
    for p in procs:
        try:
            same_ns = os.readlink(f"/proc/{p.pid}/ns/net") == host_ns
            conns = p.net_connections(kind="all")
        except (psutil.Error, OSError):
            continue
        for c in conns:
            if c.family == 1:  # AF_UNIX
                if c.laddr and c.status in (psutil.CONN_LISTEN, psutil.CONN_NONE):
                    unix.add(str(c.laddr))
            elif (
                c.status == psutil.CONN_LISTEN
                and same_ns
                and c.laddr.ip in ("127.0.0.1", "0.0.0.0", "::", "::1")
            ):
                tcp.add(c.laddr.port)
    return sorted(tcp), sorted(u for u in unix if u.startswith("/"))


def test_ssh_goes_through_the_stream_and_no_host_socket_reaches_the_guest(
    corral: Daemon,
) -> None:
    corral.cli("run", "tiny", "--name", "stream1", "--memory", "192M").ok()
    info = json.loads(corral.cli("show", "stream1", "--json").ok().out)
    assert corral.ssh("stream1", "hostname").ok().out.strip() == "stream1"

    # a session that stays open while we look around as nobody
    session = subprocess.Popen(
        [PYTHON, "-m", "corral", "ssh", "stream1", "--", "echo up; sleep 60"],
        env=corral.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert session.stdout is not None
        assert session.stdout.readline().strip() == "up"
        # the session's only path to the guest is ssh's ProxyCommand, `corral tunnel`
        tunnels = [
            p
            for p in psutil.Process(session.pid).children(recursive=True)
            if "tunnel" in p.cmdline() and info["id"] in p.cmdline()
        ]
        assert tunnels, "ssh runs without `corral tunnel` as its ProxyCommand"
        secret = corral.client().creds.secret_access_key
        assert all(secret not in " ".join(p.cmdline()) for p in tunnels)
        assert corral.proc is not None
        tcp, unix = _listeners(corral.proc.pid)
        assert tcp == [corral.port], f"the daemon listens on more host ports than its API: {tcp}"
        spec = {"tcp": tcp, "unix": unix, "api": corral.port, "iid": info["id"]}
        probe = subprocess.run(
            [
                "setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "--",
                "/usr/bin/python3",
                "-c",
                PROBE,
            ],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=120,
            cwd="/",
        )
        assert probe.returncode == 0, probe.stderr
        seen = json.loads(probe.stdout)
        assert seen["whoami"] != 0
        for where, answer in seen["banners"].items():
            assert "SSH-" not in answer, f"nobody reached the guest's SSH through {where}"
        assert seen["ws"].split()[1] == "401", seen["ws"]
    finally:
        session.kill()
        session.wait(30)
    # the tunnel ends with its ssh
    wait_for(
        lambda: (
            not [
                p
                for p in psutil.process_iter(["cmdline"])
                if "tunnel" in (p.info["cmdline"] or []) and info["id"] in (p.info["cmdline"] or [])
            ]
        ),
        30,
        what="the tunnel to end with its ssh",
    )
    corral.cli("rm", "--force", "stream1").ok()


def test_corral_tunnel_carries_a_guest_port_to_stdin_and_stdout(corral: Daemon) -> None:
    corral.cli("run", "tiny", "--name", "stream2", "--memory", "192M").ok()
    corral.ssh("stream2", "true").ok()
    p = subprocess.run(
        [PYTHON, "-m", "corral", "tunnel", "stream2", "22"],
        env=corral.env(),
        input=b"SSH-2.0-corral-test\r\n",
        capture_output=True,
        timeout=60,
    )
    # the guest's SSH server greets, reads our banner, and ends when our side ends
    assert p.stdout.startswith(b"SSH-2.0-"), (p.stdout[:100], p.stderr[-500:])
    refused = subprocess.run(
        [PYTHON, "-m", "corral", "tunnel", "stream2", "2222"],
        env=corral.env(),
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and "2222" in refused.stderr, refused.stderr
    corral.cli("rm", "--force", "stream2").ok()
