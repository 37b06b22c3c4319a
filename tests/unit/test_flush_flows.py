"""Forgetting an elastic IP's conntrack flows when it moves: nothing to forget is fine, any
other failure fails the move (a kept flow would keep reaching the old instance)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from corral.node.net import uplink
from corral.proc import CommandFailed


def _conntrack(stderr: str, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every `conntrack -D` exits 1 saying ``stderr``, as arun reports it when checked."""
    calls: list[list[str]] = []

    async def arun(argv: Sequence[str], *, check: bool = True, **_: Any) -> str:
        calls.append(list(argv))
        if check:
            raise CommandFailed(argv, 1, stderr)
        return ""

    monkeypatch.setattr(uplink, "arun", arun)
    return calls


async def test_no_flows_to_forget_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _conntrack(
        "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.", monkeypatch
    )
    await uplink.flush_flows("ns", {"203.0.113.5"})
    assert [c[4:] for c in calls] == [
        ["conntrack", "-D", flag, "203.0.113.5"]
        for flag in ("--orig-dst", "--reply-src", "--orig-src")
    ]


@pytest.mark.parametrize(
    "stderr",
    [
        'exec of "conntrack" failed: No such file or directory',
        "conntrack v1.4.7 (conntrack-tools): Operation failed: Operation not permitted",
    ],
)
async def test_a_failed_flush_fails_the_move_and_names_the_address(
    stderr: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _conntrack(stderr, monkeypatch)
    with pytest.raises(CommandFailed) as err:
        await uplink.flush_flows("ns", {"203.0.113.5"})
    assert "203.0.113.5" in str(err.value) and "old instance" in str(err.value)
