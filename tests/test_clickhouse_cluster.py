"""The ClickHouse harness itself: real servers, the cluster ``siptrace`` over them, a
Distributed table that spreads rows by key, a server stopped and started again, and
nothing left behind by cleanup()."""

import os
import time
from pathlib import Path

import pytest

from clickhouse_cluster import ClickHouseCluster, find_server, port_free
from conftest import missing

ZSTD_METHOD_BYTE = 0x90  # a compressed block: 16-byte checksum, method byte (LZ4 0x82)


def make_distributed(cluster, db):
    cluster.query_all(f"CREATE TABLE {db}.t_local (k String, n UInt32) "
                      "ENGINE = MergeTree ORDER BY (k, n)")
    cluster.query_all(f"CREATE TABLE {db}.t AS {db}.t_local "
                      f"ENGINE = Distributed(siptrace, {db}, t_local, cityHash64(k))")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is no process left: it is waited for by Popen.wait already
    return Path(f"/proc/{pid}").exists()


def test_both_servers_answer_on_their_own_ports(clickhouse_cluster):
    servers = clickhouse_cluster.servers
    assert len(servers) == 2 and all(s.running for s in servers)
    assert clickhouse_cluster.query_all("SELECT 1") == [[(1,)], [(1,)]]
    ports = [p for s in servers for p in (s.tcp_port, s.http_port, s.interserver_port)]
    assert len(set(ports)) == 6
    assert clickhouse_cluster.url("x") == f"clickhouse://default@127.0.0.1:{servers[0].port}/x"
    for server in servers:
        client = server.client()
        assert client.execute("SELECT timezone()")[0][0] in ("UTC", "Etc/UTC")
        client.disconnect()


def test_every_server_knows_the_cluster_with_one_shard_per_server(clickhouse_cluster):
    servers = clickhouse_cluster.servers
    for i, answer in enumerate(clickhouse_cluster.query_all(
            "SELECT shard_num, replica_num, host_address, port, is_local "
            "FROM system.clusters WHERE cluster = 'siptrace' ORDER BY shard_num")):
        assert [row[:4] for row in answer] == [(1, 1, "127.0.0.1", servers[0].port),
                                               (2, 1, "127.0.0.1", servers[1].port)]
        assert [row[4] for row in answer] == [int(j == i) for j in range(2)]


def test_a_distributed_table_spreads_keys_over_both_shards(clickhouse_cluster, clickhouse_db):
    db = clickhouse_db
    make_distributed(clickhouse_cluster, db)
    rows = [(f"call-{i % 200}", i) for i in range(2_000)]
    client = clickhouse_cluster.servers[0].client(db, settings={"insert_distributed_sync": 1})
    client.execute("INSERT INTO t (k, n) VALUES", rows)
    client.disconnect()
    shards = [{k: c for k, c in answer} for answer in
              clickhouse_cluster.query_all(f"SELECT k, count() FROM {db}.t_local GROUP BY k")]
    assert all(shards), "every shard holds keys"
    assert not shards[0].keys() & shards[1].keys(), "a key's rows on one shard only"
    assert {**shards[0], **shards[1]} == {f"call-{i}": 10 for i in range(200)}
    # read over the Distributed table on either server: every row
    for answer in clickhouse_cluster.query_all(f"SELECT k, n FROM {db}.t"):
        assert sorted(answer) == sorted(rows)
    # zstd is the block compression of the parts written
    for server in clickhouse_cluster.servers:
        # every column file of every part (k.bin, n.bin; data.bin in a newer compact part)
        data = sorted((server.dir / "data" / "data" / db / "t_local").glob("*/*.bin"))
        assert data, list((server.dir / "data" / "data" / db).rglob("*"))
        for path in data:
            assert path.read_bytes()[16] == ZSTD_METHOD_BYTE, path


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_server_stopped_and_started_again_keeps_its_data_and_port(
        clickhouse_cluster, clickhouse_db, how):
    server = clickhouse_cluster.servers[1]
    db = clickhouse_db
    server.execute(f"CREATE TABLE {db}.kept (n UInt32) ENGINE = MergeTree ORDER BY n")
    server.execute(f"INSERT INTO {db}.kept VALUES", [(i,) for i in range(1_000)])
    port, url, pid = server.port, server.url(db), server.pid
    started = time.monotonic()
    getattr(server, how)()
    stopped_in = time.monotonic() - started
    assert not server.running and not alive(pid)
    assert port_free(port)
    assert stopped_in < 15, stopped_in
    server.start()
    assert server.running and server.pid != pid
    assert server.port == port and server.url(db) == url
    assert server.execute(f"SELECT count(), sum(n) FROM {db}.kept") == [(1_000, 499_500)]
    # the cluster works again through it
    answers = clickhouse_cluster.query_all("SELECT count() FROM system.clusters "
                                           "WHERE cluster = 'siptrace'")
    assert answers == [[(2,)], [(2,)]]


def test_cleanup_leaves_no_directory_and_no_process(tmp_path):
    if find_server() is None:
        missing("clickhouse-server is not installed")
    base = tmp_path / "own"
    cluster = ClickHouseCluster(base, size=2)
    try:
        cluster.start()
        pids = cluster.pids
        ports = [p for s in cluster.servers
                 for p in (s.tcp_port, s.http_port, s.interserver_port)]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        # every file a server holds open lives under its base directory
        for pid in pids:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except FileNotFoundError:
                    continue
                if target.startswith("/") and not target.startswith(("/dev/", "/proc/")):
                    assert target.startswith(str(base.resolve())), target
    finally:
        cluster.cleanup()
    assert not base.exists()
    assert not any(alive(p) for p in pids)
    assert all(port_free(p) for p in ports)
    assert all(not s.running for s in cluster.servers)
