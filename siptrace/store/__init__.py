"""Storage: db_url parsing, the sip_trace model, fast batched writes, the durable spool.

Public API::

    TraceStore(db_url, table, call_index=True)     .insert(rows) .count() .close()
    BatchWriter(store, max_rows, max_delay, queue_rows, spool)  .put() .flush() .close() .stats
    Spool(spool_dir, max_bytes)                    inspect_spool(spool_dir)
    purge(store, older_than), purge_url(db_url, table, "7d"), parse_duration("12h")
    parse_db_url(url), redact_url(url), msg_to_text(bytes), text_to_msg(str)
"""

from importlib import import_module

# Imported on first use: the replay process needs none of peewee and its drivers,
# only its store process does (siptrace/store/process.py).
_HOMES = {
    "BatchWriter": "batch", "PurgeResult": "retention", "parse_duration": "retention",
    "purge": "retention", "purge_url": "retention", "trace_model": "schema",
    "Spool": "spool", "inspect_spool": "spool", "msg_to_text": "text", "text_to_msg": "text",
    "Marker": "marker", "TraceStore": "tracestore", "DbUrl": "urls",
    "parse_db_url": "urls", "redact_url": "urls",
}


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'siptrace.store' has no attribute {name!r}")
    return getattr(import_module(f"siptrace.store.{home}"), name)


__all__ = [
    "BatchWriter", "DbUrl", "Marker", "PurgeResult", "Spool", "TraceStore", "inspect_spool",
    "msg_to_text", "parse_db_url", "parse_duration", "purge", "purge_url", "redact_url",
    "text_to_msg", "trace_model",
]
