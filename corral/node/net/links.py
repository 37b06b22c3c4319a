"""Links inside a namespace (bridge, taps, addresses) through iproute2's JSON output.

Every call is idempotent, so a reconciler can repeat it after any crash."""

from __future__ import annotations

import json
from typing import Any

from corral.proc import arun


async def _ip(ns: str, *args: str, check: bool = True) -> str:
    return await arun(["ip", "-n", ns, *args], check=check)


async def links(ns: str) -> list[dict[str, Any]]:
    out = await _ip(ns, "-json", "link", "show")
    return json.loads(out or "[]")


async def link_names(ns: str) -> set[str]:
    return {link["ifname"] for link in await links(ns)}


async def ensure_bridge(ns: str, bridge: str, address: str, mac: str | None = None) -> None:
    """A bridge ``bridge`` with ``address`` (CIDR form) up in ``ns``, with the MAC ``mac``
    when given (set, so it does not follow its ports')."""
    have = {link["ifname"]: link for link in await links(ns)}
    if bridge not in have:
        await _ip(
            ns, "link", "add", bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0"
        )
    if mac is not None and have.get(bridge, {}).get("address") != mac:
        await _ip(ns, "link", "set", bridge, "address", mac)
    await ensure_address(ns, bridge, address)
    await _ip(ns, "link", "set", bridge, "up")


async def ensure_address(ns: str, dev: str, address: str) -> None:
    out = await _ip(ns, "-json", "addr", "show", "dev", dev)
    have = {
        f"{a['local']}/{a['prefixlen']}"
        for i in json.loads(out or "[]")
        for a in i.get("addr_info", [])
    }
    if address not in have:
        await _ip(ns, "addr", "replace", address, "dev", dev)


async def ensure_tap(ns: str, tap: str, bridge: str) -> None:
    """A persistent tap on ``bridge``; QEMU (started in ``ns``) opens it by name."""
    if tap not in await link_names(ns):
        await _ip(ns, "tuntap", "add", "mode", "tap", "name", tap)
    await _ip(ns, "link", "set", tap, "master", bridge)
    await _ip(ns, "link", "set", tap, "up")


async def delete_link(ns: str, name: str) -> None:
    if name in await link_names(ns):
        await _ip(ns, "link", "delete", name, check=False)
