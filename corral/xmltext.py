"""Characters XML 1.0 cannot carry (most C0 controls, UTF-16 surrogates, U+FFFE and U+FFFF).
Text that may end up in an EC2 answer is refused on input when it holds one, so no stored name
or description can make every later Describe* of an account unparseable; the EC2 XML writer
replaces any that still reach it (its last guard)."""

from __future__ import annotations

import re

from corral.errors import Invalid

FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def first_forbidden(value: str) -> tuple[int, str] | None:
    """Where the first character XML 1.0 forbids is, and its name (U+FFFE), or None."""
    m = FORBIDDEN.search(value)
    if m is None:
        return None
    return m.start(), f"U+{ord(m.group()):04X}"


def why(value: str) -> str | None:
    """A sentence saying what is wrong with ``value``, or None when it is fine."""
    found = first_forbidden(value)
    if found is None:
        return None
    where, char = found
    return (
        f"it holds {char} at position {where}, a character XML 1.0 cannot carry "
        "(control characters other than tab and newline, U+FFFE, U+FFFF, lone surrogates); "
        "remove it"
    )


def check(field: str, value: str) -> str:
    """``value`` unchanged, or Invalid naming ``field``."""
    problem = why(value)
    if problem is not None:
        raise Invalid(f"{field}: {problem}", field=field)
    return value


def valid(value: str) -> str:
    """For pydantic's AfterValidator: a ValueError (which pydantic names the field of)."""
    problem = why(value)
    if problem is not None:
        raise ValueError(problem)
    return value
