"""siptrace's ClickHouse SQL on a current ClickHouse engine (chDB, in-process).

The suite's servers are Debian's 18.16, which get the DateTime + date_us table; every
current release gets ``date DateTime64(6, 'UTC')`` and msg ``CODEC(ZSTD(3))``. Here the
store, the reader, retention and the cluster DDL run that flavour on chDB's ClickHouse
through chdb_client.ChdbClient, put where siptrace makes its clients (``client_for``):
the engine and the SQL are real, the native protocol is not (chdb_client.py says what
that leaves out). The reads are checked against SQLite, as test_clickhouse_reader.py
checks 18.16.
"""

import importlib.util
import uuid
from datetime import date, datetime, timedelta

import pytest

from callfactory import ANSWERED, T0, call_rows
from chdb_client import CLUSTER, ChdbEngine
from conftest import missing
from siptrace.errors import StorageError
from siptrace.store.clickhouse import connection, reader, retention, writer
from siptrace.store.clickhouse.reader import ClickHouseReader
from siptrace.store.clickhouse.retention import drop_days
from siptrace.store.clickhouse.schema import Layout, describe, table_ddl
from siptrace.store.clickhouse.writer import ClickHouseStore
from siptrace.store.reader import TraceReader
from siptrace.store.tracestore import TraceStore
from siptrace.store.urls import parse_db_url
from siptrace.view.search import parse_filter
from storefixtures import make_rows
from test_clickhouse_reader import BAD_BYTES, FILTERS, plain, store_both, traffic
import test_clickhouse_reader as on_18_16

REAL_CLIENT_FOR = connection.client_for
# A call across midnight: 3 rows on 2024-04-30, 4 on 2024-05-01 (two day partitions).
MIDNIGHT = call_rows("midnight@pbx", ANSWERED, start=datetime(2024, 4, 30, 23, 59, 59, 123456))


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """One chDB engine for the module; siptrace's client_for gives clients on it."""
    if importlib.util.find_spec("chdb") is None:
        missing("chdb is not installed (pip install -e '.[test]')")
    chdb_engine = ChdbEngine(tmp_path_factory.mktemp("chdb"))

    def client_for(db_url):
        """The driver's Client siptrace configures, as a ChdbClient with its settings."""
        real = REAL_CLIENT_FOR(db_url)
        return chdb_engine.client(real.connection.database,
                                  {**real.settings, **real.client_settings})

    with pytest.MonkeyPatch.context() as patch:
        for module in (connection, writer, reader, retention):
            patch.setattr(module, "client_for", client_for)
        yield chdb_engine
    chdb_engine.close()


def new_database(engine) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    engine.query(f"CREATE DATABASE {name}", "default")
    return name


@pytest.fixture
def database(engine):
    return new_database(engine)


def url_of(database: str) -> str:
    return f"clickhouse://default@localhost:9000/{database}"


@pytest.fixture(scope="module")
def stored_urls(engine, tmp_path_factory):
    """traffic() and a call across midnight in SQLite (the reference) and on chDB."""
    urls = (f"sqlite:///{tmp_path_factory.mktemp('ref') / 'ref.db'}",
            url_of(new_database(engine)))
    store_both(sorted(traffic() + MIDNIGHT, key=lambda r: r.date), *urls)
    return urls


def query(engine, database: str, sql: str) -> list[tuple]:
    return engine.client(database, {"strings_as_bytes": True}).execute(sql)


def test_the_engine_is_a_current_clickhouse(engine):
    assert engine.version >= (24,)
    assert engine.client().execute("SELECT version()") == [(engine.version_string,)]


def test_the_store_makes_the_current_flavour_of_the_table(engine, database):
    with ClickHouseStore(url_of(database)) as store:
        assert store.layout == Layout(datetime64=True)
    columns = query(engine, database, "SELECT name, type, compression_codec FROM system.columns "
                    "WHERE database = currentDatabase() AND table = 'sip_trace' ORDER BY position")
    assert columns == [(b"id", b"UInt64", b""), (b"date", b"DateTime64(6, 'UTC')", b""),
                       *((name.encode(), b"String", b"") for name in (
                           "callid", "method", "status", "fromip", "toip", "fromtag",
                           "direction", "traced_user")),
                       (b"msg", b"String", b"CODEC(ZSTD(3))")]
    assert query(engine, database, "SELECT engine, partition_key, sorting_key FROM system.tables "
                 "WHERE database = currentDatabase() AND name = 'sip_trace'") == [
        (b"MergeTree", b"toDate(date)", b"toStartOfHour(date), callid, date")]


def test_rows_are_stored_to_the_microsecond_with_their_bytes(engine, database):
    rows = sorted(traffic() + MIDNIGHT, key=lambda r: r.date)
    with ClickHouseStore(url_of(database)) as store:
        for start in range(0, len(rows), 50):
            store.insert(rows[start:start + 50])
        assert store.count() == len(rows)
    stored = query(engine, database, "SELECT toString(date), callid, msg, bitShiftRight(id, 32) "
                   "= toUInt32(toDateTime(date)) FROM sip_trace ORDER BY date")
    assert [(d.decode(), c, m) for d, c, m, _ in stored] == [
        (r.date if "." in r.date else r.date + ".000000",
         r.callid.encode("utf-8", "surrogateescape"), r.msg) for r in rows]
    assert all(id_has_the_second for *_, id_has_the_second in stored)
    assert query(engine, database, "SELECT DISTINCT callid, fromtag FROM sip_trace "
                 "WHERE callid LIKE 'caf%'") == [(BAD_BYTES, b"t\xfe")]
    assert query(engine, database, "SELECT partition, sum(rows) FROM system.parts WHERE active "
                 "AND database = currentDatabase() AND table = 'sip_trace' GROUP BY partition "
                 "ORDER BY partition") == [(b"2024-04-30", 3), (b"2024-05-01", len(rows) - 3)]


def test_an_in_doubt_batch_gives_exactly_the_rows_not_stored(database):
    """Half a batch stored (as on some shards only): ``unstored`` finds the other half,
    across a day boundary, to the microsecond, counting identical rows one by one."""
    rows = sorted(traffic() + MIDNIGHT + make_rows(300, "us", start=T0), key=lambda r: r.date)
    rows += rows[:10]  # the same message twice (a traced_user copy's twin)
    with ClickHouseStore(url_of(database)) as store:
        marker = store.insert(rows[::2])
        missing_rows = store.unstored(rows, [marker])
        assert sorted(missing_rows) == sorted(rows[1::2])
        assert store.unstored(rows, []) == rows  # not in doubt: nothing is looked up
        store.insert(missing_rows)
        assert store.unstored(rows, [marker]) == []
        assert store.count() == len(rows)


def test_rows_a_check_constraint_refuses_are_set_aside(engine, database):
    query(engine, database, table_ddl("sip_trace", engine.version)[0].replace(
        "\n)", ",\n  CONSTRAINT rule CHECK callid != 'rule-7'\n)", 1))
    refused = []
    with ClickHouseStore(url_of(database)) as store:
        store.insert(make_rows(100, "rule"), set_aside=refused.extend)
        assert store.count() == 99
    ((row, reason),) = refused
    assert row.callid == "rule-7" and "VIOLATED_CONSTRAINT" in reason


# The reads the 18.16 tests check against SQLite, run here on chDB (this module's
# stored_urls): the same test bodies, a current engine.
test_rows_messages_and_calls_are_the_same_as_from_sqlite = (
    on_18_16.test_rows_messages_and_calls_are_the_same_as_from_sqlite)
test_a_search_finds_what_sqlite_finds = on_18_16.test_a_search_finds_what_sqlite_finds
test_related_legs_are_the_same_as_from_sqlite = on_18_16.test_related_legs_are_the_same_as_from_sqlite


def test_searches_back_from_now_through_widening_windows(engine, database, tmp_path):
    on_18_16.searches_back_from_now_match_sqlite(url_of(database), tmp_path)


def days_left(engine, database: str, table: str = "sip_trace") -> list[tuple]:
    return query(engine, database, f"SELECT toDate(date) AS day, count() FROM {table} "
                 "GROUP BY day ORDER BY day")


def store_days(url: str) -> list:
    """100 + k rows at noon and one at 23:59:59.999999 of each of the 4 days before 2024-05-03."""
    with ClickHouseStore(url) as store:
        for k in range(4):
            noon = datetime(2024, 5, 2, 12) - timedelta(days=k)
            store.insert(make_rows(100 + k, f"day{k}", start=noon)
                         + make_rows(1, f"late{k}", start=noon + timedelta(hours=12) - timedelta(microseconds=1)))
    return [date(2024, 5, 2) - timedelta(days=k) for k in range(4)]


def test_purge_drops_the_days_before_the_cutoffs_day(engine, database):
    """A cutoff of 2024-05-01 12:00 keeps that day whole and drops the days before it,
    their last microsecond too."""
    url = url_of(database)
    day0, day1, _, _ = store_days(url)
    deleted, first_kept = drop_days(url, "sip_trace", timedelta(days=1, hours=6),
                                    now=datetime(2024, 5, 2, 18))
    assert (deleted, first_kept) == (103 + 104, datetime(2024, 5, 1))
    assert days_left(engine, database) == [(day1, 102), (day0, 101)]
    assert drop_days(url, "sip_trace", timedelta(days=1), now=datetime(2024, 5, 2, 18)) == (
        0, datetime(2024, 5, 1))


def test_the_cluster_statements_make_a_distributed_table_over_the_local_one(engine, database,
                                                                             tmp_path):
    """chDB's cluster ``siptrace`` is one shard, this engine: the Distributed table is
    real, and writes, reads and purges go through it to ``sip_trace_local``."""
    url = url_of(database)
    statements = table_ddl("sip_trace", engine.version, cluster=CLUSTER, database=database)
    assert statements[0].startswith("CREATE TABLE IF NOT EXISTS sip_trace_local ")
    for statement in statements:
        query(engine, database, statement)
    client = engine.client(database, {"strings_as_bytes": True})
    assert describe(client, parse_db_url(url), "sip_trace") == Layout(
        True, True, CLUSTER, database, "sip_trace_local")
    assert describe(client, parse_db_url(url), "sip_trace_local") == Layout(True)
    rows = sorted(traffic() + MIDNIGHT, key=lambda r: r.date)
    sqlite_url = f"sqlite:///{tmp_path / 'ref.db'}"
    with TraceStore(sqlite_url) as ref_store:
        ref_store.insert(rows)
    with ClickHouseStore(url) as store:
        assert store.layout.distributed and store._settings == {"insert_distributed_sync": 1}
        marker = store.insert(rows[::2])
        assert sorted(store.unstored(rows, [marker])) == sorted(rows[1::2])
        store.insert(rows[1::2])
        assert store.count() == len(rows)
    assert query(engine, database, "SELECT count() FROM sip_trace_local") == [(len(rows),)]
    with TraceReader(sqlite_url) as ref, ClickHouseReader(url) as chdb_reader:
        assert plain(chdb_reader.rows(limit=1000)) == plain(ref.rows(limit=1000))
        for options in FILTERS:
            filt = parse_filter(**options)
            assert [c.as_dict() for c in chdb_reader.search(filt)] == [
                c.as_dict() for c in ref.search(filt)], options
        assert chdb_reader.related("b-leg@sbc") == ref.related("b-leg@sbc")
    assert drop_days(url, "sip_trace", timedelta(days=1), now=datetime(2024, 5, 2)) == (
        3, datetime(2024, 5, 1))  # the midnight call's rows before midnight
    assert query(engine, database, "SELECT count() FROM sip_trace_local") == [(len(rows) - 3,)]


def test_server_errors_keep_their_codes(database):
    """A missing table is error 60 (no_such_table), the reader's one line; the failed
    connection is dropped, as the driver drops it."""
    url = parse_db_url(url_of(database))
    client = connection.client_for(url)
    with pytest.raises(StorageError) as no_table:
        connection.run(client, url, "count", "SELECT count() FROM sip_trace")
    assert connection.no_such_table(no_table.value) and not client.connection.connected
    assert "\n" not in str(no_table.value) and "UNKNOWN_TABLE" in str(no_table.value)
    with pytest.raises(StorageError, match="no table sip_trace$"):
        ClickHouseReader(url_of(database)).open()
