"""The rules every image field follows, wherever an image comes from (a recipe, an imported disk
or archive, a captured instance): bounded, printable, and safe to hand to a program as an
argument. ``default_user`` in particular becomes part of `corral ssh`'s command line."""

from __future__ import annotations

import re

from corral.errors import Invalid

# what useradd accepts by default on Debian (NAME_REGEX), and at most 32 characters
DEFAULT_USER = r"^[a-z_][a-z0-9_-]{0,31}$"
# names are looked up as NAME or NAME:VERSION, so no ':'; they never start with '-'
NAME = r"^[A-Za-z0-9()\[\]./'@_+][A-Za-z0-9()\[\] ./'@_+-]{0,127}$"
VERSION = r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,62}$"
DESCRIPTION_MAX = 2000
# C0 and C1 controls, DEL, surrogates and the non-characters XML 1.0 forbids
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")

_DEFAULT_USER = re.compile(DEFAULT_USER)
_NAME = re.compile(NAME)
_VERSION = re.compile(VERSION)


def check_default_user(value: str, field: str = "default_user") -> str:
    if not _DEFAULT_USER.fullmatch(value or ""):
        raise Invalid(
            f"{field} {value!r} is not a user name: give 1-32 lower-case letters, digits, "
            "'_' or '-', starting with a letter or '_' (e.g. root, debian)",
            field=field,
        )
    return value


def check_name(value: str, field: str = "name") -> str:
    if not _NAME.fullmatch(value or ""):
        raise Invalid(
            f"image {field} {value!r} must be 1-128 letters, digits, spaces or "
            "( ) [ ] . / ' @ _ + -, not starting with a space or '-' (no ':')",
            field=field,
        )
    return value


def check_version(value: str, field: str = "version") -> str:
    if not _VERSION.fullmatch(value or ""):
        raise Invalid(
            f"image {field} {value!r} must be 1-63 letters, digits or . _ + ~ -, "
            "starting with a letter or digit (e.g. 1, 12.4)",
            field=field,
        )
    return value


def check_description(value: str, field: str = "description") -> str:
    if len(value) > DESCRIPTION_MAX:
        raise Invalid(
            f"image {field} is {len(value)} characters; keep it to {DESCRIPTION_MAX}", field=field
        )
    if _UNPRINTABLE.search(value):
        raise Invalid(
            f"image {field} holds control or non-printable characters; use printable text",
            field=field,
        )
    return value


def check_all(name: str, version: str, description: str, default_user: str) -> None:
    check_name(name)
    check_version(version)
    check_description(description)
    check_default_user(default_user)
