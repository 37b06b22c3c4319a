"""The committed OpenAPI spec is the code's (regenerate: python -m corral.api.openapi >
docs/api/openapi.json)."""

from __future__ import annotations

from pathlib import Path

from corral.api.openapi import render

SPEC = Path(__file__).resolve().parents[2] / "docs" / "api" / "openapi.json"


def test_committed_openapi_spec_matches_the_code() -> None:
    assert SPEC.read_text() == render(), (
        "docs/api/openapi.json is stale: run `python -m corral.api.openapi > docs/api/openapi.json`"
    )
