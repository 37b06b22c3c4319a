"""Who is calling: ``Authorization: Bearer ACCESS_KEY_ID:SECRET`` (or HTTP Basic with the same
pair). Every request runs as the account that owns the key."""

from __future__ import annotations

import base64
import binascii

from fastapi import Depends, Request

from corral.api.context import ApiContext, get_context
from corral.api.ui import COOKIE, session_caller
from corral.controller.accounts import Caller
from corral.errors import Unauthorized


def _credentials(header: str) -> tuple[str, str]:
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as err:
            raise Unauthorized("the Basic credentials are not valid base64") from err
    elif scheme.lower() != "bearer":
        raise Unauthorized("use `Authorization: Bearer ACCESS_KEY_ID:SECRET`")
    key_id, sep, secret = value.partition(":")
    if not sep or not key_id or not secret:
        raise Unauthorized("credentials must be ACCESS_KEY_ID:SECRET")
    return key_id, secret


async def caller(request: Request, ctx: ApiContext = Depends(get_context)) -> Caller:
    header = request.headers.get("authorization")
    if not header and COOKIE in request.cookies:  # the dashboard's session (corral.api.ui)
        return session_caller(ctx, request)
    if not header:
        raise Unauthorized(
            "this API needs credentials: `Authorization: Bearer "
            "ACCESS_KEY_ID:SECRET` (the CLI reads them from "
            "<state-dir>/admin.credentials or CORRAL_ACCESS_KEY/CORRAL_SECRET_KEY)"
        )
    key_id, secret = _credentials(header)
    return await ctx.controller.accounts.authenticate(key_id, secret)
