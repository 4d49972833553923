"""Where a message goes: the `Sink` protocol, `WebhookSink` (HTTP(S) POST signed per Standard
Webhooks, with the standard library's ``http.client``), `CallableSink` (any Python callable) and
`RedisStreamSink` (XADD to a Redis Stream). See `tollway.metering.delivery` for how a sink's
answers are retried and dead-lettered."""

from __future__ import annotations

import importlib
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable
from urllib.parse import SplitResult, urlsplit

from tollway.errors import ConfigurationError
from tollway.metering.cloudevents import (
    BATCH_CONTENT_TYPE,
    decode,
    decode_batch,
)
from tollway.metering.httpattempt import AttemptGuard, Target, post
from tollway.metering.sinkresult import AttemptOutcome, SendResult
from tollway.metering.webhooks import (
    SecretsLike,
    WebhookSecret,
    headers_for,
    parse_secrets,
)
from tollway.netrules import address_refusal, literal_ip, scheme_refusal

__all__ = [
    "AttemptOutcome",
    "CallableSink",
    "Message",
    "RedisStreamSink",
    "SendResult",
    "Sink",
    "StreamSinkBase",
    "WebhookSink",
    "check_sink_url",
    "check_stream",
    "exception_text",
    "stream_fields",
]


DEFAULT_TIMEOUT = 5.0
"""Seconds per attempt, in all: a receiver should answer at once and work later."""


# --------------------------------------------------------------------------- messages, sinks


@dataclass(frozen=True, slots=True)
class Message:
    """What a sink sends: an encoded event or batch and the id receivers dedupe on."""

    id: str
    body: bytes
    content_type: str
    event_ids: tuple[str, ...]

    @property
    def is_batch(self) -> bool:
        return self.content_type == BATCH_CONTENT_TYPE

    def events(self) -> list[dict[str, Any]]:
        """The events, decoded (one for a single event)."""
        return decode_batch(self.body) if self.is_batch else [decode(self.body)]


@runtime_checkable
class Sink(Protocol):
    """Where messages go. ``send`` never raises for a failed delivery: it returns a
    `SendResult` (an exception out of it is still counted as a failure). ``disabled`` is true
    once the sink said it wants no more (a webhook's 410 Gone)."""

    @property
    def target(self) -> str:
        """What the sink is, for records and errors: a URL, a callable's name."""
        ...

    @property
    def disabled(self) -> bool: ...

    def send(self, message: Message, *, timeout: float) -> SendResult: ...


def check_sink_url(url: Any, *, allow_http: bool = False, allow_private: bool = False) -> str:
    """Return ``url`` if a webhook can be sent to it: ``https`` (``http`` only to a loopback
    host, or with ``allow_http``), with a host, a valid port, no credentials, and not a
    literal address inside the network (unless ``allow_private``; a name is checked on what
    it resolves to, at each attempt: `tollway.netrules`). Raises `ConfigurationError` naming
    the URL."""
    if not isinstance(url, str) or not url or any(c.isspace() or ord(c) < 32 for c in url):
        raise ConfigurationError(
            f"sink URL {url!r}: expected an http:// or https:// URL without spaces"
        )
    try:
        split = urlsplit(url)
        port = split.port
    except ValueError as exc:
        raise ConfigurationError(f"sink URL {url!r}: {exc}") from None
    if split.scheme.lower() not in {"http", "https"}:
        scheme = f"scheme {split.scheme!r}" if split.scheme else "no scheme"
        raise ConfigurationError(f"sink URL {url!r}: {scheme}; expected http:// or https://")
    if not split.hostname:
        raise ConfigurationError(
            f"sink URL {url!r}: no host; expected e.g. https://hooks.example.com/tollway"
        )
    if split.username is not None or split.password is not None:
        shown = split._replace(netloc=f"***@{split.netloc.rpartition('@')[2]}").geturl()
        raise ConfigurationError(
            f"sink URL {shown!r}: credentials in the URL are not sent; pass an Authorization "
            "header in headers= instead"
        )
    if port == 0:
        raise ConfigurationError(f"sink URL {url!r}: port 0; expected a port from 1 to 65535")
    refused = scheme_refusal(split.scheme, split.hostname, allow_http=allow_http)
    ip = literal_ip(split.hostname)
    if refused is None and ip is not None:
        refused = address_refusal(ip, allow_private=allow_private)
        if refused is not None:
            refused += "; expected a public address, or allow_private=True"
    if refused is not None:
        raise ConfigurationError(f"sink URL {url!r}: {refused}")
    return url


class WebhookSink:
    """POST each message to ``url``, signed per Standard Webhooks with every secret in
    ``secrets`` (several during a rotation, current first; change them with `set_secrets`).

    ``clock`` stamps ``webhook-timestamp`` (real Unix time by default: receivers check it
    within 5 minutes, so it is not the deliverer's scheduling clock). ``headers`` are added to
    every request. Redirects are not followed (a 3xx is a failure, as the spec advises).

    ``allow_http``: plain http to any host (else only to loopback); ``allow_private``: private,
    link-local... addresses too (else refused, checked on the address each attempt resolves
    to, and the message dead-lettered as ``refused``): see `tollway.netrules`."""

    def __init__(
        self,
        url: str,
        secrets: SecretsLike,
        *,
        headers: Mapping[str, str] | None = None,
        user_agent: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
        allow_http: bool = False,
        allow_private: bool = False,
    ) -> None:
        self._url = check_sink_url(url, allow_http=allow_http, allow_private=allow_private)
        split: SplitResult = urlsplit(url)
        self._target = Target(
            host=split.hostname or "",
            port=split.port,
            path=(split.path or "/") + (f"?{split.query}" if split.query else ""),
            https=split.scheme.lower() == "https",
            ssl_context=ssl_context,
            allow_private=allow_private,
        )
        self._secrets = parse_secrets(secrets)
        extra = dict(headers or {})
        reserved = {"webhook-id", "webhook-timestamp", "webhook-signature", "content-type"}
        for name, value in extra.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise ConfigurationError(f"headers: {name!r}: {value!r}; expected strings")
            if name.lower() in reserved or name.lower() == "content-length":
                raise ConfigurationError(f"headers: {name!r} is set by the sink itself")
        self._extra = extra
        if user_agent is None:
            from tollway import __version__

            user_agent = f"tollway/{__version__} (webhooks)"
        self._user_agent = user_agent
        self._clock = clock
        self._lock = threading.Lock()
        self._inflight: set[AttemptGuard] = set()
        self.disabled = False
        """Set by a 410 Gone answer; messages for a disabled sink are dead-lettered unsent."""

    @property
    def target(self) -> str:
        return self._url

    @property
    def secrets(self) -> tuple[WebhookSecret, ...]:
        return self._secrets

    def set_secrets(self, secrets: SecretsLike) -> None:
        """Replace the signing secrets (a rotation: new and old, then new alone)."""
        self._secrets = parse_secrets(secrets)

    def enable(self) -> None:
        """Clear ``disabled`` (the receiver wants messages again)."""
        self.disabled = False

    def __repr__(self) -> str:
        return f"WebhookSink({self._url!r}, {len(self._secrets)} secret(s))"

    def send(self, message: Message, *, timeout: float) -> SendResult:
        """One POST; ``timeout`` bounds the whole attempt (connect, send, every byte of the
        answer), whatever the receiver does (`tollway.metering.httpattempt`)."""
        if self.disabled:
            return SendResult.gone("the sink is disabled (it answered 410 Gone)", status=None)
        headers = {
            **self._extra,
            "User-Agent": self._user_agent,
            "Content-Type": message.content_type,
            **headers_for(message.id, message.body, self._secrets, timestamp=int(self._clock())),
        }
        guard = AttemptGuard(timeout)
        with self._lock:
            self._inflight.add(guard)
        try:
            result = post(self._target, message.body, headers, guard)
        finally:
            with self._lock:
                self._inflight.discard(guard)
        if result.outcome == "gone":
            self.disabled = True
        return result

    def abort(self) -> None:
        """End the attempts in flight now (a worker stopping); each returns a failure."""
        with self._lock:
            guards = list(self._inflight)
        for guard in guards:
            guard.abort()


class CallableSink:
    """Hand each message to ``fn(message)``; its return value is ignored, an exception is a
    failure retried on the schedule like any other. ``timeout`` cannot interrupt a Python
    call: the callable bounds its own time."""

    def __init__(self, fn: Callable[[Message], object], *, name: str | None = None) -> None:
        if not callable(fn):
            raise ConfigurationError(f"fn: {fn!r} is not callable")
        self._fn = fn
        self._name = name or getattr(fn, "__qualname__", None) or repr(fn)
        self.disabled = False

    @property
    def target(self) -> str:
        return f"callable:{self._name}"

    def __repr__(self) -> str:
        return f"CallableSink({self._name})"

    def send(self, message: Message, *, timeout: float) -> SendResult:
        try:
            self._fn(message)
        except Exception as exc:
            return SendResult.failed(exception_text(exc))
        return SendResult.delivered()


B = TypeVar("B", bound="StreamSinkBase")


class StreamSinkBase:
    """What the sync and the async Redis Stream sinks share: the stream, its bound and the
    XADD. ``_redis_module`` names the redis-py module whose ``Redis`` `from_url` makes."""

    _redis_module: ClassVar[str] = "redis"

    def __init__(self, client: Any, stream: str, *, maxlen: int = 100_000) -> None:
        check_stream(stream, maxlen)
        self._client = client
        self._stream = stream
        self._maxlen = maxlen
        self.disabled = False

    @classmethod
    def from_url(
        cls: type[B],
        url: str,
        stream: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        maxlen: int = 100_000,
    ) -> B:
        try:
            module = importlib.import_module(cls._redis_module)
        except ImportError:  # pragma: no cover - depends on the environment
            raise ConfigurationError(
                "a stream hook needs redis-py: pip install 'tollway[redis]'"
            ) from None
        client = module.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        return cls(client, stream, maxlen=maxlen)

    @property
    def target(self) -> str:
        return f"redis-stream:{self._stream}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._stream!r})"

    def _xadd(self, message: Message) -> Any:
        """The client's XADD of ``message`` (its reply, or an awaitable of it)."""
        fields: Any = stream_fields(message)
        return self._client.xadd(self._stream, fields, maxlen=self._maxlen, approximate=True)


class RedisStreamSink(StreamSinkBase):
    """XADD each message to the Redis Stream ``stream``: fields ``id`` (the webhook-id, what
    consumers dedupe on, as webhook receivers do), ``content_type`` and ``body``; ``MAXLEN ~``
    ``maxlen`` bounds the stream (consumers read it within that many messages).

    ``client`` is a redis-py client (its ``socket_timeout`` bounds an attempt: `from_url` sets
    it). A connection error or a timeout fails the attempt; a stream has no "gone" answer, so
    ``disabled`` is only ever set by the caller."""

    def send(self, message: Message, *, timeout: float) -> SendResult:
        try:
            self._xadd(message)
        except Exception as exc:  # redis.ConnectionError, TimeoutError, ResponseError...
            return SendResult.failed(exception_text(exc))
        return SendResult.delivered()

    def close(self) -> None:
        close = getattr(self._client, "close", None)
        if callable(close):
            close()


def check_stream(stream: Any, maxlen: Any) -> None:
    if not isinstance(stream, str) or not stream:
        raise ConfigurationError(f"stream: {stream!r}; expected a Redis Stream key")
    if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1:
        raise ConfigurationError(f"maxlen: {maxlen!r}; expected an int >= 1")


def stream_fields(message: Message) -> dict[str, str | bytes]:
    """The fields of a stream sink's XADD: the id consumers dedupe on, the type, the body."""
    return {"id": message.id, "content_type": message.content_type, "body": message.body}


def exception_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
