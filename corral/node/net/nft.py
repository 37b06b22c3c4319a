"""Applying nftables JSON inside a namespace: one `nft -j -f -` call is one kernel transaction."""

from __future__ import annotations

import json
from typing import Any

from corral.errors import EnvironmentProblem
from corral.proc import CommandFailed, arun, need


async def apply(namespace: str, document: dict[str, Any]) -> None:
    nft = need("nft", "nftables")
    try:
        await arun(
            ["ip", "netns", "exec", namespace, nft, "-j", "-f", "-"],
            input=json.dumps(document).encode(),
            timeout=60,
        )
    except CommandFailed as err:
        raise EnvironmentProblem(
            f"nftables refused the rule set for {namespace}: {err.stderr.strip()[:500]}"
        ) from err


async def list_ruleset(namespace: str) -> dict[str, Any]:
    out = await arun(
        ["ip", "netns", "exec", namespace, need("nft", "nftables"), "-j", "list", "ruleset"],
        timeout=30,
    )
    data: dict[str, Any] = json.loads(out or "{}")
    return data
