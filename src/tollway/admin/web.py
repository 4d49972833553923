"""The admin API's HTTP plumbing: problem+json errors, bounded JSON bodies, cursors.

Every error is an RFC 9457 problem (`tollway.http.problem.problem`): a tollway error maps to
its status by its class (a bad argument 400 or 422, an unknown thing 404, a conflict 409, a
missing or bad token 401, a role that may not 403), with the error's own message (it names the
field, the value and what was expected) as ``detail``. A body is read up to `BODY_MAX` bytes
and must be a JSON object; anything else is a 413 or a 400 before any handler runs.

A cursor is opaque to clients: base64url of a small JSON value, refused when longer than
`CURSOR_MAX` or not one of ours.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from tollway.errors import (
    BillingError,
    ConfigurationError,
    CouponError,
    ForbiddenError,
    GrantConflictError,
    InvalidArgumentError,
    InvoiceError,
    PolicyError,
    TollwayError,
    TrialUsedError,
    UnauthorizedError,
    UnknownLimitError,
    UnknownNameError,
    UnknownPlanError,
)
from tollway.http.problem import problem

__all__ = [
    "BODY_MAX",
    "CURSOR_MAX",
    "BadRequest",
    "json_body",
    "json_response",
    "problem_response",
    "read_cursor",
    "status_of",
    "write_cursor",
]

BODY_MAX = 1024 * 1024
"""The largest request body the admin API reads (a policy upload included)."""
CURSOR_MAX = 512


class BadRequest(TollwayError):
    """A request the API cannot read: ``status`` says how (400, 404, 413, 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (BadRequest, 400),  # replaced by its own status
    (UnauthorizedError, 401),
    (ForbiddenError, 403),
    (UnknownPlanError, 422),
    (UnknownLimitError, 422),
    (UnknownNameError, 404),
    (TrialUsedError, 409),
    (GrantConflictError, 409),
    (CouponError, 409),
    (InvoiceError, 422),
    (BillingError, 422),
    (PolicyError, 422),
    (InvalidArgumentError, 400),
    (ConfigurationError, 500),
)


def status_of(exc: BaseException) -> int:
    if isinstance(exc, BadRequest):
        return exc.status
    status = getattr(exc, "http_status", None)  # the admin errors say theirs
    if isinstance(status, int):
        return status
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return 400 if isinstance(exc, TollwayError) else 500


_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Body too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
}


def problem_response(
    status: int, detail: str | None = None, *, headers: dict[str, str] | None = None, **ext: Any
) -> Response:
    code, fields, body = problem(status, _TITLES.get(status, "Error"), detail, **ext)
    extra = list(fields) + list((headers or {}).items())
    response = Response(body, status_code=code)
    for name, value in extra:
        response.headers[name] = value
    return response


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    response = Response(body, status_code=status, media_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


async def read_body(request: Request, limit: int = BODY_MAX) -> bytes:
    """The body, refused with 413 past ``limit`` bytes (read in chunks: never held whole);
    kept on ``request.state`` so a second read (the handler after the idempotency check)
    gets the same bytes."""
    kept = getattr(request.state, "body", None)
    if isinstance(kept, bytes):
        return kept
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BadRequest(413, f"body: expected at most {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"body: expected at most {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request.state.body = body
    return body


async def json_body(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object; {} for an empty body when ``optional``."""
    raw = await read_body(request)
    if not raw.strip():
        if optional:
            return {}
        raise BadRequest(400, "body: expected a JSON object, got nothing")
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if kind not in ("application/json", "application/merge-patch+json"):
        raise BadRequest(415, f"content-type: {kind!r:.60}; expected application/json")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(400, f"body: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise BadRequest(400, f"body: expected a JSON object, got {type(value).__name__}")
    return value


def write_cursor(value: Any) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def read_cursor(text: str | None) -> Any:
    """The value of a cursor from `write_cursor`; None for no cursor."""
    if text is None or text == "":
        return None
    if len(text) > CURSOR_MAX:
        raise BadRequest(400, f"cursor: {len(text)} characters; expected at most {CURSOR_MAX}")
    try:
        padded = text + "=" * (-len(text) % 4)
        return json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise BadRequest(400, f"cursor: {text[:40]!r} is not a cursor of this API") from None


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadRequest(400, f"{name}: {raw[:20]!r}; expected an integer {low}..{high}")
    return int(raw)
