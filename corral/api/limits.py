"""Request bodies are bounded before anything reads them: an ASGI middleware refuses a body
whose Content-Length is over its route's limit at once, and reads any other body (chunked ones
too) only up to that limit before the handler, authentication included, sees it. Image
uploads are the exception: their handler authenticates first and then streams the body to
disk, so they pass through untouched. Without this, an unsigned 400 MB POST was read whole
into memory (236 MB to 1 GB) before the signature was even looked at."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.errors import CorralError, Invalid, TooLarge
from corral.imds import BODY_LIMIT

KIB = 1024
MIB = 1024 * KIB
JSON_LIMIT = 1 * MIB  # REST bodies (user-data is at most 16 KiB on EC2; plans are small)
EC2_LIMIT = 256 * KIB  # Query API forms: 16 KiB of user-data base64'd, many filters
METADATA_LIMIT = BODY_LIMIT  # guests talk to the metadata service with empty bodies
STREAMED = ("/v1/images/import",)  # handlers that authenticate, then stream to disk


@dataclass(frozen=True)
class Limits:
    """The byte limit for a path; None: the handler streams it itself."""

    default: int = JSON_LIMIT
    ec2: int = EC2_LIMIT
    streamed: tuple[str, ...] = STREAMED

    def __call__(self, path: str) -> int | None:
        if path in self.streamed:
            return None
        return self.ec2 if path == "/" else self.default


ErrorRenderer = Callable[[Scope, CorralError], tuple[bytes, str]]


def json_error(_scope: Scope, err: CorralError) -> tuple[bytes, str]:
    return json.dumps({"error": err.to_dict()}).encode(), "application/json"


class BodyLimit:
    """The middleware. ``render`` turns the refusal into the route's own error format (EC2 XML
    at ``/``, JSON elsewhere)."""

    def __init__(
        self,
        app: ASGIApp,
        limits: Callable[[str], int | None] = Limits(),
        render: ErrorRenderer = json_error,
    ) -> None:
        self.app, self.limits, self.render = app, limits, render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits(scope.get("path", "/"))
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if isinstance(declared, CorralError):
            await self._refuse(scope, send, declared)
            return
        if declared is not None and declared > limit:
            await self._refuse(scope, send, _too_large(declared, limit))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(scope, send, _too_large(None, limit))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _refuse(self, scope: Scope, send: Send, err: CorralError) -> None:
        body, media_type = self.render(scope, err)
        await send(
            {
                "type": "http.response.start",
                "status": err.http_status,
                # the rest of the body is never read: the connection cannot be reused
                "headers": [
                    (b"content-type", media_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | CorralError | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            text = value.decode("latin-1").strip()
            if not text.isdigit():
                return Invalid(
                    f"Content-Length {text!r} is not a byte count", field="content-length"
                )
            return int(text)
    return None


def _too_large(declared: int | None, limit: int) -> TooLarge:
    size = f"{declared} bytes" if declared is not None else "more"
    return TooLarge(
        f"the request body is too large ({size}; this route takes at most {limit} bytes); "
        "send less (images are uploaded with POST /v1/images/import, which streams)",
        field="body",
    )


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls wait for the client to go away, as before

    return replay
