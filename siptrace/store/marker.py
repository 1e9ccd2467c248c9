"""The batch marker: identity of a batch's first stored row (docs/storage.md, "Writes").

A leaf module: TraceStore returns markers and the spool's file format holds them, and
the spool must not pull in peewee or a database driver to read or write its records.
"""

from typing import NamedTuple


class Marker(NamedTuple):
    """Identity of a batch's first stored row: its id plus columns to confirm it is ours."""

    id: int
    date: str
    callid: str
    fromip: str
    toip: str
