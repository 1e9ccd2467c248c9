"""ClickHouse as the store: real servers (a two-shard cluster started by the tests).

Replay and live capture write through a Distributed table exactly as into the SQL
backends: every row once, a call's rows on one shard, nothing lost when a server
stops under load, and nothing stored twice when an INSERT's answer is lost after the
server wrote its rows.
"""

import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from chaos_proxy import InsertAnswerLost
from conftest import PCAPS
from kamailio_lab import Lab, siptrace_status
from siptrace.store.batch import BatchWriter
from siptrace.store.clickhouse.connection import client_for, connect, server_version
from siptrace.store.clickhouse.schema import describe, table_ddl
from siptrace.store.clickhouse.writer import ClickHouseStore
from siptrace.store.process import ProcessWriter
from siptrace.store.reader import TraceReader
from siptrace.store.urls import parse_db_url
from storefixtures import make_rows
from test_store_outage import Wire, captured_all, replay_through_an_outage, until

SIPTRACE = str(Path(sys.executable).parent / "siptrace")
CAPTURES = ("kamailio-udp.pcap", "kamailio-tcp.pcap", "sctp.pcap")
EPOCH = datetime(1970, 1, 1)
COLUMNS = "callid, method, status, fromip, toip, fromtag, direction, traced_user, msg"


def replay(capture: Path, db_url: str) -> subprocess.Popen:
    return subprocess.Popen([SIPTRACE, "replay", str(capture), "--db-url", db_url],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def sqlite_rows(capture: Path, tmp_path: Path) -> list[tuple]:
    """The rows the same replay stores into SQLite: the reference."""
    url = f"sqlite:///{tmp_path / (capture.stem + '.db')}"
    subprocess.run([SIPTRACE, "replay", str(capture), "--db-url", url], check=True,
                   capture_output=True)
    with TraceReader(url) as reader:
        found = reader.rows(limit=1_000_000, newest_first=False)
    return sorted((m.date, m.callid.encode("utf-8", "surrogateescape"), m.method.encode(),
                   m.status.encode(), m.fromip.encode(), m.toip.encode(),
                   m.fromtag.encode("utf-8", "surrogateescape"), m.direction.encode(),
                   m.traced_user.encode(), m.msg) for m in found)


def stored_rows(client, table: str) -> list[tuple]:
    found = client.execute(f"SELECT toUInt32(date), date_us, {COLUMNS} FROM {table}")
    return sorted((EPOCH + timedelta(seconds=s, microseconds=us), *rest)
                  for s, us, *rest in found)


def make_cluster_table(cluster, database: str, table: str = "sip_trace") -> str:
    """The Distributed table over ``<table>_local`` on every server (schema.py's DDL,
    as an operator runs it); its URL on server 0."""
    for server in cluster.servers:
        client = client_of(server, database)
        for statement in table_ddl(table, server_version(client), cluster="siptrace",
                                   database=database):
            client.execute(statement)
    return cluster.url(database)


def client_of(server, database: str):
    url = parse_db_url(server.url(database))
    client = client_for(url)
    connect(client, url)
    return client


def test_replay_stores_the_same_rows_as_into_sqlite_byte_for_byte(clickhouse_cluster,
                                                                   clickhouse_db, tmp_path):
    """A table that does not exist is created (one MergeTree table) and holds every
    row that SQLite holds, every column equal, msg as its exact bytes."""
    capture = PCAPS / "kamailio-tcp.pcap"
    url = clickhouse_cluster.url(clickhouse_db)
    done = replay(capture, url)
    out = done.communicate(timeout=120)[0].decode()
    assert done.returncode == 0, out
    client = client_of(clickhouse_cluster.servers[0], clickhouse_db)
    engine = client.execute("SELECT engine FROM system.tables WHERE database = "
                            "currentDatabase() AND name = 'sip_trace'")[0][0]
    assert engine == b"MergeTree"
    assert stored_rows(client, "sip_trace") == sqlite_rows(capture, tmp_path)


def test_three_writers_through_the_cluster_store_each_row_once_a_call_on_one_shard(
        clickhouse_cluster, clickhouse_db, tmp_path):
    url = make_cluster_table(clickhouse_cluster, clickhouse_db)
    writers = [replay(PCAPS / name, url) for name in CAPTURES]
    for proc in writers:
        out = proc.communicate(timeout=180)[0].decode()
        assert proc.returncode == 0, out
    expected = sorted(r for name in CAPTURES for r in sqlite_rows(PCAPS / name, tmp_path))
    servers = clickhouse_cluster.servers
    client = client_of(servers[0], clickhouse_db)
    assert stored_rows(client, "sip_trace") == expected  # over the Distributed table
    shards = [{c for (c,) in client_of(s, clickhouse_db).execute(
        "SELECT DISTINCT callid FROM sip_trace_local")} for s in servers]
    assert all(shards), "every shard holds calls"
    assert not shards[0] & shards[1], "a Call-ID's rows on one shard only"
    assert shards[0] | shards[1] == {r[1] for r in expected}


def test_an_insert_whose_answer_is_lost_is_not_stored_twice(clickhouse_cluster,
                                                            clickhouse_db, tmp_path):
    """The server wrote the rows, the client saw the connection drop: the batch is in
    doubt, spooled with its marker, looked up before it is sent again."""
    client = client_of(clickhouse_cluster.servers[0], clickhouse_db)
    proxy = InsertAnswerLost(clickhouse_cluster.servers[0].port, lambda: client.execute(
        "EXISTS TABLE sip_trace")[0][0] and client.execute(
        "SELECT count() FROM sip_trace")[0][0] == 5_000)
    try:
        store = ClickHouseStore(proxy.url(clickhouse_db))
        writer = BatchWriter(store, spool=tmp_path / "spool", max_rows=5_000)
        rows = make_rows(5_000, "doubt")
        writer.put(rows)
        assert writer.flush(60)
        writer.close()
    finally:
        proxy.close()
    assert proxy.cut.is_set()
    stats = writer.stats
    assert stats["errors"] == 1 and "insert into sip_trace" in stats["last_incident"]
    assert stats["already_stored"] == 5_000 and stats["rows_written"] == 0
    assert client.execute("SELECT count(), uniqExact(callid) FROM sip_trace") == [(5_000, 5_000)]


def test_a_batch_stored_on_one_shard_only_sends_the_rest(clickhouse_cluster, clickhouse_db):
    """Through a Distributed table an INSERT may land on some shards and not others:
    ``unstored`` gives the rows missing, counting identical rows one by one."""
    url = make_cluster_table(clickhouse_cluster, clickhouse_db)
    rows = make_rows(2_000, "part")
    rows += rows[:10]  # the same message stored twice (a traced_user copy's twin)
    store = ClickHouseStore(url)
    marker = store.insert(rows[::2])
    missing = store.unstored(rows, [marker])
    assert sorted(missing) == sorted(rows[1::2])
    assert store.unstored(rows, []) == rows  # not in doubt: nothing is looked up
    store.insert(missing)
    assert store.unstored(rows, [marker]) == []
    assert store.count() == len(rows)
    store.close()


def test_replay_waits_while_the_server_is_stopped_and_stores_everything(
        clickhouse_cluster, clickhouse_db):
    """The batches that fail are held and sent again (40,000 rows fit in the queue:
    put() does not have to wait)."""
    server = clickhouse_cluster.servers[0]
    rows = make_rows(40_000, "pause")
    writer = ProcessWriter(server.url(clickhouse_db), "sip_trace")
    replay_through_an_outage(writer, rows, server.stop, server.start, 6, rate=10_000)
    stats = writer.stats
    assert stats["rows_written"] == len(rows) and stats["dropped"] == 0, stats
    assert stats["errors"] >= 1, stats
    client = client_of(server, clickhouse_db)
    assert [c.decode() for (c,) in client.execute(
        "SELECT callid FROM sip_trace ORDER BY date, date_us")] == [r.callid for r in rows]


@pytest.mark.parametrize("stopped", ["the server written to", "the other shard"])
def test_live_capture_spools_while_a_server_is_stopped_and_drains_once(
        clickhouse_cluster, clickhouse_db, tmp_path, stopped):
    """`siptrace run` under load into the Distributed table; one server stopped 10 s.
    Stopping the other shard makes INSERTs land on one shard and fail on the other:
    the rows that landed are not sent again."""
    url = make_cluster_table(clickhouse_cluster, clickhouse_db)
    server = clickhouse_cluster.servers[0 if stopped == "the server written to" else 1]
    wire = Wire()
    rate = 1_000
    try:
        with Lab(tmp_path) as lab:
            control = tmp_path / "control.sock"
            proc = lab.siptrace_run(
                ["--interface", "lo", "--proxy", f"{wire.proxy.getsockname()[0]}:"
                 f"{wire.proxy.getsockname()[1]}", "--trace-all", "--trace-on", "1",
                 "--db-url", url, "--spool-dir", str(tmp_path / "spool"), "--grace", "1",
                 "--decision-socket", str(tmp_path / "decisions.sock"),
                 "--control-socket", str(control)], control)
            load = threading.Thread(target=wire.send, args=("load", rate * 16, rate),
                                    daemon=True)
            load.start()
            until(lambda s: s["rows_stored"] >= rate, control, "rows stored before the stop")
            try:
                server.stop()
                time.sleep(10)
                status = siptrace_status(control)
                assert status["spool_depth"] > 0 and status["db_last_error"], status
            finally:
                server.start()
            load.join()
            client = client_of(clickhouse_cluster.servers[0], clickhouse_db)

            layout = describe(client, parse_db_url(url), "sip_trace")
            in_time_order = "date" if layout.datetime64 else "date, date_us"

            def stored():
                return [c.decode() for (c,) in client.execute(
                    "SELECT callid FROM sip_trace WHERE callid LIKE "
                    f"'{wire.tag}-%' ORDER BY {in_time_order}")]
            until(lambda s: captured_all(wire)(s) and not s["spool_depth"]
                  and not s["rows_pending"] and len(stored()) >= len(wire.sent),
                  control, "every row stored after the restart", timeout=120)
            assert lab.stop(proc) == 0, lab.output("siptrace")
    finally:
        wire.close()
    rows = stored()
    assert len(rows) == len(set(rows)) == len(wire.sent)
    assert rows == wire.sent


@pytest.mark.parametrize("layout", ["one table", "Distributed"])
def test_purge_drops_the_days_before_the_cutoffs_day(clickhouse_cluster, clickhouse_db, layout):
    """`siptrace purge --older-than 2d`: days that ended before now - 2 days are dropped
    (on every shard); the cutoff's own day stays whole. The output names midnight."""
    url = (make_cluster_table(clickhouse_cluster, clickhouse_db) if layout == "Distributed"
           else clickhouse_cluster.url(clickhouse_db))
    today = datetime.combine(datetime.utcnow().date(), datetime.min.time())
    days = [today - timedelta(days=k) + timedelta(hours=12) for k in range(6)]
    with ClickHouseStore(url) as store:
        for k, noon in enumerate(days):
            store.insert(make_rows(100 + k, f"day{k}", start=noon))
    done = subprocess.run([SIPTRACE, "purge", "--older-than", "2d", "--db-url", url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    first_kept = today - timedelta(days=2)
    assert done.stdout == (f"deleted {103 + 104 + 105} rows older than "
                           f"{first_kept:%Y-%m-%d %H:%M:%S}\n")
    client = client_of(clickhouse_cluster.servers[0], clickhouse_db)
    left = client.execute("SELECT substring(callid, 1, 4) AS day, count() FROM sip_trace "
                          "GROUP BY day ORDER BY day")
    assert left == [(b"day0", 100), (b"day1", 101), (b"day2", 102)]
    if layout == "Distributed":
        assert all(client_of(s, clickhouse_db).execute(
            "SELECT count() FROM sip_trace_local")[0][0] for s in clickhouse_cluster.servers)


def test_rows_a_rule_refuses_are_set_aside_and_the_others_stored(clickhouse_cluster,
                                                                  clickhouse_db, tmp_path):
    """A rule on the rows (18.16 has no CHECK constraints: a throwIf() in a column's
    expression; error 395, as 469 for a constraint) refuses the INSERT: the batch is
    halved down to the refused row, which goes to the dead-letter file, and is stored
    by `siptrace deadletter replay` once the rule is lifted."""
    statement = table_ddl("sip_trace", (18, 16, 1))[0].replace(
        "msg String\n)", "msg String,\n  rule UInt8 MATERIALIZED throwIf(callid = 'rule-7')\n)")
    client_of(clickhouse_cluster.servers[0], clickhouse_db).execute(statement)
    store = ClickHouseStore(clickhouse_cluster.url(clickhouse_db))
    writer = BatchWriter(store, spool=tmp_path / "spool", max_rows=1_000)
    writer.put(make_rows(1_000, "rule"))
    assert writer.flush(60)
    writer.close()
    stats = writer.stats
    assert stats["rows_written"] == 999 and stats["set_aside"] == 1, stats
    assert "rule-7" in stats["last_rejected"] and stats["errors"] == 0
    assert store.count() == 999
    found = subprocess.run([SIPTRACE, "deadletter", "list", "--spool-dir", str(tmp_path / "spool"),
                            "--db-url", clickhouse_cluster.url(clickhouse_db)],
                           capture_output=True, text=True, timeout=60)
    assert found.returncode == 0 and "rule-7" in found.stdout, found.stderr
    client_of(clickhouse_cluster.servers[0], clickhouse_db).execute(
        "ALTER TABLE sip_trace DROP COLUMN rule")  # the operator lifts the rule
    again = subprocess.run([SIPTRACE, "deadletter", "replay", "--spool-dir",
                            str(tmp_path / "spool"), "--db-url",
                            clickhouse_cluster.url(clickhouse_db)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert store.count() == 1_000
