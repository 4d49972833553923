"""``/v1/providers``: where each paid API the services call stands today (spend, remaining,
cooldowns and health gates), read from the store without consuming anything."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from tollway.admin.routes import Call, Route
from tollway.admin.web import json_response

__all__ = ["ROUTES"]


async def _providers(call: Call) -> Response:
    tw = call.admin.tw
    found: dict[str, dict[str, Any]] = {}
    for route in sorted(tw.policy.routes):
        for name, decision in (await tw.route(route).status()).items():
            entry = found.setdefault(
                name,
                {
                    "provider": name,
                    "routes": [],
                    "available": decision.allowed,
                    "limits": [state.to_dict() for state in decision.limits],
                },
            )
            entry["routes"].append(route)
    return json_response({"providers": [found[name] for name in sorted(found)]})


ROUTES = (
    Route(
        "GET",
        "/v1/providers",
        "providers.read",
        _providers,
        "Each provider of the policy's routes: available now, and every limit's standing",
    ),
)
