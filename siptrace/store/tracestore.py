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

A batch the database *rejects* (a CHECK constraint, a trigger, a unique index: an error
class that names the rows, ``rejected_rows``, never the text) is stored again without
the rows it refuses: halves inside savepoints of one transaction, down to single rows,
which go to ``set_aside`` before COMMIT. Any other failure is an outage: the connection
is closed, so that the next attempt opens a fresh one (a SQLite connection opened
read-only stays read-only).
"""

import sqlite3
import sys

from bisect import bisect_right
from collections import Counter
from datetime import datetime
from itertools import accumulate
from operator import itemgetter
from typing import Callable, NamedTuple, Sequence

import peewee

from siptrace.errors import StorageError
from siptrace.filemode import create_private
from siptrace.rows import COLUMNS, TraceRow
from siptrace.store.callindex import CallIndexer, columns_of
from siptrace.store.marker import Marker
from siptrace.store.schema import VARCHAR_WIDTHS, check_table_name, create_table, dialect_of, trace_model
from siptrace.store.text import clean_text, msg_to_text
from siptrace.store.urls import open_database, parse_db_url, storage_error
from siptrace.redact import scrub

MAX_REFUSAL_CHARS = 300  # a refused row's reason, as the dead-letter file keeps it
MYSQL_STATEMENT_BYTES = 1 << 20  # well under max_allowed_packet (4 MB on MySQL 5.7, 16+ MB later)
_SHORT = tuple((i, c, VARCHAR_WIDTHS[c]) for i, c in enumerate(COLUMNS) if c in VARCHAR_WIDTHS)
_MSG = COLUMNS.index("msg")
_COPY_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"))
# Errors that refuse rows, not the database: the batch without them would be stored.
PG_REJECTING_CLASSES = ("22", "23", "44", "P0")  # SQLSTATE classes: data exception,
# integrity constraint violation, WITH CHECK OPTION violation, PL/pgSQL RAISE (triggers)
MYSQL_REJECTING_CODES = frozenset({
    1048,  # ER_BAD_NULL_ERROR
    1062, 1169,  # ER_DUP_ENTRY, ER_DUP_UNIQUE
    1216, 1217, 1451, 1452,  # foreign keys
    1264, 1265, 1292, 1366, 1406,  # out of range, truncated, wrong value, too long
    1300,  # ER_INVALID_CHARACTER_STRING
    1369,  # ER_VIEW_CHECK_FAILED
    1644,  # ER_SIGNAL_EXCEPTION: SIGNAL in a trigger
    3819,  # ER_CHECK_CONSTRAINT_VIOLATED (MySQL 8)
    4025,  # ER_CONSTRAINT_FAILED (MariaDB CHECK)
})
SQLITE_REJECTING_CODES = (18, 19, 20)  # SQLITE_TOOBIG, SQLITE_CONSTRAINT (triggers' RAISE
# too), SQLITE_MISMATCH: primary result codes, the low byte of the extended one


def rejected_rows(exc: BaseException) -> bool:
    """Whether a driver error refuses the rows written, not the database (by the
    driver's error class and code; psycopg 3, PyMySQL, sqlite3)."""
    if isinstance(exc, sqlite3.Error):
        return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in SQLITE_REJECTING_CODES
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(exc, psycopg.Error):
        return (exc.sqlstate or "")[:2] in PG_REJECTING_CLASSES
    pymysql = sys.modules.get("pymysql")
    if pymysql is not None and isinstance(exc, pymysql.err.MySQLError):
        return bool(exc.args) and exc.args[0] in MYSQL_REJECTING_CODES
    return False


class _MysqlColumns(NamedTuple):
    """A batch's values as MySQL literals, column by column.

    ``framed`` False: each value is the inside of a '...' literal (the common case, no
    backslash anywhere in the batch); True: each value is a whole literal."""

    columns: list
    framed: bool
    text: list  # the columns as values (``_columns``): a row's marker, a part of the batch

    def part(self, start: int, stop: int) -> tuple[list, "_MysqlColumns"]:
        """Rows start..stop-1: the first one's values and their literals."""
        first = [c[start] for c in self.text]
        first[_MSG] = msg_to_text(first[_MSG])
        return first, _MysqlColumns([c[start:stop] for c in self.columns], self.framed,
                                    [c[start:stop] for c in self.text])


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
        """Connect (again) and create the table when missing; raises StorageError,
        with ``unreachable`` set when the server did not take the connection."""
        try:
            if not self.database.is_closed():
                return
            try:
                if self.dialect == "sqlite":  # 0600 whatever the umask, -wal and -shm alike
                    create_private(self.url.database)
                self.database.connect()  # on MySQL the driver sets the session's sql_mode
            except Exception as exc:
                err = storage_error(self.url, "connect", exc)
                err.unreachable = True
                raise err from None
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

    def _rows(self, columns: list[list]) -> list[tuple]:
        """The rows as stored, from ``_columns``: msg as text (text.py)."""
        joined, plain = _msg_column(columns[_MSG])
        values = columns[:]
        values[_MSG] = (joined.decode("utf-8").split("\x00") if plain
                        else list(map(msg_to_text, columns[_MSG])))
        return list(zip(*values))

    def _mysql_columns(self, columns: list[list]) -> tuple[list, _MysqlColumns]:
        """The first row's values (as ``_rows``) and every column of ``_columns`` as
        MySQL literals."""
        first = [c[0] for c in columns]
        first[_MSG] = msg_to_text(first[_MSG])
        encoded = [b"" if i == _MSG else "\x00".join(c).encode("utf-8") for i, c in enumerate(columns)]
        encoded[_MSG], plain = _msg_column(columns[_MSG])
        if any(b"\\" in joined for joined in encoded):
            return first, _MysqlColumns(list(map(_literals, encoded)), True, columns)
        if plain and b"'" not in encoded[_MSG]:
            quoted = [columns[_MSG] if i == _MSG else _quoted(j) for i, j in enumerate(encoded)]
        else:
            quoted = list(map(_quoted, encoded))
        return first, _MysqlColumns(quoted, False, columns)

    # -- writes ---------------------------------------------------------------------
    def insert(self, rows: Sequence[TraceRow],
               before_commit: Callable[[Marker], None] | None = None,
               set_aside: Callable[[list], None] | None = None) -> Marker | None:
        """Store rows in one transaction; return the batch's marker.

        ``before_commit(marker)`` runs just before COMMIT (the spool records it). With
        ``set_aside``, a batch the database rejects is stored without the rows it
        refuses, and ``set_aside([(row, error text), ...])`` gets those before COMMIT.
        On failure raises StorageError with ``in_doubt`` (COMMIT was sent, outcome
        unknown), ``marker`` and ``rejected`` (the database refused rows: without
        ``set_aside``, retrying will not help) attributes; the transaction is rolled
        back when it can be, the connection closed unless rows were refused.
        """
        if not rows:
            return None
        self.connect()
        columns = self._columns(rows)
        if self.dialect == "mysql":
            first, batch = self._mysql_columns(columns)
        else:
            batch = self._rows(columns)
            first = batch[0]
        conn = self.database.connection()
        committing = False
        marker = err = None
        try:
            cursor = conn.cursor()
            cursor.execute("BEGIN")
            marker = self._insert_values(cursor, first, batch)
            if before_commit is not None:
                before_commit(marker)
            committing = True
            cursor.execute("COMMIT")
        except Exception as exc:
            err = self._failed(conn, exc, committing, marker)
            if not (err.rejected and set_aside is not None):
                raise err from None
        if err is not None:
            marker, rows = self._insert_accepted(rows, batch, before_commit, set_aside)
            columns = columns_of(rows)
        self.stats["rows"] += len(rows)
        self.stats["batches"] += 1
        if self.indexer is not None:
            self._index(columns)
        return marker

    def _failed(self, conn, exc: Exception, committing: bool, marker) -> StorageError:
        """Roll back after a failed write; the error as StorageError. Unless the
        database refused rows, the connection is closed: the next attempt connects."""
        err = exc if isinstance(exc, StorageError) else storage_error(
            self.url, f"insert into {self.table}", exc)
        err.in_doubt = committing
        err.marker = marker
        err.rejected = not committing and rejected_rows(exc)
        self._abort(conn)
        if not err.rejected:
            self.close()
        return err

    def _insert_accepted(self, rows, batch, before_commit, set_aside) -> tuple:
        """The rows the database accepts, in order, in one transaction: halves in
        savepoints down to single rows; the refused ones to ``set_aside`` before COMMIT.
        Returns the marker and the rows stored."""
        part = batch.part if self.dialect == "mysql" else lambda a, b: (batch[a], batch[a:b])
        refused = {}
        marker = None
        committing = False
        self.connect()
        conn = self.database.connection()
        try:
            cursor = conn.cursor()
            cursor.execute("BEGIN")
            todo = [(0, len(rows))]
            while todo:
                start, stop = todo.pop()
                cursor.execute("SAVEPOINT siptrace_part")
                try:
                    first = self._insert_values(cursor, *part(start, stop))
                except Exception as exc:
                    if not rejected_rows(exc):
                        raise
                    cursor.execute("ROLLBACK TO SAVEPOINT siptrace_part")
                    if stop - start == 1:
                        refused[start] = self._refusal(exc)
                    else:
                        middle = (start + stop) // 2
                        todo += [(middle, stop), (start, middle)]
                    continue
                cursor.execute("RELEASE SAVEPOINT siptrace_part")
                marker = marker or first
            set_aside([(rows[i], error) for i, error in refused.items()])
            if marker is not None and before_commit is not None:
                before_commit(marker)
            committing = True
            cursor.execute("COMMIT")
        except Exception as exc:
            err = self._failed(conn, exc, committing, marker)
            err.rejected = False  # refused rows were set aside: this is something else
            raise err from None
        return marker, [row for i, row in enumerate(rows) if i not in refused]

    def _refusal(self, exc: Exception) -> str:
        """The database's reason for refusing a row, one line (PostgreSQL's primary
        message: its DETAIL repeats the whole row)."""
        diag = getattr(exc, "diag", None)
        text = (diag.message_primary if diag is not None else None) or str(exc)
        return scrub(" ".join(text.split()), self.url.password)[:MAX_REFUSAL_CHARS]

    def _index(self, columns: list[list]) -> None:
        """Fold the columns just stored into the call index; a failure costs the index,
        not the rows (counted; ``siptrace index --rebuild`` repairs it)."""
        try:
            if not self._index_ready:
                self._create_index()
            self.stats["calls_indexed"] += self.indexer.update(columns)
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
        return Marker.of(first_id, first)

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
    def unstored(self, rows: Sequence[TraceRow], markers: Sequence[Marker]) -> list:
        """The rows of a batch not in the table yet: none when a marker of the batch
        (its COMMIT was in doubt) says it was committed, all of them otherwise."""
        return [] if any(map(self.landed, markers)) else list(rows)

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
