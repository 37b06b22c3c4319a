"""The README's tour, end to end through the `corral` command only: up --detach, image build,
run with a key file and user-data, ls, show, ssh, console, logs, key pairs, doctor, stop,
start, reboot, rm, down --stop-instances (which leaves the host clean)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.harness import new_daemon


def test_the_readme_tour(tmp_path) -> None:
    d = new_daemon()
    try:
        up = d.cli("up", "--detach", "--port", str(d.port), "--subnet", d.subnet).ok()
        assert f"Corral is up at http://127.0.0.1:{d.port}" in up.out
        assert "is up" in d.cli("status").ok().out
        assert "already runs" in d.cli("up", "--detach", "--port", str(d.port)).ok().out

        d.cli("image", "build", "tiny", timeout=900).ok()
        assert "tiny" in d.cli("image", "ls").ok().out
        # a second build is a cache hit
        t0 = time.monotonic()
        d.cli("image", "build", "tiny").ok()
        assert time.monotonic() - t0 < 30

        key = tmp_path / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        init = tmp_path / "init.sh"
        init.write_text("#!/bin/sh\necho tour-user-data > /root/tour.txt\n")
        d.cli("key", "add", "laptop", str(key) + ".pub").ok()
        assert "laptop" in d.cli("key", "ls").ok().out

        d.cli(
            "run",
            "tiny",
            "--name",
            "web1",
            "--cpus",
            "1",
            "--memory",
            "256M",
            "--key",
            str(key) + ".pub",
            "--user-data",
            str(init),
        ).ok()
        listing = d.cli("ls").ok().out
        assert "web1" in listing and "running" in listing and "256M" in listing
        info = json.loads(d.cli("show", "web1", "--json").ok().out)
        assert info["cpus"] == 1 and info["memory"] == 256 << 20

        # SSH with the CLI's own key, and with the user's key file
        assert "tour-user-data" in d.guest_file("web1", "/root/tour.txt")
        out = d.cli("ssh", "web1", "-i", str(key), "--", "uname -a").ok().out
        assert "Linux web1" in out
        # the keys reached the guest through the metadata service
        keys = d.ssh("web1", "cat /root/.ssh/authorized_keys").ok().out
        assert key.with_suffix(".pub").read_text().split()[1] in keys

        # the serial console, piped: log in and run a command, then detach with Ctrl-]
        script = "\n\nroot\necho console-$((6*7))\n"
        p = subprocess.run(
            [sys.executable, "-c", _CONSOLE_DRIVER, str(d.port)],
            input=script,
            capture_output=True,
            text=True,
            env=d.env(),
            timeout=60,
        )
        assert "console-42" in p.stdout, p.stdout + p.stderr

        logs = d.cli("logs", "web1").ok().out
        assert "Linux version" in logs and "web1 login" in logs

        doctor = d.cli("doctor").ok().out
        assert "accelerator" in doctor and ("tcg" in doctor or "kvm" in doctor)

        assert "stopped" in d.cli("stop", "web1").ok().out
        assert "already stopped" in d.cli("stop", "web1").ok().out
        d.cli("start", "web1").ok()
        d.cli("reboot", "web1").ok()
        d.cli("rm", "web1").ok()
        assert "web1" not in d.cli("ls").ok().out

        d.cli("run", "tiny", "--name", "left-running", "--memory", "128M").ok()
        assert "instances stopped" in d.cli("down", "--stop-instances").ok().out
        # nothing of Corral is left running on the host
        assert (
            d.settings.namespace
            not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        )
        assert not d.settings.pidfile.exists()
    finally:
        d.teardown()


# Feeds stdin to `corral console` slowly (a serial line is slow), then detaches.
_CONSOLE_DRIVER = r"""
import os, subprocess, sys, time
data = sys.stdin.read()
p = subprocess.Popen([sys.executable, "-m", "corral", "console", "web1"], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
time.sleep(2)
for line in data.split("\n"):
    p.stdin.write(line.encode() + b"\n"); p.stdin.flush(); time.sleep(1.5)
time.sleep(2)
p.stdin.write(b"\x1d"); p.stdin.flush()
out, _ = p.communicate(timeout=30)
sys.stdout.write(out.decode(errors="replace"))
"""
