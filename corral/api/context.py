"""What the HTTP handlers reach: the controller and the daemon's few hooks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fastapi import Request

from corral.config import Settings
from corral.controller.service import Controller


@dataclass
class ApiContext:
    settings: Settings
    controller: Controller
    shutdown: Callable[[bool, float | None], Awaitable[None]] | None = None
    version: str = "0.1.0"
    extra: dict[str, object] = field(default_factory=dict)


def get_context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx
