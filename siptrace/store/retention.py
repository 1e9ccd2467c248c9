"""Retention: purges in bounded batches through the date index.

Each transaction deletes at most ``batch`` rows, oldest first, so locks stay short while
capture goes on. There are no daily partitions (PostgreSQL's ``PARTITION BY RANGE``):
bounded deletes keep any backend's table to its retention without a second table layout
to create, migrate and test (docs/storage.md, "Retention").
"""

from datetime import datetime, timedelta, timezone
from typing import NamedTuple

from siptrace.errors import ConfigError, StorageError
from siptrace.store.tracestore import TraceStore
from siptrace.store.urls import parse_db_url, storage_error
from siptrace.timespec import parse_duration


class PurgeResult(NamedTuple):
    rows_deleted: int
    cutoff: datetime


def purge(store: TraceStore, older_than: timedelta, batch: int = 10_000,
          now: datetime | None = None) -> PurgeResult:
    """Delete rows whose date is older than now - older_than (naive UTC), ``batch`` rows
    per transaction, and the calls of the index whose last message is older."""
    if batch <= 0:
        raise ConfigError("purge batch must be positive")
    cutoff = (now or datetime.now(timezone.utc).replace(tzinfo=None)) - older_than
    # SQLite holds dates as the text TraceStore writes (str(datetime)): compare like with like.
    when = str(cutoff) if store.dialect == "sqlite" else cutoff
    store.connect()
    try:
        deleted = _delete_batches(store, when, batch)
        if store.indexer is not None:
            calls = store.indexer.model
            with store.database.atomic():
                calls.delete().where(calls.last_date < when).execute()
            store.indexer.forget()
    except StorageError:
        raise
    except Exception as exc:
        store.close()
        raise storage_error(store.url, f"purge {store.table}", exc) from None
    return PurgeResult(deleted, cutoff)


def _delete_batches(store: TraceStore, when, batch: int) -> int:
    """Oldest first through the date index. MySQL takes ORDER BY ... LIMIT on DELETE
    itself but no LIMIT inside IN (...); PostgreSQL and SQLite the other way round."""
    m = store.model
    if store.dialect == "mysql":
        query = m.delete().where(m.date < when).order_by(m.date).limit(batch)
    else:
        oldest = m.select(m.id).where(m.date < when).order_by(m.date).limit(batch)
        query = m.delete().where(m.id.in_(oldest))
    total = 0
    while True:
        with store.database.atomic():
            n = query.execute()
        total += n
        if n < batch:
            return total


def purge_url(db_url: str, table: str, older_than: str, batch: int = 10_000,
              now: datetime | None = None) -> PurgeResult:
    """What ``siptrace purge --older-than 7d`` runs: parse, connect, purge, close.
    On ClickHouse, whole days are dropped (store/clickhouse/retention.py)."""
    delta = parse_duration(older_than)
    if parse_db_url(db_url).dialect == "clickhouse":
        from siptrace.store.clickhouse.retention import drop_days

        return PurgeResult(*drop_days(db_url, table, delta, now))
    store = TraceStore(db_url, table)
    try:
        return purge(store, delta, batch, now)
    finally:
        store.close()
