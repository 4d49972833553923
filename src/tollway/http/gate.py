"""The request → decision → response logic that the ASGI and WSGI middleware share, sans-IO.

A `Gate` does everything but I/O: it maps the request to an operation, finds the subject (a
user callable, an API key, or the client address), and turns the decision into the
response's status, headers and body. It never touches a store: where a presented API key must
be verified, `Gate.plan` answers a `KeyCheck`, the face verifies the key (awaited or not) and
hands the answer to `Gate.keyed`. The faces only do those two calls (``verify`` and
``acquire``) between `Gate.plan` and `Gate.verdict`, so both run the same logic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Literal, NamedTuple

from tollway.engine.decision import Decision
from tollway.errors import ConfigurationError, StoreError, TollwayError
from tollway.http.attempts import Attempt, KeyAttempts
from tollway.http.clientip import ClientIP, subject_for_ip
from tollway.http.headers import legacy_fields, ratelimit_fields
from tollway.http.problem import problem, problem_for
from tollway.http.routes import EXEMPT, EndpointMap, Match
from tollway.policy.model import Policy

HeaderList = list[tuple[str, str]]
HeaderMode = Literal["all", "closest", "none"]
_PEER_CACHE = 65_536
# An API key is short; a longer header is refused before any parsing or store lookup.
MAX_KEY_HEADER = 512


class Request:
    """What the gate needs of a request, whatever the framework (built on every request, so
    a plain slotted class: several times cheaper to make than a frozen dataclass)."""

    __slots__ = ("client", "headers", "method", "path", "query")

    def __init__(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[bytes, bytes]],
        client: str | None = None,
        query: bytes = b"",
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        """Header lines as (lower-case name, value) bytes, as ASGI gives them."""
        self.client = client
        """The peer address (the TCP connection's other end)."""
        self.query = query

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path!r} from {self.client!r}>"


class Admission(NamedTuple):
    """What a request is to be admitted by: the acquire to make for it."""

    subject: str
    operation: str
    cost: int | None
    request_id: str | None = None
    """The request's id (the ``request_id`` header), when the gate reads one."""


@dataclass(slots=True)
class Verdict:
    """What to do with the request: pass it on (adding ``headers`` to the response) or answer
    it here with ``status``, ``headers`` and ``body``."""

    passed: bool
    status: int = 200
    headers: HeaderList = field(default_factory=list)
    body: bytes = b""
    decision: Decision | None = None


class KeyCheck(NamedTuple):
    """The request presented an API key: verify it (``ApiKeys.verify`` or ``await
    AsyncApiKeys.verify``), then pass the answer to `Gate.keyed`."""

    key: str
    request: Request
    matched: Match
    counted: str | None = None
    """The subject its failed attempts count under (None: they are not limited)."""


class KeyAttempt(NamedTuple):
    """After `Gate.keyed`: decide ``attempt`` (``keys.tollway.driver.decide(attempt.build)``;
    None when the store could not answer) and pass the decision to `Gate.attempted`; ``then``
    is the answer unless the client address is blocked for failed key attempts."""

    attempt: Attempt
    then: Admission | Verdict


_new_admission = tuple.__new__

PASS_UNLIMITED = Verdict(passed=True)
"""A request no operation covers (or an exempt one): passed on, nothing consumed."""

Identify = Callable[[Request], "str | None"]
CostFn = Callable[[Request], int]


class Gate:
    def __init__(
        self,
        policy: Policy,
        *,
        accept_keys: bool = False,
        identify: Identify | None = None,
        anonymous: bool = True,
        trusted_proxies: Iterable[str] = (),
        exempt: Iterable[str] = (),
        overrides: Mapping[str, str | None] | None = None,
        costs: Mapping[str, CostFn] | None = None,
        headers: HeaderMode = "all",
        legacy_headers: bool = False,
        request_id: str | None = None,
        key_attempts: KeyAttempts | None = None,
    ) -> None:
        self.endpoints = EndpointMap.from_policy(policy, overrides=overrides, exempt=exempt)
        self.accept_keys = accept_keys
        """Whether presented API keys are checked (the face holds the keys); without, a
        presented key is a 401."""
        self.identify = identify
        self.anonymous = anonymous
        self.client_ip = ClientIP(trusted_proxies)
        self.costs = dict(costs or {})
        self.header_mode: HeaderMode = headers
        self.legacy_headers = legacy_headers
        self._peer_subjects: dict[str, str] = {}
        self.request_id = request_id_header(request_id)
        """The header (lower-case bytes) whose value is the request's id: a retried request
        with the same id is counted once (``Idempotency-Key``, ``X-Request-Id``...)."""
        self.key_attempts = key_attempts
        """Failed key attempts per client address (the face builds it from the tollway that
        holds the keys; None: not limited)."""

    # -- before the store -------------------------------------------------------------------

    def operation(self, method: str, path: str) -> Match | None:
        """The endpoint's operation; None when the request is not limited (no endpoint covers
        it, or it is exempt). The middleware ask this first, before building a `Request`."""
        matched = self.endpoints.match(method, path)
        return None if matched is EXEMPT else matched

    def plan(
        self, request: Request, matched: Match | None = None
    ) -> Admission | KeyCheck | Verdict:
        """The acquire to make for ``request``; or the key to verify first (then `keyed`);
        or the verdict when none is needed (not limited) or possible (a bad key, or none
        when one is required). Nothing is consumed here. ``matched`` is `operation`'s
        answer, when the caller already has it."""
        if matched is None:
            matched = self.operation(request.method, request.path)
            if matched is None:
                return PASS_UNLIMITED
        if self.identify is not None:
            found = self.identify(request)
            if found:
                return self._admission(request, matched, found)
        presented = presented_key(request)
        if isinstance(presented, Verdict):
            return presented
        if presented is not None:
            if not self.accept_keys:
                return _unauthorized("API keys are not accepted here")
            attempts = self.key_attempts
            if attempts is None:
                return KeyCheck(presented, request, matched)
            counted = attempts.subject(self._anonymous(request))
            wait = attempts.blocked_for(counted)
            if wait is not None:
                return too_many_attempts(attempts, wait)
            return KeyCheck(presented, request, matched, counted)
        if not self.anonymous:
            return key_required()
        return self._admission(request, matched, self._anonymous(request))

    def keyed(
        self, check: KeyCheck, subject: str | StoreError | None
    ) -> Admission | Verdict | KeyAttempt:
        """After `KeyCheck`: ``subject`` is what verifying the key answered (the key's
        subject, None for a refused key, or the `StoreError` it raised). With failed attempts
        limited, a `KeyAttempt` to decide first: a refused key is counted, a verified one
        checked against its address's count."""
        if isinstance(subject, StoreError):
            return refused_key(subject)
        attempts, counted = self.key_attempts, check.counted
        if subject is None:
            if attempts is None or counted is None:
                return refused_key(None)
            return KeyAttempt(attempts.failure(counted), refused_key(None))
        admission = self._admission(check.request, check.matched, subject)
        if attempts is None or counted is None or isinstance(admission, Verdict):
            return admission
        return KeyAttempt(attempts.standing(counted), admission)

    def attempted(self, pending: KeyAttempt, decision: Decision | None) -> Admission | Verdict:
        """After `KeyAttempt`: a 429 while its address is blocked, else its ``then``."""
        attempts = self.key_attempts
        if attempts is None:  # pragma: no cover - a KeyAttempt comes only from key_attempts
            return pending.then
        wait = attempts.refusal(pending.attempt, decision)
        return pending.then if wait is None else too_many_attempts(attempts, wait)

    def _admission(self, request: Request, matched: Match, subject: str) -> Admission | Verdict:
        cost_fn = self.costs.get(matched.operation)
        cost = None
        if cost_fn is not None:
            try:
                cost = int(cost_fn(request))
            except (TollwayError, ValueError, TypeError) as exc:
                return _answer(400, "Bad request", f"the request's cost cannot be computed: {exc}")
        ident = None
        if self.request_id is not None:
            ident = read_request_id(request.headers, self.request_id)
            if isinstance(ident, Verdict):
                return ident
        return _new_admission(Admission, (subject, matched.operation, cost, ident))

    def _anonymous(self, request: Request) -> str:
        if self.client_ip.trusted:
            return subject_for_ip(self.client_ip.resolve(request.client, request.headers))
        # With no trusted proxy the subject depends on the peer alone: parse it once.
        peer = request.client or ""
        subject = self._peer_subjects.get(peer)
        if subject is None:
            subject = subject_for_ip(self.client_ip.resolve(request.client, request.headers))
            if len(self._peer_subjects) >= _PEER_CACHE:
                self._peer_subjects.clear()
            self._peer_subjects[peer] = subject
        return subject

    # -- after the store --------------------------------------------------------------------

    def verdict(self, decision: Decision) -> Verdict:
        headers = ratelimit_fields(decision, mode=self.header_mode)
        if self.legacy_headers:
            headers += legacy_fields(decision)
        if decision.allowed:
            return Verdict(True, 200, headers, b"", decision)
        status, problem_headers, body = refusal(decision)
        return Verdict(False, status, problem_headers + headers, body, decision)

    @staticmethod
    def failure(exc: TollwayError) -> Verdict:
        """A request the engine refused (bad input): a 400, never a 500, nothing consumed."""
        return _answer(400, "Bad request", str(exc))


def refusal(decision: Decision) -> tuple[int, HeaderList, bytes]:
    """The problem response for a denied decision: `problem_for`'s 429 (or 503), except for a
    request id refused on its own (`Decision.refused`): retrying it cannot pass, so no 429
    that invites a retry. Reused too often is a 409 Conflict (the id's state forbids it: send
    a new id); reused at another cost or amount is a 422, as the IETF Idempotency-Key draft
    answers a key reused with another payload."""
    refused = decision.refused
    if refused is None:
        return problem_for(decision)
    status, title = (
        (409, "Request id reused too often")
        if refused == "repeats"
        else (
            422,
            "Request id reused for another request",
        )
    )
    return problem(status, title, decision.reason, refused=refused)


def presented_key(request: Request) -> str | Verdict | None:
    """The key from ``Authorization: Bearer …`` or ``X-API-Key``; other schemes are the
    application's business and are left alone."""
    raw = auth = None
    for name, value in request.headers:  # one pass: most requests carry neither
        if name == b"x-api-key":
            raw = value
            break
        if name == b"authorization" and auth is None:
            auth = value
    if raw is None:
        if auth is None:
            return None
        scheme, _, raw = auth.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return None
    if len(raw) > MAX_KEY_HEADER:
        return _unauthorized("the API key is malformed")
    try:
        key = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return _unauthorized("the API key is malformed")
    if not key:
        return _unauthorized("the API key is empty")
    return key


def refused_key(answer: StoreError | None) -> Verdict:
    """The answer to a request whose presented key did not verify: 503 when the store could
    not say (the key may be good: never a 401 for that), else 401."""
    if isinstance(answer, StoreError):
        return _answer(
            503,
            "Service temporarily unavailable",
            "the API key could not be checked",
            retry_after=1,
        )
    return _unauthorized("the API key is unknown, revoked or expired")


def too_many_attempts(attempts: KeyAttempts, retry_after: int) -> Verdict:
    """The 429 answering a key attempt from an address with too many failed ones."""
    status, headers, body = attempts.problem(retry_after)
    return Verdict(False, status, headers, body)


def key_required() -> Verdict:
    """The answer to a request without a key where one is required (``anonymous=False``)."""
    return _unauthorized("an API key is required")


def reason_phrase(status: int) -> str:
    """The status line's phrase (WSGI needs it)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _answer(status: int, title: str, detail: str, *, retry_after: int | None = None) -> Verdict:
    extra = [("Retry-After", str(retry_after))] if retry_after is not None else []
    code, headers, body = problem(status, title, detail, headers=extra)
    return Verdict(False, code, headers, body)


def _unauthorized(detail: str) -> Verdict:
    verdict = _answer(401, "Unauthorized", detail)
    verdict.headers.append(("WWW-Authenticate", 'Bearer realm="tollway"'))
    return verdict


MAX_REQUEST_ID = 255


def request_id_header(name: str | None) -> bytes | None:
    """The header name a gate reads request ids from, checked (`ConfigurationError`)."""
    if name is None:
        return None
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ConfigurationError(
            f"request_id: {name!r} is not a header name; expected e.g. 'Idempotency-Key'"
        )
    return name.lower().encode("ascii")


def read_request_id(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | Verdict | None:
    """The request's id from header ``name``; None without one; a 400 verdict for a value
    that cannot be an id (nothing is consumed then)."""
    for key, value in headers:
        if key == name:
            text = value.strip()
            if not text or len(text) > MAX_REQUEST_ID or not all(33 <= b < 127 for b in text):
                return _answer(
                    400,
                    "Bad request",
                    f"the {name.decode()} header is not a request id: expected 1 to "
                    f"{MAX_REQUEST_ID} printable ASCII characters without spaces",
                )
            return text.decode("ascii")
    return None
