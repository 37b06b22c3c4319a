"""EC2 filter wildcards: AWS's meaning (``*``, ``?``, backslash escapes), and work that grows
linearly with the text, never with the number of stars (a regex took 6 s on the pattern below)."""

from __future__ import annotations

import random
import re

import pytest

from corral.api.ec2 import wildcard
from corral.api.ec2.wildcard import Steps
from tests.unit.ec2.conftest import World

PATHOLOGICAL = "*a*a*a*a*a*a*a*a*a*b"


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("web", "web", True),
        ("web", "web1", False),
        ("w*", "web", True),
        ("w*", "w", True),
        ("*", "", True),
        ("?", "", False),
        ("?", "x", True),
        ("d?", "db", True),
        ("d?", "d", False),
        ("*b", "ab", True),
        ("*ab*", "xxabyy", True),
        ("a*b*c", "abc", True),
        ("a*b*c", "acb", False),
        ("a**c", "ac", True),
        ("*aba*", "ababa", True),
        ("*abab?", "abaababx", True),
        ("a?c*d", "abcxd", True),
        ("a?c*d", "acd", False),
        ("\\*amazon\\?\\\\", "*amazon?\\", True),
        ("\\*amazon\\?\\\\", "xamazonx\\", False),
        ("\\*", "*", True),
        ("\\*", "x", False),
        ("a\\b", "a\\b", True),  # a backslash before an ordinary character is itself
        ("trail\\", "trail\\", True),
        (PATHOLOGICAL, "a" * 40, False),
        (PATHOLOGICAL, "a" * 40 + "b", True),
    ],
)
def test_wildcards_mean_what_aws_says(pattern: str, text: str, expected: bool) -> None:
    assert wildcard.match(wildcard.parse(pattern), text) is expected


def _oracle(pattern: str, text: str) -> bool:
    """The same meaning as a regular expression (fine for short random strings)."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern) and pattern[i + 1] in "*?\\":
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "*" else "." if c == "?" else re.escape(c))
        i += 1
    return re.fullmatch("".join(out), text, re.DOTALL) is not None


def test_matcher_agrees_with_a_regular_expression_on_random_input() -> None:
    rng = random.Random(9)
    for _ in range(5000):
        pattern = "".join(rng.choice("ab*?\\") for _ in range(rng.randint(0, 8)))
        text = "".join(rng.choice("ab*?\\") for _ in range(rng.randint(0, 10)))
        assert wildcard.match(wildcard.parse(pattern), text) == _oracle(pattern, text), (
            pattern,
            text,
        )


@pytest.mark.parametrize("stars", [9, 11, 40])
def test_pathological_pattern_costs_linear_steps(stars: int) -> None:
    pattern = wildcard.parse("*a" * stars + "*b")
    for n in (1_000, 100_000):
        steps = Steps()
        assert not wildcard.match(pattern, "a" * n, steps)
        # each text character is looked at a small, fixed number of times, however many stars
        assert steps.n <= 3 * (n + 2 * stars + 2), (stars, n, steps.n)


def test_repeating_literal_segments_stay_linear() -> None:
    """Knuth-Morris-Pratt: a segment that almost matches everywhere does not rescan."""
    pattern = wildcard.parse("*" + "a" * 500 + "b*")
    n = 200_000
    steps = Steps()
    assert not wildcard.match(pattern, "a" * n, steps)
    assert steps.n <= 3 * n


def test_question_marks_cost_at_most_text_times_segment() -> None:
    seg = "a?" * 20 + "b"
    pattern = wildcard.parse("*" + seg + "*")
    n = 20_000
    steps = Steps()
    assert not wildcard.match(pattern, "a" * n, steps)
    assert steps.n <= n * len(seg)


async def test_pathological_filter_answers_over_the_wire(world: World) -> None:
    ec2 = world.admin
    name = "a" * 40
    await ec2.call("CreateSecurityGroup", GroupName=name, Description="d")
    hit = "a" * 39 + "b"
    await ec2.call("CreateSecurityGroup", GroupName=hit, Description="d")
    out = await ec2.call(
        "DescribeSecurityGroups",
        Filters=[{"Name": "group-name", "Values": ["*a" * 11 + "*b"]}],
    )
    assert [g["GroupName"] for g in out["SecurityGroups"]] == [hit]
