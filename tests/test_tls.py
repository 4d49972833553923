"""TLS in transit, against real servers with certificates made by the test setup
(`tls_support`): ``rediss://`` to a redis-server that only speaks TLS, the CA given in the URL
(``?ssl_ca_certs=``, which redis-py takes as is), and PostgreSQL with ``sslmode=verify-full``.
A client trusting another CA is refused, clearly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servers import PostgresServer, RedisServer
from tls_support import TlsFiles, make_certs
from tollway import Tollway
from tollway.errors import LedgerError, StoreUnavailableError
from tollway.metering.ledger import UsageEvent, open_ledger
from tollway.metering.ledger.flows import Flow, Query
from tollway.metering.streams import connect

POLICY: dict[str, Any] = {
    "defaults": {"plan": "free"},
    "operations": {"call": {}},
    "plans": {"free": {"limits": [{"name": "daily", "quota": "2/day"}]}},
}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_redis(certs: TlsFiles) -> Iterator[RedisServer]:
    with RedisServer(tls=certs) as server:
        yield server


@pytest.fixture(autouse=True)
def _private_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def test_rediss_with_the_ca_in_the_url_verifies_and_works(
    tls_redis: RedisServer, certs: TlsFiles
) -> None:
    assert tls_redis.url.startswith("rediss://")
    for host in ("127.0.0.1", "localhost"):  # both names are in the certificate
        url = f"rediss://{host}:{tls_redis.port}/0?ssl_ca_certs={certs.ca}"
        with Tollway(POLICY, url) as tw:
            tw.ping()
            tw.reset("alice")
            assert [tw.acquire("alice", "call").allowed for _ in range(3)] == [1, 1, 0]
            assert not tw.acquire("alice", "call").degraded
    client, _ = connect(tls_redis.url)  # the worker's client takes the same URL
    try:
        assert client.ping() is True
        assert client.exists("tw:{alice}") == 1
    finally:
        client.close()


def test_plain_redis_to_a_tls_only_server_is_refused(tls_redis: RedisServer) -> None:
    with (
        Tollway(POLICY, f"redis://127.0.0.1:{tls_redis.port}/0") as tw,
        pytest.raises(StoreUnavailableError),
    ):
        tw.ping()


def test_a_wrong_ca_fails_clearly(tls_redis: RedisServer, certs: TlsFiles) -> None:
    url = f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_ca_certs={certs.other_ca}"
    closed = {**POLICY, "store": {"on_error": "closed"}}
    with Tollway(closed, url) as tw:
        with pytest.raises(StoreUnavailableError) as caught:
            tw.ping()
        assert "certificate verify failed" in str(caught.value)
        decision = tw.acquire("alice", "call")
        assert not decision.allowed and decision.degraded  # on_error = closed: refused


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def tls_postgres(certs: TlsFiles) -> Iterator[PostgresServer]:
    with PostgresServer(tls=certs) as server:
        yield server


def verify_full(server: PostgresServer, ca: Path, host: str = "127.0.0.1") -> str:
    base = server.url.replace("@127.0.0.1:", f"@{host}:")
    return f"{base}?sslmode=verify-full&sslrootcert={ca}"


def event() -> UsageEvent:
    return UsageEvent(
        id="e1",
        subject="a",
        operation="call",
        meter="call",
        quantity=1,
        occurred_at_us=1,
        recorded_at_us=1,
    )


@pytest.mark.postgres
def test_postgres_verify_full_with_the_generated_ca(
    tls_postgres: PostgresServer, certs: TlsFiles
) -> None:
    for host in ("127.0.0.1", "localhost"):
        with open_ledger(verify_full(tls_postgres, certs.ca, host)) as ledger:
            ledger.write([event()])

            def flow() -> Flow[list[Any]]:
                rows = yield Query(
                    "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()", ()
                )
                return list(rows)

            ((ssl_on, version),) = ledger.transact(flow)
            assert ssl_on is True and str(version).startswith("TLS")
            assert ledger.count() == 1


@pytest.mark.postgres
def test_postgres_with_a_wrong_ca_fails_clearly(
    tls_postgres: PostgresServer, certs: TlsFiles
) -> None:
    with pytest.raises(LedgerError) as caught:
        open_ledger(verify_full(tls_postgres, certs.other_ca)).count()
    assert "certificate verify failed" in str(caught.value)
