"""tc's arguments for an instance's caps (node/net/shaping.py) and where the controller gets
them from (the instance type, or the instance's own plain cap)."""

from __future__ import annotations

from corral.controller import instance_types
from corral.controller.policy import port_buckets
from corral.node.net import shaping
from corral.node.spec import Bucket, PortSpec
from corral.store.models import Instance


def test_tbf_has_the_rate_the_bucket_and_the_peak() -> None:
    b = Bucket(rate_mbit=50, burst_bytes=16 << 20, peak_mbit=1000)
    assert shaping.tbf_args(b) == [
        *("tbf", "rate", "50mbit", "burst", str(16 << 20), "latency", "50ms"),
        *("peakrate", "1000mbit", "mtu", "65536"),
    ]
    # no peak (or a peak not above the rate): the bucket is spent at the link's speed
    assert "peakrate" not in shaping.tbf_args(Bucket(rate_mbit=50, burst_bytes=1 << 20))
    assert "peakrate" not in shaping.tbf_args(Bucket(rate_mbit=50, burst_bytes=1, peak_mbit=50))
    # a bucket is never smaller than a few full frames
    assert shaping.tbf_args(Bucket(rate_mbit=1, burst_bytes=10))[4] == str(16 * 1514)


def test_commands_cap_each_way_and_lift_each_way() -> None:
    to_g = Bucket(rate_mbit=100, burst_bytes=1 << 20)
    from_g = Bucket(rate_mbit=50, burst_bytes=1 << 20, peak_mbit=500)
    cmds = shaping.commands("ns1", "t0123456789ab", to_g, from_g, ifb_exists=False)
    argv = [" ".join(c) for c, _ in cmds]
    assert argv[0].startswith("ip netns exec ns1 tc qdisc replace dev t0123456789ab root tbf")
    assert "rate 100mbit" in argv[0]
    assert "ip -n ns1 link add i0123456789ab type ifb" in argv
    ifb_root = next(a for a in argv if "dev i0123456789ab root tbf" in a)
    assert "rate 50mbit" in ifb_root and "peakrate 500mbit" in ifb_root
    assert any("dev t0123456789ab handle ffff: ingress" in a for a in argv)
    assert argv[-1].endswith("action mirred egress redirect dev i0123456789ab")
    assert all(check for _, check in cmds)
    # an existing ifb is not made again
    again = shaping.commands("ns1", "t0123456789ab", to_g, from_g, ifb_exists=True)
    assert not any("type ifb" in " ".join(c) for c, _ in again)
    # only one way capped: the other way's qdisc (and the ifb) go, and their absence is fine
    one = shaping.commands("ns1", "t0123456789ab", to_g, None, ifb_exists=True)
    argv = [" ".join(c) for c, _ in one]
    assert "ip netns exec ns1 tc qdisc del dev t0123456789ab ingress" in argv
    assert "ip -n ns1 link del i0123456789ab" in argv
    assert [check for _, check in one] == [True, False, False]


def test_a_ports_own_buckets_win_over_its_plain_rate() -> None:
    b = Bucket(rate_mbit=10, burst_bytes=1 << 20)
    port = PortSpec(instance_id="i-1", tap="t1", mac="m", address="a", rate_mbit=4)
    plain = shaping.buckets(port)
    assert plain[0] == plain[1] == Bucket(rate_mbit=4, burst_bytes=16 * 1514)
    assert shaping.buckets(port.model_copy(update={"from_guest": b})) == (None, b)
    assert shaping.buckets(PortSpec(instance_id="i", tap="t", mac="m", address="a")) == (
        None,
        None,
    )


def test_the_instance_types_caps_reach_the_port() -> None:
    nano = instance_types.get("cr1.nano")
    to_g, from_g = port_buckets(Instance(instance_type="cr1.nano", net_limit_mbit=None))
    assert to_g is not None and from_g is not None
    assert from_g.rate_mbit == nano.net_out_mbit and to_g.rate_mbit == nano.net_in_mbit
    assert to_g.burst_bytes == nano.net_burst_mib << 20 and to_g.peak_mbit == nano.net_peak_mbit
    # an alias has the caps of the size it stands for; cb1 those of cr1
    assert port_buckets(Instance(instance_type="t2.nano")) == (to_g, from_g)
    assert port_buckets(Instance(instance_type="cb1.nano")) == (to_g, from_g)
    # the instance's own cap is a plain cap (rate_mbit); custom sizes have none
    assert port_buckets(Instance(instance_type="cr1.nano", net_limit_mbit=5)) == (None, None)
    assert port_buckets(Instance(instance_type=None)) == (None, None)
    # every type is capped, a bigger size more loosely
    sizes = ["cr1.nano", "cr1.micro", "cr1.small", "cr1.medium", "cr1.large"]
    outs = [instance_types.get(n).net_out_mbit for n in sizes]
    assert outs == sorted(outs) and all(outs)
