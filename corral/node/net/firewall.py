"""The kernel's view of a network's policy, as one nftables JSON batch.

Two tables, rebuilt together in one transaction on every change (nft 1.0.6 has no `destroy`:
add, delete and re-add in the same batch; conntrack state lives outside the tables, so
established flows survive a rebuild):

- ``bridge corral_guard``: stateless anti-spoofing at the bridge. A frame from an instance's
  tap must carry that instance's MAC, and its IPv4 and ARP sender address must be the
  instance's address (DHCP's 0.0.0.0 excepted); IPv6 from taps is dropped. So the source
  address of anything reaching the node (the metadata service too) names the instance.
- ``inet corral``: stateful security groups and NAT. Bridged IPv4 passes the inet hooks
  (br_netfilter, `bridge-nf-call-iptables=1`), where conntrack works. Two base chains on the
  forward hook let established flows through and send new ones through the sender's egress
  chain, then the receiver's ingress chain (found by address through verdict maps); each
  instance chain jumps to its groups' chains (every group's rules exist once) and ends in
  `drop`, so a flow needs an allow on both sides. `input` lets instances reach DHCP, DNS
  and the metadata service on the node and nothing else. NAT: 1:1 for elastic IPs (maps),
  masquerade for the rest, and hairpin for instances that reach each other's public address.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from corral.errors import Invalid
from corral.node.net.overlay import gateway_mac
from corral.node.spec import ROUTER_LINK_PREFIX, TRANSIT_CIDR, GroupSpec, PolicySpec, RuleSpec

GUARD = "corral_guard"
TABLE = "corral"
UPLINK_DEV = "cx0"
METADATA = "169.254.169.254"
IMDS_PUT_MARK = 0x1

Json = dict[str, Any]


def _id(s: str) -> str:
    return s.split("-", 1)[1] if "-" in s else s


def _set_name(group_id: str) -> str:
    return f"g_{_id(group_id)}"


def _l4(protocol: str) -> Json | None:
    if protocol in ("all", "-1"):
        return None
    right: str | int
    if protocol in ("tcp", "udp", "icmp"):
        right = protocol
    else:
        try:
            right = int(protocol)
        except ValueError as err:
            raise Invalid(
                f"protocol {protocol!r} must be tcp, udp, icmp, all or a number", field="protocol"
            ) from err
    return _match({"meta": {"key": "l4proto"}}, right)


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(protocol: str, field: str) -> Json:
    return {"payload": {"protocol": protocol, "field": field}}


def _prefix(cidr: str) -> Any:
    net = ipaddress.ip_network(cidr, strict=False)
    if net.prefixlen == 32:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _port_matches(rule: RuleSpec) -> list[Json]:
    out: list[Json] = []
    if rule.protocol in ("tcp", "udp"):
        lo = rule.from_port if rule.from_port is not None and rule.from_port >= 0 else 0
        hi = rule.to_port if rule.to_port is not None and rule.to_port >= 0 else 65535
        if (lo, hi) != (0, 65535):
            right: Any = lo if lo == hi else {"range": [lo, hi]}
            out.append(_match(_payload(rule.protocol, "dport"), right))
    elif rule.protocol == "icmp":
        if rule.from_port is not None and rule.from_port >= 0:
            out.append(_match(_payload("icmp", "type"), rule.from_port))
            if rule.to_port is not None and rule.to_port >= 0:
                out.append(_match(_payload("icmp", "code"), rule.to_port))
    return out


def rule_exprs(rule: RuleSpec, direction: str, known_groups: set[str]) -> list[list[Json]]:
    """The nft expressions (one list per peer) for one allow rule, without the verdict."""
    peer_field = "saddr" if direction == "ingress" else "daddr"
    base: list[Json] = []
    l4 = _l4(rule.protocol)
    if l4 is not None:
        base.append(l4)
    base += _port_matches(rule)
    peers: list[list[Json]] = []
    cidrs = [c for c in rule.cidrs if ipaddress.ip_network(c, strict=False).prefixlen > 0]
    if len(cidrs) < len(rule.cidrs):
        peers.append([])  # 0.0.0.0/0: any peer
    elif cidrs:
        right: Any = _prefix(cidrs[0]) if len(cidrs) == 1 else {"set": [_prefix(c) for c in cidrs]}
        peers.append([_match(_payload("ip", peer_field), right)])
    for g in rule.groups:
        if g not in known_groups:
            continue  # a group with no members on this node matches nobody here
        peers.append([_match(_payload("ip", peer_field), f"@{_set_name(g)}")])
    return [p + base for p in peers]


def render(policy: PolicySpec) -> list[Json]:
    """The nft JSON commands that make the kernel enforce ``policy`` (one transaction)."""
    fam = "inet"
    bridges = sorted(n.bridge for n in policy.networks)  # a VPC's namespace: its subnets'
    cmds: list[Json] = []

    def add(kind: str, obj: Json) -> None:
        cmds.append({"add": {kind: obj}})

    def rule(chain: str, expr: list[Json], family: str = fam, table: str = TABLE) -> None:
        add("rule", {"family": family, "table": table, "chain": chain, "expr": expr})

    # start from nothing, atomically
    for family, table in (("bridge", GUARD), (fam, TABLE)):
        add("table", {"family": family, "name": table})
        cmds.append({"delete": {"table": {"family": family, "name": table}}})
        add("table", {"family": family, "name": table})

    _render_guard(policy, add, rule)

    groups: dict[str, GroupSpec] = {g.id: g for g in policy.groups}
    members: dict[str, list[str]] = {g: [] for g in groups}
    for port in policy.ports:
        for g in port.groups:
            members.setdefault(g, []).append(port.address)
    # members running on other nodes of the segment match group-to-group rules here too
    for remote in policy.remote:
        for g in remote.groups:
            members.setdefault(g, []).append(remote.address)
    for g, addrs in members.items():
        add(
            "set",
            {
                "family": fam,
                "table": TABLE,
                "name": _set_name(g),
                "type": "ipv4_addr",
                **({"elem": sorted(addrs)} if addrs else {}),
            },
        )
    known = set(members)

    # each group's rules once, in its own chains; an instance's chains jump to its groups'
    for gid, group in groups.items():
        for direction, chain, rules in (
            ("ingress", f"gi_{_id(gid)}", group.ingress),
            ("egress", f"ge_{_id(gid)}", group.egress),
        ):
            add("chain", {"family": fam, "table": TABLE, "name": chain})
            for r in rules:
                for expr in rule_exprs(r, direction, known):
                    rule(chain, [*expr, {"accept": None}])

    ingress_map: list[Any] = []
    egress_map: list[Any] = []
    for port in policy.ports:
        cin, ceg = f"in_{_id(port.instance_id)}", f"eg_{_id(port.instance_id)}"
        add("chain", {"family": fam, "table": TABLE, "name": cin})
        add("chain", {"family": fam, "table": TABLE, "name": ceg})
        for gid in port.groups:
            if gid in groups:
                rule(cin, [{"jump": {"target": f"gi_{_id(gid)}"}}])
                rule(ceg, [{"jump": {"target": f"ge_{_id(gid)}"}}])
        rule(cin, [{"counter": None}, {"drop": None}])
        rule(ceg, [{"counter": None}, {"drop": None}])
        ingress_map.append([port.address, {"jump": {"target": cin}}])
        egress_map.append([port.address, {"jump": {"target": ceg}}])

    for name, elems in (("ingress", ingress_map), ("egress", egress_map)):
        add(
            "map",
            {
                "family": fam,
                "table": TABLE,
                "name": name,
                "type": "ipv4_addr",
                "map": "verdict",
                **({"elem": elems} if elems else {}),
            },
        )

    # two base chains on the forward hook: a packet must be accepted by both (the sender's
    # egress, then the receiver's ingress); an accept ends only its own base chain
    ct_state = {"ct": {"key": "state"}}
    established = [_match(ct_state, ["established", "related"], "in"), {"accept": None}]
    add(
        "chain",
        {
            "family": fam,
            "table": TABLE,
            "name": "forward_egress",
            "type": "filter",
            "hook": "forward",
            "prio": 0,
            "policy": "accept",
        },
    )
    rule("forward_egress", established)
    rule("forward_egress", [_match(ct_state, "invalid", "in"), {"drop": None}])
    rule("forward_egress", [{"vmap": {"key": _payload("ip", "saddr"), "data": "@egress"}}])
    add(
        "chain",
        {
            "family": fam,
            "table": TABLE,
            "name": "forward_ingress",
            "type": "filter",
            "hook": "forward",
            "prio": 10,
            "policy": "accept",
        },
    )
    rule("forward_ingress", established)
    rule("forward_ingress", [{"vmap": {"key": _payload("ip", "daddr"), "data": "@ingress"}}])

    # instances may reach the node itself for DHCP, DNS and metadata only
    add(
        "chain",
        {
            "family": fam,
            "table": TABLE,
            "name": "input",
            "type": "filter",
            "hook": "input",
            "prio": 0,
            "policy": "accept",
        },
    )
    from_bridge = _match(
        {"meta": {"key": "iifname"}}, bridges[0] if len(bridges) == 1 else {"set": bridges}
    )
    imds = [_match(_payload("ip", "daddr"), METADATA), _match(_payload("tcp", "dport"), 80)]
    # connections that carry an IMDSv2 token PUT are marked; their answers get the
    # instance's hop limit as TTL (below), so the token cannot travel further than allowed
    rule(
        "input",
        [
            from_bridge,
            *imds,
            _match({"payload": {"base": "ih", "offset": 0, "len": 32}}, 0x50555420),
            {"mangle": {"key": {"ct": {"key": "mark"}}, "value": IMDS_PUT_MARK}},
        ],
    )
    rule("input", [_match(ct_state, ["established", "related"], "in"), {"accept": None}])
    rule(
        "input",
        [
            from_bridge,
            _match({"meta": {"key": "l4proto"}}, "udp"),
            _match(_payload("udp", "dport"), {"set": [53, 67]}),
            {"accept": None},
        ],
    )
    rule(
        "input",
        [
            from_bridge,
            _match({"meta": {"key": "l4proto"}}, "tcp"),
            _match(_payload("tcp", "dport"), 53),
            {"accept": None},
        ],
    )
    rule(
        "input",
        [
            from_bridge,
            _match(_payload("ip", "daddr"), METADATA),
            _match({"meta": {"key": "l4proto"}}, "tcp"),
            _match(_payload("tcp", "dport"), 80),
            {"accept": None},
        ],
    )
    rule("input", [from_bridge, _match({"meta": {"key": "l4proto"}}, "icmp"), {"accept": None}])
    rule("input", [from_bridge, {"counter": None}, {"drop": None}])

    add(
        "chain",
        {
            "family": fam,
            "table": TABLE,
            "name": "output",
            "type": "filter",
            "hook": "output",
            "prio": 0,
            "policy": "accept",
        },
    )
    answers = [
        _match(_payload("ip", "saddr"), METADATA),
        _match(_payload("tcp", "sport"), 80),
        _match({"ct": {"key": "mark"}}, IMDS_PUT_MARK),
    ]
    for port in policy.ports:
        rule(
            "output",
            [
                *answers,
                _match(_payload("ip", "daddr"), port.address),
                {"mangle": {"key": _payload("ip", "ttl"), "value": port.metadata_hop_limit}},
            ],
        )

    _render_transit(policy, add, rule)
    _render_nat(policy, add, rule)
    return cmds


TRANSIT_PEERS = "cx-*"  # in a node's namespace: the veths into its VPCs' namespaces


def _render_transit(policy: PolicySpec, add: Any, rule: Any) -> None:
    """The veths between a node's namespace and its VPC namespaces (issue 12) carry a VPC's
    outbound flows to the node's uplink and their answers, nothing else: no flow may start
    towards a VPC namespace, and a VPC's packets may only leave by the uplink (never reach the
    default subnet or another VPC)."""
    fam = "inet"
    add(
        "chain",
        {
            "family": fam,
            "table": TABLE,
            "name": "transit",
            "type": "filter",
            "hook": "forward",
            "prio": -10,
            "policy": "accept",
        },
    )
    add(
        "chain",
        {
            "family": fam,
            "table": TABLE,
            "name": "transit_in",
            "type": "filter",
            "hook": "input",
            "prio": -10,
            "policy": "accept",
        },
    )
    new = _match({"ct": {"key": "state"}}, ["new", "invalid", "untracked"], "in")
    iif, oif = {"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}}
    if policy.network.vpc:  # a VPC's namespace: its uplink leads into the node's namespace
        # the one way in: a flow to one of its elastic IPs, mapped to its instance (nat_pre);
        # the instance's security groups still judge it (forward_ingress)
        dnat = _match({"ct": {"key": "status"}}, "dnat", "in")
        rule("transit", [_match(iif, UPLINK_DEV), dnat, {"accept": None}])
        for chain in ("transit", "transit_in"):
            rule(chain, [_match(iif, UPLINK_DEV), new, {"counter": None}, {"drop": None}])
        # the router's link to the VPC's other nodes carries routed flows between its
        # instances only: nothing from it to the namespace itself, nothing from it out of the
        # uplink (to the internet, flows leave from their own instance's node)
        link = _match(iif, ROUTER_LINK_PREFIX + "*")
        rule("transit_in", [link, {"counter": None}, {"drop": None}])
        rule("transit", [link, _match(oif, UPLINK_DEV), {"counter": None}, {"drop": None}])
        return
    # the elastic IPs of instances in VPC namespaces: from the outside, routed into their VPC
    routed = [r.public_ip for r in policy.routed]
    add(
        "set",
        {
            "family": fam,
            "table": TABLE,
            "name": "routed_eips",
            "type": "ipv4_addr",
            **({"elem": routed} if routed else {}),
        },
    )
    rule(
        "transit",
        [
            _match(iif, UPLINK_DEV),
            _match(oif, TRANSIT_PEERS),
            _match(_payload("ip", "daddr"), "@routed_eips"),
            {"accept": None},
        ],
    )
    rule("transit", [_match(iif, TRANSIT_PEERS), _match(oif, UPLINK_DEV, "!="), {"drop": None}])
    rule("transit", [_match(oif, TRANSIT_PEERS), new, {"counter": None}, {"drop": None}])
    rule("transit_in", [_match(iif, TRANSIT_PEERS), new, {"counter": None}, {"drop": None}])


def _render_guard(policy: PolicySpec, add: Any, rule: Any) -> None:
    fam, t = "bridge", GUARD
    ports = policy.ports

    def grule(chain: str, expr: list[Json]) -> None:
        rule(chain, expr, family=fam, table=t)

    add(
        "set",
        {
            "family": fam,
            "table": t,
            "name": "ports",
            "type": "ifname",
            **({"elem": sorted(p.tap for p in ports)} if ports else {}),
        },
    )
    add(
        "set",
        {
            "family": fam,
            "table": t,
            "name": "port_mac",
            "type": ["ifname", "ether_addr"],
            **({"elem": [{"concat": [p.tap, p.mac]} for p in ports]} if ports else {}),
        },
    )
    add(
        "set",
        {
            "family": fam,
            "table": t,
            "name": "port_ip",
            "type": ["ifname", "ipv4_addr"],
            **({"elem": [{"concat": [p.tap, p.address]} for p in ports]} if ports else {}),
        },
    )
    add(
        "chain",
        {
            "family": fam,
            "table": t,
            "name": "prerouting",
            "type": "filter",
            "hook": "prerouting",
            "prio": -300,
            "policy": "accept",
        },
    )
    add("chain", {"family": fam, "table": t, "name": "guard"})
    iif = {"meta": {"key": "iifname"}}
    grule("prerouting", [_match(iif, "@ports"), {"jump": {"target": "guard"}}])
    if policy.overlay_devs:
        # frames from the VXLAN devices joining the segment's other nodes: their own nodes
        # checked them at their taps. Not let in: another node's gateway (every node answers
        # for the same gateway address and MAC itself) and DHCP (each node serves its own
        # guests; a remote offer or NAK must not reach them)
        add(
            "set",
            {
                "family": fam,
                "table": t,
                "name": "overlay",
                "type": "ifname",
                "elem": sorted(policy.overlay_devs),
            },
        )
        from_overlay = _match(iif, "@overlay")
        for net in policy.networks:  # each subnet's gateway: its MAC, and ARP for it
            gw = gateway_mac(net.gateway)
            grule(
                "prerouting",
                [from_overlay, _match(_payload("ether", "saddr"), gw), {"drop": None}],
            )
            grule(
                "prerouting",
                [
                    from_overlay,
                    _match(_payload("ether", "type"), "arp"),
                    _match(_payload("arp", "daddr ip"), net.gateway),
                    {"drop": None},
                ],
            )
        grule(
            "prerouting",
            [
                from_overlay,
                _match(_payload("ether", "type"), "ip"),
                _match(_payload("ip", "protocol"), "udp"),
                _match(_payload("udp", "dport"), {"set": [67, 68]}),
                {"counter": None},
                {"drop": None},
            ],
        )
        grule("prerouting", [from_overlay, {"accept": None}])
    # a port the policy does not know (yet) passes nothing: frames from the bridge's own
    # stack never reach this hook, so every frame here came in through an instance's tap
    grule("prerouting", [{"counter": None}, {"drop": None}])
    grule(
        "guard",
        [
            _match({"concat": [iif, _payload("ether", "saddr")]}, "@port_mac", "!="),
            {"counter": None},
            {"drop": None},
        ],
    )
    grule(
        "guard",
        [
            _match(_payload("ether", "type"), "arp"),
            _match({"concat": [iif, _payload("arp", "saddr ip")]}, "@port_ip", "!="),
            {"counter": None},
            {"drop": None},
        ],
    )
    grule(
        "guard",
        [
            _match(_payload("ether", "type"), "ip"),
            _match(_payload("ip", "saddr"), "0.0.0.0"),
            _match(_payload("ip", "protocol"), "udp"),
            _match(_payload("udp", "dport"), 67),
            {"accept": None},
        ],
    )
    grule(
        "guard",
        [
            _match(_payload("ether", "type"), "ip"),
            _match({"concat": [iif, _payload("ip", "saddr")]}, "@port_ip", "!="),
            {"counter": None},
            {"drop": None},
        ],
    )
    grule("guard", [_match(_payload("ether", "type"), "ip6"), {"drop": None}])
    grule("guard", [{"accept": None}])


def _render_nat(policy: PolicySpec, add: Any, rule: Any) -> None:
    fam = "inet"
    dnat = [[p.public_ip, p.address] for p in policy.ports if p.public_ip]
    snat = [[p.address, p.public_ip] for p in policy.ports if p.public_ip]
    add(
        "map",
        {
            "family": fam,
            "table": TABLE,
            "name": "eip_dnat",
            "type": "ipv4_addr",
            "map": "ipv4_addr",
            **({"elem": dnat} if dnat else {}),
        },
    )
    add(
        "map",
        {
            "family": fam,
            "table": TABLE,
            "name": "eip_snat",
            "type": "ipv4_addr",
            "map": "ipv4_addr",
            **({"elem": snat} if snat else {}),
        },
    )
    add(
        "chain",
        {
            "family": fam,
            "table": TABLE,
            "name": "nat_pre",
            "type": "nat",
            "hook": "prerouting",
            "prio": -100,
            "policy": "accept",
        },
    )
    add(
        "chain",
        {
            "family": fam,
            "table": TABLE,
            "name": "nat_post",
            "type": "nat",
            "hook": "postrouting",
            "prio": 100,
            "policy": "accept",
        },
    )
    ip_daddr, ip_saddr = _payload("ip", "daddr"), _payload("ip", "saddr")
    rule(
        "nat_pre",
        [
            _match({"meta": {"key": "nfproto"}}, "ipv4"),
            {"dnat": {"family": "ip", "addr": {"map": {"key": ip_daddr, "data": "@eip_dnat"}}}},
        ],
    )
    subnets = [_prefix(n.cidr) for n in policy.networks]
    # hairpin: an instance reaching another's public address gets answers through the node
    for src in subnets:
        for dst in subnets:
            rule(
                "nat_post",
                [
                    _match(ip_saddr, src),
                    _match(ip_daddr, dst),
                    _match({"ct": {"key": "status"}}, "dnat", "in"),
                    {"masquerade": None},
                ],
            )
    if policy.uplink is not None:
        oif = _match({"meta": {"key": "oifname"}}, UPLINK_DEV)
        rule(
            "nat_post",
            [
                oif,
                _match({"meta": {"key": "nfproto"}}, "ipv4"),
                {"snat": {"family": "ip", "addr": {"map": {"key": ip_saddr, "data": "@eip_snat"}}}},
            ],
        )
        for subnet in subnets:
            rule("nat_post", [oif, _match(ip_saddr, subnet), {"masquerade": None}])
        if not policy.network.vpc:  # the VPC namespaces' flows, masqueraded there already
            rule("nat_post", [oif, _match(ip_saddr, _prefix(TRANSIT_CIDR)), {"masquerade": None}])


def document(policy: PolicySpec) -> Json:
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *render(policy)]}
