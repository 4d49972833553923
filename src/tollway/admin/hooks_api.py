"""``/v1/hooks``: the hook outbox's messages, dead letters, retry and replay.

A message is listed without its body (the events it carries: read them in the ledger), with
where its delivery stands. Retry makes pending or dead messages due now; replay sends
delivered (or dead) messages again under the same ``webhook-id`` (receivers deduplicate).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from starlette.responses import Response

from tollway.admin.routes import Call, Route
from tollway.admin.web import BadRequest, json_body, json_response, query_int
from tollway.metering.deliverystate import DeliveryStatus
from tollway.metering.ledger.outbox import HookMessage

__all__ = ["ROUTES"]

IDS_MAX = 1000
STATUSES = ("pending", "delivered", "dead")


def _message(message: HookMessage) -> dict[str, Any]:
    return {
        "hook": message.hook,
        "id": message.id,
        "type": message.type,
        "status": message.status,
        "dead_reason": message.dead_reason,
        "events": len(message.event_ids),
        "attempts": len(message.attempts),
        "replays": message.replays,
        "next_at_us": message.next_at_us,
        "created_at_us": message.created_at_us,
        "updated_at_us": message.updated_at_us,
    }


async def _list(call: Call) -> Response:
    query = call.request.query_params
    status, hook = query.get("status"), query.get("hook")
    if status is not None and status not in STATUSES:
        raise BadRequest(400, f"status: {status[:20]!r}; expected one of {', '.join(STATUSES)}")
    if hook is not None and len(hook) > 128:
        raise BadRequest(400, "hook: expected at most 128 characters")
    limit = query_int(call.request, "limit", 100, 1, 1000)
    ledger = call.admin.tw.ledger
    found = await asyncio.to_thread(
        lambda: ledger.hook_messages(
            hook=hook, status=cast("DeliveryStatus | None", status), limit=limit
        )
    )
    return json_response({"messages": [_message(m) for m in found]})


async def _ids(call: Call) -> tuple[list[str], str | None, bool]:
    body = await json_body(call.request, optional=True)
    ids, hook, dead = body.get("ids", []), body.get("hook"), body.get("dead", False)
    if (
        not isinstance(ids, list)
        or len(ids) > IDS_MAX
        or not all(isinstance(i, str) and 0 < len(i) <= 256 for i in ids)
    ):
        raise BadRequest(400, f"ids: expected a list of at most {IDS_MAX} message ids")
    if hook is not None and not isinstance(hook, str):
        raise BadRequest(400, "hook: expected a hook name")
    if not isinstance(dead, bool):
        raise BadRequest(400, "dead: expected true or false")
    if not ids and not dead and hook is None:
        raise BadRequest(400, 'say which messages: "ids", "dead": true, or "hook"')
    return ids, hook, dead


async def _retry(call: Call) -> Response:
    ids, hook, dead = await _ids(call)
    ledger, now = call.admin.tw.ledger, call.admin.tw.engine.clock()
    done = await asyncio.to_thread(
        lambda: ledger.retry_hook_messages(now, hook=hook, ids=ids, all_dead=dead)
    )
    call.target, call.after = hook or "hooks", {"retried": [m.id for m in done]}
    return json_response({"retried": [_message(m) for m in done]})


async def _replay(call: Call) -> Response:
    ids, hook, dead = await _ids(call)
    ledger, now = call.admin.tw.ledger, call.admin.tw.engine.clock()
    done = await asyncio.to_thread(
        lambda: ledger.replay_hook_messages(now, hook=hook, ids=ids, dead=dead)
    )
    call.target, call.after = hook or "hooks", {"replayed": [m.id for m in done]}
    return json_response({"replayed": [_message(m) for m in done]})


_WHICH = {
    "type": "object",
    "properties": {
        "ids": {"type": "array", "maxItems": IDS_MAX, "items": {"type": "string"}},
        "hook": {"type": "string"},
        "dead": {"type": "boolean"},
    },
}
ROUTES = (
    Route(
        "GET",
        "/v1/hooks/messages",
        "hooks.read",
        _list,
        "Hook messages (dead letters with status=dead), newest first",
        query=(
            ("status", "pending, delivered or dead", {"enum": list(STATUSES)}),
            ("hook", "One hook's messages", {"type": "string", "maxLength": 128}),
            ("limit", "At most (1..1000)", {"type": "integer", "minimum": 1, "maximum": 1000}),
        ),
    ),
    Route("POST", "/v1/hooks/retry", "hooks.write", _retry, "Make messages due now",
          mutates=True, body=_WHICH),
    Route("POST", "/v1/hooks/replay", "hooks.write", _replay,
          "Send delivered or dead messages again (same webhook-id)", mutates=True, body=_WHICH),
)  # fmt: skip
