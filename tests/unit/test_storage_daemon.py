"""The replica daemon is found again by its pid file and command line (an agent restart)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from corral.node.driver import storage_daemon


def test_a_running_daemon_is_found_by_its_pid_file_and_command_line(tmp_path: Path) -> None:
    marker = str(tmp_path / "replicas" / "i-1")
    # a stand-in whose command line reads like the daemon's: the directory inside an option
    proc = subprocess.Popen(
        [
            *(sys.executable, "-c", "import time; time.sleep(30)", "/usr/bin/qemu-storage-daemon"),
            *("--blockdev", f"driver=file,node-name=file-root,filename={marker}/root.qcow2"),
        ]
    )
    try:
        pidfile = tmp_path / "qsd.pid"
        pidfile.write_text(f"{proc.pid}\n")
        assert storage_daemon.find(pidfile, marker) == proc.pid
        assert storage_daemon.find(pidfile, str(tmp_path / "replicas" / "i-2")) is None
        pidfile.write_text(f"{os.getpid()}\n")  # a pid of something else
        assert storage_daemon.find(pidfile, marker) is None
    finally:
        proc.kill()
        proc.wait()


def test_the_daemon_serves_every_disk_writable_on_the_given_descriptor(tmp_path: Path) -> None:
    argv = storage_daemon.argv(
        [storage_daemon.Export("root", tmp_path / "a,b.qcow2", "tok")], 7, tmp_path / "p"
    )
    joined = " ".join(argv)
    assert "filename=" + str(tmp_path / "a,,b.qcow2") in joined  # commas escaped
    assert "addr.type=fd,addr.str=7,max-connections=1" in joined
    assert "type=nbd,id=export-root,node-name=root,name=tok,writable=on" in joined
