"""The store and the reader for a db_url: peewee's backends or ClickHouse.

Each is imported on first use, so a process pulls in only its backend's driver.
"""

from siptrace.store.urls import parse_db_url


def open_store(db_url: str, table: str = "sip_trace", *, call_index: bool = True):
    """The writer's store for the URL: TraceStore, or ClickHouseStore (which needs no
    call index: its searches read the table itself)."""
    if parse_db_url(db_url).dialect == "clickhouse":
        from siptrace.store.clickhouse.writer import ClickHouseStore

        return ClickHouseStore(db_url, table)
    from siptrace.store.tracestore import TraceStore

    return TraceStore(db_url, table, call_index=call_index)


def open_reader(db_url: str, table: str = "sip_trace"):
    """The views' reader for the URL: TraceReader, or ClickHouseReader."""
    if parse_db_url(db_url).dialect == "clickhouse":
        from siptrace.store.clickhouse.reader import ClickHouseReader

        return ClickHouseReader(db_url, table)
    from siptrace.store.reader import TraceReader

    return TraceReader(db_url, table)
