"""Wire messages to sip_trace rows, with the original module's column semantics."""

from datetime import datetime, timedelta
from typing import NamedTuple


class TraceRow(NamedTuple):
    """One row of the sip_trace table, in the documented column order.

    ``date`` is the date column's text (``date_text``: UTC, microseconds); ``msg``
    the exact wire bytes (the store decides how they become text). ``callid`` and
    ``fromtag`` hold a byte that is not UTF-8 as a lone surrogate (surrogateescape),
    which the store escapes reversibly.
    """

    date: str
    callid: str
    traced_user: str
    msg: bytes
    method: str
    status: str
    fromip: str
    toip: str
    fromtag: str
    direction: str


COLUMNS = TraceRow._fields
# Rows are handed to the store (replay and live) in batches of ROWS_PER_PUT, or fewer
# once their messages reach BYTES_PER_PUT: megabyte messages make no large batch.
ROWS_PER_PUT = 1000
BYTES_PER_PUT = 1 << 20
EPOCH = datetime(1970, 1, 1)  # naive UTC, as the date column holds

# The date column, as text: the capture time in UTC, 'YYYY-MM-DD HH:MM:SS', then
# '.ffffff' unless the microsecond is 0 (rounded down), exactly as str(datetime) writes
# it: what SQLite holds and what PostgreSQL's COPY and MySQL's literals take. Text from
# the start, because every backend's write path wants text: made here, it is made
# once, cheaper than a datetime (the seconds' part is cached) and pickled to the store
# process at half the cost.
_SECOND_TEXT: dict[int, str] = {}
SECOND_CACHE_SIZE = 4096  # seconds whose text is kept; cleared when full

# The status column: the numeric code as text, looked up (a reply's code is 3 digits).
_STATUS_TEXT = tuple(str(code) for code in range(1000))

# TraceRow(...) runs a Python-level __new__; tuple.__new__ builds the same row in C,
# at half the cost (one row per traced message). tests/test_fast_paths.py checks that
# the two give the same row.
_new_row = tuple.__new__


def endpoint(transport: str, family: int, ip: str, port: int) -> str:
    """``proto:ip:port`` as the fromip and toip columns hold it, IPv6 in brackets."""
    if family == 6:
        return f"{transport}:[{ip}]:{port}"
    return f"{transport}:{ip}:{port}"


def _second_text(second: int) -> str:
    """'YYYY-MM-DD HH:MM:SS' of ``second`` since the epoch (UTC), cached."""
    if len(_SECOND_TEXT) >= SECOND_CACHE_SIZE:
        _SECOND_TEXT.clear()
    text = _SECOND_TEXT[second] = str(EPOCH + timedelta(seconds=second))
    return text


def date_text(us: int) -> str:
    """The date column's text for a time in microseconds since the epoch (UTC)."""
    second, fraction = divmod(us, 1_000_000)
    text = _SECOND_TEXT.get(second) or _second_text(second)
    return f"{text}.{fraction:06d}" if fraction else text


def trace_row(wire, direction: str) -> TraceRow:
    """The row the module stores for one traced message, traced_user ''.

    For a reply, method is the CSeq method and status the numeric code.
    """
    sip = wire.sip
    if sip.status is None:
        method, status = sip.method, ""
    else:
        method, status = sip.cseq_method, _STATUS_TEXT[sip.status]
    date = date_text(wire.ts_ns // 1000)
    transport, family = wire.transport, wire.family
    return _new_row(TraceRow, (date, sip.call_id, "", sip.raw, method, status,
                               endpoint(transport, family, wire.src, wire.sport),
                               endpoint(transport, family, wire.dst, wire.dport),
                               sip.from_tag, direction))


def trace_rows(wire, direction: str, traced_users=()) -> list[TraceRow]:
    """The rows the module stores for one traced message: ``trace_row`` and one
    more per traced_user AVP value."""
    row = trace_row(wire, direction)
    if not traced_users:
        return [row]
    return [row, *(row._replace(traced_user=user) for user in traced_users)]
