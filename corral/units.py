"""Parsing and printing sizes and durations the way users write them (256M, 1G, 30s)."""

from __future__ import annotations

import re

from corral.errors import Invalid

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)
_MULT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: str | int, *, field: str = "size", default_unit: str = "") -> int:
    """Bytes from ``256M``, ``1G``, ``512MiB`` or a plain number (``default_unit`` applies)."""
    if isinstance(value, int):
        return value * _MULT[default_unit.upper()]
    m = _SIZE.match(str(value))
    if not m:
        raise Invalid(
            f"{field} {value!r} is not a size; write it like 256M, 1G or 512MiB", field=field
        )
    number, unit = float(m.group(1)), (m.group(2) or default_unit).upper()
    return int(number * _MULT[unit])


MAX_DISK = 16 << 40  # the largest root disk or volume (as EBS): qemu-img fails far beyond it


def check_disk(value: str | int, *, field: str = "disk", default_unit: str = "G") -> int:
    """Bytes of a disk size, refused (naming ``field``) when it is 0 or over MAX_DISK."""
    n = parse_size(value, field=field, default_unit=default_unit)
    if n <= 0 or n > MAX_DISK:
        raise Invalid(
            f"{field} {value!r} is not a disk size Corral makes: give a size above 0 and up "
            "to 16T (e.g. 2G)",
            field=field,
        )
    return n


def format_size(n: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if n >= _MULT[unit] and n % _MULT[unit] == 0:
            return f"{n // _MULT[unit]}{unit}"
    for unit in ("T", "G", "M", "K"):
        if n >= _MULT[unit]:
            return f"{n / _MULT[unit]:.1f}{unit}"
    return f"{n}B"


def format_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"
