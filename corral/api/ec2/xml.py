"""EC2 responses as XML (namespace 2016-11-15): a result is a dict whose values are text,
numbers, booleans, datetimes, nested dicts, or lists rendered as ``<item>`` children. Built as
a string with escaping (faster than ElementTree for large DescribeInstances answers)."""

from __future__ import annotations

import datetime as dt
from typing import Any

NAMESPACE = "http://ec2.amazonaws.com/doc/2016-11-15/"
_ESC = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        # characters XML 1.0 cannot carry at all (e.g. echoed bad input, or text stored
        # before input was checked): the last guard, so every answer parses
        **{chr(c): "\ufffd" for c in range(32) if c not in (9, 10, 13)},
        **{chr(c): "\ufffd" for c in range(0xD800, 0xE000)},  # lone surrogates
        "\ufffe": "\ufffd",
        "\uffff": "\ufffd",
    }
)


def timestamp(when: dt.datetime | None) -> str | None:
    if when is None:
        return None
    return (
        when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    )


def _text(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, dt.datetime):
        return timestamp(value) or ""
    return str(value).translate(_ESC)


class Raw(str):
    """An already rendered fragment, written as it is (cached instance items)."""


def _write(out: list[str], name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, dict):
        _children(out, name, value)
    elif isinstance(value, list):
        _items(out, name, value)
    elif isinstance(value, Raw):
        out.append(value)
    else:
        out.append(f"<{name}>{_text(value)}</{name}>")


def _children(out: list[str], name: str, value: dict[str, Any]) -> None:
    out.append(f"<{name}>")
    append = out.append
    for k, v in value.items():
        if v is None:
            continue
        if type(v) is str:  # the common case, inline: large listings are mostly strings
            append(f"<{k}>{v.translate(_ESC)}</{k}>")
        else:
            _write(out, k, v)
    append(f"</{name}>")


def _items(out: list[str], name: str, value: list[Any]) -> None:
    if not value:
        out.append(f"<{name}/>")
        return
    out.append(f"<{name}>")
    for item in value:
        _write(out, "item", item)
    out.append(f"</{name}>")


def fragment(name: str, value: Any) -> Raw:
    """``value`` rendered once as ``<name>…</name>``, to be cached and written as it is."""
    out: list[str] = []
    _write(out, name, value)
    return Raw("".join(out))


def response(action: str, request_id: str, body: dict[str, Any]) -> bytes:
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        f'<{action}Response xmlns="{NAMESPACE}"><requestId>{request_id}</requestId>',
    ]
    for k, v in body.items():
        _write(out, k, v)
    out.append(f"</{action}Response>")
    return "".join(out).encode()


def error(code: str, message: str, request_id: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
        f"<Code>{_text(code)}</Code><Message>{_text(message)}</Message></Error></Errors>"
        f"<RequestID>{request_id}</RequestID></Response>"
    ).encode()
