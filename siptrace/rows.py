"""Wire messages to sip_trace rows, with the original module's column semantics."""

from datetime import datetime
from typing import NamedTuple


class TraceRow(NamedTuple):
    """One row of the sip_trace table, in the documented column order.

    ``date`` is a naive UTC datetime with microseconds; ``msg`` the exact wire
    bytes (the store decides how they become text).
    """

    date: datetime
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
EPOCH = datetime(1970, 1, 1)  # naive UTC, as the date column holds

# Capture time as a naive UTC datetime, microseconds kept (rounded down):
# utcfromtimestamp(ts_ns // 1000 / 1e6) is 3.5x faster than adding a timedelta to
# EPOCH, and exact: whole microseconds as a float are within 0.25 us of their value
# until the year 2242, and it rounds to the nearest microsecond.
_from_seconds = datetime.utcfromtimestamp


# TraceRow(...) runs a Python-level __new__; tuple.__new__ builds the same row in C,
# at half the cost (one row per traced message).
_new_row = tuple.__new__


def trace_row(wire, direction: str) -> TraceRow:
    """The row the module stores for one traced message, traced_user ''.

    For a reply, method is the CSeq method and status the numeric code.
    """
    sip = wire.sip
    if sip.status is None:
        method, status = sip.method, ""
    else:
        method, status = sip.cseq_method, str(sip.status)
    return _new_row(TraceRow, (_from_seconds(wire.ts_ns // 1000 / 1e6), sip.call_id, "",
                               sip.raw, method, status, wire.source, wire.destination,
                               sip.from_tag, direction))


def trace_rows(wire, direction: str, traced_users=()) -> list[TraceRow]:
    """The rows the module stores for one traced message: ``trace_row`` and one
    more per traced_user AVP value."""
    row = trace_row(wire, direction)
    if not traced_users:
        return [row]
    return [row, *(row._replace(traced_user=user) for user in traced_users)]
