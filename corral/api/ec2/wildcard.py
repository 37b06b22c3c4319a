"""EC2 filter wildcards matched without regular expressions: ``*`` is any run of characters,
``?`` exactly one, and a backslash makes the next ``*``, ``?`` or ``\\`` literal (AWS's
``\\*amazon\\?\\\\`` is the string ``*amazon?\\``). A pattern is cut at its stars into segments;
the first must match at the start, the last at the end, and each middle one at its leftmost place
after the previous (leftmost is always safe, so nothing is ever retried). Literal segments are
found with Knuth-Morris-Pratt, so a match costs O(len(text) + len(pattern)); a segment holding
``?`` is tried at each start, at most O(len(text) x len(segment)). A regular expression took
seconds of event loop on ``*a*a*a*a*a*a*a*a*a*b`` against a 40-character name."""

from __future__ import annotations

from dataclasses import dataclass, field

ANY = None  # a ``?`` inside a segment
Segment = tuple[str | None, ...]
_SPECIAL = "*?\\"


@dataclass
class Steps:
    """Counts character comparisons (tests use it to show the work is linear)."""

    n: int = 0


@dataclass(frozen=True)
class Pattern:
    head: Segment
    middle: tuple[Segment, ...] = ()
    tail: Segment | None = None  # None: there was no star (the head is the whole pattern)
    exact: str | None = None  # the plain string when there is no wildcard at all
    _tables: tuple[tuple[int, ...] | None, ...] = field(default=(), compare=False)


def parse(value: str) -> Pattern:
    """The pattern a filter value stands for."""
    segments: list[list[str | None]] = [[]]
    i = 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value) and value[i + 1] in _SPECIAL:
            segments[-1].append(value[i + 1])
            i += 2
            continue
        if c == "*":
            segments.append([])
        else:
            segments[-1].append(ANY if c == "?" else c)
        i += 1
    if len(segments) == 1:
        head = tuple(segments[0])
        exact = None if ANY in head else "".join(c for c in head if c is not None)
        return Pattern(head, exact=exact)
    middle = tuple(tuple(s) for s in segments[1:-1] if s)
    tables = tuple(None if ANY in s else _failure(s) for s in middle)
    return Pattern(tuple(segments[0]), middle, tuple(segments[-1]), None, tables)


def match(pattern: Pattern, text: str, steps: Steps | None = None) -> bool:
    """Whether ``text`` matches ``pattern`` whole."""
    count = steps if steps is not None else Steps()
    if pattern.exact is not None:
        count.n += len(pattern.exact)
        return text == pattern.exact
    if pattern.tail is None:
        return len(text) == len(pattern.head) and _at(pattern.head, text, 0, count)
    head, tail = pattern.head, pattern.tail
    if len(head) + len(tail) > len(text):
        return False
    if not _at(head, text, 0, count) or not _at(tail, text, len(text) - len(tail), count):
        return False
    pos, end = len(head), len(text) - len(tail)
    for seg, table in zip(pattern.middle, pattern._tables, strict=True):
        found = _find(seg, table, text, pos, end, count)
        if found < 0:
            return False
        pos = found + len(seg)
    return True


def _at(seg: Segment, text: str, start: int, steps: Steps) -> bool:
    for k, c in enumerate(seg):
        steps.n += 1
        if c is not ANY and text[start + k] != c:
            return False
    return True


def _find(
    seg: Segment, table: tuple[int, ...] | None, text: str, start: int, end: int, steps: Steps
) -> int:
    """The leftmost place in ``text[start:end]`` where ``seg`` matches, or -1."""
    if table is None:  # holds a ``?``: try each start
        for s in range(start, end - len(seg) + 1):
            if _at(seg, text, s, steps):
                return s
        return -1
    k = 0  # Knuth-Morris-Pratt: characters of seg matched so far
    for i in range(start, end):
        c = text[i]
        while k and seg[k] != c:
            steps.n += 1
            k = table[k - 1]
        steps.n += 1
        if seg[k] == c:
            k += 1
            if k == len(seg):
                return i - k + 1
    return -1


def _failure(seg: Segment) -> tuple[int, ...]:
    """KMP's table: for each prefix, the length of its longest proper border."""
    out = [0] * len(seg)
    k = 0
    for i in range(1, len(seg)):
        while k and seg[i] != seg[k]:
            k = out[k - 1]
        if seg[i] == seg[k]:
            k += 1
        out[i] = k
    return tuple(out)
