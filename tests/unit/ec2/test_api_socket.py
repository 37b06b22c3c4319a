"""The API socket must say it is TCP, or asyncio does not set TCP_NODELAY and every
keep-alive answer waits ~40 ms for the client's delayed ACK (found by bench/ec2_api: 44 ms
per DescribeRegions on the daemon, 0.7 ms after the fix)."""

from __future__ import annotations

import socket
from pathlib import Path

from corral import config
from corral.daemon import Daemon
from tests.harness import free_port


def test_api_socket_is_tcp_so_asyncio_sets_nodelay(tmp_path: Path) -> None:
    d = Daemon(config.load(tmp_path, api_port=free_port()))
    sock = d._bind_api()
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
