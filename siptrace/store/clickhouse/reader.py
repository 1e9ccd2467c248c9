"""ClickHouseReader: the views' reads on a ClickHouse trace table, as TraceReader's.

There is no call index: a column store answers searches from the table itself. A
search finds candidate Call-IDs with one GROUP BY over a time window, the filters
pushed down as conditions every matching call meets (a superset); the candidates'
messages are then summarised and ``CallFilter.matches`` decides (view/search.py).

- Time windows: a search looks at the last hour first, then four times as far back
  each time, until it has its calls or no older row is left; a window's candidates
  come newest first, a page at a time. Whatever is not yet read started before what
  was: the search stops as soon as the calls it has are the newest that match.
- since/until select the calls with a message between them (TraceReader: the calls
  whose time spans overlap them, which includes a call with no message inside).
- The other filters are checked on the messages within CALL_SPAN of the window: a
  call whose only match lies further before ``since`` or after ``until`` is not found.
- Text columns come back in the SQL backends' stored form (store/text.py), so that
  values read here, passed back in, printed or put in a URL, behave as theirs do.
- Messages of one microsecond come in id order, which is random: ClickHouse keeps
  no order of insertion.
"""

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Iterator, Sequence

from siptrace.config import check_table_name
from siptrace.errors import StorageError
from siptrace.store.clickhouse import connection
from siptrace.store.clickhouse.connection import client_for, literal, run
from siptrace.store.clickhouse.schema import describe
from siptrace.store.reader import CHUNK, MAX_LEGS
from siptrace.store.text import msg_to_text, text_to_msg
from siptrace.store.urls import parse_db_url
from siptrace.view.model import StoredMessage, unique_messages
from siptrace.view.search import CallFilter
from siptrace.view.summary import LINK_HEADERS, CallSummary, summarize

EPOCH = datetime(1970, 1, 1)
FIRST_WINDOW = 3600  # seconds back from now (or until) that a search reads first
WIDEN = 4  # each next window reaches this many times as far back
CALL_SPAN = 3600  # seconds around a window (or a call) where its call's (legs') messages are
MIN_PAGE = 100  # candidate calls summarised per step, at least (else twice the limit)
IN_BYTES = 100_000  # characters of literals per IN (...): max_query_size is 256 KiB
LINK_CANDIDATES = 4 * MAX_LEGS  # calls mentioning a leg's Call-ID or Session-ID, per step
_ROW_COLUMNS = "callid, method, status, fromip, toip, fromtag, direction, traced_user, msg"


class ClickHouseReader:
    """Read access to one ClickHouse trace table (or Distributed table)."""

    flavour = "clickhouse"

    def __init__(self, db_url: str, table: str = "sip_trace"):
        self.url = parse_db_url(db_url)
        if self.url.dialect != "clickhouse":
            raise StorageError(f"{self.url.redacted} is not a clickhouse:// URL")
        self.table = check_table_name(table)
        self.layout = None  # how the table holds dates (schema.Layout), once open
        self._client = None

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()

    def open(self) -> None:
        """Connect and learn how the table holds dates; StorageError when it is missing."""
        if self._client is not None:
            return
        client = client_for(self.url)
        connection.connect(client, self.url)
        try:
            layout = describe(client, self.url, self.table)
        except StorageError:
            client.disconnect()
            raise
        if layout is None:
            client.disconnect()
            raise StorageError(f"{self.url.redacted}: no table {self.table}")
        self.layout = layout
        self._client = client

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client = None

    def _run(self, action: str, sql: str) -> list[tuple]:
        self.open()
        return run(self._client, self.url, action, sql)

    def index_lag(self) -> int:
        """Always 0: there is no call index to lag behind."""
        return 0

    # -- rows -----------------------------------------------------------------------
    def rows(self, callid: str | None = None, limit: int = 50, after_id: int = 0,
             newest_first: bool = True, up_to_id: int | None = None) -> list[StoredMessage]:
        """Stored rows as they are (traced_user copies included), newest first (by
        date: ids are random within their second)."""
        if after_id or up_to_id is not None:
            raise StorageError(f"{self.url.redacted}: {self.table}: after_id and up_to_id "
                               "are for `siptrace index`: ClickHouse needs no call index")
        self.open()
        where = [f"callid = {literal(text_to_msg(callid))}"] if callid else []
        at = self.layout.at
        way = " DESC" if newest_first else ""
        order = ", ".join(f"{c}{way}" for c in (*self.layout.order, "id"))
        # The ids first (small columns), then their rows: msg is read for these only.
        for low in (self._windows(_now()) if newest_first and not callid else [None]):
            bounds = [f"date >= {at(low)}"] if low is not None else []
            keys = self._run("read rows", f"SELECT id, toUInt32(toDateTime(date)) FROM "
                             f"{self.table}{_where(where + bounds)} ORDER BY {order} "
                             f"LIMIT {int(limit)}")
            if len(keys) >= limit:
                break
        found = []
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start:start + CHUNK]
            seconds = [s for _, s in chunk]
            found += self._messages(where + [
                f"id IN ({', '.join(str(i) for i, _ in chunk)})",
                f"date >= {at(min(seconds))}", f"date < {at(max(seconds) + 1)}"])
        found.sort(key=lambda m: (m.date, m.id), reverse=newest_first)
        return found[:limit]

    def _messages(self, where: list[str]) -> list[StoredMessage]:
        sql = (f"SELECT id, {self.layout.micros()}, {_ROW_COLUMNS} FROM {self.table}"
               f"{_where(where)}")
        return [StoredMessage(row_id, EPOCH + timedelta(microseconds=micros),
                              *map(msg_to_text, text), msg)
                for row_id, micros, *text, msg in self._run("read messages", sql)]

    def messages(self, callids: Sequence[str]) -> list[StoredMessage]:
        """The messages of these calls in time order, each once."""
        out = []
        for chunk in _in_lists(text_to_msg(c) for c in dict.fromkeys(callids)):
            out += self._messages([f"callid IN ({chunk})"])
        return unique_messages(sorted(out, key=lambda m: (m.date, m.id)))

    def message(self, row_id: int) -> StoredMessage | None:
        """The message of this id; it lies in the second of the id's high 32 bits."""
        row_id = int(row_id)
        if not 0 <= row_id < 1 << 64:
            return None
        second = row_id >> 32
        found = self._messages([f"id = {row_id}", f"date >= {self.layout.at(second)}",
                                f"date < {self.layout.at(second + 1)}"])
        return min(found, key=lambda m: m.date) if found else None

    def call(self, callid: str) -> CallSummary | None:
        """The call summarised from its messages."""
        return next(iter(summarize(self.messages([callid])).values()), None)

    # -- searches -------------------------------------------------------------------
    def search(self, filt: CallFilter) -> list[CallSummary]:
        """Calls matching the filter, newest first (module docstring: the windows)."""
        self.open()
        since = _second(filt.since) if filt.since else None
        until = _second(filt.until, up=True) if filt.until else None
        where, having = self._call_conditions(filt)
        glob = "*" in filt.callid or "?" in filt.callid
        check = filt if glob else replace(filt, callid="")  # the SQL compared it exactly
        page = max(MIN_PAGE, 2 * filt.limit)
        seen: set[str] = set()
        matching: list[CallSummary] = []
        for low in self._windows(until if until is not None else _now(), since):
            offset = 0
            while True:
                candidates = self._run("search calls", self._candidates_sql(
                    where, having, low, until, page + 1, offset))
                new = [c for c in (msg_to_text(c) for c, _ in candidates[:page]) if c not in seen]
                seen.update(new)
                matching = _newest(matching + [c for c in summarize(self.messages(new)).values()
                                               if check.matches(c)])
                if len(candidates) <= page:
                    break
                # A call not yet read starts at or before the next candidate's first message.
                next_first = EPOCH + timedelta(microseconds=candidates[page][1] + 1)
                if _settled(matching, filt.limit, max(next_first, _date(low))):
                    return matching[:filt.limit]
                offset += page
            # A call with no message since ``low`` started before it.
            if _settled(matching, filt.limit, _date(low)):
                break
        return matching[:filt.limit]

    def _windows(self, top: int, floor: int | None = None) -> Iterator[int]:
        """The lower bounds (epoch seconds) of ever wider windows back from ``top``: an
        hour, then WIDEN times as far each time, until no row is older, or ``floor``."""
        span = FIRST_WINDOW
        while floor is None or top - span > floor:
            yield top - span
            if not self._run("look for older rows", f"SELECT 1 FROM {self.table} "
                             f"WHERE date < {self.layout.at(top - span)} LIMIT 1"):
                return
            span *= WIDEN
        yield floor

    def _candidates_sql(self, where: list[str], having: list[str], low: int,
                        until: int | None, limit: int, offset: int) -> str:
        """Call-IDs with a message in [low, until] whose messages within CALL_SPAN of it
        meet every condition, with their first message's time there (microseconds)."""
        window = [f"date >= {self.layout.at(low)}"]
        reach = [f"date >= {self.layout.at(low - CALL_SPAN)}"]
        if until is not None:
            window.append(f"date <= {self.layout.at(until)}")
            reach.append(f"date <= {self.layout.at(until + CALL_SPAN)}")
        having = [f"countIf({' AND '.join(window)}) > 0", *having]
        return (f"SELECT callid, {self.layout.micros(first=True)} AS first_us FROM {self.table}"
                f"{_where(where + reach)} GROUP BY callid"
                + f" HAVING {' AND '.join(having)}"
                + f" ORDER BY first_us DESC, callid LIMIT {limit} OFFSET {offset}")

    @staticmethod
    def _call_conditions(filt: CallFilter) -> tuple[list[str], list[str]]:
        """What a matching call's rows meet: conditions on every row (WHERE) and on
        some row (HAVING countIf), a superset of ``filt.matches`` but for the dates."""
        where, some_row = [], []
        if filt.callid:
            pattern = text_to_msg(filt.callid)
            if b"*" in pattern or b"?" in pattern:
                escaped = (pattern.replace(b"\\", b"\\\\").replace(b"%", b"\\%")
                           .replace(b"_", b"\\_"))
                # ? is one character, not one byte: any run here, fnmatch decides.
                like = escaped.replace(b"*", b"%").replace(b"?", b"%")
                where.append(f"callid LIKE {literal(like)}")
            else:
                where.append(f"callid = {literal(pattern)}")
        some_row += [_in_msg(needle) for needle in (filt.from_user, filt.to_user, filt.user)
                     if needle]
        if filt.ip:
            ip = literal(filt.ip)
            some_row.append(f"positionCaseInsensitive(fromip, {ip}) > 0 OR "
                            f"positionCaseInsensitive(toip, {ip}) > 0")
        if filt.method:
            some_row.append(f"method = {literal(filt.method)} AND status = ''")
        if filt.status:
            some_row.append(f"status LIKE {literal(filt.status[0] + '__')}"
                            if filt.status.endswith("xx") else f"status = {literal(filt.status)}")
        return where, [f"countIf({condition}) > 0" for condition in some_row]

    def related(self, callid: str) -> list[str]:
        """This Call-ID, then the legs linked to it (X-CID, Session-ID), transitively:
        legs within CALL_SPAN of the calls they link to."""
        found = [callid]
        frontier = [callid]
        while frontier and len(found) < MAX_LEGS:
            calls = list(summarize(self.messages(frontier)).values())
            if not calls:
                break
            xcids = {c.xcid for c in calls if c.xcid} - set(found)
            sessions = {c.session for c in calls if c.session}
            low = _second(min(c.first_date for c in calls)) - CALL_SPAN
            high = _second(max(c.last_date for c in calls), up=True) + CALL_SPAN
            mention = [f"position(msg, {literal(text_to_msg(c))}) > 0" for c in frontier]
            named = " OR ".join(f"positionCaseInsensitive(msg, {literal(h)}) > 0"
                                for h in LINK_HEADERS)
            linking = [f"({named}) AND ({' OR '.join(mention)})"] + [
                f"positionCaseInsensitive(msg, {literal(s)}) > 0" for s in sessions]
            known = list(_in_lists(text_to_msg(c) for c in found))
            mentioning = self._run("find related calls", (
                f"SELECT callid, {self.layout.micros(first=True)} AS first_us FROM {self.table}"
                + _where([f"date >= {self.layout.at(low)}", f"date <= {self.layout.at(high)}",
                          *(f"callid NOT IN ({chunk})" for chunk in known),
                          " OR ".join(f"({c})" for c in linking)])
                + f" GROUP BY callid ORDER BY first_us, callid LIMIT {LINK_CANDIDATES}"))
            legs = summarize(self.messages([*xcids, *(msg_to_text(c) for c, _ in mentioning)]))
            linked = [leg for leg in legs.values() if leg.callid in xcids
                      or leg.xcid in frontier or (leg.session and leg.session in sessions)]
            frontier = [leg.callid for leg in sorted(linked, key=lambda c: (c.first_date, c.callid))
                        if leg.callid not in found]
            found += frontier[:MAX_LEGS - len(found)]
        return found


def _in_msg(needle: str) -> str:
    """msg holds ``needle`` in any case, or an escape (%xx in a URI, a quoted-pair in a
    display name) that the header's decoded value may hold it behind."""
    text = text_to_msg(needle)
    search = "positionCaseInsensitive" if text.isascii() else "positionCaseInsensitiveUTF8"
    return (f"{search}(msg, {literal(text)}) > 0 OR position(msg, '%') > 0 "
            "OR position(msg, '\\\\') > 0")


def _in_lists(values) -> Iterator[str]:
    """Literals joined for IN (...): up to CHUNK values and IN_BYTES characters each."""
    chunk: list[str] = []
    size = 0
    for value in values:
        text = literal(value)
        if chunk and (len(chunk) == CHUNK or size + len(text) > IN_BYTES):
            yield ", ".join(chunk)
            chunk, size = [], 0
        chunk.append(text)
        size += len(text) + 2
    if chunk:
        yield ", ".join(chunk)


def _where(conditions: list[str]) -> str:
    return " WHERE " + " AND ".join(f"({c})" for c in conditions) if conditions else ""


def _now() -> int:
    return int(datetime.now(timezone.utc).timestamp()) + 1


def _second(when: datetime, up: bool = False) -> int:
    """A naive UTC datetime as epoch seconds, rounded down (or up)."""
    seconds, micros = divmod((when - EPOCH) // timedelta(microseconds=1), 1_000_000)
    return seconds + (1 if up and micros else 0)


def _date(second: int) -> datetime:
    return EPOCH + timedelta(seconds=second)


def _newest(calls: list[CallSummary]) -> list[CallSummary]:
    """Newest first, then by Call-ID (TraceReader's order)."""
    return sorted(sorted(calls, key=lambda c: c.callid), key=lambda c: c.first_date,
                  reverse=True)


def _settled(matching: list[CallSummary], limit: int, unread_before: datetime) -> bool:
    """Whether the first ``limit`` calls are final: every call not read yet started
    before ``unread_before``."""
    return len(matching) >= limit and matching[limit - 1].first_date >= unread_before
