"""TraceReader: stored rows and calls read back, for the views. Never creates anything.

Reads siptrace's own table and the tables of the original modules: OpenSER 1.x's
(the seed's columns, ``date``) and Kamailio 3.x and later's (``time_stamp`` plus
``time_us``, and ``totag``). Searches go through the call index (callindex.py), never
through ``msg``; a Call-ID's messages through the documented ``call_id`` index.
"""

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

import peewee

from siptrace.errors import StorageError
from siptrace.store.callindex import as_datetime, summary_from_record
from siptrace.store.schema import calls_model, calls_table_name, check_table_name, index_state_model
from siptrace.store.text import text_to_msg
from siptrace.store.urls import open_database, parse_db_url, storage_error
from siptrace.view.model import StoredMessage, unique_messages
from siptrace.view.search import CallFilter
from siptrace.view.summary import CallSummary, summarize

FLAVOURS = {"date": "siptrace", "time_stamp": "kamailio"}  # the column that names the flavour
CHUNK = 500  # Call-IDs per IN (...)
MAX_LEGS = 16  # related legs followed at most
STALE_INDEX = timedelta(seconds=60)  # an index this much behind the table is reported


class TraceReader:
    """Read access to one trace table: rows, messages of calls, call searches."""

    def __init__(self, db_url: str, table: str = "sip_trace"):
        self.url = parse_db_url(db_url)
        self.table = check_table_name(table)
        if self.url.dialect == "sqlite" and not Path(self.url.database).is_file():
            where = ("" if Path(self.url.database).is_absolute() else
                     " (a relative path: sqlite:////PATH is absolute)")
            raise StorageError(f"{self.url.redacted}: no such database file{where}")
        self.database = open_database(self.url)
        self.flavour = ""
        self._columns: dict[str, peewee.Column] = {}
        self._trace: peewee.Table | None = None

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()

    def open(self) -> None:
        """Connect and learn the table's columns; StorageError when it is missing."""
        if self._trace is not None:
            return
        try:
            self.database.connect(reuse_if_open=True)
            exists = self.database.table_exists(self.table)
            names = {c.name.lower() for c in self.database.get_columns(self.table)} if exists else set()
        except Exception as exc:
            self.close()
            raise storage_error(self.url, f"read {self.table}", exc) from None
        if not names:
            self.close()
            raise StorageError(f"{self.url.redacted}: no table {self.table}")
        self.flavour = next((f for col, f in FLAVOURS.items() if col in names), "")
        if not self.flavour or "callid" not in names or "msg" not in names:
            self.close()
            raise StorageError(f"{self.url.redacted}: {self.table} is not a sip_trace table "
                               "(no date or time_stamp, callid and msg columns)")
        self._trace = peewee.Table(self.table).bind(self.database)
        self._names = names

    def close(self) -> None:
        try:
            self.database.close()
        except Exception:
            pass
        self._trace = None

    def _run(self, action: str, query):
        try:
            return list(query)
        except Exception as exc:
            self.close()
            raise storage_error(self.url, action, exc) from None

    # -- rows -----------------------------------------------------------------------
    def _select(self):
        t = self._trace
        columns = [t.c.id, t.c.callid, t.c.method, t.c.status, t.c.fromip, t.c.toip,
                   t.c.fromtag, t.c.direction, t.c.traced_user, t.c.msg]
        if self.flavour == "kamailio":
            columns += [t.c.time_stamp, t.c.time_us]
            if "totag" in self._names:
                columns.append(t.c.totag)
        else:
            columns.append(t.c.date)
        return t.select(*columns)

    def _date_column(self):
        return self._trace.c.time_stamp if self.flavour == "kamailio" else self._trace.c.date

    def _message(self, r: dict) -> StoredMessage:
        if self.flavour == "kamailio":
            date = stored_date(r["time_stamp"]) + timedelta(microseconds=r["time_us"] or 0)
        else:
            date = stored_date(r["date"])
        return StoredMessage(
            r["id"], date, r["callid"] or "", r["method"] or "", r["status"] or "",
            r["fromip"] or "", r["toip"] or "", r["fromtag"] or "", r["direction"] or "",
            r["traced_user"] or "", stored_msg(r["msg"]), r.get("totag") or "")

    def rows(self, callid: str | None = None, limit: int = 50, after_id: int = 0,
             newest_first: bool = True, up_to_id: int | None = None) -> list[StoredMessage]:
        """Stored rows as they are (traced_user copies included), newest first."""
        self.open()
        t = self._trace
        query = self._select().dicts()
        if callid:
            query = query.where(t.c.callid == callid)
        if after_id:
            query = query.where(t.c.id > after_id)
        if up_to_id is not None:
            query = query.where(t.c.id <= up_to_id)
        order = (t.c.id.desc(),) if newest_first else (t.c.id,)
        found = [self._message(r) for r in self._run("read rows", query.order_by(*order).limit(limit))]
        return [m for m in found if m.callid == callid] if callid else found

    def messages(self, callids: Sequence[str]) -> list[StoredMessage]:
        """The messages of these calls in time order, each once."""
        self.open()
        t = self._trace
        out = []
        wanted = list(dict.fromkeys(callids))
        for start in range(0, len(wanted), CHUNK):
            query = self._select().dicts().where(t.c.callid.in_(wanted[start:start + CHUNK]))
            out += [self._message(r) for r in self._run("read messages", query)]
        # MySQL's default collation compares case-insensitively; Call-IDs do not.
        exact = set(wanted)
        out = sorted((m for m in out if m.callid in exact), key=lambda m: (m.date, m.id))
        return unique_messages(out)

    def message(self, row_id: int) -> StoredMessage | None:
        if not 0 <= row_id < 1 << 63:  # beyond a BIGINT: no such row
            return None
        self.open()
        query = self._select().dicts().where(self._trace.c.id == row_id)
        found = self._run("read a message", query)
        return self._message(found[0]) if found else None

    def call(self, callid: str) -> CallSummary | None:
        """The call summarised from its messages (no index needed)."""
        return summarize(self.messages([callid])).get(callid)

    # -- the call index -------------------------------------------------------------
    def _calls(self):
        """The index model; StorageError saying how to build it when it is missing."""
        self.open()
        model = calls_model(self.database, self.table)
        if not self.database.table_exists(model._meta.table_name):
            raise StorageError(
                f"{self.table} has no call index ({calls_table_name(self.table)}): run "
                f"`siptrace index` once (siptrace keeps it up to date for the rows it writes)")
        return model

    def index_lag(self) -> int:
        """Rows of the table not yet in the call index, when the index was last brought
        up to date more than a minute ago (0 otherwise)."""
        self._calls()
        state = index_state_model(self.database)
        if not self.database.table_exists(state._meta.table_name):
            return 0
        found = self._run("read the index state", state.select().where(
            state.table_name == self.table).dicts())
        last_id = found[0]["last_id"] if found else 0
        updated = as_datetime(found[0]["updated"]) if found and found[0]["updated"] else None
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        if updated is not None and now - updated < STALE_INDEX:
            return 0
        t = self._trace
        newest = self._run("read the last id", t.select(peewee.fn.MAX(t.c.id)).tuples())
        return max(0, (newest[0][0] or 0) - last_id)

    def search(self, filt: CallFilter) -> list[CallSummary]:
        """Calls matching the filter, newest first (``CallFilter.matches`` says how)."""
        model = self._calls()
        query = model.select().dicts()
        for condition in _conditions(model, filt):
            query = query.where(condition)
        query = query.order_by(model.first_date.desc(), model.callid).limit(filt.limit)
        return [summary_from_record(r) for r in self._run("search calls", query)]

    def related(self, callid: str) -> list[str]:
        """This Call-ID, then the legs linked to it (X-CID, Session-ID), transitively."""
        try:
            model = self._calls()
        except StorageError:
            call = self.call(callid)
            return [callid] + ([call.xcid] if call and call.xcid else [])
        found = [callid]
        frontier = [callid]
        while frontier and len(found) < MAX_LEGS:
            records = self._run("find related calls", model.select(
                model.callid, model.xcid, model.session).where(model.callid.in_(frontier)).dicts())
            xcids = {r["xcid"] for r in records if r["xcid"]}
            sessions = {r["session"] for r in records if r["session"]}
            condition = model.xcid.in_(frontier)
            if xcids:
                condition |= model.callid.in_(list(xcids))
            if sessions:
                condition |= model.session.in_(list(sessions))
            linked = self._run("find related calls", model.select(model.callid).where(
                condition).order_by(model.first_date).limit(MAX_LEGS).tuples())
            frontier = [c for (c,) in linked if c not in found]
            found += frontier[:MAX_LEGS - len(found)]
        return found


UNIX_EPOCH_JULIAN_DAY = 2440587.5  # 1970-01-01 00:00 UTC as a Julian day number
_PG_HEX = re.compile(r"\\x(?:[0-9a-fA-F]{2})+")


def stored_date(value) -> datetime:
    """A date column's value as written by any of the writers: a datetime, ISO text, or
    (Kamailio's db_sqlite) a Julian day number, read back as Kamailio does it, whole
    seconds (its time_us column holds the rest)."""
    if isinstance(value, (int, float)) or (isinstance(value, str) and _is_number(value)):
        seconds = int(86400 * (float(value) - UNIX_EPOCH_JULIAN_DAY) + 0.5)
        return datetime(1970, 1, 1) + timedelta(seconds=seconds)
    return as_datetime(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def stored_msg(value) -> bytes:
    """The msg column back to wire bytes: siptrace's text (store/text.py), Kamailio's
    db_sqlite BLOB (bytes as they were) or db_postgres's bytea-style hex text (``\\x41...``)."""
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if value[:2] == "\\x" and _PG_HEX.fullmatch(value):
        return bytes.fromhex(value[2:])
    return text_to_msg(value)


def _escape(text: str) -> str:
    """``text`` literal inside a LIKE pattern whose escape character is ``!`` (a character
    that is the same in every dialect's string literals, unlike the backslash)."""
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def _like(field, pattern: str):
    """field LIKE pattern ESCAPE '!', in any case: peewee writes ILIKE as ILIKE on
    PostgreSQL and as LIKE elsewhere (case-insensitive on SQLite for ASCII and on
    MySQL's default collation; peewee's LIKE would be GLOB on SQLite)."""
    return peewee.Expression(field, peewee.OP.ILIKE, peewee.NodeList(
        (peewee.Value(pattern), peewee.SQL("ESCAPE '!'"))))


def _contains(field, text: str):
    return _like(field, f"%{_escape(text)}%")


def _word(field, word: str):
    """``word`` is one of the space-joined words of ``field``."""
    w = _escape(word)
    return ((field == word) | _like(field, f"{w} %") | _like(field, f"% {w}")
            | _like(field, f"% {w} %"))


def _glob(text: str) -> str:
    """A Call-ID glob (* and ?) as a LIKE pattern."""
    return _escape(text).replace("*", "%").replace("?", "_")


def _conditions(m, f: CallFilter):
    if f.since:
        yield m.last_date >= f.since
    if f.until:
        yield m.first_date <= f.until
    if f.from_user:
        yield _contains(m.from_user, f.from_user) | _contains(m.from_name, f.from_user)
    if f.to_user:
        yield _contains(m.to_user, f.to_user) | _contains(m.to_name, f.to_user)
    if f.user:
        yield (_contains(m.from_user, f.user) | _contains(m.from_name, f.user)
               | _contains(m.to_user, f.user) | _contains(m.to_name, f.user))
    if f.callid:
        if "*" in f.callid or "?" in f.callid:
            yield _like(m.callid, _glob(f.callid))
        else:
            yield m.callid == f.callid
    if f.ip:
        yield _word(m.ips, f.ip)
    if f.method:
        yield _word(m.methods, f.method)
    if f.status:
        if f.status.endswith("xx"):
            yield _like(m.status, f"{f.status[0]}__")
        else:
            yield m.status == f.status
