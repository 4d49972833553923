"""Shared pytest fixtures for tollway.

Sections: real Redis servers (below). Append new fixture blocks (fake clock, ...)
in their own section at the end of this file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.cluster

from servers import PostgresServer, RedisCluster, RedisServer, parse_cluster_url

# =========================================================================== Redis
# Real servers on 127.0.0.1, started lazily (only when a test asks for them) and
# stopped at session end. TOLLWAY_TEST_REDIS_URL / TOLLWAY_TEST_REDIS_CLUSTER_URL
# point `redis_url` / `redis_cluster_url` (and the clients) at existing servers
# instead. `redis_server` / `redis_cluster` are always servers started here.
# A missing redis-server is an error, never a skip.

REDIS_URL_ENV = "TOLLWAY_TEST_REDIS_URL"
REDIS_CLUSTER_URL_ENV = "TOLLWAY_TEST_REDIS_CLUSTER_URL"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the servers they use, so `-m "not cluster"` etc. work."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & {"redis_server", "redis_url", "redis_client", "make_redis_server"}:
            item.add_marker(pytest.mark.redis)
        if names & {"redis_cluster", "redis_cluster_url", "redis_cluster_client"}:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A standalone redis-server for the whole session. Do not kill it; use
    `make_redis_server` for crash/restart tests."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    """``redis://127.0.0.1:PORT/0`` of the session server (or $TOLLWAY_TEST_REDIS_URL)."""
    url = os.environ.get(REDIS_URL_ENV)
    if url:
        return url
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster (no replicas) for the whole session."""
    cluster = RedisCluster(masters=3).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(request: pytest.FixtureRequest) -> str:
    """``redis+cluster://127.0.0.1:PORT`` (or $TOLLWAY_TEST_REDIS_CLUSTER_URL)."""
    url = os.environ.get(REDIS_CLUSTER_URL_ENV)
    if url:
        return url
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    return cluster.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """redis-py client on the standalone server, FLUSHALLed before the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def redis_cluster_client(redis_cluster_url: str) -> Iterator[redis.cluster.RedisCluster]:
    """redis-py cluster client, FLUSHALL on every primary before the test."""
    nodes = [redis.cluster.ClusterNode(h, p) for h, p in parse_cluster_url(redis_cluster_url)]
    client = redis.cluster.RedisCluster(startup_nodes=nodes)
    client.flushall(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
    yield client
    client.close()


@pytest.fixture
def make_redis_server() -> Iterator[Callable[[], RedisServer]]:
    """Factory of private, started servers (for kill()/start() tests); all stopped after."""
    started: list[RedisServer] = []

    def make() -> RedisServer:
        server = RedisServer().start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


# =========================================================================== state folder
# A degraded (fail-open) decision journals to $XDG_STATE_HOME/tollway/...; keep every test
# session's journals in a folder of its own instead of the user's home.


@pytest.fixture(autouse=True, scope="session")
def _private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    previous = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
    yield
    if previous is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = previous


# =========================================================================== PostgreSQL
# A real PostgreSQL on 127.0.0.1 (servers.PostgresServer: initdb into a temporary directory,
# trust auth on loopback; under root it runs as the unprivileged `postgres` account), started
# lazily (only when a test asks for it) and stopped at session end. TOLLWAY_TEST_POSTGRES_URL
# points `postgres_url` at an existing server instead; `postgres_server` is always one started
# here. A missing initdb/postgres is an error, never a skip (scripts/test.sh installs them).
# Tests using these fixtures are marked `postgres` (`-m "not postgres"` leaves them out).

POSTGRES_URL_ENV = "TOLLWAY_TEST_POSTGRES_URL"
_POSTGRES_FIXTURES = frozenset({"postgres_server", "postgres_url", "make_postgres_server"})


class _PostgresMarker:
    """Marks the tests that use a PostgreSQL fixture. A plugin of its own, so this section
    adds to the Redis section's `pytest_collection_modifyitems` instead of replacing it."""

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            if set(getattr(item, "fixturenames", ())) & _POSTGRES_FIXTURES:
                item.add_marker(pytest.mark.postgres)


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("tollway-postgres-marker"):
        config.pluginmanager.register(_PostgresMarker(), "tollway-postgres-marker")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session. Do not kill it; use
    `make_postgres_server` for crash/restart tests."""
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> str:
    """``postgresql://postgres@127.0.0.1:PORT/postgres`` of the session server (or
    $TOLLWAY_TEST_POSTGRES_URL)."""
    url = os.environ.get(POSTGRES_URL_ENV)
    if url:
        return url
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.url


@pytest.fixture
def make_postgres_server() -> Iterator[Callable[[], PostgresServer]]:
    """Factory of private, started servers (for kill()/start() tests); all stopped after."""
    started: list[PostgresServer] = []

    def make() -> PostgresServer:
        server = PostgresServer().start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


# =========================================================================== billing ledgers


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def billing_ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty ledger: a SQLite file, then a schema of its own in the session PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    from stream_support import pg_schema

    with pg_schema(str(request.getfixturevalue("postgres_url"))) as url:
        yield url
