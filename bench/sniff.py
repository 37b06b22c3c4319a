"""ICMP echo requests and replies seen on one interface, with their times: a diagnostic for
bench/migrate_ping (``--capture``), where a lost ping's request or reply vanished. No tcpdump on
these machines: an AF_PACKET socket, run inside the interface's namespace
(``ip netns exec NS python -m bench.sniff DEV OUT``). It waits for the interface to appear (a
migration's destination tap is made during the move) and writes one JSON line per packet
(wall-clock time, direction, ICMP type, id, sequence) until it gets SIGTERM or SIGINT."""

from __future__ import annotations

import json
import signal
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
OUTGOING = 4  # PACKET_OUTGOING


def main() -> None:
    dev, out = sys.argv[1], sys.argv[2]
    stop = False

    def halt(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, halt)
    signal.signal(signal.SIGINT, halt)

    def bound() -> socket.socket | None:
        while not stop:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            try:
                sock.bind((dev, 0))
            except OSError:
                sock.close()
                time.sleep(0.01)
                continue
            sock.settimeout(0.2)
            return sock
        return None

    sock = bound()
    with open(out, "w") as f:
        while not stop and sock is not None:
            try:
                data, addr = sock.recvfrom(2048)
            except (TimeoutError, InterruptedError):
                continue
            except OSError:  # the device went (a tap removed, made again): wait for it
                sock.close()
                sock = bound()
                continue
            if len(data) < 42 or data[12:14] != b"\x08\x00" or data[23] != 1:
                continue  # not IPv4 ICMP
            ihl = (data[14] & 0x0F) * 4
            icmp = 14 + ihl
            kind, _, _, ident, seq = struct.unpack("!BBHHH", data[icmp : icmp + 8])
            if kind not in (0, 8):
                continue
            f.write(
                json.dumps(
                    {
                        "t": time.time(),
                        "out": addr[2] == OUTGOING,
                        "type": "reply" if kind == 0 else "request",
                        "id": ident,
                        "seq": seq,
                        "src": socket.inet_ntoa(data[26:30]),
                        "dst": socket.inet_ntoa(data[30:34]),
                    }
                )
                + "\n"
            )
            f.flush()


if __name__ == "__main__":
    main()
