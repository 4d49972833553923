"""The test harness runs real servers: prove it."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import redis
import redis.cluster

from servers import (
    CLUSTER_BUS_OFFSET,
    RedisCluster,
    RedisServer,
    ServerError,
    command,
    find_free_cluster_ports,
    parse_cluster_url,
)


def _pid_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return True
    return False


# --------------------------------------------------------------------------- standalone


def test_standalone_answers_ping_and_info(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0  # flushed before the test
    assert redis_client.ping() is True
    info = redis_client.info()
    assert info["redis_version"]
    assert "cluster_enabled" not in info or not info["cluster_enabled"]
    redis_client.set("tollway:test", "1")
    assert redis_client.get("tollway:test") == b"1"


def test_redis_client_is_flushed_before_each_test(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0


def test_standalone_is_loopback_only_and_not_persistent(redis_server: RedisServer) -> None:
    assert redis_server.running
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert command(redis_server.port, "CONFIG", "GET", "bind") == ["bind", "127.0.0.1"]
    assert command(redis_server.port, "CONFIG", "GET", "save") == ["save", ""]
    assert command(redis_server.port, "CONFIG", "GET", "appendonly") == ["appendonly", "no"]


def test_kill_then_start_restarts_on_the_same_port(
    make_redis_server: Callable[[], RedisServer],
) -> None:
    server = make_redis_server()
    client = redis.Redis.from_url(server.url)
    client.set("before-crash", "1")
    old_pid, port = server.pid, server.port
    assert old_pid is not None

    server.kill()
    assert not server.running
    assert server.pid is None
    assert _pid_is_gone(old_pid)
    with pytest.raises(OSError):  # connection refused: nothing listens any more
        command(port, "PING")

    server.start()
    assert server.running
    assert server.port == port
    assert server.pid not in (None, old_pid)
    assert client.ping() is True  # the same client reconnects
    assert client.get("before-crash") is None  # no persistence: a fresh, empty server
    client.close()


def test_stop_ends_the_process_and_removes_its_directory(
    make_redis_server: Callable[[], RedisServer],
) -> None:
    server = make_redis_server()
    pid, directory = server.pid, server.directory
    assert pid is not None
    assert directory is not None
    assert directory.is_dir()
    assert server.log_path.is_file()

    server.stop()
    assert _pid_is_gone(pid)
    assert not directory.exists()
    server.stop()  # idempotent


def test_fixed_port_in_use_fails_loudly_with_the_log(redis_server: RedisServer) -> None:
    clash = RedisServer(redis_server.port, startup_timeout=5)
    with pytest.raises(ServerError, match="Address already in use"):
        clash.start()
    assert not clash.running
    assert clash.directory is None
    assert redis_server.running


# --------------------------------------------------------------------------- cluster


def test_cluster_has_exactly_three_masters(
    redis_cluster_client: redis.cluster.RedisCluster,
) -> None:
    nodes = redis_cluster_client.cluster_nodes()
    assert len(nodes) == 3
    assert all("master" in node["flags"] for node in nodes.values())
    assert all(node["connected"] for node in nodes.values())
    slots = sum(
        int(end) - int(start) + 1 for node in nodes.values() for start, end in node["slots"]
    )
    assert slots == 16384


def test_cluster_state_is_ok_on_every_node(
    redis_cluster_client: redis.cluster.RedisCluster,
) -> None:
    infos = redis_cluster_client.cluster_info(target_nodes=redis.cluster.RedisCluster.ALL_NODES)
    assert len(infos) == 3
    for info in infos.values():
        assert info["cluster_state"] == "ok"
        assert info["cluster_known_nodes"] == "3"
        assert info["cluster_slots_ok"] == "16384"


def test_hash_tags_route_keys_to_nodes(
    redis_cluster_client: redis.cluster.RedisCluster,
) -> None:
    client = redis_cluster_client
    tagged = [f"{{t{i}}}k" for i in range(50)]
    for key in tagged:
        client.set(key, "1")
    client.set("{a}x", "1")
    client.set("{a}y", "2")

    # Ask every primary directly which keys it holds (no client-side slot maths).
    held: dict[str, set[bytes]] = {}
    for node in client.get_primaries():
        direct = redis.Redis(host=node.host, port=node.port)
        held[node.name] = set(direct.keys("*"))
        direct.close()

    assert len(held) == 3
    assert sum(len(keys) for keys in held.values()) == len(tagged) + 2
    # different hash tags spread over all three masters ...
    assert all(keys - {b"{a}x", b"{a}y"} for keys in held.values())
    # ... while one tag pins keys to a single node
    assert [name for name, keys in held.items() if {b"{a}x", b"{a}y"} <= keys] != []
    assert len([name for name, keys in held.items() if keys & {b"{a}x", b"{a}y"}]) == 1
    assert client.keyslot("{a}x") == client.keyslot("{a}y")

    # a real cluster node refuses multi-key commands across slots
    first = client.get_primaries()[0]
    direct = redis.Redis(host=first.host, port=first.port)
    with pytest.raises(redis.ResponseError, match=r"CROSSSLOT|same slot"):
        direct.execute_command("MSET", "{a}x", "1", "{b}x", "2")
    direct.close()


def test_cluster_client_is_flushed_before_each_test(
    redis_cluster_client: redis.cluster.RedisCluster,
) -> None:
    sizes = redis_cluster_client.dbsize(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
    assert sizes == 0


def test_cluster_harness_ports_and_urls(redis_cluster: RedisCluster) -> None:
    ports = redis_cluster.ports
    assert len(set(ports)) == 3
    assert redis_cluster.startup_nodes == [("127.0.0.1", port) for port in ports]
    assert redis_cluster.url == f"redis+cluster://127.0.0.1:{ports[0]}"
    assert parse_cluster_url(redis_cluster.url) == redis_cluster.startup_nodes[:1]
    text = command(ports[0], "CLUSTER", "NODES")
    assert isinstance(text, str)
    for port in ports:  # cluster bus on P + 10000, all on loopback
        assert f"127.0.0.1:{port}@{port + CLUSTER_BUS_OFFSET} " in text
    for node in redis_cluster.nodes:
        assert node.running
        assert command(node.port, "CONFIG", "GET", "bind") == ["bind", "127.0.0.1"]


# --------------------------------------------------------------------------- helpers


def test_parse_cluster_url() -> None:
    assert parse_cluster_url("redis+cluster://127.0.0.1:7000") == [("127.0.0.1", 7000)]
    assert parse_cluster_url("redis+cluster://u:p@10.0.0.1:7000,10.0.0.2:7001/") == [
        ("10.0.0.1", 7000),
        ("10.0.0.2", 7001),
    ]


def test_find_free_cluster_ports_leaves_room_for_the_bus() -> None:
    ports = find_free_cluster_ports(3)
    assert len(set(ports)) == 3
    assert all(port + CLUSTER_BUS_OFFSET <= 65535 for port in ports)
    assert not {port + CLUSTER_BUS_OFFSET for port in ports} & set(ports)
