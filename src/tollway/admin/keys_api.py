"""API keys over the admin API: list a subject's (metadata only), issue (the raw key once),
rotate with an overlap window, revoke. Needs the key pepper (``$TOLLWAY_KEY_SECRET``) the
services verify with; without it these routes answer 404. A key is found by its id, so a
scoped token is checked again against the key's own subject."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from tollway.admin.routes import Call, Route
from tollway.admin.web import BadRequest, json_body, json_response
from tollway.errors import ConfigurationError
from tollway.keys import AsyncApiKeys

__all__ = ["ROUTES"]

SECONDS_MAX = 10 * 366 * 86_400


def _keys(call: Call) -> AsyncApiKeys:
    admin: Any = call.admin
    keys = getattr(admin, "api_keys", None)
    if keys is None:
        try:
            keys = admin.api_keys = AsyncApiKeys(admin.tw)
        except ConfigurationError as exc:
            raise BadRequest(404, f"API keys: this server has no key secret ({exc})") from None
    assert isinstance(keys, AsyncApiKeys)
    return keys


def _seconds(body: dict[str, Any], name: str, default: float | None) -> float | None:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(400, f"{name}: expected seconds, got {value!r:.40}")
    if not 0 <= value <= SECONDS_MAX:
        raise BadRequest(400, f"{name}: {value}; expected 0..{SECONDS_MAX} seconds")
    return float(value)


async def _list(call: Call) -> Response:
    found = await _keys(call).list(call.param("subject"))
    return json_response({"keys": [info.to_dict() for info in found]})


async def _issue(call: Call) -> Response:
    body = await json_body(call.request, optional=True)
    label = body.get("label")
    if label is not None and (not isinstance(label, str) or len(label) > 128):
        raise BadRequest(400, "label: expected a string of at most 128 characters")
    issued = await _keys(call).create(
        call.param("subject"), label=label, expires_in=_seconds(body, "expires_in_s", None)
    )
    call.target, call.after = issued.key_id, {"key_id": issued.key_id, "label": label}
    return json_response(issued.to_dict(), status=201)


async def _owned(call: Call, action: str) -> str:
    key_id = call.param("key")
    info = await _keys(call).get(key_id)
    call.admin.access.authorize(call.actor, action, info.subject)
    call.target, call.before = key_id, info.to_dict()
    return key_id


async def _rotate(call: Call) -> Response:
    key_id = await _owned(call, "keys.write")
    body = await json_body(call.request, optional=True)
    overlap = _seconds(body, "overlap_s", 3600.0)
    issued = await _keys(call).rotate(
        key_id, overlap=overlap or 0.0, expires_in=_seconds(body, "expires_in_s", None)
    )
    call.after = {"key_id": issued.key_id, "replaces": key_id}
    return json_response(issued.to_dict(), status=201)


async def _revoke(call: Call) -> Response:
    key_id = await _owned(call, "keys.write")
    info = await _keys(call).revoke(key_id)
    call.after = info.to_dict()
    return json_response(info.to_dict())


_ISSUE = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "maxLength": 128},
        "expires_in_s": {"type": ["number", "null"], "minimum": 0},
    },
}
ROUTES = (
    Route("GET", "/v1/subjects/{subject}/keys", "keys.read", _list,
          "The subject's API keys (metadata only)"),
    Route("POST", "/v1/subjects/{subject}/keys", "keys.write", _issue,
          "Issue an API key (the raw key is in this answer only)", mutates=True, body=_ISSUE),
    Route("POST", "/v1/keys/{key}/rotate", "keys.write", _rotate,
          "A new key for the same subject; the old one works for overlap_s more", mutates=True,
          body={"type": "object", "properties": {"overlap_s": {"type": "number", "minimum": 0},
                                                 "expires_in_s": {"type": ["number", "null"]}}}),
    Route("DELETE", "/v1/keys/{key}", "keys.write", _revoke, "Revoke an API key", mutates=True),
)  # fmt: skip
