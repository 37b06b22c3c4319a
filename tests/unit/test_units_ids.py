"""Sizes and durations as users write them; identifiers in AWS's forms; instance names."""

from __future__ import annotations

import re

import pytest

from corral import ids
from corral.errors import Code, Invalid
from corral.units import format_duration, format_size, parse_size

MiB = 1 << 20
GiB = 1 << 30


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("256M", 256 * MiB),
        ("1G", GiB),
        ("512MiB", 512 * MiB),
        ("512MB", 512 * MiB),
        ("1.5G", 3 * GiB // 2),
        ("64k", 64 << 10),
        (" 2 T ", 2 << 40),
        ("1024", 1024),
        ("0", 0),
    ],
)
def test_parse_size_reads_what_users_write(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_parse_size_applies_the_default_unit_to_plain_numbers() -> None:
    assert parse_size("12", default_unit="M") == 12 * MiB
    assert parse_size(12, default_unit="M") == 12 * MiB
    assert parse_size(2, default_unit="g") == 2 * GiB
    assert parse_size("1G", default_unit="M") == GiB  # an explicit unit wins


@pytest.mark.parametrize("text", ["", "abc", "-1M", "1X", "M", "1.2.3G", "12 parsecs"])
def test_parse_size_refuses_non_sizes_naming_the_field(text: str) -> None:
    with pytest.raises(Invalid) as info:
        parse_size(text, field="memory")
    assert (info.value.code, info.value.field) == (Code.INVALID, "memory")
    assert "256M" in info.value.message


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0B"),
        (512, "512B"),
        (1024, "1K"),
        (MiB, "1M"),
        (3 * MiB // 2, "1536K"),
        (256 * MiB, "256M"),
        (GiB, "1G"),
        (1 << 40, "1T"),
        (MiB + 1, "1.0M"),
        (1500, "1.5K"),
    ],
)
def test_format_size_prints_the_largest_exact_unit_else_one_decimal(n: int, text: str) -> None:
    assert format_size(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59.9, "59s"),
        (61, "1m01s"),
        (3599, "59m59s"),
        (3661, "1h01m"),
        (90000, "1d01h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# -- ids -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "prefix"), sorted(ids.PREFIXES.items()))
def test_new_ids_are_prefix_and_17_hex_digits(kind: str, prefix: str) -> None:
    value = ids.new_id(kind)
    assert re.fullmatch(rf"{prefix}-[0-9a-f]{{17}}", value)
    assert ids.is_id(kind, value)


def test_instance_id_format() -> None:
    assert re.fullmatch(r"i-[0-9a-f]{17}", ids.new_id("instance"))


def test_new_ids_are_unique() -> None:
    assert len({ids.new_id("instance") for _ in range(1000)}) == 1000


@pytest.mark.parametrize(
    "value",
    [
        "i-0123456789abcdef",
        "i-0123456789abcdef01",
        "i-0123456789ABCDEF0",
        "ami-0123456789abcdef0",
        "web",
        "",
        "i-",
    ],
)
def test_is_id_refuses_other_forms(value: str) -> None:
    assert not ids.is_id("instance", value)


def test_is_id_accepts_an_instance_id() -> None:
    assert ids.is_id("instance", "i-0123456789abcdef0")


def test_account_ids_are_twelve_digits_and_access_keys_look_like_aws() -> None:
    assert re.fullmatch(r"\d{12}", ids.new_account_id())
    key_id, secret = ids.new_access_key()
    assert re.fullmatch(r"CKIA[A-Z2-7]{16}", key_id)
    assert len(secret) == 40


def test_macs_are_locally_administered_in_qemus_range() -> None:
    assert re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", ids.new_mac())


@pytest.mark.parametrize("name", ["web", "a", "web-1", "0db", "a" * 63, "i-web"])
def test_check_name_accepts_host_names(name: str) -> None:
    assert ids.check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Web",
        "web_1",
        "-web",
        "web-",
        "a" * 64,
        "web.example",
        "wéb",
        "web 1",
    ],
)
def test_check_name_refuses_what_is_no_host_name(name: str) -> None:
    with pytest.raises(Invalid) as info:
        ids.check_name(name)
    assert (info.value.code, info.value.field) == (Code.INVALID, "name")
    assert "lower-case letters, digits and hyphens" in info.value.message


def test_check_name_refuses_a_name_that_looks_like_an_instance_id() -> None:
    with pytest.raises(Invalid) as info:
        ids.check_name("i-0123456789abcdef0")
    assert info.value.field == "name"
    assert "looks like an instance id" in info.value.message


def test_check_name_names_the_field_it_was_given() -> None:
    with pytest.raises(Invalid) as info:
        ids.check_name("Bad", field="hostname")
    assert info.value.field == "hostname"
