"""The metadata service at 169.254.169.254, in EC2's path layout, with IMDSv2: the HTTP side,
shared by the two places that answer it. The all-in-one daemon answers from its database
(``corral/api/metadata.py``); the agent of a node joined to a cluster answers from the documents
the controller pushed to it (``corral/node/imds.py``), so its guests get metadata, and keep
getting it while the controller is away. Both hand ``create_app`` a function that names the
instance asking, by the source address of its request, as an ``InstanceMetadata`` document.

That address cannot be forged: the bridge drops any frame whose MAC or source address is not its
tap's instance's (node/net/firewall.py).

IMDSv2: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1-21600) gives a
token bound to the instance (HMAC with a key kept in the state directory, so tokens survive a
restart); requests carrying `X-aws-ec2-metadata-token` must carry a valid one, and instances
launched with tokens `required` must carry one. The PUT's answer leaves with the instance's hop
limit as its IP TTL (set by nftables), so it travels no further than allowed.

This module is shared by the API and the agent and imports neither."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from corral.fsutil import atomic_write
from corral.node.spec import InstanceMetadata

Tree = dict[str, Any]
Resolver = Callable[[str], Awaitable[InstanceMetadata | None]]

BODY_LIMIT = 16 * 1024  # guests talk to the metadata service with empty bodies
API_VERSIONS = ["1.0", "2009-04-04", "2016-09-02", "2018-09-24", "2021-03-23"]
TOKEN_HEADER = "x-aws-ec2-metadata-token"
TTL_HEADER = "x-aws-ec2-metadata-token-ttl-seconds"
TTL_MAX = 21600


def _known_version(version: str) -> bool:
    return (
        version == "latest"
        or version in API_VERSIONS
        or bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", version))
    )


def _listing(node: Tree) -> str:
    names = []
    for k, v in node.items():
        if k.endswith("=") or "=" in k:  # public-keys: "0=name" lists as such
            names.append(k)
        else:
            names.append(k + "/" if isinstance(v, dict) else k)
    return "\n".join(names)


def _walk(tree: Tree, parts: list[str]) -> Any:
    node: Any = tree
    for part in parts:
        if not isinstance(node, dict):
            return None
        if part in node:
            node = node[part]
            continue
        # public-keys/0/ addresses the "0=name" entry
        match = next((v for k, v in node.items() if "=" in k and k.split("=", 1)[0] == part), None)
        if match is None:
            return None
        node = match
    return node


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Tokens:
    """IMDSv2 session tokens: ``payload.signature``, bound to one instance and an expiry."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self.key, payload.encode(), hashlib.sha256).digest())

    def issue(self, instance_id: str, ttl: int, now: float | None = None) -> str:
        expires = int((now or time.time()) + ttl)
        payload = _b64(json.dumps({"i": instance_id, "e": expires}).encode())
        return f"{payload}.{self._sign(payload)}"

    def valid(self, token: str, instance_id: str, now: float | None = None) -> bool:
        payload, _, sig = token.partition(".")
        if not payload or not hmac.compare_digest(sig, self._sign(payload)):
            return False
        try:
            data = json.loads(_unb64(payload))
        except ValueError:
            return False
        return bool(data.get("i") == instance_id and data.get("e", 0) > (now or time.time()))


def token_key(path: Path) -> bytes:
    """The HMAC key of IMDSv2 tokens, made once and kept (0600), so tokens outlive a restart."""
    try:
        key = path.read_bytes()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    key = os.urandom(32)
    atomic_write(path, key, mode=0o600)
    return key


class _BodyLimit:
    """Guests send empty bodies: anything past ``limit`` bytes is refused unread (413)."""

    def __init__(self, app: ASGIApp, limit: int = BODY_LIMIT) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next(
            (v for k, v in scope.get("headers", []) if k.lower() == b"content-length"), None
        )
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = bool(message.get("more_body", False))
            if len(body) > self.limit:
                await self._refuse(send)
                return
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        text = f"request bodies are limited to {self.limit} bytes".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", str(len(text)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": text})


def create_app(resolve: Resolver, key: bytes) -> FastAPI:
    """The service; ``resolve(address)`` is the document of the instance with that private
    address on this network, or None."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.add_middleware(_BodyLimit)
    tokens = Tokens(key)

    def refused(doc: InstanceMetadata, request: Request) -> PlainTextResponse | None:
        """The answer when this request may not read metadata, else None."""
        if doc.endpoint == "disabled":
            return PlainTextResponse(
                "the metadata endpoint is disabled for this instance", status_code=403
            )
        token = request.headers.get(TOKEN_HEADER)
        if token is not None and not tokens.valid(token, doc.instance_id):
            return PlainTextResponse("invalid or expired token", status_code=401)
        if token is None and doc.tokens == "required":
            return PlainTextResponse(
                "this instance requires IMDSv2: PUT /latest/api/token first", status_code=401
            )
        return None

    async def whoami(request: Request) -> InstanceMetadata | None:
        return await resolve(request.client.host if request.client else "")

    @app.get("/")
    async def root() -> PlainTextResponse:
        return PlainTextResponse("latest")

    # cloud-init asks for dated API versions (/2009-04-04/…): they all answer as latest
    @app.get("/{version}")
    @app.get("/{version}/")
    async def latest(version: str) -> PlainTextResponse:
        if not _known_version(version):
            return PlainTextResponse("not found", status_code=404)
        return PlainTextResponse("dynamic\nmeta-data\nuser-data")

    @app.put("/latest/api/token")
    async def token(request: Request) -> Response:
        found = await whoami(request)
        if found is None:
            return PlainTextResponse("no instance has this address", status_code=404)
        if "x-forwarded-for" in request.headers:
            return PlainTextResponse("forwarded requests may not get tokens", status_code=403)
        if found.endpoint == "disabled":
            return PlainTextResponse("the metadata endpoint is disabled", status_code=403)
        try:
            ttl = int(request.headers.get(TTL_HEADER, ""))
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= TTL_MAX:
            return PlainTextResponse(f"{TTL_HEADER} must be 1-{TTL_MAX} seconds", status_code=400)
        return PlainTextResponse(
            tokens.issue(found.instance_id, ttl), headers={TTL_HEADER: str(ttl)}
        )

    async def reader(version: str, request: Request) -> InstanceMetadata | Response:
        """The instance asking, or the answer when it may not read (unknown version or
        address, endpoint disabled, token missing or wrong)."""
        if not _known_version(version):
            return PlainTextResponse("not found", status_code=404)
        found = await whoami(request)
        if found is None:
            return PlainTextResponse("no instance has this address", status_code=404)
        return refused(found, request) or found

    @app.get("/{version}/user-data")
    async def user_data(version: str, request: Request) -> Response:
        found = await reader(version, request)
        if isinstance(found, Response):
            return found
        if not found.user_data:
            return PlainTextResponse("no user-data", status_code=404)
        data = base64.b64decode(found.user_data)
        return Response(data, media_type="application/octet-stream")

    @app.get("/{version}/{path:path}")
    async def lookup(version: str, path: str, request: Request) -> Response:
        found = await reader(version, request)
        if isinstance(found, Response):
            return found
        parts = [p for p in path.split("/") if p]
        node = _walk(found.tree, parts)
        if node is None:
            return PlainTextResponse("not found", status_code=404)
        if isinstance(node, dict):
            if not node:  # e.g. public-keys of an instance without keys: EC2 answers 404
                return PlainTextResponse("not found", status_code=404)
            return PlainTextResponse(_listing(node))
        return PlainTextResponse(str(node))

    return app
