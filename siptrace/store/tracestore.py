"""TraceStore: rows into the sip_trace table, one transaction per batch.

The write path is hand-built per backend, not peewee's ``insert_many``: it is the one
hot path (every captured message passes here, 50,000+ rows/s), and building the
statements with peewee costs more CPU than the database spends on them
(docs/storage.md, "Drivers: measured"). SQLite: ``executemany`` of one prebuilt INSERT.
MySQL/MariaDB: one multi-row INSERT per ~1 MB, built column by column for the whole
batch, its literals correct whatever the session's sql_mode (see ``_quoted``).
PostgreSQL: COPY FROM STDIN in text format. Everything else (creating the table,
counts, the marker check, purges in retention.py) goes through peewee and the model.

The first row of every batch is inserted on its own to learn its id: the batch's
*marker*. A transaction is all or nothing, so "does the row with that id and identity
exist?" answers whether a batch whose COMMIT outcome is unknown was stored.
"""

from bisect import bisect_right
from collections import Counter
from datetime import datetime
from itertools import accumulate
from operator import itemgetter
from typing import Callable, NamedTuple, Sequence

import peewee

from siptrace.errors import StorageError
from siptrace.rows import COLUMNS, TraceRow
from siptrace.store.callindex import CallIndexer
from siptrace.store.marker import Marker
from siptrace.store.schema import VARCHAR_WIDTHS, check_table_name, create_table, dialect_of, trace_model
from siptrace.store.text import clean_text, msg_to_text
from siptrace.store.urls import open_database, parse_db_url, storage_error

MYSQL_STATEMENT_BYTES = 1 << 20  # well under max_allowed_packet (4 MB on MySQL 5.7, 16+ MB later)
_SHORT = tuple((i, c, VARCHAR_WIDTHS[c]) for i, c in enumerate(COLUMNS) if c in VARCHAR_WIDTHS)
_MSG = COLUMNS.index("msg")
_COPY_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"))


class _MysqlColumns(NamedTuple):
    """A batch's values as MySQL literals, column by column.

    ``framed`` False: each value is the inside of a '...' literal (the common case, no
    backslash anywhere in the batch); True: each value is a whole literal."""

    columns: list
    framed: bool


class TraceStore:
    """One connection to the trace table. Not thread-safe: one writer owns it."""

    def __init__(self, db_url: str = "sqlite:///siptrace.db", table: str = "sip_trace", *,
                 call_index: bool = True):
        self.url = parse_db_url(db_url)
        self.table = check_table_name(table)
        self.database = open_database(self.url)
        self.dialect = dialect_of(self.database)
        self.model = trace_model(self.database, table)
        self.stats = Counter()
        self.last_index_error = ""
        self.indexer = CallIndexer(self.database, table) if call_index else None
        self._index_ready = False
        self._ready = False
        quote = lambda node: self.database.get_sql_context().sql(node).query()[0]  # noqa: E731
        self.quoted_table = quote(peewee.Entity(table))
        cols = quote(peewee.EnclosedNodeList([peewee.Entity(c) for c in COLUMNS]))
        mark = "?" if self.dialect == "sqlite" else "%s"
        self._insert_one = (f"INSERT INTO {self.quoted_table} {cols} VALUES "
                            f"({', '.join([mark] * len(COLUMNS))})")
        self._mysql_prefix = f"INSERT INTO {self.quoted_table} {cols} VALUES ".encode("utf-8")
        self._copy_sql = f"COPY {self.quoted_table} {cols} FROM STDIN"

    # -- connection -----------------------------------------------------------------
    def connect(self) -> None:
        """Connect (again) and create the table when missing; raises StorageError."""
        try:
            if not self.database.is_closed():
                return
            self.database.connect()  # on MySQL the driver sets the session's sql_mode (urls.py)
            if self.dialect == "sqlite":
                self.database.execute_sql("PRAGMA journal_mode=WAL")
                self.database.execute_sql("PRAGMA synchronous=NORMAL")
            if not self._ready:
                create_table(self.model)
                self._ready = True
                if self.indexer is not None:
                    try:
                        self._create_index()
                    except Exception:
                        pass  # the rows never wait for the index: tried again at each batch
        except StorageError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise storage_error(self.url, "connect", exc) from None

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
    def _columns(self, rows: Sequence[TraceRow]) -> list[list]:
        """Every column of ``rows`` as stored, msg still bytes: date as text, strings
        clean (text.py) and cut to their widths (counted).

        Columns are checked whole (one join, ``isascii``, ``max(map(len))``); the
        per-value work runs only for a column that fails the check.
        """
        n = len(rows)
        columns = [list(map(itemgetter(i), rows)) for i in range(len(COLUMNS))]
        columns[0] = list(map(str, columns[0]))
        for i, column, width in _SHORT:
            values = columns[i]
            joined = "\x00".join(values)
            if not joined.isascii() or joined.count("\x00") != n - 1:
                values = columns[i] = [clean_text(v) for v in values]
            if max(map(len, values)) > width:
                self.stats["truncated_" + column] += sum(len(v) > width for v in values)
                columns[i] = [v[:width] for v in values]
        return columns

    def _rows(self, rows: Sequence[TraceRow]) -> list[tuple]:
        """The rows as stored (``_columns``), msg as text (text.py)."""
        columns = self._columns(rows)
        joined, plain = _msg_column(columns[_MSG])
        columns[_MSG] = (joined.decode("utf-8").split("\x00") if plain
                         else list(map(msg_to_text, columns[_MSG])))
        return list(zip(*columns))

    def _mysql_columns(self, rows: Sequence[TraceRow]) -> tuple[list, _MysqlColumns]:
        """The first row's values (as ``_rows``) and every column as MySQL literals."""
        columns = self._columns(rows)
        first = [c[0] for c in columns]
        first[_MSG] = msg_to_text(first[_MSG])
        encoded = [b"" if i == _MSG else "\x00".join(c).encode("utf-8") for i, c in enumerate(columns)]
        encoded[_MSG], plain = _msg_column(columns[_MSG])
        if any(b"\\" in joined for joined in encoded):
            return first, _MysqlColumns(list(map(_literals, encoded)), True)
        if plain and b"'" not in encoded[_MSG]:
            quoted = [columns[_MSG] if i == _MSG else _quoted(j) for i, j in enumerate(encoded)]
        else:
            quoted = list(map(_quoted, encoded))
        return first, _MysqlColumns(quoted, False)

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
            batch = self._rows(rows)
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
            if not self._index_ready:
                self._create_index()
            self.stats["calls_indexed"] += self.indexer.update(rows)
        except Exception as exc:
            self.stats["index_errors"] += 1
            self.last_index_error = str(storage_error(self.url, "update the call index", exc))
            self._abort(self.database.connection())

    def _create_index(self) -> None:
        """Create the call index's tables; writers starting together may race to it
        (PostgreSQL then refuses the second CREATE ... IF NOT EXISTS): the table is
        there all the same."""
        try:
            with self.database.atomic():
                self.indexer.create()
        except Exception:
            if not all(map(self.database.table_exists, self.indexer.tables)):
                raise
        self._index_ready = True

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

    def _mysql_statement(self, batch: _MysqlColumns, start: int, stop: int) -> bytes:
        """One multi-row INSERT of rows start..stop-1 of the batch."""
        rows = zip(*[values[start:stop] for values in batch.columns])
        if batch.framed:
            return self._mysql_prefix + b"(" + b"),(".join(map(b",".join, rows)) + b")"
        return self._mysql_prefix + b"('" + b"'),('".join(map(b"','".join, rows)) + b"')"

    def _mysql_statements(self, batch: _MysqlColumns, start: int):
        """INSERTs of about MYSQL_STATEMENT_BYTES each for rows start.. (msg + 512 a row)."""
        ends = list(accumulate(len(m) + 512 for m in batch.columns[_MSG]))
        done = ends[start - 1] if start else 0
        while start < len(ends):
            stop = max(bisect_right(ends, done + MYSQL_STATEMENT_BYTES, start), start + 1)
            yield self._mysql_statement(batch, start, stop)
            start, done = stop, ends[stop - 1]

    # -- reads ----------------------------------------------------------------------
    def landed(self, marker: Marker) -> bool:
        """Whether the batch that ``marker`` names was committed; raises StorageError."""
        self.connect()
        m = self.model
        query = m.select(m.date, m.callid, m.fromip, m.toip).where(m.id == marker.id).tuples()
        try:
            row = query.first()
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
            return self.model.select(peewee.fn.COUNT(peewee.SQL("*"))).scalar()
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


def _msg_column(msgs: Sequence[bytes]) -> tuple[bytes, bool]:
    """The messages as stored (msg_to_text) in UTF-8, joined by NUL; and whether that is
    their own bytes. It is when every message is plain UTF-8: msg_to_text is then the
    decode, and encoding again gives the same bytes.

    Joined by NUL, the bytes decode only if each message is valid UTF-8 on its own (an
    ASCII byte ends or starts no multi-byte sequence); no NUL or 0xEE in any message
    leaves none of text.py's reserved characters.
    """
    joined = b"\x00".join(msgs)
    if b"\xee" not in joined and joined.count(b"\x00") == len(msgs) - 1:
        if joined.isascii():
            return joined, True
        try:
            joined.decode("utf-8")
            return joined, True
        except UnicodeDecodeError:
            pass
    return "\x00".join(map(msg_to_text, msgs)).encode("utf-8"), False


# MySQL literals whose meaning no sql_mode changes. A doubled quote ('') is one quote in
# every mode. A backslash is itself under NO_BACKSLASH_ESCAPES and an escape without it,
# so no quoted literal holds one: a value with a backslash is written in hex, with its
# character set named (_utf8mb4 X'...'). Values are joined by NUL, which stored text
# never holds (text.py): one C call does a whole column.

def _quoted(joined: bytes) -> list[bytes]:
    """The inside of a '...' literal for each value (no backslash among them)."""
    return (joined.replace(b"'", b"''") if b"'" in joined else joined).split(b"\x00")


def _literals(joined: bytes) -> list[bytes]:
    """A whole literal for each value: for a batch that holds a backslash somewhere."""
    if b"\\" not in joined:  # the whole column at once
        framed = joined.replace(b"'", b"''").replace(b"\x00", b"'\x00'")
        return (b"'" + framed + b"'").split(b"\x00")
    return [b"_utf8mb4 X'" + v.hex().encode("ascii") + b"'" if b"\\" in v
            else b"'" + v.replace(b"'", b"''") + b"'" for v in joined.split(b"\x00")]


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
