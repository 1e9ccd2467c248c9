"""ClickHouseStore: rows into a ClickHouse trace table, one INSERT per batch.

The store the batch writer (store/batch.py) drives, as it drives TraceStore: same
``insert``, ``unstored``, ``connect``, ``close``, ``count`` and ``ping``. Rows go as
columns over the native protocol, dates as integers (no datetime is made), strings
as their bytes. A table that does not exist is created (one MergeTree table; a cluster's
tables are the operator's, schema.py). Into a Distributed table every INSERT waits
for all the shards it touches (``insert_distributed_sync``): success means stored.

Duplicates. ClickHouse deduplicates retried blocks on Replicated tables only, and an
INSERT is not a transaction: a timeout or a lost connection after the rows were sent
leaves them stored or not, and through a Distributed table stored on some shards and
not others. Such a batch is *in doubt* (StorageError ``in_doubt``, with a marker), and
the batch writer spools it with that marker. Before it is sent again, ``unstored``
asks the table which of its rows are there, by content (date to the microsecond,
Call-ID, addresses, direction, traced_user, method, status, from-tag and the MD5 of
msg, within the batch's seconds and Call-IDs), and only the others are sent: no row is
stored twice, none is lost. The one row this cannot tell apart is an identical copy
stored before by another writer (the same capture replayed twice into one table).
"""

import hashlib
import os
from array import array
from collections import Counter
from datetime import datetime, timezone
from typing import Callable, Sequence

from siptrace.errors import StorageError
from siptrace.rows import COLUMNS, TraceRow
from siptrace.store.clickhouse import connection
from siptrace.store.clickhouse.connection import client_for, literal, run
from siptrace.store.clickhouse.schema import describe, table_ddl
from siptrace.store.marker import Marker
from siptrace.store.schema import check_table_name
from siptrace.store.urls import parse_db_url

# A column store wants few, large inserts: up to this many rows, this many bytes of
# messages, or this long waiting (live), per INSERT (docs/storage.md, "ClickHouse").
BATCH = {"max_rows": 100_000, "max_bytes": 16 << 20, "max_delay": 1.0}
_TEXT = ("callid", "method", "status", "fromip", "toip", "fromtag", "direction",
         "traced_user", "msg")
_TEXT_INDEX = tuple(COLUMNS.index(name) for name in _TEXT)
_DATE, _CALLID, _MSG = COLUMNS.index("date"), COLUMNS.index("callid"), COLUMNS.index("msg")
_EPOCH_SECONDS: dict[str, int] = {}  # 'YYYY-MM-DD HH:MM:SS' -> seconds since the epoch
SECOND_CACHE_SIZE = 4096
# What tells a row of an in-doubt batch apart, besides its date and the MD5 of msg.
_KEY_COLUMNS = ("callid", "fromip", "toip", "direction", "traced_user", "method", "status",
                "fromtag")
_KEY_INDEX = tuple(COLUMNS.index(name) for name in _KEY_COLUMNS)
CHECK_CALLIDS = 1000  # Call-IDs per lookup of an in-doubt batch
CHECK_SECONDS = 60  # a lookup of an in-doubt batch may take this long


class ClickHouseStore:
    """One native connection to the trace table. Not thread-safe: one writer owns it."""

    dialect = "clickhouse"
    indexer = None  # searches read the table itself: there is no call index
    batch = BATCH

    def __init__(self, db_url: str, table: str = "sip_trace"):
        self.url = parse_db_url(db_url)
        if self.url.dialect != "clickhouse":
            raise StorageError(f"{self.url.redacted} is not a clickhouse:// URL")
        self.table = check_table_name(table)
        self.stats = Counter()
        self.last_index_error = ""
        self.layout = None
        self._client = None

    # -- connection -----------------------------------------------------------------
    def connect(self) -> None:
        """Connect (again), create the table when missing and learn its layout;
        StorageError, with ``unreachable`` when the server did not take the connection."""
        if self._client is not None and self._client.connection.connected:
            return
        client = client_for(self.url)
        connection.connect(client, self.url)
        try:
            if self.layout is None:
                layout = describe(client, self.url, self.table)
                if layout is None:
                    version = connection.server_version(client)
                    for statement in table_ddl(self.table, version):
                        run(client, self.url, f"create {self.table}", statement)
                    layout = describe(client, self.url, self.table)
                self.layout = layout
        except StorageError:
            client.disconnect()
            raise
        self._client = client
        names = ("id", "date", *(("date_us",) if not self.layout.datetime64 else ()), *_TEXT)
        self._insert_sql = f"INSERT INTO {self.table} ({', '.join(names)}) VALUES"
        self._settings = {"insert_distributed_sync": 1} if self.layout.distributed else {}

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client = None

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc):
        self.close()

    # -- writes ---------------------------------------------------------------------
    def insert(self, rows: Sequence[TraceRow],
               before_commit: Callable[[Marker], None] | None = None,
               set_aside: Callable[[list], None] | None = None) -> Marker | None:
        """Store rows in one INSERT; return the batch's marker (its first row).

        ``before_commit(marker)`` runs before the rows are sent. Rows the server
        refuses (a constraint) are found by halving and given to ``set_aside`` with
        the reason, the others stored. On failure raises StorageError with
        ``in_doubt`` (the rows were sent: stored or not) and ``marker``.
        """
        if not rows:
            return None
        self.connect()
        marker = Marker.of(0, rows[0])
        if before_commit is not None:
            before_commit(marker)
        try:
            self._send(self._columns(rows))
        except Exception as exc:
            err = self._failed(exc, marker)
            if not (err.rejected and set_aside is not None):
                raise err from None
            rows = self._insert_accepted(list(rows), set_aside)
        self.stats["rows"] += len(rows)
        self.stats["batches"] += 1
        return marker

    def _send(self, columns: list) -> None:
        self._client.execute(self._insert_sql, columns, columnar=True, settings=self._settings)

    def _failed(self, exc: BaseException, marker: Marker) -> StorageError:
        err = connection.error(self.url, f"insert into {self.table}", exc)
        err.rejected = connection.rejecting(exc)
        err.in_doubt = not err.rejected  # the rows may have been written
        err.marker = marker
        if not err.rejected:
            self.close()
        return err

    def _insert_accepted(self, rows: list, set_aside: Callable[[list], None]) -> list:
        """The rows the server takes, in halves down to single rows; the refused ones
        to ``set_aside``. A refused INSERT writes nothing, so halves need no undo."""
        refused, stored = [], []
        todo = [(0, len(rows))]
        while todo:
            start, stop = todo.pop()
            try:
                self._send(self._columns(rows[start:stop]))
            except Exception as exc:
                if not connection.rejecting(exc):
                    err = self._failed(exc, Marker.of(0, rows[start]))
                    err.rejected = False
                    raise err from None
                if stop - start == 1:
                    refused.append((rows[start], " ".join(str(exc).split())[:300]))
                else:
                    middle = (start + stop) // 2
                    todo += [(middle, stop), (start, middle)]
                continue
            stored += rows[start:stop]
        set_aside(refused)
        return stored

    def _columns(self, rows: Sequence[TraceRow]) -> list:
        """The INSERT's columns: ids (schema.py), the date as integers, strings as bytes."""
        n = len(rows)
        dates = [row[_DATE] for row in rows]
        seconds = [_EPOCH_SECONDS.get(d[:19]) or _seconds(d[:19]) for d in dates]
        micros = [_fraction(d) for d in dates]
        ids = [s << 32 | r for s, r in zip(seconds, array("I", os.urandom(4 * n)))]
        if self.layout.datetime64:
            date_columns = [[s * 1_000_000 + u for s, u in zip(seconds, micros)]]
        else:
            date_columns = [seconds, micros]
        text = [_bytes_column([row[i] for row in rows]) for i in _TEXT_INDEX[:-1]]
        return [ids, *date_columns, *text, [row[_MSG] for row in rows]]

    # -- reads ----------------------------------------------------------------------
    def unstored(self, rows: Sequence[TraceRow], markers: Sequence[Marker]) -> list:
        """The rows of a batch not in the table yet: all of them unless the batch is in
        doubt (``markers``); then those the table does not hold (module docstring)."""
        if not markers:
            return list(rows)
        self.connect()
        held = Counter()
        seconds = [_seconds(row[_DATE][:19]) for row in rows]
        callids = sorted({row[_CALLID] for row in rows})
        at = self.layout.at
        bounds = f"date >= {at(min(seconds))} AND date < {at(max(seconds) + 1)}"
        for start in range(0, len(callids), CHECK_CALLIDS):
            chunk = ", ".join(map(literal, callids[start:start + CHECK_CALLIDS]))
            found = run(self._client, self.url, "check an in-doubt batch",
                        f"SELECT {self.layout.micros()}, {', '.join(_KEY_COLUMNS)}, "
                        f"hex(MD5(msg)) "
                        f"FROM {self.table} "
                        f"WHERE {bounds} AND callid IN ({chunk})",
                        settings={"max_execution_time": CHECK_SECONDS})
            held.update(map(tuple, found))
        missing = []
        for row in rows:
            key = _key_of_row(row)
            if held[key]:
                held[key] -= 1
            else:
                missing.append(row)
        return missing

    def count(self) -> int:
        self.connect()
        return run(self._client, self.url, "count", f"SELECT count() FROM {self.table}")[0][0]

    def ping(self) -> None:
        """Cheap round trip; raises StorageError when the server is not answering."""
        self.connect()
        run(self._client, self.url, "ping", "SELECT 1")


def _seconds(text: str) -> int:
    """Seconds since the epoch of 'YYYY-MM-DD HH:MM:SS' (UTC), cached."""
    value = _EPOCH_SECONDS.get(text)
    if value is None:
        if len(_EPOCH_SECONDS) >= SECOND_CACHE_SIZE:
            _EPOCH_SECONDS.clear()
        value = _EPOCH_SECONDS[text] = int(
            datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp())
    return value


def _fraction(text: str) -> int:
    """The microseconds of the date column's text ('YYYY-MM-DD HH:MM:SS[.ffffff]')."""
    return int(text[20:26]) if len(text) > 19 else 0


def _bytes_column(values: list[str]) -> list[bytes]:
    """Text values as their bytes (a byte that is not UTF-8 is held as a surrogate):
    the whole column in one encode when no value holds a NUL."""
    joined = "\x00".join(values)
    if joined.count("\x00") == len(values) - 1:
        return joined.encode("utf-8", "surrogateescape").split(b"\x00")
    return [v.encode("utf-8", "surrogateescape") for v in values]


def _key_of_row(row) -> tuple:
    """What tells a row apart, as ``unstored``'s query reads it back."""
    enc = lambda v: v.encode("utf-8", "surrogateescape")  # noqa: E731
    date = row[_DATE]
    return (_seconds(date[:19]) * 1_000_000 + _fraction(date),
            *(enc(row[i]) for i in _KEY_INDEX),
            hashlib.md5(row[_MSG]).hexdigest().upper().encode("ascii"))
