"""Request bodies are bounded before anything reads them whole, authentication included: an
oversized body is refused with 413 from its Content-Length alone, a chunked one after at most
the route's limit has been read; image uploads are read only after authentication."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from corral.api import limits
from corral.api.metadata import create_app as metadata_app
from corral.controller.service import Controller

CHUNK = 64 * 1024
HUGE = 400 * 1024 * 1024  # the unsigned 400 MB POST


@dataclass
class Client:
    """One request at the ASGI level: the body is made lazily, chunk by chunk, and we count
    how much of it the server pulled."""

    body_size: int
    pulled: int = 0
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    answer: bytes = b""

    async def receive(self) -> dict[str, Any]:
        if self.pulled >= self.body_size:
            return {"type": "http.disconnect"}
        n = min(CHUNK, self.body_size - self.pulled)
        self.pulled += n
        return {"type": "http.request", "body": b"A" * n, "more_body": self.pulled < self.body_size}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            self.answer += message.get("body", b"")


async def _send(
    app: Any,
    method: str,
    path: str,
    size: int,
    *,
    declare: bool,
    headers: Sequence[tuple[str, str]] = (),
) -> Client:
    hdrs = [(k.encode(), v.encode()) for k, v in headers]
    if declare:
        hdrs.append((b"content-length", str(size).encode()))
    else:
        hdrs.append((b"transfer-encoding", b"chunked"))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": hdrs,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8773),
        "state": {},
    }
    client = Client(size)
    await app(scope, client.receive, client.send)
    return client


FORM = [("content-type", "application/x-www-form-urlencoded")]


async def test_unsigned_huge_ec2_post_is_413_without_reading_the_body(
    app_transport: Any,
) -> None:
    c = await _send(app_transport.app, "POST", "/", HUGE, declare=True, headers=FORM)
    assert c.status == 413
    assert c.pulled == 0
    assert ET.fromstring(c.answer).findtext("Errors/Error/Code") == "RequestEntityTooLarge"
    assert c.headers["connection"] == "close"


async def test_unsigned_huge_chunked_ec2_post_reads_at_most_the_limit(app_transport: Any) -> None:
    c = await _send(app_transport.app, "POST", "/", HUGE, declare=False, headers=FORM)
    assert c.status == 413
    assert c.pulled <= limits.EC2_LIMIT + CHUNK
    assert ET.fromstring(c.answer).findtext("Errors/Error/Code") == "RequestEntityTooLarge"


async def test_huge_rest_body_is_413_json_before_authentication(app_transport: Any) -> None:
    for declare in (True, False):
        c = await _send(
            app_transport.app,
            "POST",
            "/v1/instances",
            HUGE,
            declare=declare,
            headers=[("content-type", "application/json")],
        )
        assert c.status == 413, c.answer
        assert c.pulled <= limits.JSON_LIMIT + CHUNK
        err = json.loads(c.answer)["error"]
        assert (err["code"], err["field"]) == ("too_large", "body")
        assert "at most" in err["message"]


async def test_bodies_under_the_limit_still_reach_the_handler(app_transport: Any) -> None:
    """Unsigned and small: read whole, then refused by the handler for what it is."""
    c = await _send(app_transport.app, "POST", "/", 1000, declare=False, headers=FORM)
    assert c.pulled == 1000
    assert c.status in (400, 401), c.answer
    assert ET.fromstring(c.answer).findtext("Errors/Error/Code") != "RequestEntityTooLarge"


async def test_image_upload_is_read_only_after_authentication(app_transport: Any) -> None:
    for declare in (True, False):
        c = await _send(
            app_transport.app,
            "POST",
            "/v1/images/import",
            HUGE,
            declare=declare,
            headers=[("content-type", "application/octet-stream")],
        )
        assert c.status == 401, c.answer
        assert c.pulled == 0


async def test_bad_content_length_is_400(app_transport: Any) -> None:
    scope_headers = [("content-length", "12abc")]
    c = await _send(app_transport.app, "POST", "/v1/keys", 10, declare=False, headers=scope_headers)
    assert c.status == 400
    assert json.loads(c.answer)["error"]["field"] == "content-length"


async def test_metadata_service_bounds_bodies(ctrl: Controller) -> None:
    app: FastAPI = metadata_app(ctrl, "net-x", b"k" * 32)
    c = await _send(app, "PUT", "/latest/api/token", HUGE, declare=False)
    assert c.status == 413
    assert c.pulled <= limits.METADATA_LIMIT + CHUNK
