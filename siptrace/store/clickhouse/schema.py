"""The one definition of the ClickHouse trace table, and what an existing one is.

Design (docs/storage.md, "ClickHouse"):

- The seed's columns and meanings; every text column a ``String`` of the exact bytes
  (msg as sent on the wire, no escaping), plus ``id``, which the views use to name a
  message: the row's second (since the epoch) in the high 32 bits, 32 random bits
  below. Ids sorted by time compress to about 4 bytes a row (64 random bits take 8),
  and a lookup by id reads one second of the table. Two rows of one second share an id
  with odds of (rows in that second) / 2^32: one in 860 million at 5 rows/s... one in
  8,600 at 500,000 rows/s; the views then show the first.
- ``date``: ``DateTime64(6, 'UTC')`` on servers that have it (20.1 and later). Before
  that, Kamailio's own answer: ``date DateTime('UTC')`` holds the whole seconds and
  ``date_us UInt32`` the microseconds.
- ``PARTITION BY toDate(date)``: a day is a partition, and retention drops whole days.
- ``ORDER BY (toStartOfHour(date), callid, date)``: a time range reads only its hours;
  within an hour, rows are sorted by Call-ID, so a Call-ID lookup reads about one
  granule per hour of each part instead of the whole table.
- msg compressed with ZSTD(3) (``CODEC``, 19.1 and later; on older servers the
  server's ``<compression>`` setting chooses it for every column).
- A cluster: ``<table>_local`` (the MergeTree above) on every shard and ``<table>`` a
  ``Distributed`` table over them, sharded by ``cityHash64(callid)`` so that a call's
  rows are all on one shard. Sidecars write to and read from ``<table>``.
"""

import re
from dataclasses import dataclass

from siptrace.errors import StorageError
from siptrace.store.clickhouse.connection import literal, run, text

DATETIME64_SINCE = (20, 1)  # the first release with DateTime64
CODEC_SINCE = (19, 1)  # the first release with per-column compression codecs
MSG_CODEC = "ZSTD(3)"
TEXT_COLUMNS = ("callid", "method", "status", "fromip", "toip", "fromtag", "direction",
                "traced_user", "msg")
LOCAL_SUFFIX = "_local"
SHARDING_KEY = "cityHash64(callid)"
_DISTRIBUTED = re.compile(r"Distributed\(\s*'?([^,']+)'?\s*,\s*'?([^,']*)'?\s*,\s*'?([^,')]+)'?")


@dataclass(frozen=True)
class Layout:
    """What an existing trace table is: how it holds dates, and where its rows live."""

    datetime64: bool  # date is DateTime64(6); else date (seconds) plus date_us
    distributed: bool = False  # a Distributed table: writes wait for every shard
    cluster: str = ""  # the Distributed table's cluster
    local_database: str = ""  # where the shards' tables are
    local_table: str = ""

    # SQL over the date column, with functions every server has.
    def at(self, second: int) -> str:
        """The instant ``second`` seconds after the epoch, in the date column's own type:
        comparing a DateTime64 column with a DateTime makes current servers (26.9) prune
        partitions that hold matching rows."""
        return (f"toDateTime64({int(second)}, 6, 'UTC')" if self.datetime64
                else f"toDateTime({int(second)}, 'UTC')")

    @property
    def order(self) -> tuple[str, ...]:
        """The columns that sort rows by time."""
        return ("date",) if self.datetime64 else ("date", "date_us")

    def micros(self, first: bool = False) -> str:
        """A row's time (or with ``first``, a group's first time) in microseconds since
        the epoch."""
        if not self.datetime64:
            row = "toUInt64(date) * 1000000 + date_us"
            return f"min({row})" if first else row
        date = "min(date)" if first else "date"
        return (f"toUInt64(toDateTime({date})) * 1000000"
                f" + toUInt64(substring(toString({date}), 21, 6))")


def columns_ddl(version: tuple[int, ...]) -> str:
    datetime64 = version >= DATETIME64_SINCE
    date = ("date DateTime64(6, 'UTC')" if datetime64
            else "date DateTime('UTC'),\n  date_us UInt32")
    codec = f" CODEC({MSG_CODEC})" if version >= CODEC_SINCE else ""
    text = ",\n  ".join(f"{name} String" + (codec if name == "msg" else "")
                        for name in TEXT_COLUMNS)
    return f"(\n  id UInt64,\n  {date},\n  {text}\n)"


def merge_tree_ddl(table: str, version: tuple[int, ...]) -> str:
    return (f"CREATE TABLE IF NOT EXISTS {table} {columns_ddl(version)}\n"
            "ENGINE = MergeTree\nPARTITION BY toDate(date)\n"
            "ORDER BY (toStartOfHour(date), callid, date)")


def table_ddl(table: str, version: tuple[int, ...], cluster: str | None = None,
              database: str | None = None) -> list[str]:
    """The statements that make the table on a server of ``version``: one MergeTree
    table; or, for ``cluster``, the shard's ``<table>_local`` and the Distributed
    ``<table>`` over the cluster (run them on every server, or add ON CLUSTER)."""
    if cluster is None:
        return [merge_tree_ddl(table, version)]
    local = table + LOCAL_SUFFIX
    where = database or "currentDatabase()"
    return [merge_tree_ddl(local, version),
            f"CREATE TABLE IF NOT EXISTS {table} AS {local}\n"
            f"ENGINE = Distributed({cluster}, {where}, {local}, {SHARDING_KEY})"]


def describe(client, db_url, table: str) -> Layout | None:
    """The existing table's layout; None when there is no such table."""
    found = run(client, db_url, f"describe {table}",
                "SELECT engine, engine_full FROM system.tables "
                f"WHERE database = currentDatabase() AND name = {literal(table)}")
    if not found:
        return None
    engine, engine_full = map(text, found[0])
    columns = dict((text(n), text(t)) for n, t in run(
        client, db_url, f"describe {table}",
        f"SELECT name, type FROM system.columns WHERE database = currentDatabase() "
        f"AND table = {literal(table)}"))
    missing = {"id", "date", *TEXT_COLUMNS} - set(columns)
    if missing:
        raise StorageError(f"{db_url.redacted}: {table} is not a siptrace ClickHouse table "
                           f"(no {', '.join(sorted(missing))} column)")
    datetime64 = columns["date"].startswith("DateTime64")
    if not datetime64 and "date_us" not in columns:
        raise StorageError(f"{db_url.redacted}: {table} has a DateTime date and no date_us "
                           "column: its microseconds would be lost")
    if engine != "Distributed":
        return Layout(datetime64)
    match = _DISTRIBUTED.search(engine_full)
    if match is None:
        raise StorageError(f"{db_url.redacted}: cannot read the Distributed engine of "
                           f"{table}: {engine_full[:200]}")
    cluster, database, local = match.groups()
    return Layout(datetime64, True, cluster, database.strip() or "", local)
