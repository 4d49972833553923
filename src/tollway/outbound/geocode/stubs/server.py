"""`StubServer`: a provider's API on 127.0.0.1, with a behaviour program a test can change live.

Each request is decided under one lock, in this order (first match wins):

1. an unknown path: the provider's 404 form;
2. ``block()``: the provider's forbidden form, for every call;
3. ``fail(n)``, then ``garbage(n)``, then ``throttle(n)``: the next n calls each;
4. the provider's own refusals: a missing query or key, OpenCage's 402/403 test keys;
5. ``hostile(mode, n)``: the next n calls that would be answered get a hostile answer
   (`tollway.outbound.geocode.stubs.hostile`), not counted in ``served``;
6. ``quota(n)`` used up: the provider's quota form;
7. a normal answer (``EMPTY_QUERY`` has no results), counted in ``served``.

``slow(seconds, n)`` delays the next n answers, whatever they are; the delay is taken after
the decision, outside the lock, so a slow answer holds up nobody else.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tollway.errors import InvalidArgumentError
from tollway.outbound.geocode.stubs.dialects import DIALECTS, Reply, Request, Window, text_reply
from tollway.outbound.geocode.stubs.hostile import HOSTILE_MODES, HUGE_BYTES, hostile_reply

__all__ = [
    "KINDS",
    "DEFAULT_DAILY_LIMIT",
    "StubServer",
    "next_midnight_utc",
    "running_stubs",
    "start_stubs",
    "stop_stubs",
]

KINDS: tuple[str, ...] = ("nominatim", "opencage", "google", "here", "mapbox")
DEFAULT_DAILY_LIMIT = 2500
"""What OpenCage's ``rate.limit`` says when no ``quota()`` is set (its free-trial day)."""

_HOST = "127.0.0.1"  # loopback only: a stub is never reachable from another machine


def next_midnight_utc(now: float | None = None) -> int:
    """Unix seconds of the next midnight UTC: when OpenCage's free-trial day resets."""
    now = time.time() if now is None else now
    return (int(now) // 86400 + 1) * 86400


@dataclass
class _Program:
    quota: int | None = None
    blocked: bool = False
    throttle_left: int = 0
    retry_after: str = "2"
    fail_left: int = 0
    fail_status: int = 500
    garbage_left: int = 0
    slow_left: int = 0
    slow_seconds: float = 0.0
    hostile_left: int = 0
    hostile_mode: str = ""
    huge_bytes: int = HUGE_BYTES


class StubServer:
    """One provider's stub API. ``with StubServer("opencage") as stub: ...`` or start()/stop().

    Point a geocoder at it with ``domain=stub.domain, scheme=stub.scheme``.
    """

    def __init__(self, kind: str, *, port: int = 0) -> None:
        if kind not in DIALECTS:
            raise InvalidArgumentError(f"kind: {kind!r}; expected one of {', '.join(KINDS)}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise InvalidArgumentError(f"port: {port!r}; expected 0 (any free port) to 65535")
        self.kind = kind
        self.host = _HOST
        self.scheme = "http"
        self._dialect = DIALECTS[kind]
        self._wanted_port = port
        self._lock = threading.Lock()
        self._program = _Program()
        self._calls = 0
        self._served = 0
        self._open = 0
        self._queries: list[str] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> StubServer:
        if self._httpd is not None:
            return self
        httpd = _HTTPServer((self.host, self._wanted_port), _Handler)
        httpd.stub = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"tollway-stub-{self.kind}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError(f"the {self.kind} stub is not running; call start() first")
        return int(self._httpd.server_address[1])

    @property
    def domain(self) -> str:
        """``127.0.0.1:PORT``: what geopy's ``domain`` argument takes."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.domain}"

    def __repr__(self) -> str:
        where = self.url if self._httpd is not None else "stopped"
        return f"StubServer({self.kind!r}, {where})"

    # ---------------------------------------------------------------- behaviour program

    def quota(self, n: int | None) -> None:
        """After n successful answers in total, answer as the provider does when its quota or
        credit is used up (None: no quota). OpenCage's ``rate`` counts down from n."""
        if n is not None:
            _check_count("n", n)
        with self._lock:
            self._program.quota = n

    def throttle(self, n: int = 1, retry_after: str = "2") -> None:
        """The next n calls get the provider's "too fast" answer with ``Retry-After``
        (delay-seconds or an HTTP-date, sent as given)."""
        _check_count("n", n)
        if not isinstance(retry_after, str) or "\n" in retry_after or "\r" in retry_after:
            raise InvalidArgumentError(
                f"retry_after: {retry_after!r}; expected a header value such as '2' or an HTTP-date"
            )
        with self._lock:
            self._program.throttle_left = n
            self._program.retry_after = retry_after

    def fail(self, n: int = 1, status: int = 500) -> None:
        """The next n calls answer HTTP ``status`` with a plain-text body."""
        _check_count("n", n)
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise InvalidArgumentError(f"status: {status!r}; expected an HTTP error status 400-599")
        with self._lock:
            self._program.fail_left = n
            self._program.fail_status = status

    def garbage(self, n: int = 1) -> None:
        """The next n calls answer 200 with a body that is not JSON."""
        _check_count("n", n)
        with self._lock:
            self._program.garbage_left = n

    def hostile(self, mode: str, n: int = 1, *, huge_bytes: int = HUGE_BYTES) -> None:
        """The next n calls the provider would answer get the ``mode`` answer (one of
        `HOSTILE_MODES`); ``huge_bytes``: the size of a ``huge`` answer."""
        if mode not in HOSTILE_MODES:
            raise InvalidArgumentError(
                f"mode: {mode!r}; expected one of {', '.join(HOSTILE_MODES)}"
            )
        _check_count("n", n)
        _check_count("huge_bytes", huge_bytes)
        with self._lock:
            self._program.hostile_left = n
            self._program.hostile_mode = mode
            self._program.huge_bytes = huge_bytes

    def slow(self, seconds: float, n: int = 1) -> None:
        """Delay the next n answers by ``seconds`` (for client timeouts)."""
        _check_count("n", n)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
            raise InvalidArgumentError(f"seconds: {seconds!r}; expected a number >= 0")
        with self._lock:
            self._program.slow_left = n
            self._program.slow_seconds = float(seconds)

    def block(self) -> None:
        """Every call gets the provider's forbidden / denied answer, until reset()."""
        with self._lock:
            self._program.blocked = True

    def reset(self) -> None:
        """Back to normal, counters to zero."""
        with self._lock:
            self._program = _Program()
            self._calls = 0
            self._served = 0
            self._queries = []

    # ---------------------------------------------------------------- introspection

    @property
    def calls(self) -> int:
        """Requests received."""
        with self._lock:
            return self._calls

    @property
    def served(self) -> int:
        """Successful answers (an empty answer counts: the provider bills it)."""
        with self._lock:
            return self._served

    @property
    def connections(self) -> int:
        """Connections being served now: 0 once every request that reached the stub has been
        decided and answered (a test waits for it after killing a client mid-call)."""
        with self._lock:
            return self._open

    def connection_changed(self, delta: int) -> None:
        with self._lock:
            self._open += delta

    @property
    def queries(self) -> list[str]:
        """The query strings received, in order (a copy)."""
        with self._lock:
            return list(self._queries)

    # ---------------------------------------------------------------- serving

    def handle(self, target: str) -> tuple[Reply, float]:
        """The answer to ``GET target`` and how long to wait before sending it."""
        parts = urlsplit(target)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        parsed = self._dialect.parse(parts.path, params)
        with self._lock:
            self._calls += 1
            program = self._program
            delay = 0.0
            if program.slow_left > 0:
                program.slow_left -= 1
                delay = program.slow_seconds
            if isinstance(parsed, Request) and parsed.query is not None:
                self._queries.append(parsed.query)
            return self._decide(parsed, program), delay

    def _decide(self, parsed: Request | Reply, program: _Program) -> Reply:
        if isinstance(parsed, Reply):
            return parsed
        dialect = self._dialect
        if program.blocked:
            return dialect.blocked()
        if program.fail_left > 0:
            program.fail_left -= 1
            return text_reply(program.fail_status, f"HTTP {program.fail_status}: stub failure\n")
        if program.garbage_left > 0:
            program.garbage_left -= 1
            return text_reply(200, "<html><body>upstream hiccup</body></html>", "text/html")
        if program.throttle_left > 0:
            program.throttle_left -= 1
            return dialect.throttled(program.retry_after, self._window(program))
        refused = dialect.check(parsed)
        if refused is not None:
            return refused
        if program.hostile_left > 0:
            program.hostile_left -= 1
            window = self._window(program)
            return hostile_reply(dialect, program.hostile_mode, parsed, window, program.huge_bytes)
        if program.quota is not None and self._served >= program.quota:
            return dialect.exhausted(self._window(program))
        self._served += 1
        return dialect.answer(parsed, self._window(program))

    def _window(self, program: _Program) -> Window:
        now = time.time()
        limit = DEFAULT_DAILY_LIMIT if program.quota is None else program.quota
        remaining = max(0, limit - self._served)
        return Window(limit=limit, remaining=remaining, reset=next_midnight_utc(now), now=now)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for a slow() answer nobody reads
    stub: StubServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout) closes the socket under a slow answer: not an error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "tollway-stub/1"

    def setup(self) -> None:
        self.server.stub.connection_changed(+1)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.stub.connection_changed(-1)

    def do_GET(self) -> None:
        try:
            reply, delay = self.server.stub.handle(self.path)
        except Exception as error:  # a stub bug must still answer, as a provider's 500 would
            reply, delay = text_reply(500, f"stub error: {error!r}\n"), 0.0
        if delay:
            time.sleep(delay)
        self._send(reply)

    def do_POST(self) -> None:
        self._send(text_reply(405, "Method Not Allowed\n"))

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _send(self, reply: Reply) -> None:
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(reply.length))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if reply.trickle:
                for i in range(len(reply.body)):
                    self.wfile.write(reply.body[i : i + 1])
                    self.wfile.flush()
                    time.sleep(reply.trickle)
            else:
                self.wfile.write(reply.body)
            for _ in range(reply.repeat):  # until the client hangs up, at most all of it
                self.wfile.write(reply.filler)
        except ConnectionError:
            pass  # the client has gone (it timed out)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests and the demo read the counters instead


def _check_count(name: str, n: object) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidArgumentError(f"{name}: {n!r}; expected a whole number >= 0")


def start_stubs(kinds: Iterable[str] = KINDS) -> dict[str, StubServer]:
    """Start one stub per kind; stop them with `stop_stubs`."""
    stubs: dict[str, StubServer] = {}
    try:
        for kind in kinds:
            if kind in stubs:
                continue
            stubs[kind] = StubServer(kind).start()
    except BaseException:
        stop_stubs(stubs)
        raise
    return stubs


def stop_stubs(stubs: dict[str, StubServer]) -> None:
    for stub in stubs.values():
        stub.stop()


@contextlib.contextmanager
def running_stubs(kinds: Iterable[str] = KINDS) -> Iterator[dict[str, StubServer]]:
    """``with running_stubs(["opencage", "google"]) as stubs: stubs["google"].domain``."""
    stubs = start_stubs(kinds)
    try:
        yield stubs
    finally:
        stop_stubs(stubs)
