"""The batch marker: identity of a batch's first stored row (docs/storage.md, "Writes").

A leaf module: TraceStore returns markers and the spool's file format holds them, and
the spool must not pull in peewee or a database driver to read or write its records.
"""

from typing import NamedTuple

from siptrace.rows import COLUMNS

_FIELDS = tuple(COLUMNS.index(name) for name in ("date", "callid", "fromip", "toip"))


class Marker(NamedTuple):
    """Identity of a batch's first stored row: its id plus columns to confirm it is ours."""

    id: int
    date: str
    callid: str
    fromip: str
    toip: str

    @classmethod
    def of(cls, row_id: int, row) -> "Marker":
        """The marker of a batch whose first row, in the table's column order, is ``row``."""
        return cls(row_id, *(row[i] for i in _FIELDS))
