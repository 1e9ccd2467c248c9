"""Retention: bounded-batch purges through the date index, daily partitions on PostgreSQL.

A partitioned table (PostgreSQL only, ``partitioned=True``) is ``PARTITION BY RANGE
(date)`` with one partition per UTC day named ``<table>_pYYYYMMDD`` plus
``<table>_default`` for rows outside them (old captures replayed). Partitions are
created ahead of time; purge drops whole days older than the cut-off, then deletes
what is left (the default partition, the day that straddles the cut-off) in batches.
"""

import re
from datetime import datetime, timedelta
from typing import NamedTuple

from siptrace.errors import ConfigError, StorageError
from siptrace.store.schema import DATE_TYPES, INDEXES, VARCHAR_WIDTHS, index_name
from siptrace.store.urls import storage_error
from siptrace.timespec import parse_duration  # noqa: F401 (siptrace.store's API)

_BOUND_TO = re.compile(r"TO \('([^']+)'\)")
PARTITION_DAYS_BACK = 1


class PurgeResult(NamedTuple):
    rows_deleted: int
    partitions_dropped: int
    cutoff: datetime


# -- partitions (PostgreSQL) ------------------------------------------------------------
def _partition_name(table: str, day: datetime) -> str:
    return f"{table}_p{day:%Y%m%d}"


def create_partitioned_table(store) -> None:
    """CREATE the partitioned table, its indexes and default partition when missing."""
    if store.dialect != "postgresql":
        raise ConfigError("partitioned tables need PostgreSQL")
    q, t = store._q, store.table
    cols = [f'{q("id")} BIGSERIAL NOT NULL', f'{q("date")} {DATE_TYPES["postgresql"]} NOT NULL']
    for column, width in VARCHAR_WIDTHS.items():
        cols.append(f"{q(column)} VARCHAR({width}) NOT NULL DEFAULT ''")
    cols.insert(4, f'{q("msg")} TEXT NOT NULL')  # documented column order
    cols.append(f'PRIMARY KEY ({q("id")}, {q("date")})')
    statements = [f"CREATE TABLE IF NOT EXISTS {store.quoted_table} ({', '.join(cols)}) "
                  f"PARTITION BY RANGE ({q('date')})"]
    for name, column in INDEXES.items():
        statements.append(f"CREATE INDEX IF NOT EXISTS {q(index_name('postgresql', t, name))} "
                          f"ON {store.quoted_table} ({q(column)})")
    statements.append(f"CREATE TABLE IF NOT EXISTS {q(t + '_default')} "
                      f"PARTITION OF {store.quoted_table} DEFAULT")
    db = store.database
    with db.atomic():
        db.execute_sql("SELECT pg_advisory_xact_lock(hashtext(%s))", (t,))
        for sql in statements:
            db.execute_sql(sql)
    ensure_partitions(store)


def is_partitioned(store) -> bool:
    if store.dialect != "postgresql":
        return False
    row = store.database.execute_sql(
        "SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", (store.quoted_table,)).fetchone()
    return bool(row) and row[0] == "p"


def _partitions(store) -> dict[str, datetime | None]:
    """Partition name -> its upper bound (None for the default partition)."""
    rows = store.database.execute_sql(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
        (store.quoted_table,)).fetchall()
    result = {}
    for name, bound in rows:
        m = _BOUND_TO.search(bound or "")
        result[name] = datetime.fromisoformat(m.group(1)) if m else None
    return result


def ensure_partitions(store, now: datetime | None = None, days_ahead: int | None = None) -> int:
    """Create the daily partitions from yesterday to ``days_ahead`` days on; returns how many.

    Rows already sitting in the default partition for a new day are moved into it.
    """
    now = now or datetime.utcnow()
    ahead = store.partitions_ahead if days_ahead is None else days_ahead
    today = datetime(now.year, now.month, now.day)
    existing = _partitions(store)
    q, db, created = store._q, store.database, 0
    for k in range(-PARTITION_DAYS_BACK, ahead + 1):
        day = today + timedelta(days=k)
        name = _partition_name(store.table, day)
        if name in existing:
            continue
        lo, hi = day.isoformat(" "), (day + timedelta(days=1)).isoformat(" ")
        with db.atomic():
            db.execute_sql("SELECT pg_advisory_xact_lock(hashtext(%s))", (store.table,))
            if db.execute_sql("SELECT to_regclass(%s)", (q(name),)).fetchone()[0]:
                continue  # another writer made it meanwhile
            db.execute_sql(f"CREATE TABLE {q(name)} (LIKE {store.quoted_table} INCLUDING DEFAULTS)")
            db.execute_sql(
                f"WITH moved AS (DELETE FROM {q(store.table + '_default')} WHERE {q('date')} >= %s "
                f"AND {q('date')} < %s RETURNING *) INSERT INTO {q(name)} SELECT * FROM moved", (lo, hi))
            db.execute_sql(f"ALTER TABLE {store.quoted_table} ATTACH PARTITION {q(name)} "
                           f"FOR VALUES FROM ('{lo}') TO ('{hi}')")
        created += 1
    return created


# -- purge ------------------------------------------------------------------------------
def purge(store, older_than: timedelta, batch: int = 10_000, now: datetime | None = None) -> PurgeResult:
    """Delete rows whose date is older than now - older_than, ``batch`` rows per transaction."""
    if batch <= 0:
        raise ConfigError("purge batch must be positive")
    cutoff = (now or datetime.utcnow()) - older_than
    store.connect()
    dropped = deleted = 0
    try:
        if is_partitioned(store):
            for name, upper in sorted(_partitions(store).items()):
                if upper is not None and upper <= cutoff:
                    store.database.execute_sql(f"DROP TABLE {store._q(name)}")
                    dropped += 1
        deleted = _delete_batches(store, cutoff, batch)
        if store.indexer is not None:
            calls = store.indexer.model
            with store.database.atomic():
                calls.delete().where(calls.last_date < cutoff).execute()
            store.indexer.forget()
        if is_partitioned(store):
            ensure_partitions(store)
    except StorageError:
        raise
    except Exception as exc:
        store.close()
        raise storage_error(store.url, f"purge {store.table}", exc) from None
    return PurgeResult(deleted, dropped, cutoff)


def _delete_batches(store, cutoff: datetime, batch: int) -> int:
    q, t = store._q, store.quoted_table
    if store.dialect == "mysql":
        sql = f"DELETE FROM {t} WHERE {q('date')} < %s ORDER BY {q('date')} LIMIT {batch:d}"
        param = cutoff
    else:
        mark = "?" if store.dialect == "sqlite" else "%s"
        sql = (f"DELETE FROM {t} WHERE {q('id')} IN (SELECT {q('id')} FROM {t} "
               f"WHERE {q('date')} < {mark} ORDER BY {q('date')} LIMIT {batch:d})")
        param = str(cutoff) if store.dialect == "sqlite" else cutoff
    total = 0
    while True:
        with store.database.atomic():
            n = store.database.execute_sql(sql, (param,)).rowcount
        total += n
        if n < batch:
            return total


def purge_url(db_url: str, table: str, older_than: str, batch: int = 10_000) -> PurgeResult:
    """What ``siptrace purge --older-than 7d`` runs: parse, connect, purge, close."""
    from siptrace.store.tracestore import TraceStore
    delta = parse_duration(older_than)
    store = TraceStore(db_url, table)
    try:
        return purge(store, delta, batch)
    finally:
        store.close()
