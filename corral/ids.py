"""Resource identifiers in AWS's forms (``i-`` + 17 hex digits, ``ami-`` …) and their checks."""

from __future__ import annotations

import re
import secrets
import string

PREFIXES = {
    "instance": "i",
    "image": "ami",
    "key_pair": "key",
    "operation": "op",
    "network": "net",
    "node": "node",
    "volume": "vol",
    "snapshot": "snap",
    "security_group": "sg",
    "allocation": "eipalloc",
    "association": "eipassoc",
    "reservation": "r",
    "security_group_rule": "sgr",
    "placement_group": "pg",
    "vpc": "vpc",
    "subnet": "subnet",
    "internet_gateway": "igw",
    "route_table": "rtb",
    "network_interface": "eni",
}

_HEX17 = re.compile(r"^[0-9a-f]{17}$")
_HEX = re.compile(r"^(?:[0-9a-f]{8}|[0-9a-f]{17})$")  # AWS's short (older) and long forms


def new_id(kind: str) -> str:
    return f"{PREFIXES[kind]}-{secrets.token_hex(9)[:17]}"


def is_id(kind: str, value: str) -> bool:
    """Whether ``value`` is an id of ``kind`` in either of AWS's forms: the prefix and 17 hex
    digits, or the short form with 8 (``i-1234abcd``)."""
    prefix, _, rest = value.partition("-")
    return prefix == PREFIXES[kind] and bool(_HEX.match(rest))


def new_account_id() -> str:
    return "".join(secrets.choice(string.digits) for _ in range(12))


def new_access_key() -> tuple[str, str]:
    alphabet = string.ascii_uppercase + "234567"
    key_id = "CKIA" + "".join(secrets.choice(alphabet) for _ in range(16))
    secret = secrets.token_urlsafe(30)[:40]
    return key_id, secret


def new_mac() -> str:
    """A locally administered unicast MAC in QEMU's 52:54:00 range."""
    tail = secrets.token_bytes(3)
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def check_name(name: str, field: str = "name") -> str:
    """Instance names become host names: lower-case letters, digits and hyphens."""
    from corral.errors import Invalid

    if not NAME_RE.match(name):
        raise Invalid(
            f"{field} {name!r} is not a valid host name: use 1-63 lower-case letters, digits "
            "and hyphens, starting and ending with a letter or digit",
            field=field,
        )
    if _HEX.match(name.partition("-")[2]) and name.startswith("i-"):
        raise Invalid(f"{field} {name!r} looks like an instance id; pick another name", field=field)
    return name
