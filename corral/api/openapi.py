"""The OpenAPI spec, generated from the code and committed as docs/api/openapi.json.

    python -m corral.api.openapi > docs/api/openapi.json

CI fails when the committed file drifts from the code (tests/unit/test_openapi_drift.py)."""

from __future__ import annotations

import json
from typing import Any


def spec() -> dict[str, Any]:
    from corral.api.app import create_app

    app = create_app(None)  # type: ignore[arg-type]  # routes only; nothing is served
    return app.openapi()


def render() -> str:
    return json.dumps(spec(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render(), end="")
