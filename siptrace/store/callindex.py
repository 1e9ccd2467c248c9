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
from datetime import datetime, timezone
from typing import Sequence

import peewee

from siptrace.store.schema import CALL_WIDTHS, calls_model, index_state_model
from siptrace.store.text import clean_text
from siptrace.view.model import is_copy
from siptrace.view.summary import SUMMARY_FIELDS, CallSummary

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

    def create(self) -> None:
        """Create the index tables when missing."""
        self.database.create_tables([self.model, self.state], safe=True)

    def forget(self) -> None:
        """Drop the cache (after a rebuild, or when another writer may have changed rows)."""
        self._cache.clear()
        self._recent.clear()

    def update(self, rows: Sequence[tuple], last_id: int | None = None) -> int:
        """Fold rows (sip_trace column order: date, callid, traced_user, msg, method,
        status, fromip, toip, ...) into the index; returns the number of calls written.

        ``last_id``: the highest row id among ``rows`` when the caller knows it;
        otherwise the table's highest id is recorded.
        """
        calls = self._load({r[1] for r in rows if r[1]})
        touched: dict[str, CallSummary] = {}
        for date, callid, traced_user, msg, method, status, fromip, toip, *_ in rows:
            if not callid:
                continue  # no Call-ID, no call
            recent = self._recent.get(callid)
            if recent is None:
                recent = self._recent[callid] = deque(maxlen=RECENT_PER_CALL)
            identity = hash((date, fromip, toip, msg))
            if is_copy(traced_user, identity, recent):
                continue  # the same message again, stored for a traced user
            recent.append(identity)
            call = calls[callid]
            call.add(date, method, status, fromip, toip, msg)
            touched[callid] = call
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
        for start in range(0, len(missing), LOAD_CHUNK):
            chunk = missing[start:start + LOAD_CHUNK]
            for record in self.model.select().where(self.model.callid.in_(chunk)).dicts():
                calls[record["callid"]] = summary_from_record(record)
        for callid in missing:
            calls.setdefault(callid, CallSummary(callid))
        return calls

    def _upsert(self, calls: list[CallSummary]) -> None:
        records = [_record_of(call) for call in calls]
        query = self.model.insert_many(records)
        update = [getattr(self.model, name) for name in _COLUMNS if name != "callid"]
        if isinstance(self.database, peewee.MySQLDatabase):
            query = query.on_conflict(preserve=update)
        else:
            query = query.on_conflict(conflict_target=[self.model.callid], preserve=update)
        query.execute()

    def _record(self, last_id: int | None) -> None:
        state = self.state
        if last_id is None:
            trace = peewee.Table(self.trace_table)
            last_id = (trace.select(peewee.fn.MAX(trace.c.id)).bind(self.database).scalar()
                       or 0)
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        query = state.insert(table_name=self.trace_table, last_id=last_id, updated=now)
        if isinstance(self.database, peewee.MySQLDatabase):
            query = query.on_conflict(preserve=[state.last_id, state.updated])
        else:
            query = query.on_conflict(conflict_target=[state.table_name],
                                      preserve=[state.last_id, state.updated])
        query.execute()

    def _remember(self, touched: dict[str, CallSummary]) -> None:
        cache = self._cache
        for callid, call in touched.items():
            cache[callid] = call
            cache.move_to_end(callid)
        while len(cache) > self.cached_calls:
            self._recent.pop(cache.popitem(last=False)[0], None)


def _record_of(call: CallSummary) -> dict:
    record = {name: getattr(call, name) for name in _COLUMNS}
    for name, width in CALL_WIDTHS.items():
        value = record[name]
        if not value.isascii() or "\x00" in value:
            value = clean_text(value)
        record[name] = value[:width]
    return record


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
