"""A QEMU that dies is noticed and handled per restart policy; a guest that powers itself off
is stopped, not restarted; a daemon or a node agent killed with SIGKILL leaves the VMs running,
and what comes back adopts them."""

from __future__ import annotations

import json
import os
import signal

from corral.fsutil import pid_alive
from tests.harness import Daemon, cmdline, wait_for


def _show(corral: Daemon, name: str) -> dict:
    return json.loads(corral.cli("show", name, "--json").ok().out)


def test_killed_qemu_is_restarted_with_policy_on_failure(corral: Daemon) -> None:
    corral.cli("run", "tiny", "--name", "crash1", "--memory", "128M").ok()
    before = _show(corral, "crash1")
    os.kill(before["pid"], signal.SIGKILL)
    after = wait_for(
        lambda: (
            (i := _show(corral, "crash1"))["restarts"] == 1
            and i["pid"] != before["pid"]
            and i["state"] == "running"
            and i
        ),
        30,
        what="a restart",
    )
    assert "killed by SIGKILL" in after["state_reason"]
    assert os.path.exists(f"/proc/{after['pid']}")
    # the restarted guest is the same server: same address, SSH answers
    assert after["private_ip"] == before["private_ip"]
    assert "crash1" in corral.ssh("crash1", "hostname").ok().out
    corral.cli("rm", "--force", "crash1").ok()


def test_killed_qemu_with_policy_never_stays_stopped(corral: Daemon) -> None:
    corral.cli("run", "tiny", "--name", "crash2", "--memory", "128M", "--restart", "never").ok()
    pid = _show(corral, "crash2")["pid"]
    os.kill(pid, signal.SIGKILL)
    info = wait_for(
        lambda: (i := _show(corral, "crash2"))["state"] == "stopped" and i,
        30,
        what="the instance to be marked stopped",
    )
    assert info["restarts"] == 0
    assert "Server.InternalError" in info["state_reason"]
    assert "restart policy never" in info["state_reason"]
    # and it starts again on request
    corral.cli("start", "crash2").ok()
    assert _show(corral, "crash2")["state"] == "running"
    corral.cli("rm", "--force", "crash2").ok()


def test_guest_power_off_stops_the_instance(corral: Daemon) -> None:
    corral.cli("run", "tiny", "--name", "halt1", "--memory", "128M").ok()
    corral.ssh("halt1", "poweroff")  # the connection may drop before ssh reports success
    info = wait_for(
        lambda: (i := _show(corral, "halt1"))["state"] == "stopped" and i,
        60,
        what="the guest's power-off to stop the instance",
    )
    assert "InstanceInitiatedShutdown" in info["state_reason"]
    assert info["restarts"] == 0
    corral.cli("rm", "halt1").ok()


def test_daemon_killed_with_instances_running_readopts_them(corral: Daemon) -> None:
    corral.cli("run", "tiny", "--name", "adopt1", "--memory", "128M").ok()
    corral.cli("run", "tiny", "--name", "adopt2", "--memory", "128M").ok()
    pids = {n: _show(corral, n)["pid"] for n in ("adopt1", "adopt2")}
    corral.kill9()
    # the VMs outlive the daemon
    assert all(os.path.exists(f"/proc/{p}") for p in pids.values())
    corral.start()
    again = {n: _show(corral, n) for n in ("adopt1", "adopt2")}
    assert {n: i["pid"] for n, i in again.items()} == pids
    assert all(i["state"] == "running" and i["restarts"] == 0 for i in again.values())
    # exactly one QEMU per instance: adoption never duplicates
    for name, pid in pids.items():
        iid = again[name]["id"]
        matching = [
            d
            for d in os.listdir("/proc")
            if d.isdigit() and f"process=corral:{iid}".encode() in cmdline(d)
        ]
        assert matching == [str(pid)]
    # and the adopted instances are fully managed: console log, SSH, stop
    assert "adopt1" in corral.ssh("adopt1", "hostname").ok().out
    assert "(requested)" in corral.cli("stop", "adopt2").ok().out
    corral.cli("rm", "--force", "adopt1", "adopt2").ok()


def _agents(corral: Daemon) -> list[int]:
    """The pids of the node agents serving this daemon's state directory."""
    out = []
    for d in os.listdir("/proc"):
        cmd = cmdline(d) if d.isdigit() else b""
        if b"\0agent\0" in cmd and str(corral.state_dir).encode() + b"\0" in cmd:
            out.append(int(d))
    return out


def test_killed_agent_is_restarted_and_adopts_the_running_vms(corral: Daemon) -> None:
    corral.cli("run", "tiny", "--name", "agentkill", "--memory", "128M").ok()
    pid = _show(corral, "agentkill")["pid"]
    (agent,) = _agents(corral)
    os.kill(agent, signal.SIGKILL)
    again = wait_for(
        lambda: (a := _agents(corral)) and a != [agent] and a,
        60,
        what="the daemon to start a new node agent",
    )
    assert len(again) == 1
    assert os.path.exists(f"/proc/{pid}"), "the VM died with its agent"
    # the new agent adopted it: the controller reaches it through the wire and stops it
    assert "(requested)" in corral.cli("stop", "agentkill").ok().out
    info = _show(corral, "agentkill")
    assert info["state"] == "stopped" and info["restarts"] == 0
    # gone, or a zombie: its parent (the killed agent) is gone and PID 1 here does not reap
    assert not pid_alive(pid)
    corral.cli("rm", "agentkill").ok()


def test_the_daemon_killed_takes_its_agent_but_not_the_vms(corral: Daemon) -> None:
    corral.cli("run", "tiny", "--name", "orphan1", "--memory", "128M").ok()
    pid = _show(corral, "orphan1")["pid"]
    (agent,) = _agents(corral)
    corral.kill9()
    wait_for(
        lambda: not os.path.exists(f"/proc/{agent}"), 30, what="the agent to follow its daemon"
    )
    assert os.path.exists(f"/proc/{pid}")
    corral.start()
    assert _show(corral, "orphan1")["pid"] == pid
    assert len(_agents(corral)) == 1
    corral.cli("rm", "--force", "orphan1").ok()
