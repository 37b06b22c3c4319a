"""``Corral-Pending-Operations``: the network pushes a request recorded that had not finished
when it answered (a node did not answer in time; controller/network_push.py), so a REST client
can follow them (``GET /v1/operations/{id}``). The EC2 API answers as AWS does, without it."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.controller.network_push import unfinished

HEADER = b"corral-pending-operations"


class PendingPushes:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        found: list[str] = []  # filled by NetworkPushes.settle in this request's context
        token = unfinished.set(found)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and found:
                headers = list(message.get("headers", []))
                headers.append((HEADER, ",".join(dict.fromkeys(found)).encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            unfinished.reset(token)
