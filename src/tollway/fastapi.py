"""FastAPI: a route-level dependency that limits one endpoint as one operation.

The shortest path needs no policy file at all (inline limits, see `tollway.inline`)::

    from fastapi import Depends, FastAPI
    from tollway.fastapi import limit

    app = FastAPI()

    @app.get("/search", dependencies=[Depends(limit(rate="5/s", burst=10))])
    async def search(): ...

The middleware (`tollway.asgi.TollwayMiddleware`) maps endpoints to operations from the
policy; `limit` does it in code instead, next to the route, with a cost that may be computed
from the request (even from its body)::

    from fastapi import Depends, FastAPI, Request
    from tollway import AsyncTollway
    from tollway.fastapi import install, limit

    app = FastAPI()
    install(app, AsyncTollway.from_file("tollway.toml"))   # app.state.tollway + 429 handler

    async def batch_size(request: Request) -> int:
        return len((await request.json())["items"])

    @app.post("/v1/batch", dependencies=[Depends(limit("geocode", cost=batch_size))])
    async def batch(...): ...

- The `Tollway` or `AsyncTollway` is read from ``request.app.state.tollway`` on every request
  (`install` puts it there; so does ``app.state.tollway = tw``). A synchronous `Tollway` on a
  networked store is called in a worker thread, never on the event loop.
- The subject is ``subject(request)`` when given (a function, sync or async, returning the
  subject's name), otherwise the client's address as the middleware counts anonymous clients
  (``ip:203.0.113.7``, IPv6 by /64; ``X-Forwarded-For`` is never believed here: pass a
  ``subject`` built on `tollway.http.clientip.ClientIP` to trust proxies). Mind the server:
  uvicorn's default ``--proxy-headers`` puts the forwarding header's value in the ASGI client
  for connections from ``--forwarded-allow-ips`` (127.0.0.1); a value that is not an IP
  address counts as ``ip:unknown``, never as its own text.
- The cost is the operation's cost from the policy, a fixed ``cost=N``, or ``cost(request)``
  (sync or async). A cost that cannot be computed (the function raises `ValueError`,
  `TypeError`, `LookupError`, or a `TollwayError`) is a 400 problem; nothing is consumed.
- Allowed: the ``RateLimit-Policy`` and ``RateLimit`` fields are added to the response.
- Denied: a `TollwayHTTPException` (a FastAPI ``HTTPException``) with status 429 (503 when the
  store is away and a limit fails closed), ``Retry-After`` and the RateLimit fields. With the
  handler `install` registers (or `exception_handler` added by hand), its body is the same RFC
  9457 ``application/problem+json`` the middleware sends; without it, FastAPI's own handler
  answers with the same status and headers and ``{"detail": <the problem object>}``.

Do not put the middleware and the dependency on the same endpoint: each would consume.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response

from tollway.asgi import decide_attempt, verify_key
from tollway.client import AsyncTollway, Tollway
from tollway.engine.decision import Decision
from tollway.errors import ConfigurationError, StoreError, TollwayError
from tollway.http.attempts import KeyAttempts
from tollway.http.clientip import ClientIP, subject_for_ip
from tollway.http.gate import Request as GateRequest
from tollway.http.gate import (
    Verdict,
    key_required,
    presented_key,
    read_request_id,
    refusal,
    refused_key,
    request_id_header,
    too_many_attempts,
)
from tollway.http.headers import ratelimit_fields
from tollway.http.problem import PROBLEM_JSON, problem
from tollway.inline import inline_policy
from tollway.keys import ApiKeys, AsyncApiKeys
from tollway.policy.model import Policy
from tollway.stores.memory import MemoryStore

__all__ = ["TollwayHTTPException", "exception_handler", "install", "limit"]

CostSource = Callable[[Request], "int | Awaitable[int]"]
SubjectSource = Callable[[Request], "str | Awaitable[str]"]
Dependency = Callable[[Request, Response], Awaitable[None]]

_PEERS = ClientIP()  # trusts no proxy: the TCP peer is the client


class TollwayHTTPException(HTTPException):
    """A request `limit` answers itself: a 429/503 denial or a 400 for an uncomputable cost.

    ``status_code`` and ``headers`` are FastAPI's; ``body`` is the problem document (bytes of
    ``application/problem+json``) and ``detail`` the same document as a dict. ``decision`` is
    the engine's decision (None for a 400)."""

    def __init__(
        self,
        status_code: int,
        headers: list[tuple[str, str]],
        body: bytes,
        decision: Decision | None = None,
    ) -> None:
        # FastAPI's own handler sends ``headers`` as they are (names are unique here) with its
        # JSON body: the problem's content type is for `exception_handler` to set.
        fields = {name: value for name, value in headers if name.lower() != "content-type"}
        super().__init__(status_code, detail=json.loads(body), headers=fields)
        self.body = body
        self.decision = decision


async def exception_handler(request: Request, exc: Exception) -> Response:
    """Answers a `TollwayHTTPException` with its problem+json body and headers."""
    if not isinstance(exc, TollwayHTTPException):  # pragma: no cover - registered for it only
        raise exc
    return Response(
        content=exc.body, status_code=exc.status_code, headers=exc.headers, media_type=PROBLEM_JSON
    )


def install(app: FastAPI, tollway: AsyncTollway | Tollway) -> None:
    """Store ``tollway`` on ``app.state.tollway`` and register `exception_handler`."""
    app.state.tollway = tollway
    app.add_exception_handler(TollwayHTTPException, exception_handler)


def limit(
    operation: str | None = None,
    *,
    rate: str | None = None,
    burst: int | None = None,
    quota: str | None = None,
    limits: str | None = None,
    store: str | None = None,
    name: str | None = None,
    cost: int | CostSource | None = None,
    subject: SubjectSource | None = None,
    api_keys: AsyncApiKeys | ApiKeys | None = None,
    anonymous: bool = True,
    request_id: str | None = None,
) -> Dependency:
    """A dependency that acquires ``operation`` for the request's subject:
    ``Depends(limit("search"))`` or ``Depends(limit("batch", cost=count_items))``.
    ``request_id="Idempotency-Key"``: that header's value is the acquire's ``id``, so a
    retried request is counted once.

    ``operation`` must be an operation of the policy (checked at each request, when the tollway
    is known: an unknown one is a `ConfigurationError`, a programming error, not a 400).

    Inline, with no policy and no `install`: ``Depends(limit(rate="5/s", burst=10))``,
    ``limit(quota="1000/hour")`` or ``limit(limits="5/s; 1000/hour")`` (see `tollway.inline`)
    limits the route on its own counters, per client address, on the memory store
    (``store="redis://..."`` to share them between processes; ``name=`` names the counters,
    by default ``limit-N`` in the order the dependencies are made).

    ``api_keys`` (`AsyncApiKeys`, or `ApiKeys`): a request presenting a key (``Authorization:
    Bearer`` or ``X-API-Key``) is counted for the key's owner, as the middleware counts it (a
    refused key is a 401, a store that cannot check it a 503; failed attempts are limited per
    client address by the keys' policy, ``[keys] failed_attempts``: past it, a 429);
    ``anonymous=False``: a request without a key is a 401. A ``subject`` function, when given,
    decides instead.
    """
    inline = rate is not None or quota is not None or limits is not None
    if inline and operation is not None:
        raise ConfigurationError(
            f"limit: operation {operation!r} and inline limits; pass one: an operation of the "
            "installed policy, or rate=/quota=/limits= (which make a policy of their own)"
        )
    if not inline and (burst is not None or store is not None or name is not None):
        raise ConfigurationError("limit: burst=, store= and name= go with rate=/quota=/limits=")
    own: _Own | None = None
    if inline:
        own = _Own(
            inline_policy(
                limits,
                rate=rate,
                burst=burst,
                quota=quota,
                store=store or "memory://",
                operation=name or f"limit-{next(_INLINE)}",
                endpoints=(),
                per_operation=True,
            )
        )
        operation = next(iter(own.policy.operations))
    if not isinstance(operation, str) or not operation:
        raise ConfigurationError(
            f"limit: operation {operation!r}; expected an operation's name, or inline "
            'limits such as rate="5/s"'
        )
    if not (cost is None or callable(cost)) and (
        isinstance(cost, bool) or not isinstance(cost, int) or cost < 0
    ):
        raise ConfigurationError(f"limit: cost {cost!r}; expected a whole number >= 0")
    id_header = request_id_header(request_id)
    chosen = operation
    attempts = KeyAttempts.of(api_keys.tollway.driver.engine) if api_keys is not None else None

    async def tollway_limit(request: Request, response: Response) -> None:
        tw = own.tollway() if own is not None else _tollway_of(request)
        if chosen not in tw.policy.operations:
            raise ConfigurationError(
                f"limit: {chosen!r} is not an operation of the policy; expected one of "
                + (", ".join(repr(name) for name in tw.policy.operations) or "none")
            )
        try:
            who = await _subject(request, subject, api_keys, attempts, anonymous)
            units = await _cost(request, cost)
            ident = None
            if id_header is not None:
                found = read_request_id(request.headers.raw, id_header)
                if isinstance(found, Verdict):
                    raise TollwayHTTPException(found.status, found.headers, found.body)
                ident = found
            decision = await _acquire(tw, who, chosen, units, ident)
        except (TollwayError, ValueError, TypeError, LookupError) as exc:
            status, headers, body = problem(
                400, "Bad request", f"the request cannot be limited: {exc}"
            )
            raise TollwayHTTPException(status, headers, body) from None
        fields = ratelimit_fields(decision)
        if not decision.allowed:
            status, headers, body = refusal(decision)
            raise TollwayHTTPException(status, headers + fields, body, decision)
        for field_name, value in fields:
            response.headers.append(field_name, value)

    return tollway_limit


_INLINE = itertools.count(1)


class _Own:
    """An inline limit's own policy, and its `AsyncTollway` made at the first request (on the
    event loop that serves it)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._tollway: AsyncTollway | None = None

    def tollway(self) -> AsyncTollway:
        if self._tollway is None:
            self._tollway = AsyncTollway(self.policy)
        return self._tollway


def _tollway_of(request: Request) -> AsyncTollway | Tollway:
    tw = getattr(request.app.state, "tollway", None)
    if not isinstance(tw, (AsyncTollway, Tollway)):
        raise ConfigurationError(
            "tollway.fastapi.limit: app.state.tollway is not a Tollway or AsyncTollway; "
            "call tollway.fastapi.install(app, tw) (or set app.state.tollway) at startup"
        )
    return tw


async def _resolved(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def _subject(
    request: Request,
    source: SubjectSource | None,
    keys: AsyncApiKeys | ApiKeys | None,
    attempts: KeyAttempts | None,
    anonymous: bool,
) -> str:
    peer = request.client.host if request.client else None
    if source is None:
        if keys is not None:
            found = await _key_owner(request, peer, keys, attempts)
            if found is not None:
                return found
        if not anonymous:
            raise _refusal(key_required())
        return subject_for_ip(_PEERS.resolve(peer, ()))
    found = await _resolved(source(request))
    if not isinstance(found, str) or not found:
        raise TypeError(f"the subject function returned {found!r}; expected a non-empty string")
    return found


async def _key_owner(
    request: Request,
    peer: str | None,
    keys: AsyncApiKeys | ApiKeys,
    attempts: KeyAttempts | None,
) -> str | None:
    """The owner of the presented key; None when no key is presented. The same steps as
    `tollway.http.gate.Gate` with its `KeyAttempt`: a refused key is counted against its
    client address, a verified one checked against that count."""
    seen = GateRequest(request.method, request.url.path, request.headers.raw, peer)
    presented = presented_key(seen)
    if isinstance(presented, Verdict):
        raise _refusal(presented)
    if presented is None:
        return None
    counted = None
    if attempts is not None:
        counted = attempts.subject(subject_for_ip(_PEERS.resolve(peer, ())))
        wait = attempts.blocked_for(counted)
        if wait is not None:
            raise _refusal(too_many_attempts(attempts, wait))
    answer = await verify_key(keys, presented)
    if isinstance(answer, StoreError):
        raise _refusal(refused_key(answer))
    if attempts is not None and counted is not None:
        attempt = attempts.failure(counted) if answer is None else attempts.standing(counted)
        wait = attempts.refusal(attempt, await decide_attempt(keys, attempt))
        if wait is not None:
            raise _refusal(too_many_attempts(attempts, wait))
    if answer is None:
        raise _refusal(refused_key(None))
    return answer


def _refusal(verdict: Verdict) -> TollwayHTTPException:
    return TollwayHTTPException(verdict.status, verdict.headers, verdict.body)


async def _cost(request: Request, source: int | CostSource | None) -> int | None:
    if source is None or isinstance(source, int):
        return source
    value = await _resolved(source(request))
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"the cost function returned {value!r}; expected a whole number")
    return value


async def _acquire(
    tw: AsyncTollway | Tollway, subject: str, operation: str, cost: int | None, ident: str | None
) -> Decision:
    if isinstance(tw, AsyncTollway):
        return await tw.acquire(subject, operation, cost, id=ident)
    if isinstance(tw.store, MemoryStore):
        return tw.acquire(subject, operation, cost, id=ident)
    return await asyncio.to_thread(partial(tw.acquire, subject, operation, cost, id=ident))
