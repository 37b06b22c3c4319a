"""Query API parameters: flat ``Name=Value`` pairs with lists as ``X.N`` and structures as
``X.N.Field``; filters (``Filter.N.Name`` / ``Filter.N.Value.M``), tags and tag
specifications, booleans, integers. Every error names the parameter."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass

from corral.api.ec2.errors import Ec2Error, invalid, missing

_INDEX = re.compile(r"^(\d+)(?:\.(.*))?$")


@dataclass(frozen=True)
class Filter:
    name: str
    values: tuple[str, ...]


class Params:
    """One request's parameters (names are case-sensitive, as on AWS)."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.raw: dict[str, str] = {}
        for k, v in pairs:
            self.raw.setdefault(k, v)

    def __contains__(self, name: str) -> bool:
        return name in self.raw

    def get(self, name: str, default: str | None = None, required: bool = False) -> str | None:
        value = self.raw.get(name)
        if value is None:
            if required:
                raise missing(name)
            return default
        return value

    def need(self, name: str) -> str:
        value = self.raw.get(name)
        if value is None or value == "":
            raise missing(name)
        return value

    def integer(
        self, name: str, default: int | None = None, lo: int | None = None, hi: int | None = None
    ) -> int | None:
        value = self.raw.get(name)
        if value is None:
            return default
        try:
            n = int(value)
        except ValueError as err:
            raise invalid(name, value, "It must be an integer.") from err
        if (lo is not None and n < lo) or (hi is not None and n > hi):
            raise invalid(name, value, f"It must be between {lo} and {hi}.")
        return n

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.raw.get(name)
        if value is None:
            return default
        low = value.lower()
        if low not in ("true", "false"):
            raise invalid(name, value, "It must be true or false.")
        return low == "true"

    def base64(self, name: str) -> bytes | None:
        value = self.raw.get(name)
        if value is None:
            return None
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as err:
            raise invalid(name, "...", "It must be base64-encoded.") from err

    def _indexed(self, prefix: str) -> dict[int, dict[str, str]]:
        out: dict[int, dict[str, str]] = {}
        head = prefix + "."
        for k, v in self.raw.items():
            if not k.startswith(head):
                continue
            m = _INDEX.match(k[len(head) :])
            if m is None:
                raise Ec2Error(
                    "InvalidParameter", f"parameter {k} is malformed: expected {prefix}.N"
                )
            out.setdefault(int(m.group(1)), {})[m.group(2) or ""] = v
        return dict(sorted(out.items()))

    def strings(self, prefix: str) -> list[str]:
        """``Prefix.1``, ``Prefix.2`` … in index order."""
        return [d[""] for d in self._indexed(prefix).values() if "" in d]

    def group(self, prefix: str) -> list[Params]:
        """Structures ``Prefix.N.Field…`` as one Params each (fields relative)."""
        return [Params((k, v) for k, v in d.items() if k) for d in self._indexed(prefix).values()]

    def filters(self) -> list[Filter]:
        out = []
        for i, sub in enumerate(self.group("Filter"), 1):
            name = sub.get("Name")
            if not name:
                raise missing(f"Filter.{i}.Name")
            out.append(Filter(name, tuple(sub.strings("Value"))))
        return out

    def tags(self, prefix: str = "Tag") -> dict[str, str]:
        out = {}
        for i, sub in enumerate(self.group(prefix), 1):
            key = sub.get("Key")
            if key is None:
                raise missing(f"{prefix}.{i}.Key")
            out[key] = sub.get("Value", "") or ""
        return out

    def tag_specs(self, allowed: tuple[str, ...]) -> dict[str, dict[str, str]]:
        """TagSpecification.N: tags per resource type."""
        out: dict[str, dict[str, str]] = {}
        for i, sub in enumerate(self.group("TagSpecification"), 1):
            rtype = sub.get("ResourceType")
            if rtype is None:
                raise missing(f"TagSpecification.{i}.ResourceType")
            if rtype not in allowed:
                raise invalid(
                    f"TagSpecification.{i}.ResourceType",
                    rtype,
                    f"Tags here may be for: {', '.join(allowed)}.",
                )
            out.setdefault(rtype, {}).update(sub.tags("Tag"))
        return out
