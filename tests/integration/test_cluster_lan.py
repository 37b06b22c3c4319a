"""The multi-node test LAN (tests/cluster.py): host namespaces reach each other and the outside
over the underlay, and nothing of it is left after the block, also when the block fails."""

from __future__ import annotations

import subprocess

import pytest

from tests.cluster import HOST_IFACE, PREFIX, lan, namespaces


def _ping(src_netns: str, address: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", src_netns, "ping", "-c", "2", "-i", "0.2", "-W", "3", address],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _links(netns: str) -> str:
    return subprocess.run(
        ["ip", "-n", netns, "-o", "link"], capture_output=True, text=True, timeout=30
    ).stdout


def test_hosts_reach_each_other_over_the_underlay_and_leave_nothing() -> None:
    with lan(3) as net:
        assert [h.address for h in net.hosts] == ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
        assert len(set(net.namespaces)) == 5
        assert set(net.namespaces) <= namespaces()
        for src in net.hosts:
            out = src.exec("ip", "-4", "-o", "addr", "show", "dev", HOST_IFACE).stdout
            assert f"{src.address}/24" in out
            for dst in net.hosts:
                if dst is not src:
                    r = _ping(src.netns, dst.address)
                    assert r.returncode == 0, f"{src.name} -> {dst.name}: {r.stdout}{r.stderr}"
            r = _ping(src.netns, "192.0.2.254")
            assert r.returncode == 0, f"{src.name} -> outside: {r.stdout}{r.stderr}"
        # the hosts are separate stacks: a host's namespace holds only its own underlay link
        assert "lan0" not in _links(net.hosts[0].netns)
        made = list(net.namespaces)
    assert not set(made) & namespaces()
    assert not any(n.startswith(PREFIX + net.tag) for n in namespaces())


def test_a_lan_left_by_a_killed_test_process_is_swept() -> None:
    ghost = f"{PREFIX}999999999-abcdef-lan"  # no such pid: its process is gone
    subprocess.run(["ip", "netns", "add", ghost], check=True)
    try:
        with lan(1):
            assert ghost not in namespaces()
    finally:
        subprocess.run(["ip", "netns", "delete", ghost], capture_output=True)


def test_a_failing_block_still_removes_the_lan() -> None:
    with pytest.raises(RuntimeError, match="boom"), lan(2) as net:
        made = list(net.namespaces)
        raise RuntimeError("boom")
    assert not set(made) & namespaces()


def test_two_lans_at_once_get_different_names_and_stay_apart() -> None:
    with lan(2) as a, lan(1) as b:
        assert a.tag != b.tag
        assert not set(a.namespaces) & set(b.namespaces)
        assert _ping(a.hosts[0].netns, "192.0.2.12").returncode == 0  # a's second host
        # b has no second host, and a's is on another bridge: unreachable from b
        assert _ping(b.hosts[0].netns, "192.0.2.12").returncode != 0
    assert not (set(a.namespaces) | set(b.namespaces)) & namespaces()
