"""Per-instance bandwidth caps with tc. To the guest: a token bucket on the tap's egress.
From the guest: the tap's ingress redirected to an ifb device with the same token bucket."""

from __future__ import annotations

from corral.node.net import links
from corral.proc import arun


def ifb_name(tap: str) -> str:
    return "i" + tap[1:]  # tap t<12 hex> -> ifb i<12 hex>


async def apply(namespace: str, tap: str, rate_mbit: float | None) -> None:
    ifb = ifb_name(tap)
    tc = ["ip", "netns", "exec", namespace, "tc"]
    if not rate_mbit:
        await arun([*tc, "qdisc", "del", "dev", tap, "root"], check=False)
        await arun([*tc, "qdisc", "del", "dev", tap, "ingress"], check=False)
        await links.delete_link(namespace, ifb)
        return
    rate = f"{rate_mbit:g}mbit"
    # a burst of ~10 ms at the rate, and at least a few full frames
    burst = max(int(rate_mbit * 1_000_000 / 8 / 100), 16 * 1514)
    tbf = ["tbf", "rate", rate, "burst", str(burst), "latency", "50ms"]
    await arun([*tc, "qdisc", "replace", "dev", tap, "root", *tbf])
    if ifb not in await links.link_names(namespace):
        await arun(["ip", "-n", namespace, "link", "add", ifb, "type", "ifb"])
    await arun(["ip", "-n", namespace, "link", "set", ifb, "up"])
    await arun([*tc, "qdisc", "replace", "dev", ifb, "root", *tbf])
    await arun([*tc, "qdisc", "replace", "dev", tap, "handle", "ffff:", "ingress"])
    await arun(
        [
            *tc,
            "filter",
            "replace",
            "dev",
            tap,
            "parent",
            "ffff:",
            "protocol",
            "all",
            "prio",
            "1",
            "u32",
            "match",
            "u32",
            "0",
            "0",
            "action",
            "mirred",
            "egress",
            "redirect",
            "dev",
            ifb,
        ]
    )


async def remove(namespace: str, tap: str) -> None:
    await links.delete_link(namespace, ifb_name(tap))
