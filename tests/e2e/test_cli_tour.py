"""The README's tour, end to end through the `corral` command only: up --detach, image build,
run with a key file and user-data, ls, show, ssh, console, logs, key pairs, doctor, stop,
start, reboot, rm, down --stop-instances (which leaves the host clean)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.harness import new_daemon, wait_for


def test_the_readme_tour(tmp_path) -> None:
    d = new_daemon()
    try:
        up = d.cli("up", "--detach", "--port", str(d.port), "--subnet", d.subnet).ok()
        assert f"Corral is up at http://127.0.0.1:{d.port}" in up.out
        assert "is up" in d.cli("status").ok().out
        assert "already runs" in d.cli("up", "--detach", "--port", str(d.port)).ok().out

        d.cli("image", "build", "tiny", timeout=900).ok()
        assert "tiny" in d.cli("image", "ls").ok().out
        # a second build is a cache hit: the same image, and the build says it was cached
        first = d.cli("image", "build", "tiny").ok().out
        again = d.cli("image", "build", "tiny").ok().out
        assert again == first and "is ready" in again
        builds = [o for o in d.client().operation_list(target="tiny") if o.type == "image-build"]
        newest = max(builds, key=lambda o: o.created_at)
        assert any("cached build" in e.message for e in d.client().operation_events(newest.id))

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
        p = subprocess.run(
            [sys.executable, "-c", _CONSOLE_DRIVER],
            capture_output=True,
            text=True,
            env=d.env(),
            timeout=300,
        )
        assert p.returncode == 0 and "console-42\n" in p.stdout.replace("\r", ""), (
            p.stdout + p.stderr
        )

        logs = d.cli("logs", "web1").ok().out
        assert "Linux version" in logs and "web1 login" in logs

        doctor = d.cli("doctor").ok().out
        assert "accelerator" in doctor and ("tcg" in doctor or "kvm" in doctor)

        assert "stopped" in d.cli("stop", "web1").ok().out
        assert "already stopped" in d.cli("stop", "web1").ok().out
        d.cli("start", "web1").ok()
        # a reboot is a new boot of the guest, not only a zero exit status
        boot_id = d.ssh("web1", "cat /proc/sys/kernel/random/boot_id").ok().out.strip()
        d.cli("reboot", "web1").ok()
        new_boot = wait_for(
            lambda: d.ssh("web1", "cat /proc/sys/kernel/random/boot_id").out.strip(),
            120,
            what="web1 to answer again after its reboot",
        )
        assert len(new_boot) == 36 and new_boot != boot_id
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


# Drives `corral console` as a person would: waits for the login prompt, then for a shell
# prompt, types the command, waits for its answer, then detaches with Ctrl-]. Each wait is on
# what the console shows (generous timeouts; a loaded machine is slow), never a fixed sleep.
_CONSOLE_DRIVER = r"""
import subprocess, sys, threading, time
p = subprocess.Popen([sys.executable, "-m", "corral", "console", "web1"], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
seen = bytearray()
def read():
    while chunk := p.stdout.read1(4096):
        seen.extend(chunk)
threading.Thread(target=read, daemon=True).start()
def send(text):
    p.stdin.write(text.encode()); p.stdin.flush()
def until(marker, since, timeout=60, nudge=None):
    deadline = time.monotonic() + timeout
    while marker.encode() not in seen[since:]:
        if time.monotonic() > deadline:
            send("\x1d"); sys.stdout.write(seen.decode(errors="replace"))
            sys.exit(f"console: no {marker!r} in {timeout} s")
        if nudge and int(time.monotonic() * 2) % 6 == 0:
            send(nudge)  # a console attached after the prompt was printed shows none: ask again
        time.sleep(0.5)
    return len(seen)
at = until("login:", 0, nudge="\n")
send("root\n")
at = until("#", at)
send("echo console-$((6*7))\n")
until("console-42", at)
send("\x1d")
p.wait(timeout=30)
sys.stdout.write(seen.decode(errors="replace"))
"""
