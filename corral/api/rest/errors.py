"""Error responses: every failure is ``{"error": {code, message, field, resource}}`` with the
status from the one table in ``corral.errors``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from corral.errors import CorralError
from corral.models import ErrorResponse

RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "invalid input (the field is named)"},
    401: {"model": ErrorResponse, "description": "missing or wrong credentials"},
    403: {"model": ErrorResponse, "description": "not allowed for this account"},
    404: {"model": ErrorResponse, "description": "no such resource"},
    409: {"model": ErrorResponse, "description": "exists already, wrong state, or no room"},
    503: {"model": ErrorResponse, "description": "the host lacks something Corral needs"},
}


def body(
    code: str, message: str, field: str | None = None, resource: str | None = None
) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field, "resource": resource}}


def install(app: FastAPI) -> None:
    @app.exception_handler(CorralError)
    async def corral_error(_r: Request, err: CorralError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if err.http_status == 401 else None
        return JSONResponse(
            status_code=err.http_status, content={"error": err.to_dict()}, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_r: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        if first.get("type") == "json_invalid":
            where = first.get("loc", [None, None])[-1]
            return JSONResponse(
                status_code=400,
                content=body(
                    "invalid", f"the request body is not valid JSON (at character {where})"
                ),
            )
        loc = [str(p) for p in first.get("loc", []) if p not in ("body", "query", "path")]
        field = ".".join(loc) or None
        msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        message = f"{field}: {msg}" if field else msg
        return JSONResponse(status_code=400, content=body("invalid", message, field))

    @app.exception_handler(HTTPException)
    async def http_error(_r: Request, err: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "invalid", 401: "unauthorized"}.get(
            err.status_code, "invalid"
        )
        return JSONResponse(status_code=err.status_code, content=body(code, str(err.detail)))


@contextlib.contextmanager
def rest_fields(names: dict[str, str]) -> Iterator[None]:
    """Controller errors that name EC2's parameter (``GroupName``) name the REST body's field
    (``name``) instead, so the message points at what the caller sent."""
    try:
        yield
    except CorralError as err:
        if err.field in names:
            err.field = names[err.field]
        raise
