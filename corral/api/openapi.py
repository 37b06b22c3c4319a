"""The OpenAPI spec, generated from the code and committed as docs/api/openapi.json.

    python -m corral.api.openapi > docs/api/openapi.json

CI fails when the committed file drifts from the code (tests/unit/test_openapi_drift.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from corral.api.limits import STREAMED
from corral.errors import HTTP_STATUS, Code

if TYPE_CHECKING:
    from fastapi import FastAPI

_TOO_LARGE = {
    "description": "the request body is over this route's limit (refused before it is read)",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
}


def install(app: FastAPI) -> None:
    """Make the generated spec say what the server does: FastAPI lists 422 for every route
    with parameters, but Corral answers invalid input with 400 (and the field named); bodies
    over the limit get 413."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for path, methods in schema.get("paths", {}).items():
            for op in methods.values():
                responses = op.setdefault("responses", {})
                responses.pop("422", None)
                if "requestBody" in op and path not in STREAMED:
                    responses[str(HTTP_STATUS[Code.TOO_LARGE])] = _TOO_LARGE
        components = schema.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def spec() -> dict[str, Any]:
    from corral.api.app import create_app

    app = create_app(None)  # type: ignore[arg-type]  # routes only; nothing is served
    return app.openapi()


def render() -> str:
    return json.dumps(spec(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render(), end="")
