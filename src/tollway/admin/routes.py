"""The admin API's routes: one table, read by the router and by the OpenAPI document.

Each `Route` names its method, path, the RBAC action it needs, and its handler. A handler
gets the `Call` (the request, the application, who asks) and returns a response; the
application checks the action (and the subject against a scoped token) before the handler
runs, and writes the audit record of a mutation after it (`tollway.admin.app`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from tollway.admin.app import Admin

__all__ = ["Call", "Handler", "Route"]


@dataclass(slots=True)
class Call:
    """One request as a handler sees it."""

    request: Request
    admin: Admin
    actor: Any
    """Who asks (the authenticated principal)."""
    subject: str | None = None
    """The path's subject, when the route has one (checked against the token's scope)."""
    before: Any = None
    after: Any = None
    """What a mutation changed, for its audit record (set by the handler)."""
    target: str | None = None

    def param(self, name: str) -> str:
        value = Call.decoded(self.request, name)
        if value is None:
            raise KeyError(f"{name}: missing from the path")
        return value

    @staticmethod
    def decoded(request: Request, name: str) -> str | None:
        """A path parameter, percent-decoded once (the router matched the raw path)."""
        raw = request.path_params.get(name)
        if raw is None:
            return None
        try:
            return unquote(str(raw), errors="strict")
        except UnicodeDecodeError:
            from tollway.admin.web import BadRequest

            raise BadRequest(400, f"{name}: {raw!r:.60} is not percent-encoded UTF-8") from None


Handler = Callable[[Call], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    action: str
    """The RBAC action it needs (`tollway.admin.roles`)."""
    handler: Handler
    summary: str
    mutates: bool = False
    body: dict[str, Any] | None = None
    """The JSON Schema of the request body (None: no body)."""
    response: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    query: tuple[tuple[str, str, dict[str, Any]], ...] = ()
    """(name, description, schema) of each query parameter."""
