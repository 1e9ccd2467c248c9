"""Schema parity: each dialect's schema file holds the statements siptrace runs, and
fed to the real client (mysql, psql, sqlite3) it makes the same table on each backend."""

import subprocess

import pytest

from conftest import REPO, require_tool
from siptrace.store import TraceStore
from siptrace.store.clickhouse.schema import DATETIME64_SINCE
from siptrace.store.clickhouse.schema import table_ddl as clickhouse_ddl
from siptrace.store.schema import table_ddl
from storefixtures import MY, PG, any_db, make_rows  # noqa: F401  (fixtures)

# One file per dialect, one command for the DBA each (their headers say which).
SCHEMA_FILES = {"mysql": REPO / "schema.sql", "postgresql": REPO / "schema-postgresql.sql",
                "sqlite": REPO / "schema-sqlite.sql"}
CLICKHOUSE_SCHEMA = REPO / "schema-clickhouse.sql"  # a cluster's, for current releases


def schema_statements(dialect: str) -> list[str]:
    """The statements of one dialect's schema file, comments removed."""
    text = SCHEMA_FILES[dialect].read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def one_line(statement: str) -> str:
    """schema.sql's layout undone: one space between tokens, none inside parentheses."""
    return " ".join(statement.split()).replace("( ", "(").replace(" )", ")")


@pytest.mark.parametrize("dialect", ["mysql", "postgresql", "sqlite"])
def test_schema_sql_is_what_siptrace_runs(dialect):
    assert [one_line(s) for s in schema_statements(dialect)] == table_ddl(dialect)


def test_the_clickhouse_schema_file_is_what_siptrace_renders_for_a_cluster():
    text = CLICKHOUSE_SCHEMA.read_text()
    body = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
    statements = [one_line(s) for s in body.split(";") if s.strip()]
    rendered = clickhouse_ddl("sip_trace", DATETIME64_SINCE, cluster="siptrace",
                              database="siptrace")
    assert statements == [one_line(s) for s in rendered]


def test_every_schema_file_is_checked():
    assert sorted(REPO.glob("schema*.sql")) == sorted([*SCHEMA_FILES.values(),
                                                       CLICKHOUSE_SCHEMA])


def client_command(db) -> list[str]:
    """The DBA's command for ``db``, reading the schema file on its standard input."""
    if db.dialect == "mysql":
        return [require_tool("mysql"), "-h", MY["host"], "-P", str(MY["port"]), "-u", MY["user"],
                db.name]
    if db.dialect == "postgresql":
        return [require_tool("psql"), "-h", PG["host"], "-p", str(PG["port"]), "-U", PG["user"],
                "-d", db.name, "-v", "ON_ERROR_STOP=1", "-q", "-f", "-"]
    return [require_tool("sqlite3"), "-bail", db.url[len("sqlite:///"):]]


def run_schema_sql(db, table: str = "sip_trace") -> None:
    """Feed the dialect's schema file, as a DBA would, to the real client."""
    sql = SCHEMA_FILES[db.dialect].read_text().replace("sip_trace", table)
    out = subprocess.run(client_command(db), input=sql, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and not out.stderr, out.stderr


def describe(db, table: str):
    """(columns, indexes) with everything that names the table normalised away."""
    norm = lambda s: None if s is None else str(s).replace(table, "T")  # noqa: E731
    if db.dialect == "sqlite":
        columns = [(r[1], r[2].upper(), r[3], r[4], r[5]) for r in db.query(f'PRAGMA table_info("{table}")')]
        indexes = sorted((norm(name), tuple(c[2] for c in db.query(f'PRAGMA index_info("{name}")')))
                         for _, name, *rest in db.query(f'PRAGMA index_list("{table}")'))
    elif db.dialect == "postgresql":
        columns = db.query(
            "SELECT column_name, data_type, character_maximum_length, is_nullable, column_default, "
            "datetime_precision FROM information_schema.columns WHERE table_name = %s "
            "ORDER BY ordinal_position", (table,))
        columns = [tuple(norm(v) for v in c) for c in columns]
        indexes = sorted((norm(n), norm(d)) for n, d in db.query(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", (table,)))
    else:
        columns = db.query(
            "SELECT column_name, column_type, is_nullable, column_default, extra, character_set_name "
            "FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = %s "
            "ORDER BY ordinal_position", (table,))
        indexes = sorted(db.query(
            "SELECT index_name, column_name, seq_in_index, non_unique FROM information_schema.statistics "
            "WHERE table_schema = DATABASE() AND table_name = %s", (table,)))
        columns = list(columns) + list(db.query(
            "SELECT engine, table_collation FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name = %s", (table,)))
    return list(columns), list(indexes)


def test_siptrace_creates_the_schema_sql_table(any_db):
    run_schema_sql(any_db, "sip_trace")
    with TraceStore(any_db.url, "made_by_siptrace"):
        pass
    expected, made = describe(any_db, "sip_trace"), describe(any_db, "made_by_siptrace")
    assert len(expected[0]) >= 11 and len(expected[1]) >= 4
    assert made == expected


def test_documented_types_and_index_names(any_db):
    with TraceStore(any_db.url):
        pass
    columns, indexes = describe(any_db, "sip_trace")
    text = repr(columns).lower()
    if any_db.dialect == "mysql":
        assert "mediumtext" in text and "datetime(6)" in text and "utf8mb4" in text
        assert {i[0] for i in indexes} == {"PRIMARY", "user_idx", "date_id", "ip_idx", "call_id"}
    elif any_db.dialect == "postgresql":
        assert "timestamp without time zone" in text and "'text'" in text
        assert ("callid", "character varying", "254") == columns[2][:3]
    else:
        assert columns[2][:2] == ("callid", "VARCHAR(254)") and columns[4][1] == "TEXT"


def test_siptrace_writes_into_a_table_schema_sql_created(any_db):
    run_schema_sql(any_db)
    rows = make_rows(50, "dba")
    with TraceStore(any_db.url) as store:
        store.insert(rows)
        assert store.count() == 50
    assert sorted(r[0] for r in any_db.query("SELECT callid FROM sip_trace")) == sorted(r.callid for r in rows)


@pytest.mark.parametrize("table", ["strace", "sip trace-2024"])
def test_table_parameter_including_a_name_needing_quotes(any_db, table):
    with TraceStore(any_db.url, table) as store:
        store.insert(make_rows(7, table))
        assert store.count() == 7
    quote = "`" if any_db.dialect == "mysql" else '"'
    assert any_db.query(f"SELECT COUNT(*) FROM {quote}{table}{quote}")[0][0] == 7


def test_long_values_are_truncated_and_counted(any_db):
    rows = make_rows(3)
    rows[0] = rows[0]._replace(callid="c" * 300, fromtag="t" * 100)
    rows[1] = rows[1]._replace(fromip="udp:[" + "f" * 60 + "]:5060", method="X" * 80)
    with TraceStore(any_db.url) as store:
        store.insert(rows)
        assert store.stats["truncated_callid"] == 1 and store.stats["truncated_fromtag"] == 1
        assert store.stats["truncated_fromip"] == 1 and store.stats["truncated_method"] == 1
    stored = any_db.query("SELECT callid, fromtag FROM sip_trace ORDER BY id")
    assert stored[0] == ("c" * 254, "t" * 64)


def test_messages_past_64_kb_are_stored_whole(any_db):
    big = make_rows(1, "big", msg_size=200_000)
    with TraceStore(any_db.url) as store:
        store.insert(big)
    assert len(any_db.query("SELECT msg FROM sip_trace")[0][0]) == len(big[0].msg)
