"""`Metrics`: one registry of tollway's series, fed by an observer and read at scrape time.

    metrics = Metrics(top=20)
    tw = Tollway(policy, observer=metrics.observer)
    metrics.add_tollway(tw)          # its store's breaker and journal, its routes' providers
    metrics.add_drain(drain)         # a Drain's stats (stream lag, throughput)
    metrics.add_ledger(tw.ledger)    # hook deliveries by state, dead letters
    app = metrics_app(metrics)       # mount at /metrics (tollway.metrics.app)

Each `Metrics` holds its own `CollectorRegistry` (never prometheus-client's global one), so
two of them (two apps, two tests) never share a series.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tollway.errors import ConfigurationError, InvalidArgumentError
from tollway.metrics.observer import LATENCY_BUCKETS, DecisionObserver
from tollway.metrics.sources import Families, Sources

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from tollway.client import AsyncTollway, Tollway
    from tollway.engine.decision import Decision
    from tollway.metering.drain import Drain
    from tollway.metering.ledger import Ledger

MAX_SOURCE_NAME = 64


def require_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:  # the optional extra
        raise ConfigurationError(
            "tollway.metrics needs prometheus-client: pip install 'tollway[metrics]'"
        ) from exc
    return prometheus_client


class Metrics:
    """tollway's Prometheus series. ``top``: the busiest subjects given series of their own
    (0: none); ``buckets``: the acquire latency histogram's bounds in seconds; ``timeout_s``:
    how long a scrape waits for its slow reads (ledger, providers) together."""

    def __init__(
        self,
        *,
        top: int = 20,
        buckets: Sequence[float] = LATENCY_BUCKETS,
        timeout_s: float = 0.5,
    ) -> None:
        prometheus = require_prometheus()
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)):
            raise InvalidArgumentError(f"timeout_s: {timeout_s!r}; expected seconds")
        if not 0 < timeout_s <= 60:
            raise InvalidArgumentError(f"timeout_s: {timeout_s!r}; expected 0 < seconds <= 60")
        self.observer = DecisionObserver(top=top, buckets=buckets)
        """Pass it as ``Tollway(..., observer=metrics.observer)``."""
        self.registry: CollectorRegistry = prometheus.CollectorRegistry(auto_describe=False)
        self._sources = Sources(float(timeout_s))
        self._inline: list[Callable[[], Families]] = []
        self._names: set[str] = set()
        self._scrape = threading.Lock()
        self.registry.register(_Collector(self))

    # -- what to read -----------------------------------------------------------------------

    def add_store(self, store: object, *, name: str = "default") -> None:
        """A store's circuit breaker and journal (a Redis store; a memory store has neither,
        and adds nothing). ``name`` is its ``store`` label (never its URL: it may hold a
        password)."""
        self._claim(f"store:{name}")
        breaker = getattr(store, "breaker", None)
        journal = getattr(store, "journal", None)
        if breaker is None and journal is None:
            return
        from tollway.metrics import families

        # The journal's size is a directory listing: bounded like any other slow read.
        self._sources.add(f"store:{name}", lambda: families.store(name, breaker, journal))

    def add_routes(self, tw: Tollway) -> None:
        """Spend, remaining and cooldown of every provider of the policy's routes, read from
        the store at scrape time (a sync `Tollway`; an asyncio service gives one opened on
        the same store for this)."""
        routes = sorted(tw.policy.routes)
        if not routes:
            return
        self._claim("providers")
        from tollway.metrics import families

        def read() -> Families:
            status: dict[str, Decision] = {}
            for route in routes:
                for provider, decision in tw.route(route).status().items():
                    status.setdefault(provider, decision)
            return families.providers(status)

        self._sources.add("providers", read)

    def add_tollway(self, tw: Tollway | AsyncTollway) -> None:
        """`add_store` (as ``default``), and for a sync `Tollway` `add_routes` too."""
        from tollway.client import Tollway

        self.add_store(tw.store)
        if isinstance(tw, Tollway):
            self.add_routes(tw)

    def add_drain(self, drain: Drain) -> None:
        """A `Drain`'s stats (stream lag, committed events, failures), labelled by its
        consumer name; read from memory, so inline."""
        consumer = drain.consumer
        self._claim(f"drain:{consumer}")
        from tollway.metrics import families

        self._inline.append(lambda: families.drain(consumer, drain.stats()))

    def add_ledger(self, ledger: Ledger) -> None:
        """The ledger's hook outbox: messages by hook and state, dead letters."""
        self._claim("hooks")
        from tollway.metrics import families

        self._sources.add("hooks", lambda: families.hooks(ledger))

    def add_source(self, name: str, read: Callable[[], Families]) -> None:
        """A read of your own at scrape time, bounded like the others: ``read()`` returns
        prometheus-client metric families; ``name`` is its ``source`` label."""
        self._claim(name)
        self._sources.add(name, read)

    def _claim(self, name: str) -> None:
        if len(name) > MAX_SOURCE_NAME or not name.isprintable():
            raise InvalidArgumentError(
                f"name: {name!r}; expected at most {MAX_SOURCE_NAME} printable characters"
            )
        if name in self._names:
            raise InvalidArgumentError(f"{name}: added to these metrics already")
        self._names.add(name)

    def close(self) -> None:
        """Stop the worker threads of the scrape-time reads."""
        self._sources.close()

    # -- scraping ---------------------------------------------------------------------------

    def collect(self) -> Families:
        """Every family, now (what the registry's collector yields)."""
        from tollway.metrics import families

        snap = self.observer.snapshot()
        out: Families = families.decisions(snap, self.observer.bounds)
        for read in self._inline:
            out.extend(read())
        if self._sources:
            out.extend(self._read_sources())
        return out

    def _read_sources(self) -> Families:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily(
            "tollway_metrics_source_up",
            "1 when the scrape-time read of a source finished in time and without error.",
            labels=["source"],
        )
        took = GaugeMetricFamily(
            "tollway_metrics_source_duration_seconds",
            "How long the source's last finished read took.",
            labels=["source"],
        )
        out: Families = []
        with self._scrape:  # one scrape at a time drives the sources' futures
            for outcome in self._sources.read_all():
                name = outcome.source.name
                up.add_metric([name], 0.0 if outcome.families is None else 1.0)
                took.add_metric([name], outcome.source.seconds)
                out.extend(outcome.families or ())
        return [*out, up, took]


class _Collector:
    """The registry's one collector (no ``describe``: registering reads nothing)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Families:
        return self.metrics.collect()
