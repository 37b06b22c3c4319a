"""An instance's whole life on a real VM, through the CLI: run, SSH, user-data, orderly stop,
start, reboot, console log, terminate."""

from __future__ import annotations

import json

from tests.harness import Daemon, wait_for

USER_DATA = """#!/bin/sh
echo "user-data ran on $(hostname)" > /root/user-data.out
"""


def test_run_ssh_userdata_stop_start_reboot_terminate(corral: Daemon, tmp_path) -> None:
    script = tmp_path / "init.sh"
    script.write_text(USER_DATA)
    corral.cli(
        "run", "tiny", "--name", "life1", "--memory", "256M", "--user-data", str(script)
    ).ok()
    info = json.loads(corral.cli("show", "life1", "--json").ok().out)
    assert info["state"] == "running" and info["private_ip"]

    assert "cloud-amd64" in corral.ssh("life1", "uname -r").ok().out
    assert "user-data ran on life1" in corral.guest_file("life1", "/root/user-data.out")

    log = corral.cli("logs", "life1").ok().out
    assert "Linux version" in log and "corral-tiny: life1 ready" in log

    res = corral.cli("stop", "life1").ok()
    assert "(requested)" in res.out
    info = json.loads(corral.cli("show", "life1", "--json").ok().out)
    assert info["state"] == "stopped" and info["pid"] is None
    # the guest shut down in order: the console shows the guest's own shutdown
    assert "corral-tiny: shutting down" in corral.cli("logs", "life1").ok().out

    corral.cli("start", "life1").ok()
    # the disk survived the stop: user-data ran once, its output is still there
    assert "user-data ran on life1" in corral.ssh("life1", "cat /root/user-data.out").ok().out

    boot_id = corral.ssh("life1", "cat /proc/sys/kernel/random/boot_id").ok().out.strip()
    assert "guest reboot" in corral.cli("reboot", "life1").ok().out
    new_boot = wait_for(
        lambda: corral.ssh("life1", "cat /proc/sys/kernel/random/boot_id").out.strip(),
        60,
        what="the guest to come back after reboot",
    )
    assert new_boot != boot_id

    pid = json.loads(corral.cli("show", "life1", "--json").ok().out)["pid"]
    corral.cli("rm", "life1").ok()
    info = json.loads(corral.cli("show", info["id"], "--json").ok().out)
    assert info["state"] == "terminated" and info["private_ip"] is None
    assert not (corral.state_dir / "instances" / info["id"]).exists()
    assert not __import__("os").path.exists(f"/proc/{pid}")
    # it is gone from the default listing, still visible with --all (as on EC2)
    assert "life1" not in corral.cli("ls").ok().out
    assert "terminated" in corral.cli("ls", "--all").ok().out
