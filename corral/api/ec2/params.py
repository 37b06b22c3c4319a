"""What each action accepts, as data: parameter patterns (``InstanceId.N``, ``Filter.N.Name``,
``BlockDeviceMapping.N.Ebs.VolumeSize``; ``N`` an index) and the AWS parameters Corral knows of
but does not implement (a trailing ``*`` covers every field below). A request is normalised
against its action's patterns before a handler sees it, the way AWS reads it: an un-indexed list
member (``KeyName=x``) and index 0 mean index 1. A name no pattern covers is refused:
``UnknownParameter`` for a name AWS does not have either, ``UnsupportedOperation`` for one it has
and Corral does not do. No parameter is ever ignored."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from corral.api.ec2.errors import Ec2Error

# names every request may carry that are not the action's parameters
ENVELOPE = ("Action", "Version")

DRY_RUN = ("DryRun",)
FILTERS = ("Filter.N.Name", "Filter.N.Value.N")
PAGES = ("MaxResults", "NextToken")
TAG_SPECS = (
    "TagSpecification.N.ResourceType",
    "TagSpecification.N.Tag.N.Key",
    "TagSpecification.N.Tag.N.Value",
)

Pattern = tuple[str, ...]


def _compile(patterns: Iterable[str]) -> tuple[Pattern, ...]:
    return tuple(tuple(p.split(".")) for p in patterns)


def _match(key: Sequence[str], pat: Pattern, i: int = 0, j: int = 0) -> list[str] | None:
    """``key``'s segments rewritten to ``pat``'s shape (explicit index 1 where the key had
    none, 1 for 0), or None when they do not fit."""
    if j == len(pat):
        return [] if i == len(key) else None
    seg = pat[j]
    if seg == "*":
        return list(key[i:]) if i < len(key) else None
    if seg == "N":
        if i < len(key) and key[i].isdigit():
            rest = _match(key, pat, i + 1, j + 1)
            if rest is not None:
                return [str(int(key[i]) or 1), *rest]
        rest = _match(key, pat, i, j + 1)  # an un-indexed member: the first one
        return None if rest is None else ["1", *rest]
    if i < len(key) and key[i] == seg:
        rest = _match(key, pat, i + 1, j + 1)
        return None if rest is None else [seg, *rest]
    return None


@dataclass(frozen=True)
class ParamSpec:
    """The parameters of one action: those it honours and the AWS ones it refuses."""

    accepts: tuple[str, ...]
    unsupported: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "_accepts", _compile(self.accepts))
        object.__setattr__(self, "_unsupported", _compile(self.unsupported))

    def normalise(self, action: str, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The request's parameters in their indexed form; an error for any name this action
        does not honour, and for one name given twice with different values."""
        out: dict[str, str] = {}
        for name, value in pairs:
            if name in ENVELOPE or name.lower().startswith("x-amz-"):
                out.setdefault(name, value)
                continue
            canon = self.canonical(action, name)
            if canon in out and out[canon] != value:
                raise Ec2Error(
                    "InvalidParameterCombination",
                    f"The parameter {name} is given twice (as {canon}) with different values",
                )
            out[canon] = value
        return list(out.items())

    def canonical(self, action: str, name: str) -> str:
        segs = name.split(".")
        for pat in self._accepts:  # type: ignore[attr-defined]
            hit = _match(segs, pat)
            if hit is not None:
                return ".".join(hit)
        for pat in self._unsupported:  # type: ignore[attr-defined]
            if _match(segs, pat) is not None:
                raise Ec2Error(
                    "UnsupportedOperation",
                    f"The parameter {name} is not supported by Corral's {action}; leave it out "
                    "(docs/ec2.md lists what each action takes)",
                )
        raise Ec2Error(
            "UnknownParameter", f"The parameter {name} is not recognized for the action {action}"
        )
