"""The OpenAPI 3.1 document of the admin API, built from the route table (one source)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from tollway.admin.routes import Route

__all__ = ["document"]

_PARAM = re.compile(r"\{([a-z_]+)\}")
PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
}
_ERRORS = {
    "400": "The request is malformed (the detail names the field)",
    "401": "No token, or one unknown, expired or revoked",
    "403": "The token's role or scope may not do this",
    "404": "No such thing",
    "409": "A conflict with what exists",
    "413": "The body is too large",
    "422": "The request is well formed but refused (the detail says why)",
}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


def _operation_id(route: Route) -> str:
    words = re.sub(r"[^a-z0-9]+", "_", route.path.lower()).strip("_")
    return f"{route.method.lower()}_{words}"


def _operation(route: Route) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "maxLength": 1024},
        }
        for name in _PARAM.findall(route.path)
    ]
    params += [
        {"name": name, "in": "query", "required": False, "description": text, "schema": schema}
        for name, text, schema in route.query
    ]
    if route.mutates:
        params.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "A repeat with the same key gets the first answer, changing nothing",
                "schema": {"type": "string", "maxLength": 255},
            }
        )
    ok = "201" if route.method == "POST" and route.action == "credits.grant" else "200"
    operation: dict[str, Any] = {
        "summary": route.summary,
        "operationId": _operation_id(route),
        "x-tollway-action": route.action,
        "parameters": params,
        "responses": {
            ok: {"description": "OK", "content": {"application/json": {"schema": route.response}}},
            **{code: _problem(text) for code, text in _ERRORS.items()},
        },
    }
    if route.body is not None:
        operation["requestBody"] = {
            "required": "required" in route.body,
            "content": {"application/json": {"schema": route.body}},
        }
    return operation


def document(routes: Iterable[Route]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "tollway admin API", "version": "1"},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Problem": PROBLEM},
        },
    }
