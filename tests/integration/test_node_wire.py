"""The node wire with a real agent: the API's console websocket reaches the guest's serial line
through the agent's stream call (API → controller → unix socket → agent → QEMU), both ways."""

from __future__ import annotations

import json
import time

from websockets.sync.client import connect

from tests.harness import Daemon, wait_for


def test_the_console_crosses_the_wire_both_ways(corral: Daemon) -> None:
    corral.cli("run", "tiny", "--name", "wirecon", "--memory", "128M").ok()
    try:
        wait_for(
            lambda: "wirecon login" in corral.cli("logs", "wirecon").out,
            240,
            what="the guest's login prompt",
        )
        creds = json.loads((corral.state_dir / "admin.credentials").read_text())
        auth = f"Bearer {creds['access_key_id']}:{creds['secret_access_key']}"
        url = corral.url.replace("http://", "ws://") + "/v1/instances/wirecon/console"
        seen = b""
        with connect(url, additional_headers={"Authorization": auth}, open_timeout=30) as ws:
            deadline = time.monotonic() + 120
            for line in (b"\n", b"root\n", b"echo wire-$((6*7))\n"):
                ws.send(line)
                time.sleep(1.5)  # a serial line is slow; the guest reads as it can
            while b"wire-42" not in seen and time.monotonic() < deadline:
                try:
                    seen += ws.recv(timeout=5)  # type: ignore[operator]
                except TimeoutError:
                    ws.send(b"echo wire-$((6*7))\n")
        assert b"wire-42" in seen, seen[-2000:]
    finally:
        corral.cli("rm", "--force", "wirecon").ok()
