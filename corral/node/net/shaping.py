"""Per-instance bandwidth caps with tc, each way a token bucket with a burst.

- To the guest: a ``tbf`` on the tap's egress (the root qdisc).
- From the guest: the tap's ingress redirected (``mirred``) to an ifb device whose root is the
  same kind of ``tbf``. The kernel here has no ``police`` action (``act_police`` is not
  built in and modules cannot be loaded), so the ingress cap queues on an ifb rather than
  dropping at a policer, which is kinder to TCP anyway.

A bucket (``Bucket``): ``rate_mbit`` is the sustained rate, ``burst_bytes`` the bucket that
fills at that rate while the instance sends less, and ``peak_mbit`` the rate a full bucket may be
spent at (None: as fast as the link goes). An idle instance can so send ``burst_bytes`` quickly,
then is held to its rate until it is quiet again, as a cloud's burstable network does."""

from __future__ import annotations

from corral.node.net import links
from corral.node.spec import Bucket, PortSpec
from corral.proc import arun

# the peak bucket (tbf's "mtu"): a whole GSO frame, so a tap's 64 KiB segments pass unsplit
PEAK_MTU = 65536
LATENCY = "50ms"


def ifb_name(tap: str) -> str:
    return "i" + tap[1:]  # tap t<12 hex> -> ifb i<12 hex>


def default_burst(rate_mbit: float) -> int:
    """A bucket of ~10 ms at the rate, and at least a few full frames (a plain cap)."""
    return max(int(rate_mbit * 1_000_000 / 8 / 100), 16 * 1514)


def legacy(rate_mbit: float | None) -> Bucket | None:
    """The bucket of a plain cap of ``rate_mbit`` each way (no burst beyond ~10 ms)."""
    if not rate_mbit:
        return None
    return Bucket(rate_mbit=rate_mbit, burst_bytes=default_burst(rate_mbit))


def buckets(port: PortSpec) -> tuple[Bucket | None, Bucket | None]:
    """(to the guest, from the guest) for ``port``: its own buckets when it has any, else its
    plain ``rate_mbit`` cap both ways."""
    if port.to_guest is not None or port.from_guest is not None:
        return port.to_guest, port.from_guest
    plain = legacy(port.rate_mbit)
    return plain, plain


def tbf_args(b: Bucket) -> list[str]:
    """tc's arguments for a tbf enforcing ``b``."""
    burst = max(int(b.burst_bytes), 16 * 1514)
    args = ["tbf", "rate", f"{b.rate_mbit:g}mbit", "burst", str(burst), "latency", LATENCY]
    if b.peak_mbit and b.peak_mbit > b.rate_mbit:
        args += ["peakrate", f"{b.peak_mbit:g}mbit", "mtu", str(PEAK_MTU)]
    return args


def commands(
    namespace: str, tap: str, to_guest: Bucket | None, from_guest: Bucket | None, ifb_exists: bool
) -> list[tuple[list[str], bool]]:
    """The commands that make ``tap``'s caps these, in order, each with whether its failure is
    an error (removing what is not there is not)."""
    ifb = ifb_name(tap)
    tc = ["ip", "netns", "exec", namespace, "tc"]
    out: list[tuple[list[str], bool]] = []
    if to_guest is None:
        out.append(([*tc, "qdisc", "del", "dev", tap, "root"], False))
    else:
        out.append(([*tc, "qdisc", "replace", "dev", tap, "root", *tbf_args(to_guest)], True))
    if from_guest is None:
        out.append(([*tc, "qdisc", "del", "dev", tap, "ingress"], False))
        if ifb_exists:
            out.append((["ip", "-n", namespace, "link", "del", ifb], False))
        return out
    if not ifb_exists:
        out.append((["ip", "-n", namespace, "link", "add", ifb, "type", "ifb"], True))
    out += [
        (["ip", "-n", namespace, "link", "set", ifb, "up"], True),
        ([*tc, "qdisc", "replace", "dev", ifb, "root", *tbf_args(from_guest)], True),
        ([*tc, "qdisc", "replace", "dev", tap, "handle", "ffff:", "ingress"], True),
        (
            [
                *tc,
                *("filter", "replace", "dev", tap, "parent", "ffff:", "protocol", "all"),
                *("prio", "1", "u32", "match", "u32", "0", "0"),
                *("action", "mirred", "egress", "redirect", "dev", ifb),
            ],
            True,
        ),
    ]
    return out


async def apply(
    namespace: str, tap: str, to_guest: Bucket | None, from_guest: Bucket | None
) -> None:
    """Make ``tap``'s caps these (None: no cap that way). Idempotent."""
    exists = ifb_name(tap) in await links.link_names(namespace)
    for cmd, check in commands(namespace, tap, to_guest, from_guest, exists):
        await arun(cmd, check=check)


async def remove(namespace: str, tap: str) -> None:
    await links.delete_link(namespace, ifb_name(tap))
