"""Retention on ClickHouse: ``siptrace purge`` drops whole day partitions.

The table is partitioned by day (schema.py), and dropping a partition is the cheap,
immediate delete a column store offers (an ``ALTER ... DELETE`` rewrites whole parts).
So the unit of retention is the day: ``purge --older-than 7d`` drops every day that
ended before the cutoff, and rows of the cutoff's own day stay until that day is whole.
On a Distributed table the days are dropped from ``<table>_local`` on every shard of
its cluster (system.clusters), on the first replica of each that answers (a Replicated
table passes the drop on to the others), with the db_url's user and password. A server of 19.6
or later can do the same by itself with a TTL (docs/storage.md, "ClickHouse").
"""

from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

from siptrace.errors import StorageError
from siptrace.store.clickhouse.connection import client_for, connect, literal, run, text
from siptrace.store.clickhouse.schema import describe
from siptrace.store.urls import DbUrl, parse_db_url


def drop_days(db_url: str, table: str, older_than: timedelta,
              now: datetime | None = None) -> tuple[int, datetime]:
    """Drop the day partitions that ended before now - older_than (UTC); return the
    rows they held and the first moment kept (midnight of that day)."""
    url = parse_db_url(db_url)
    moment = (now or datetime.now(timezone.utc).replace(tzinfo=None)) - older_than
    cutoff = datetime.combine(moment.date(), datetime.min.time())
    client = client_for(url)
    connect(client, url)
    try:
        layout = describe(client, url, table)
        if layout is None:
            raise StorageError(f"{url.redacted}: no table {table}")
        if not layout.distributed:
            return _drop(client, url, url.database, table, cutoff.date()), cutoff
        replicas = run(client, url, "read the cluster's shards",
                       "SELECT shard_num, host_address, port FROM system.clusters WHERE "
                       f"cluster = {literal(layout.cluster)} ORDER BY shard_num, replica_num")
    finally:
        client.disconnect()
    database = layout.local_database or url.database
    shards: dict[int, list[DbUrl]] = {}
    for shard_num, host, port in replicas:
        shards.setdefault(shard_num, []).append(
            replace(url, host=text(host), port=port, database=database))
    return sum(_drop_on_shard(urls, layout.local_table, cutoff.date())
               for urls in shards.values()), cutoff


def _drop_on_shard(replicas: list[DbUrl], table: str, first_kept: date) -> int:
    """Drop the days on one replica of the shard, the first that answers: a
    Replicated table passes the drop to the others, a plain one has no others."""
    for i, shard_url in enumerate(replicas):
        shard = client_for(shard_url)
        try:
            connect(shard, shard_url)
        except StorageError as err:
            if err.unreachable and i + 1 < len(replicas):
                continue
            raise
        try:
            return _drop(shard, shard_url, shard_url.database, table, first_kept)
        finally:
            shard.disconnect()
    return 0


def _drop(client, url: DbUrl, database: str, table: str, first_kept: date) -> int:
    """Drop the partitions (days) of ``table`` before ``first_kept``; the rows they held."""
    parts = run(client, url, f"list the partitions of {table}",
                "SELECT partition, sum(rows) FROM system.parts WHERE active AND database = "
                f"{literal(database)} AND table = {literal(table)} GROUP BY partition")
    deleted = 0
    for partition, rows in parts:
        day = text(partition).strip("'")
        if date.fromisoformat(day) < first_kept:
            run(client, url, f"drop partition {day} of {table}",
                f"ALTER TABLE {database}.{table} DROP PARTITION {literal(day)}")
            deleted += rows
    return deleted
