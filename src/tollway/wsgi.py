"""`TollwayWSGIMiddleware`: the same gate in front of any WSGI app (Flask, Django, ...)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from tollway.client import Tollway
from tollway.engine.decision import Decision
from tollway.errors import ConfigurationError, StoreError, TollwayError
from tollway.http.attempts import Attempt, KeyAttempts
from tollway.http.gate import Admission, Gate, KeyAttempt, KeyCheck, Request, Verdict, reason_phrase
from tollway.inline import inline_tollway
from tollway.keys import ApiKeys

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def _headers(environ: Environ) -> list[tuple[bytes, bytes]]:
    """The request's header lines, as ASGI names them (WSGI keeps them latin-1 decoded)."""
    out = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").lower()
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            name = key.replace("_", "-").lower()
        else:
            continue
        out.append((name.encode("latin-1"), str(value).encode("latin-1", "replace")))
    return out


class TollwayWSGIMiddleware:
    """``app.wsgi_app = TollwayWSGIMiddleware(app.wsgi_app, tollway=tw)``, or with inline
    ``limits="5/s; 1000/hour"`` (and ``store=``) instead of ``tollway=`` (see
    `tollway.inline`); ``api_keys`` (`ApiKeys`) maps presented keys to their subjects, with
    failed attempts limited per client address (``[keys] failed_attempts``); the other keyword
    arguments are the `tollway.http.gate.Gate` options."""

    def __init__(
        self,
        app: WSGIApp,
        *,
        tollway: Tollway | None = None,
        limits: str | None = None,
        store: str | None = None,
        api_keys: ApiKeys | None = None,
        **options: Any,
    ) -> None:
        if api_keys is not None and not isinstance(api_keys, ApiKeys):
            raise ConfigurationError(
                f"api_keys: {type(api_keys).__name__}; a WSGI app verifies keys synchronously: "
                "pass ApiKeys(tw) on a Tollway"
            )
        self.app = app
        self.tollway: Tollway = inline_tollway(tollway, limits, store, Tollway)
        self.api_keys = api_keys
        if api_keys is not None:
            options.setdefault("key_attempts", KeyAttempts.of(api_keys.tollway.driver.engine))
        self.gate = Gate(self.tollway.policy, accept_keys=api_keys is not None, **options)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(
            method=environ.get("REQUEST_METHOD", "GET"),
            path=environ.get("PATH_INFO", "") or "/",
            headers=_headers(environ),
            client=environ.get("REMOTE_ADDR"),
            query=environ.get("QUERY_STRING", "").encode("latin-1", "replace"),
        )
        planned = self.gate.plan(request)
        if isinstance(planned, KeyCheck):
            keyed = self.gate.keyed(planned, self._verify(planned.key))
            if isinstance(keyed, KeyAttempt):
                keyed = self.gate.attempted(keyed, self._decide(keyed.attempt))
            plan: Admission | Verdict = keyed
        else:
            plan = planned
        if isinstance(plan, Verdict):
            verdict = plan
        else:
            try:
                decision = self.tollway.acquire(
                    plan.subject, plan.operation, plan.cost, id=plan.request_id
                )
            except TollwayError as exc:
                verdict = self.gate.failure(exc)
            else:
                verdict = self.gate.verdict(decision)
        if not verdict.passed:
            headers = [*verdict.headers, ("Content-Length", str(len(verdict.body)))]
            start_response(f"{verdict.status} {reason_phrase(verdict.status)}", headers)
            return [verdict.body]
        if not verdict.headers:
            return self.app(environ, start_response)
        extra = verdict.headers

        def start_with_headers(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            return start_response(status, [*headers, *extra], exc_info)

        return self.app(environ, start_with_headers)

    def _verify(self, key: str) -> str | StoreError | None:
        if self.api_keys is None:  # pragma: no cover - the gate asks only when keys are accepted
            return None
        try:
            return self.api_keys.verify(key)
        except StoreError as exc:
            return exc

    def _decide(self, attempt: Attempt) -> Decision | None:
        """A failed-attempts step in the keys' store; None when it cannot answer."""
        if self.api_keys is None:  # pragma: no cover - asked only when keys are accepted
            return None
        try:
            return self.api_keys.tollway.driver.decide(attempt.build)
        except TollwayError:
            return None


__all__ = ["TollwayWSGIMiddleware"]
