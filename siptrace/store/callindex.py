"""The call index: ``<table>_calls`` kept up to date from rows as they are stored.

Each stored batch is folded into the summaries of its calls (view/summary.py) and
upserted in a transaction of its own, after the rows' commit: the rows never wait for
or depend on the index. A bounded cache keeps the summaries of recent calls; a call
not in it is read back from the index before folding, so a long call, a restart or
another writer on the same table fold on where the index stands.

``siptrace_index_state`` records, per trace table, the last row id folded in, so
that ``siptrace index`` on a table another program writes goes on from there.
"""

from collections import OrderedDict, deque
from operator import attrgetter, itemgetter
from datetime import datetime, timezone
from typing import Sequence

import peewee

from siptrace.store.schema import CALL_WIDTHS, VARCHAR_WIDTHS, calls_model, index_state_model
from siptrace.store.text import clean_text
from siptrace.view.model import is_copy
from siptrace.view.summary import SUMMARY_FIELDS, CallSummary, fold

CACHED_CALLS = 20_000  # summaries kept in memory between batches (about 10 MB)
# Per cached call, the last messages seen (as hashes): a copy stored for a traced user
# follows its message closely, whichever writer stored it.
RECENT_PER_CALL = 8
LOAD_CHUNK = 500  # Call-IDs per SELECT ... IN (...)
WRITE_CHUNK = 500  # summaries per upsert statement
_COLUMNS = SUMMARY_FIELDS


class CallIndexer:
    """Folds stored rows into the call index of one trace table. One writer owns it."""

    def __init__(self, database: peewee.Database, trace_table: str,
                 cached_calls: int = CACHED_CALLS):
        self.database = database
        self.trace_table = trace_table
        self.model = calls_model(database, trace_table)
        self.state = index_state_model(database)
        self.cached_calls = cached_calls
        self._cache: OrderedDict[str, CallSummary] = OrderedDict()
        self._recent: dict[str, deque] = {}  # hashes of each cached call's last messages
        self._statements()

    @property
    def tables(self) -> tuple[str, str]:
        return self.model._meta.table_name, self.state._meta.table_name

    def create(self) -> None:
        """Create the index tables when missing."""
        self.database.create_tables([self.model, self.state], safe=True)

    def forget(self) -> None:
        """Drop the cache (after a rebuild, or when another writer may have changed rows)."""
        self._cache.clear()
        self._recent.clear()

    def update(self, columns: Sequence[Sequence], last_id: int | None = None) -> int:
        """Fold rows, given as columns in sip_trace order (date, callid, traced_user, msg
        as bytes, method, status, fromip, toip; more are ignored), into the index;
        returns the number of calls written. Values are as the trace table holds them
        (dates as its text, the Call-ID already escaped, store/text.py): the writer
        hands over the columns it has just stored, ``siptrace index`` what it read
        (``columns_of``).

        ``last_id``: the highest row id among the rows when the caller knows it;
        otherwise the table's highest id is recorded.
        """
        columns = list(columns[:8])
        if "" in columns[1]:  # no Call-ID, no call
            with_callid = [i for i, callid in enumerate(columns[1]) if callid]
            columns = [[column[i] for i in with_callid] for column in columns]
        dates, callids, users, msgs, methods, statuses, fromips, toips = columns
        if not callids:
            return 0
        if max(map(len, callids)) > VARCHAR_WIDTHS["callid"]:  # as the trace table cuts them
            callids = [callid[:VARCHAR_WIDTHS["callid"]] for callid in callids]
        keep = self._not_copies(callids, users, dates, fromips, toips, msgs)
        if keep is not None:
            callids, dates, methods, statuses, fromips, toips, msgs = (
                [column[i] for i in keep]
                for column in (callids, dates, methods, statuses, fromips, toips, msgs))
        calls = self._load(set(callids))
        fold(calls, callids, dates, methods, statuses, fromips, toips, msgs)
        touched = calls
        try:
            with self.database.atomic():
                for start in range(0, len(touched), WRITE_CHUNK):
                    self._upsert(list(touched.values())[start:start + WRITE_CHUNK])
                self._record(last_id)
        except BaseException:
            self.forget()  # cached summaries were folded on: no longer what is stored
            raise
        self._remember(touched)
        return len(touched)

    def _not_copies(self, callids, users, dates, fromips, toips, msgs) -> list[int] | None:
        """The rows that are not copies stored for traced users (None: all of them);
        notes the last messages of each call for the copies of the next batch."""
        recents = self._recent
        if not any(users):  # copies follow their message closely: note only the tail
            tail = slice(-RECENT_PER_CALL, None)
            for callid, identity in zip(callids[tail], map(hash, zip(
                    dates[tail], fromips[tail], toips[tail], msgs[tail]))):
                recents.setdefault(callid, deque(maxlen=RECENT_PER_CALL)).append(identity)
            return None
        keep = []
        identities = map(hash, zip(dates, fromips, toips, msgs))
        for i, (callid, user, identity) in enumerate(zip(callids, users, identities)):
            recent = recents.get(callid)
            if recent is None:
                recent = recents[callid] = deque(maxlen=RECENT_PER_CALL)
            if not is_copy(user, identity, recent):
                keep.append(i)
            recent.append(identity)
        return keep

    def recall(self, rows: Sequence[tuple]) -> None:
        """Note rows already folded in (an earlier run's last ones, oldest first) so that
        their copies for traced users, stored after them, are known as copies."""
        for date, callid, traced_user, msg, method, status, fromip, toip, *_ in rows:
            recent = self._recent.setdefault(callid, deque(maxlen=RECENT_PER_CALL))
            recent.append(hash((date, fromip, toip, msg)))

    def _load(self, callids: set[str]) -> dict[str, CallSummary]:
        """Summaries for ``callids``: from the cache, else the index, else new ones."""
        calls = {c: self._cache[c] for c in callids if c in self._cache}
        missing = [c for c in callids if c not in calls]
        cursor = self.database.cursor()
        for start in range(0, len(missing), LOAD_CHUNK):
            chunk = missing[start:start + LOAD_CHUNK]
            marks = ", ".join([self._mark] * len(chunk))
            cursor.execute(f"{self._select_sql} ({marks}))", chunk)
            for values in cursor.fetchall():
                call = summary_from_record(dict(zip(_COLUMNS, values)))
                call.first_date, call.last_date = str(call.first_date), str(call.last_date)
                calls[values[0]] = call
        for callid in missing:
            calls.setdefault(callid, CallSummary(callid))
        return calls

    def _statements(self) -> None:
        """The SQL of the per-batch statements, built once by peewee: building a query
        per batch cost more than running it (the index is kept on the write path)."""
        model, state, db = self.model, self.state, self.database
        mysql = isinstance(db, peewee.MySQLDatabase)
        fields = [getattr(model, name) for name in _COLUMNS]
        update = fields[1:]
        query = model.insert_many([tuple(range(len(fields)))], fields=fields)
        query = (query.on_conflict(preserve=update) if mysql else
                 query.on_conflict(conflict_target=[model.callid], preserve=update))
        self._upsert_sql = query.returning().sql()[0]
        query = state.insert_many([(0, 0, 0)], fields=[state.table_name, state.last_id,
                                                       state.updated])
        preserve = [state.last_id, state.updated]
        query = (query.on_conflict(preserve=preserve) if mysql else
                 query.on_conflict(conflict_target=[state.table_name], preserve=preserve))
        self._state_sql = query.returning().sql()[0]
        trace = peewee.Table(self.trace_table)
        self._max_id_sql = trace.select(peewee.fn.MAX(trace.c.id)).bind(db).sql()[0]
        select = model.select(*fields).where(model.callid == "x").sql()[0]
        # "SELECT ... WHERE (callid = ?)" -> "SELECT ... WHERE (callid IN"; _load adds "(?, ...))"
        self._select_sql = select.rsplit("=", 1)[0].rstrip() + " IN"
        self._mark = "?" if isinstance(db, peewee.SqliteDatabase) else "%s"
        self._dates_as_text = isinstance(db, peewee.SqliteDatabase)

    def _upsert(self, calls: list[CallSummary]) -> None:
        rows = [_values_of(call, self._dates_as_text) for call in calls]
        if not isinstance(self.database, peewee.PostgresqlDatabase):
            # sqlite3 runs executemany in-process; PyMySQL makes it one multi-row INSERT.
            self.database.cursor().executemany(self._upsert_sql, rows)
            return
        # psycopg would send one statement per row: one multi-row statement instead.
        head, values, tail = self._upsert_sql.partition("VALUES ")
        group = "(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"
        assert tail.startswith(group)
        sql = f"{head}{values}{', '.join([group] * len(rows))}{tail[len(group):]}"
        self.database.cursor().execute(sql, [v for row in rows for v in row])

    def _record(self, last_id: int | None) -> None:
        cursor = self.database.cursor()
        if last_id is None:
            cursor.execute(self._max_id_sql)
            last_id = cursor.fetchone()[0] or 0
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        cursor.execute(self._state_sql, (self.trace_table, last_id,
                                         str(now) if self._dates_as_text else now))

    def _remember(self, touched: dict[str, CallSummary]) -> None:
        cache = self._cache
        for callid, call in touched.items():
            cache[callid] = call
            cache.move_to_end(callid)
        while len(cache) > self.cached_calls:
            self._recent.pop(cache.popitem(last=False)[0], None)


_SHORT = tuple(i for i, name in enumerate(_COLUMNS) if name in CALL_WIDTHS)
_WIDTHS = tuple(CALL_WIDTHS[_COLUMNS[i]] for i in _SHORT)
_DATES = tuple(i for i, name in enumerate(_COLUMNS) if name.endswith("_date"))
_values = attrgetter(*_COLUMNS)
_strings = itemgetter(*_SHORT)


def _values_of(call: CallSummary, dates_as_text: bool) -> list:
    """The index row of a call, in ``_COLUMNS`` order, strings clean and cut to width.
    The writer's summaries hold their dates as the trace table's text."""
    values = list(_values(call))
    strings = _strings(values)
    joined = "".join(strings)
    if (not joined.isascii() or "\x00" in joined
            or not all(map(int.__ge__, _WIDTHS, map(len, strings)))):
        for i, width in zip(_SHORT, _WIDTHS):
            value = values[i]
            if not value.isascii() or "\x00" in value:
                value = clean_text(value)
            values[i] = value[:width]
    if not dates_as_text:  # folded as the date column's text; the driver wants datetimes
        for i in _DATES:
            values[i] = datetime.fromisoformat(values[i])
    return values


def summary_from_record(record: dict) -> CallSummary:
    """A CallSummary from a row of the index (dates as the driver returns them)."""
    values = {name: record[name] for name in _COLUMNS}
    for key in ("first_date", "last_date"):
        values[key] = as_datetime(values[key])
    values["has_request"] = bool(values["has_request"])
    return CallSummary(**values)


def as_datetime(value) -> datetime:
    """A date column's value as a naive datetime (SQLite returns text)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None) if value.tzinfo else value
    return datetime.fromisoformat(str(value))


def columns_of(rows: Sequence[tuple]) -> list[list]:
    """The first eight columns of rows in sip_trace order, as ``update`` takes them."""
    return [list(map(itemgetter(i), rows)) for i in range(8)]
