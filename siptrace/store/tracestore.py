"""TraceStore: rows into the sip_trace table, one transaction per batch, fast paths per backend.

Per backend the fastest measured path (docs/storage.md): SQLite ``executemany`` of one
prebuilt INSERT; MySQL/MariaDB one multi-row INSERT per ~1 MB with NO_BACKSLASH_ESCAPES
(so quoting is one ``str.replace``), built column by column for the whole batch;
PostgreSQL COPY FROM STDIN in text format.

The first row of every batch is inserted on its own to learn its id: the batch's
*marker*. A transaction is all or nothing, so "does the row with that id and identity
exist?" answers whether a batch whose COMMIT outcome is unknown was stored.
"""

from bisect import bisect_right
from collections import Counter
from datetime import datetime
from itertools import accumulate
from typing import Callable, NamedTuple, Sequence

import peewee

from siptrace.errors import StorageError
from siptrace.rows import COLUMNS, TraceRow
from siptrace.store.callindex import CallIndexer
from siptrace.store.schema import VARCHAR_WIDTHS, check_table_name, create_table, dialect_of, trace_model
from siptrace.store.text import clean_text, msg_to_text
from siptrace.store.urls import open_database, parse_db_url, storage_error

MYSQL_STATEMENT_BYTES = 1 << 20  # well under max_allowed_packet (4 MB on MySQL 5.7, 16+ MB later)
_SHORT = tuple((i, c, VARCHAR_WIDTHS[c]) for i, c in enumerate(COLUMNS) if c in VARCHAR_WIDTHS)
_MSG = COLUMNS.index("msg")
_COPY_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"))


class Marker(NamedTuple):
    """Identity of a batch's first stored row: its id plus columns to confirm it is ours."""

    id: int
    date: str
    callid: str
    fromip: str
    toip: str


class TraceStore:
    """One connection to the trace table. Not thread-safe: one writer owns it."""

    def __init__(self, db_url: str = "sqlite:///siptrace.db", table: str = "sip_trace", *,
                 partitioned: bool = False, partitions_ahead: int = 7, call_index: bool = True):
        self.url = parse_db_url(db_url)
        self.table = check_table_name(table)
        self.database = open_database(self.url)
        self.dialect = dialect_of(self.database)
        self.model = trace_model(self.database, table)
        self.partitioned = partitioned
        self.partitions_ahead = partitions_ahead
        self.stats = Counter()
        self.last_index_error = ""
        self.indexer = CallIndexer(self.database, table) if call_index else None
        self._ready = False
        ctx = self.database.get_sql_context()
        self.quoted_table = ctx.sql(peewee.Entity(table)).query()[0]
        cols = ", ".join(self._q(c) for c in COLUMNS)
        mark = "?" if self.dialect == "sqlite" else "%s"
        self._insert_one = (f"INSERT INTO {self.quoted_table} ({cols}) VALUES "
                            f"({', '.join([mark] * len(COLUMNS))})")
        self._mysql_prefix = f"INSERT INTO {self.quoted_table} ({cols}) VALUES ".encode("utf-8")
        self._copy_sql = f"COPY {self.quoted_table} ({cols}) FROM STDIN"

    def _q(self, name: str) -> str:
        quote = "`" if self.dialect == "mysql" else '"'
        return f"{quote}{name}{quote}"

    # -- connection -----------------------------------------------------------------
    def connect(self) -> None:
        """Connect (again) and create the table when missing; raises StorageError."""
        try:
            if not self.database.is_closed():
                return
            self.database.connect()
            if self.dialect == "sqlite":
                self.database.execute_sql("PRAGMA journal_mode=WAL")
                self.database.execute_sql("PRAGMA synchronous=NORMAL")
            elif self.dialect == "mysql":
                self.database.execute_sql(
                    "SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")
            if not self._ready:
                self._create()
                self._ready = True
        except StorageError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise storage_error(self.url, "connect", exc) from None

    def _create(self) -> None:
        if self.partitioned:
            from siptrace.store.retention import create_partitioned_table
            create_partitioned_table(self)
        else:
            create_table(self.model)
        if self.indexer is not None:
            self.indexer.create()

    def close(self) -> None:
        try:
            self.database.close()
        except Exception:
            pass  # a dead connection has nothing left to close

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc):
        self.close()

    # -- rows -> values -------------------------------------------------------------
    def values(self, row: TraceRow) -> list:
        """Column values as stored: msg as text, strings clean and cut to their widths."""
        vals = list(row)
        vals[0] = str(row[0])
        vals[_MSG] = msg_to_text(row[_MSG])
        for i, column, width in _SHORT:
            value = vals[i]
            if not value.isascii() or "\x00" in value:
                value = vals[i] = clean_text(value)
            if len(value) > width:
                vals[i] = value[:width]
                self.stats["truncated_" + column] += 1
        return vals

    def _mysql_columns(self, rows: Sequence[TraceRow]) -> tuple[list, list]:
        """The first row's values (as ``values()``) and every column quoted for MySQL.

        Columns are checked whole (one join, ``isascii``, ``max(map(len))``); the
        per-value work of ``values()`` runs only for a column that fails the check.
        Quoted values are UTF-8 bytes ready for a NO_BACKSLASH_ESCAPES literal.
        """
        n = len(rows)
        columns = list(zip(*rows))
        columns[0] = list(map(str, columns[0]))
        for i, column, width in _SHORT:
            values = columns[i]
            joined = "\x00".join(values)
            if not joined.isascii() or joined.count("\x00") != n - 1:
                values = columns[i] = [clean_text(v) for v in values]
            if max(map(len, values)) > width:
                self.stats["truncated_" + column] += sum(len(v) > width for v in values)
                columns[i] = [v[:width] for v in values]
        first = [c[0] for c in columns]
        first[_MSG] = msg_to_text(first[_MSG])
        quoted = [_quoted_msgs(c) if i == _MSG else _quoted_text(c) for i, c in enumerate(columns)]
        return first, quoted

    # -- writes ---------------------------------------------------------------------
    def insert(self, rows: Sequence[TraceRow],
               before_commit: Callable[[Marker], None] | None = None) -> Marker | None:
        """Store rows in one transaction; return the batch's marker.

        ``before_commit(marker)`` runs just before COMMIT (the spool records it). On
        failure raises StorageError with ``in_doubt`` (COMMIT was sent, outcome unknown)
        and ``marker`` attributes; the transaction is rolled back when it can be.
        """
        if not rows:
            return None
        self.connect()
        if self.dialect == "mysql":
            first, batch = self._mysql_columns(rows)
        else:
            batch = [self.values(r) for r in rows]
            first = batch[0]
        conn = self.database.connection()
        committing = False
        marker = None
        try:
            cursor = conn.cursor()
            cursor.execute("BEGIN")
            marker = self._insert_values(cursor, first, batch)
            if before_commit is not None:
                before_commit(marker)
            committing = True
            cursor.execute("COMMIT")
        except Exception as exc:
            err = exc if isinstance(exc, StorageError) else storage_error(
                self.url, f"insert into {self.table}", exc)
            err.in_doubt = committing
            err.marker = marker
            self._abort(conn)
            raise err from None
        self.stats["rows"] += len(rows)
        self.stats["batches"] += 1
        if self.indexer is not None:
            self._index(rows)
        return marker

    def _index(self, rows: Sequence[TraceRow]) -> None:
        """Fold stored rows into the call index; a failure costs the index, not the rows
        (counted; ``siptrace index --rebuild`` repairs it)."""
        try:
            self.stats["calls_indexed"] += self.indexer.update(rows)
        except Exception as exc:
            self.stats["index_errors"] += 1
            self.last_index_error = str(storage_error(self.url, "update the call index", exc))
            self._abort(self.database.connection())

    def _abort(self, conn) -> None:
        try:
            conn.cursor().execute("ROLLBACK")
        except Exception:
            self.close()  # the connection is unusable: reconnect next time

    def _insert_values(self, cursor, first: list, batch: list) -> Marker:
        """``batch``: the rows' values, or on MySQL the quoted columns."""
        if self.dialect == "postgresql":
            cursor.execute(self._insert_one + " RETURNING id", first)
            first_id = cursor.fetchone()[0]
            if len(batch) > 1:
                with cursor.copy(self._copy_sql) as copy:
                    copy.write(_copy_text(batch[1:]))
        elif self.dialect == "mysql":
            cursor.execute(self._mysql_statement(batch, 0, 1))
            first_id = cursor.lastrowid
            for statement in self._mysql_statements(batch, 1):
                cursor.execute(statement)
        else:
            cursor.execute(self._insert_one, first)
            first_id = cursor.lastrowid
            if len(batch) > 1:
                cursor.executemany(self._insert_one, batch[1:])
        return Marker(first_id, first[0], first[1], first[6], first[7])

    def _mysql_statement(self, columns: list, start: int, stop: int) -> bytes:
        """One multi-row INSERT of rows start..stop-1 of the quoted columns."""
        rows = zip(*[values[start:stop] for values in columns])
        return self._mysql_prefix + b"('" + b"'),('".join(map(b"','".join, rows)) + b"')"

    def _mysql_statements(self, columns: list, start: int):
        """INSERTs of about MYSQL_STATEMENT_BYTES each for rows start.. (msg + 512 a row)."""
        ends = list(accumulate(len(m) + 512 for m in columns[_MSG]))
        done = ends[start - 1] if start else 0
        while start < len(ends):
            stop = max(bisect_right(ends, done + MYSQL_STATEMENT_BYTES, start), start + 1)
            yield self._mysql_statement(columns, start, stop)
            start, done = stop, ends[stop - 1]

    # -- reads ----------------------------------------------------------------------
    def landed(self, marker: Marker) -> bool:
        """Whether the batch that ``marker`` names was committed; raises StorageError."""
        self.connect()
        q = self._q
        sql = (f"SELECT {q('date')}, {q('callid')}, {q('fromip')}, {q('toip')} "
               f"FROM {self.quoted_table} WHERE {q('id')} = {'?' if self.dialect == 'sqlite' else '%s'}")
        try:
            row = self.database.execute_sql(sql, (marker.id,)).fetchone()
        except Exception as exc:
            self._abort(self.database.connection())
            raise storage_error(self.url, "check last batch", exc) from None
        if row is None:
            return False
        date = row[0] if isinstance(row[0], datetime) else datetime.fromisoformat(row[0])
        return (date == datetime.fromisoformat(marker.date)
                and (row[1], row[2], row[3]) == (marker.callid, marker.fromip, marker.toip))

    def count(self) -> int:
        self.connect()
        try:
            return self.database.execute_sql(f"SELECT COUNT(*) FROM {self.quoted_table}").fetchone()[0]
        except Exception as exc:
            self._abort(self.database.connection())
            raise storage_error(self.url, "count", exc) from None

    def ping(self) -> None:
        """Cheap round trip; raises StorageError when the server is not answering."""
        self.connect()
        try:
            self.database.execute_sql("SELECT 1").fetchone()
        except Exception as exc:
            self.close()
            raise storage_error(self.url, "ping", exc) from None


def _quoted_text(values: Sequence[str]) -> list:
    """The values as UTF-8 with ' doubled: one replace over them joined by NUL, which
    stored text never holds (text.py)."""
    joined = "\x00".join(values)
    if "'" in joined:
        joined = joined.replace("'", "''")
    return joined.encode("utf-8").split(b"\x00")


def _quoted_msgs(msgs: Sequence[bytes]) -> Sequence[bytes]:
    """``_quoted_text`` of each msg_to_text(msg), straight from the bytes when a batch's
    messages are all plain UTF-8 (then msg_to_text is the decode, and re-encoding gives
    the same bytes).

    Joined by NUL, the bytes decode only if each message is valid UTF-8 on its own (an
    ASCII byte ends or starts no multi-byte sequence); no NUL or 0xEE in any message
    leaves none of text.py's reserved characters.
    """
    joined = b"\x00".join(msgs)
    if b"\xee" not in joined and joined.count(b"\x00") == len(msgs) - 1:
        plain = joined.isascii()
        if not plain:
            try:
                joined.decode("utf-8")
                plain = True
            except UnicodeDecodeError:
                pass
        if plain:
            return joined.replace(b"'", b"''").split(b"\x00") if b"'" in joined else msgs
    return _quoted_text([msg_to_text(m) for m in msgs])


def _copy_text(values: list) -> str:
    """COPY text format for the rows (PostgreSQL docs, COPY, "Text Format")."""
    flat = [v for vals in values for v in vals]
    joined = "\x00".join(flat)  # stored text never holds NUL (see text.py)
    if "\\" in joined or "\t" in joined or "\n" in joined or "\r" in joined:
        for old, new in _COPY_ESCAPES:
            joined = joined.replace(old, new)
    flat = joined.split("\x00")
    width = len(COLUMNS)
    lines = ["\t".join(flat[i:i + width]) for i in range(0, len(flat), width)]
    lines.append("")
    return "\n".join(lines)
