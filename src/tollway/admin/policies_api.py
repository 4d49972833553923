"""``/v1/policies`` and a subject's ``/overrides``: versioned policies over the admin API.

Uploads are validated first: an invalid document is a 422 whose ``issues`` list every problem
with its key path, and nothing is stored. Activations (for everyone, or a pilot cohort),
rollbacks and overrides are audited with their before and after. `tollway.admin.policies`
does the work (sync, in a worker thread).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from starlette.responses import Response

from tollway.admin.policies import Policies
from tollway.admin.routes import Call, Route
from tollway.admin.web import BadRequest, json_body, json_response
from tollway.engine.cohort import Cohort

__all__ = ["ROUTES"]

OVERRIDE_MAX_S = 366 * 86_400


def _policies(call: Call) -> Policies:
    found = getattr(call.admin, "policies", None)
    if not isinstance(found, Policies):
        raise BadRequest(404, "this server has no policy versions (no shared store)")
    return found


def _by(call: Call) -> str:
    return f"{getattr(call.actor, 'name', 'unknown')} ({getattr(call.actor, 'token_id', '')})"


def _dict(value: Any) -> Any:
    return None if value is None else value.to_dict()


async def _list(call: Call) -> Response:
    policies = _policies(call)
    versions, active = await asyncio.gather(
        asyncio.to_thread(policies.versions), asyncio.to_thread(policies.active)
    )
    return json_response({"versions": [v.to_dict() for v in versions], "active": _dict(active)})


async def _upload(call: Call) -> Response:
    body = await json_body(call.request)
    text, kind = body.get("text"), body.get("format", "toml")
    if not isinstance(text, str) or not isinstance(kind, str):
        raise BadRequest(400, 'text: expected the policy document as a string, format "toml"')
    note = body.get("note", "")
    version = await asyncio.to_thread(
        lambda: _policies(call).upload(text, kind, by=_by(call), note=str(note)[:1000])
    )
    call.target, call.after = version.version, {"version": version.version}
    return json_response(version.to_dict(), status=201)


async def _get(call: Call) -> Response:
    found = await asyncio.to_thread(_policies(call).get, call.param("version"))
    return json_response(found.to_dict())


async def _diff(call: Call) -> Response:
    a, b = call.param("version"), call.param("other")
    changes = await asyncio.to_thread(_policies(call).diff, a, b)
    return json_response({"from": a, "to": b, "changes": [c.to_dict() for c in changes]})


def _cohort(raw: object) -> Cohort | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise BadRequest(400, "cohort: expected an object with subjects, plan or percent")
    unknown = set(raw) - {"subjects", "plan", "percent"}
    if unknown:
        raise BadRequest(400, f"cohort: unknown keys {sorted(unknown)}")
    return Cohort(**raw)


async def _activate(call: Call) -> Response:
    body = await json_body(call.request, optional=True)
    version, cohort = call.param("version"), _cohort(body.get("cohort"))
    before, after = await asyncio.to_thread(
        lambda: _policies(call).activate(
            version, cohort, by=_by(call), note=str(body.get("note", ""))[:1000]
        )
    )
    call.target, call.before, call.after = version, _dict(before), _dict(after)
    return json_response(after.to_dict())


async def _rollback(call: Call) -> Response:
    before, after = await asyncio.to_thread(lambda: _policies(call).rollback(by=_by(call)))
    call.target, call.before, call.after = "policy", _dict(before), _dict(after)
    return json_response(after.to_dict())


async def _shadow(call: Call) -> Response:
    report = await asyncio.to_thread(_policies(call).shadow_report, call.param("version"))
    return json_response(report)


async def _overrides(call: Call) -> Response:
    found = await asyncio.to_thread(_policies(call).overrides, call.param("subject"))
    return json_response({"overrides": [o.to_dict() for o in found]})


async def _override(call: Call) -> Response:
    body = await json_body(call.request)
    spec, seconds = body.get("spec"), body.get("expires_in_s")
    if not isinstance(spec, dict):
        raise BadRequest(400, 'spec: expected a limit as an object, e.g. {"quota": "500/hour"}')
    if not isinstance(seconds, int) or not 0 < seconds <= OVERRIDE_MAX_S:
        raise BadRequest(400, f"expires_in_s: expected seconds 1..{OVERRIDE_MAX_S}")
    subject, limit = call.param("subject"), call.param("limit")
    before, after = await asyncio.to_thread(
        lambda: _policies(call).override(
            subject, limit, spec, timedelta(seconds=seconds), by=_by(call)
        )
    )
    call.before, call.after = _dict(before), _dict(after)
    return json_response(after.to_dict())


async def _end_override(call: Call) -> Response:
    subject, limit = call.param("subject"), call.param("limit")
    before, after = await asyncio.to_thread(
        lambda: _policies(call).end_override(subject, limit, by=_by(call))
    )
    call.before, call.after = _dict(before), _dict(after)
    return json_response(after.to_dict())


_UPLOAD = {
    "type": "object",
    "required": ["text"],
    "properties": {
        "text": {"type": "string", "maxLength": 1_000_000},
        "format": {"enum": ["toml", "yaml", "json"]},
        "note": {"type": "string", "maxLength": 1000},
    },
}
_ACTIVATE = {
    "type": "object",
    "properties": {
        "cohort": {
            "type": ["object", "null"],
            "properties": {
                "subjects": {"type": "array", "items": {"type": "string"}},
                "plan": {"type": "string"},
                "percent": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
            },
        },
        "note": {"type": "string", "maxLength": 1000},
    },
}
_OVERRIDE = {
    "type": "object",
    "required": ["spec", "expires_in_s"],
    "properties": {
        "spec": {"type": "object"},
        "expires_in_s": {"type": "integer", "minimum": 1, "maximum": OVERRIDE_MAX_S},
    },
}
VERSION = "/v1/policies/{version}"
OVERRIDES = "/v1/subjects/{subject}/overrides"
ROUTES = (
    Route(
        "GET", "/v1/policies", "policies.read", _list, "Policy versions and the activation in force"
    ),
    Route(
        "POST",
        "/v1/policies",
        "policies.write",
        _upload,
        "Upload a policy version (validated first)",
        mutates=True,
        body=_UPLOAD,
    ),
    Route(
        "POST",
        "/v1/policies/rollback",
        "policies.write",
        _rollback,
        "Back to the state before the activation in force",
        mutates=True,
    ),
    Route("GET", VERSION, "policies.read", _get, "One policy version, with its text"),
    Route(
        "GET",
        VERSION + "/diff/{other}",
        "policies.read",
        _diff,
        "What changes from one version to another",
    ),
    Route(
        "POST",
        VERSION + "/activate",
        "policies.write",
        _activate,
        "Activate a version for everyone, or a pilot cohort",
        mutates=True,
        body=_ACTIVATE,
    ),
    Route(
        "GET",
        VERSION + "/shadow",
        "policies.read",
        _shadow,
        "What a pilot version would have denied",
    ),
    Route("GET", OVERRIDES, "subjects.read", _overrides, "The subject's overrides in force"),
    Route(
        "PUT",
        OVERRIDES + "/{limit}",
        "overrides.write",
        _override,
        "Raise (or add) one of the subject's limits for a time",
        mutates=True,
        body=_OVERRIDE,
    ),
    Route(
        "DELETE",
        OVERRIDES + "/{limit}",
        "overrides.write",
        _end_override,
        "End an override",
        mutates=True,
    ),
)
