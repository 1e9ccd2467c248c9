"""Storage: db_url parsing, the sip_trace model, fast batched writes, the durable spool.

Public API::

    TraceStore(db_url, table, partitioned=False)   .insert(rows) .count() .close()
    BatchWriter(store, max_rows, max_delay, queue_rows, spool)  .put() .flush() .close() .stats
    Spool(spool_dir, max_bytes)                    inspect_spool(spool_dir)
    purge(store, older_than), purge_url(db_url, table, "7d"), parse_duration("12h")
    parse_db_url(url), redact_url(url), msg_to_text(bytes), text_to_msg(str)
"""

from siptrace.store.batch import BatchWriter
from siptrace.store.retention import PurgeResult, parse_duration, purge, purge_url
from siptrace.store.schema import trace_model
from siptrace.store.spool import Spool, inspect_spool
from siptrace.store.text import msg_to_text, text_to_msg
from siptrace.store.tracestore import Marker, TraceStore
from siptrace.store.urls import DbUrl, parse_db_url, redact_url

__all__ = [
    "BatchWriter", "DbUrl", "Marker", "PurgeResult", "Spool", "TraceStore", "inspect_spool",
    "msg_to_text", "parse_db_url", "parse_duration", "purge", "purge_url", "redact_url",
    "text_to_msg", "trace_model",
]
