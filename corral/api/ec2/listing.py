"""What every Describe call shares: filters with AWS's wildcards (``*``, ``?``, ``\\`` escapes)
and tag filters (``tag:<key>``, ``tag-key``, ``tag-value``), and pagination with AWS's rules
(``MaxResults`` bounds, opaque ``NextToken`` bound to the request that made it, no
``MaxResults`` together with an ID list where AWS forbids it)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from corral.api.ec2 import wildcard
from corral.api.ec2.errors import Ec2Error
from corral.api.ec2.parse import Filter, Params

T = TypeVar("T")
Getter = Callable[[Any], "str | int | bool | Iterable[str] | None"]
_TOKEN_KEY = secrets.token_bytes(32)  # tokens live as long as the process, as on AWS (hours)


def _as_strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, (str, int, float)):
        return [str(value)]
    return [str(v) for v in value if v is not None]


def _nothing(_: Any) -> list[str]:
    return []


class Filters:
    """Filters as a predicate; ``known`` maps filter names to getters, ``tags`` gives an
    item's tags. ``absent`` names filters AWS documents for the call on attributes Corral's
    resources never have (a spot request id, a VPC, an IAM profile): they are valid names
    and match nothing, as on AWS for a resource without the attribute. An unknown filter name
    is an error that lists the known ones."""

    def __init__(
        self,
        filters: Sequence[Filter],
        known: dict[str, Getter],
        tags: Callable[[Any], dict[str, str]] | None = None,
        absent: Iterable[str] = (),
    ) -> None:
        absent = frozenset(absent)
        self.tests: list[tuple[Callable[[Any], list[str]], list[wildcard.Pattern]]] = []
        get: Callable[[Any], list[str]]
        for f in filters:
            patterns = [wildcard.parse(v) for v in f.values]
            if f.name.startswith("tag:") and tags is not None:
                get = _tag_getter(tags, f.name[4:])
            elif f.name == "tag-key" and tags is not None:
                get = _keys_getter(tags)
            elif f.name == "tag-value" and tags is not None:
                get = _values_getter(tags)
            elif f.name in known:
                get = _known_getter(known[f.name])
            elif f.name in absent:
                get = _nothing
            else:
                names = sorted([*known, *absent]) + (
                    ["tag:<key>", "tag-key", "tag-value"] if tags else []
                )
                raise Ec2Error(
                    "InvalidParameterValue",
                    f"The filter '{f.name}' is invalid; this call knows {', '.join(names)}",
                )
            self.tests.append((get, patterns))

    def __call__(self, item: Any) -> bool:
        for get, patterns in self.tests:
            values = get(item)
            if not any(_match(p, v) for p in patterns for v in values):
                return False
        return True


TagsOf = Callable[[Any], dict[str, str]]


def _tag_getter(tags: TagsOf, key: str) -> Callable[[Any], list[str]]:
    return lambda it: _as_strings(tags(it).get(key))


def _keys_getter(tags: TagsOf) -> Callable[[Any], list[str]]:
    return lambda it: list(tags(it))


def _values_getter(tags: TagsOf) -> Callable[[Any], list[str]]:
    return lambda it: list(tags(it).values())


def _known_getter(getter: Getter) -> Callable[[Any], list[str]]:
    return lambda it: _as_strings(getter(it))


def _match(p: wildcard.Pattern, v: str) -> bool:
    return wildcard.match(p, v)


def _fingerprint(action: str, account: str, p: Params) -> str:
    parts = sorted((k, v) for k, v in p.raw.items() if k not in ("MaxResults", "NextToken"))
    return hashlib.sha256(json.dumps([action, account, parts]).encode()).hexdigest()[:16]


def paginate(
    items: list[T],
    p: Params,
    action: str,
    account: str,
    lo: int,
    hi: int,
    ids_param: str | None = None,
    clamp: bool = False,
) -> tuple[list[T], str | None]:
    """One page of ``items`` and the token for the next, by AWS's rules for this call."""
    start, size, fp = window(p, action, account, lo, hi, ids_param, clamp)
    if size is None:
        return items[start:], None
    return items[start : start + size], next_token(start, size, len(items), fp)


def next_token(start: int, size: int, total: int, fp: str) -> str | None:
    nxt = start + size
    return _make_token(nxt, fp) if nxt < total else None


def window(
    p: Params,
    action: str,
    account: str,
    lo: int,
    hi: int,
    ids_param: str | None = None,
    clamp: bool = False,
) -> tuple[int, int | None, str]:
    """Where the page starts, its size (None: everything), and the request's fingerprint the
    next token is bound to; errors by AWS's rules on MaxResults and NextToken. With ``clamp``,
    a MaxResults above ``hi`` serves ``hi`` (AWS's DescribeVolumes and DescribeSnapshots do, and
    the AWS CLI sends 1000 to both); below ``lo`` it is refused everywhere."""
    max_results = p.get("MaxResults")
    token = p.get("NextToken")
    if max_results is not None and ids_param and p.strings(ids_param):
        raise Ec2Error(
            "InvalidParameterCombination",
            f"The parameter {ids_param} cannot be used with the parameter MaxResults",
        )
    size = None
    if max_results is not None:
        try:
            size = int(max_results)
        except ValueError as err:
            raise Ec2Error(
                "InvalidParameterValue",
                f"Value ({max_results}) for parameter MaxResults is invalid. "
                "It must be an integer.",
            ) from err
        if clamp and size > hi:
            size = hi
        if not lo <= size <= hi:
            raise Ec2Error(
                "InvalidParameterValue",
                f"Value ( {size} ) for parameter maxResults is invalid. Expecting a "
                f"value between {lo} and {hi}.",
            )
    start = 0
    fp = _fingerprint(action, account, p)
    if token:
        start = _read_token(token, fp)
    return start, size, fp


def _make_token(offset: int, fp: str) -> str:
    body = json.dumps({"o": offset, "f": fp}, separators=(",", ":")).encode()
    mac = hmac.new(_TOKEN_KEY, body, hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(body + mac).decode().rstrip("=")


def _read_token(token: str, fp: str) -> int:
    bad = Ec2Error(
        "InvalidPaginationToken",
        f"The pagination token {token!r} is invalid or expired; start again without NextToken",
    )
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as err:
        raise bad from err
    body, mac = raw[:-12], raw[-12:]
    if not hmac.compare_digest(hmac.new(_TOKEN_KEY, body, hashlib.sha256).digest()[:12], mac):
        raise bad
    data = json.loads(body)
    if data.get("f") != fp:
        raise Ec2Error(
            "InvalidPaginationToken",
            "The pagination token was made for a request with other parameters; "
            "repeat the same filters with it",
        )
    return int(data["o"])
