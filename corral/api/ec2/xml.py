"""EC2 responses as XML (namespace 2016-11-15): a result is a dict whose values are text,
numbers, booleans, datetimes, nested dicts, or lists rendered as ``<item>`` children. Built as
a string with escaping (faster than ElementTree for large DescribeInstances answers)."""

from __future__ import annotations

import datetime as dt
from typing import Any

NAMESPACE = "http://ec2.amazonaws.com/doc/2016-11-15/"
_ESC = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})


def timestamp(when: dt.datetime | None) -> str | None:
    if when is None:
        return None
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{when.microsecond // 1000:03d}Z"


def _text(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, dt.datetime):
        return timestamp(value) or ""
    return str(value).translate(_ESC)


def _write(out: list[str], name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, dict):
        out.append(f"<{name}>")
        for k, v in value.items():
            _write(out, k, v)
        out.append(f"</{name}>")
    elif isinstance(value, list):
        if not value:
            out.append(f"<{name}/>")
            return
        out.append(f"<{name}>")
        for item in value:
            _write(out, "item", item)
        out.append(f"</{name}>")
    else:
        out.append(f"<{name}>{_text(value)}</{name}>")


def response(action: str, request_id: str, body: dict[str, Any]) -> bytes:
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n',
           f'<{action}Response xmlns="{NAMESPACE}"><requestId>{request_id}</requestId>']
    for k, v in body.items():
        _write(out, k, v)
    out.append(f"</{action}Response>")
    return "".join(out).encode()


def error(code: str, message: str, request_id: str) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{_text(code)}</Code><Message>{_text(message)}</Message></Error></Errors>"
            f"<RequestID>{request_id}</RequestID></Response>").encode()
