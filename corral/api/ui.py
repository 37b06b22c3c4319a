"""The web dashboard at /ui: static pages that call the REST API from the browser. Signing in
trades an access key for a server-side session (an HttpOnly, SameSite=Strict cookie holding a
random token); the secret never reaches the page after the sign-in form. Requests carried by the
cookie that change anything must also send ``X-Corral-UI: 1`` (a header another site cannot
make a browser send), and websockets must come from the same origin."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import HTTPConnection

from corral.api.context import ApiContext, get_context
from corral.controller.accounts import Caller
from corral.errors import Forbidden, NotFound, Unauthorized

COOKIE = "corral_session"
HEADER = "x-corral-ui"
LIFETIME = 8 * 3600.0
STATIC = Path(__file__).parent / "ui_static"
TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
}

router = APIRouter(include_in_schema=False)


@dataclass
class Session:
    caller: Caller
    expires: float


class Sessions:
    def __init__(self) -> None:
        self.by_token: dict[str, Session] = {}

    def new(self, caller: Caller) -> str:
        now = time.monotonic()
        self.by_token = {t: s for t, s in self.by_token.items() if s.expires > now}
        token = secrets.token_urlsafe(32)
        self.by_token[token] = Session(caller, now + LIFETIME)
        return token

    def get(self, token: str | None) -> Caller | None:
        s = self.by_token.get(token or "")
        if s is None or s.expires <= time.monotonic():
            return None
        return s.caller

    def drop(self, token: str | None) -> None:
        self.by_token.pop(token or "", None)


def sessions(ctx: ApiContext) -> Sessions:
    found = ctx.extra.get("ui_sessions")
    if not isinstance(found, Sessions):
        found = Sessions()
        ctx.extra["ui_sessions"] = found
    return found


def session_caller(ctx: ApiContext, conn: HTTPConnection, websocket: bool = False) -> Caller:
    """The account of a request carried by the dashboard's cookie (refused without one)."""
    caller = sessions(ctx).get(conn.cookies.get(COOKIE))
    if caller is None:
        raise Unauthorized(
            "this API needs credentials: `Authorization: Bearer ACCESS_KEY_ID:SECRET` (the CLI "
            "reads them from <state-dir>/admin.credentials or CORRAL_ACCESS_KEY/"
            "CORRAL_SECRET_KEY), or a dashboard session (sign in at /ui)"
        )
    if websocket:
        origin, host = conn.headers.get("origin", ""), conn.headers.get("host", "")
        if origin.split("://", 1)[-1] != host:
            raise Forbidden(f"a dashboard stream must come from its own page (origin {origin!r})")
    elif conn.scope.get("method", "GET") not in ("GET", "HEAD") and conn.headers.get(HEADER) != "1":
        raise Forbidden(f"a dashboard request that changes something must send {HEADER}: 1")
    return caller


@router.get("/ui")
async def ui_index() -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/ui/static/{path:path}")
async def ui_static(path: str) -> Response:
    file = (STATIC / path).resolve()
    if not file.is_relative_to(STATIC.resolve()) or not file.is_file():
        raise NotFound(f"no such file {path}")
    return FileResponse(file, media_type=TYPES.get(file.suffix, "application/octet-stream"))


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    access_key_id: str = Field(min_length=1, max_length=128)
    secret_access_key: str = Field(min_length=1, max_length=256)


@router.post("/ui/login")
async def ui_login(req: SignIn, ctx: ApiContext = Depends(get_context)) -> Response:
    """Check the key once (401 with the usual error body when wrong); the browser keeps only
    the session cookie."""
    caller = await ctx.controller.accounts.authenticate(req.access_key_id, req.secret_access_key)
    resp = JSONResponse({"account": caller.account_name, "admin": caller.admin})
    resp.set_cookie(
        COOKIE,
        sessions(ctx).new(caller),
        max_age=int(LIFETIME),
        httponly=True,
        samesite="strict",
        path="/",
        secure=ctx.settings.api_url.startswith("https://"),
    )
    return resp


@router.post("/ui/logout")
async def ui_logout(request: Request, ctx: ApiContext = Depends(get_context)) -> Response:
    sessions(ctx).drop(request.cookies.get(COOKIE))
    resp = JSONResponse({"signed_in": False})
    resp.delete_cookie(COOKIE, path="/")
    return resp


@router.get("/ui/me")
async def ui_me(request: Request, ctx: ApiContext = Depends(get_context)) -> Response:
    caller = sessions(ctx).get(request.cookies.get(COOKIE))
    if caller is None:
        return JSONResponse({"signed_in": False}, status_code=401)
    return JSONResponse({"signed_in": True, "account": caller.account_name, "admin": caller.admin})
