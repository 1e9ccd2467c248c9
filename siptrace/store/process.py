"""The store in a child process: replay's ProcessWriter and live capture's LiveWriter.

Both run the same child (siptrace/worker.py): a store (TraceStore, or ClickHouseStore
with its larger batches) under a BatchWriter,
fed rows through a pipe. They differ in how ``put`` hands rows over and in the
BatchWriter's settings:

- replay (``ProcessWriter``): ``put`` writes into the pipe and waits while the child
  is behind (nothing may be dropped); the child's BatchWriter has no spool, takes
  whatever is queued as one transaction (up to 10,000 rows: a backlog makes fewer
  commits), makes its put wait while full, and holds a failed batch until the
  database answers again (into SQLite it writes without a thread of its own: see
  StoreJob). A database that cannot be reached at the start, or rows still unstored
  at the end, raise StorageError.
- live (``LiveWriter``): ``put`` never waits. Up to ``max_queued_rows`` rows wait in
  this process, beyond that they are dropped and counted; the child's BatchWriter
  batches by count and time, spools while the database is down, reconnects. The
  child is supervised: one that dies is started again (worker.py), recovers the
  spool, and the rows it held are counted as ``lost``. At start, a spool still held
  by the store process of an earlier siptrace (draining after its parent died) is
  waited for; one in use by a running siptrace is an error.
- both: rows the database refuses for good are set aside (store/batch.py): into the
  spool directory's dead-letter file (live), or counted and reported at ``close``
  (replay) while the rest is stored.

Rows travel as plain tuples (a TraceRow pickles through a Python-level method).
This module imports no peewee: the replay process never needs it, only the child.
"""

import gc
import logging
import pickle
from pathlib import Path

from siptrace.errors import StorageError
from siptrace.worker import WorkerProcess, WorkerStopped

GC_YOUNG_OBJECTS = 200_000  # the child's cycle collector runs this seldom (StoreJob)
MAX_TRANSACTION_ROWS = 10_000  # replay: rows in one transaction at most
ROW_OVERHEAD = 300  # bytes of a row besides its message: the tuple and its strings
MAX_QUEUED_BYTES = 64 << 20  # live: bytes of messages waiting in this process, at most
MAX_QUEUED_ROWS = 200_000  # live: rows waiting in this process; beyond, put() drops
MAX_ROWS_PER_SEND = 5_000  # live: queued rows merged into one frame up to this
LIVE_CLOSE_TIMEOUT = 60.0  # live: seconds close() waits for the child
LIVE_DRAIN_TIMEOUT = 45.0  # live: seconds the child's writer drains the spool at close
SPOOL_WAIT = LIVE_CLOSE_TIMEOUT + 5  # live: seconds to wait for an earlier store process
# Counters summed over the children of a supervised writer (the rest are gauges).
COUNTERS = ("rows_written", "batches", "spooled", "dropped", "errors", "already_stored", "rejected",
            "set_aside", "index_errors", "calls_indexed")

log = logging.getLogger("siptrace.store")


def _row_bytes(row) -> int:
    """About the bytes a queued row holds: its message and the rest."""
    return len(row[3]) + ROW_OVERHEAD


def _rows_frame(rows: list) -> bytes:
    return pickle.dumps([tuple(r) for r in rows], protocol=5)


class ProcessWriter:
    """Replay's sink: ``put(rows)`` waits while the database is behind; ``close()``
    waits until every row is committed and raises StorageError if any is not."""

    live = False

    def __init__(self, db_url: str, table: str, call_index: bool = True, *,
                 spool_dir: str | None = None, spool_max_bytes: int | None = None,
                 max_queued_rows: int = MAX_QUEUED_ROWS):
        settings = {"db_url": db_url, "table": table, "call_index": call_index,
                    "live": self.live, "spool_dir": spool_dir,
                    "spool_max_bytes": spool_max_bytes}
        self._spool_depth = 0  # until the child reports: what the spool held at start
        if spool_dir:
            from siptrace.store.spool import inspect_spool, wait_for_spool

            wait_for_spool(spool_dir, SPOOL_WAIT, note=log.warning)
            if Path(spool_dir).is_dir():
                self._spool_depth = inspect_spool(spool_dir)["rows"]
        self._worker = WorkerProcess(
            StoreJob, (settings,), name="store process", encode=_rows_frame, logger=log,
            queue_limit=max_queued_rows if self.live else None,
            max_batch=MAX_ROWS_PER_SEND, supervise=self.live, size=_row_bytes,
            queue_bytes=MAX_QUEUED_BYTES if self.live else None)

    def put(self, rows) -> None:
        try:
            self._worker.put(rows)
        except WorkerStopped as exc:
            raise StorageError(str(exc)) from None

    def close(self, timeout: float | None = None) -> None:
        """Hand over the end of input; wait for the child (at most ``timeout`` s)."""
        self._worker.close(timeout)
        if self._worker.error:
            raise StorageError(self._worker.error)

    @property
    def stats(self) -> dict:
        """rows_written, batches, pending, spooled, spool_depth, dropped, lost, errors,
        last_error(_at), last_incident(_at), rejected, set_aside, last_rejected,
        store_restarts, store_last_exit, truncated_*, index_errors, calls_indexed,
        last_index_error."""
        worker = self._worker
        child, past = worker.child, worker.past
        reports = past + [child]
        in_pipe = worker.in_pipe
        lost = in_pipe if worker.ended else 0  # handed over, never stored
        stats = {k: sum(r.get(k, 0) for r in reports) for k in COUNTERS}
        for report in reversed(reports):  # the last known depth, until the child reports
            if "spool_depth" in report:
                self._spool_depth = report["spool_depth"]
                break
        latest = next((r for r in reversed(reports) if r), {})
        stats.update(
            pending=worker.queued + in_pipe - lost + child.get("pending", 0),
            spool_depth=self._spool_depth,
            dropped=(stats["dropped"] + worker.dropped + worker.unsent + worker.rejected
                     + lost),
            # supervised: what each child that died held (in its pipe, in its queue)
            lost=worker.lost + sum(r.get("pending", 0) for r in past),
            store_restarts=worker.restarts,
            store_last_exit=worker.last_exit,
            last_error=child.get("last_error") or worker.error,
            last_error_at=child.get("last_error_at", ""),
            last_incident=latest.get("last_incident", ""),
            last_incident_at=latest.get("last_incident_at", ""),
            last_rejected=next((r["last_rejected"] for r in reversed(reports)
                                if r.get("last_rejected")), ""),
        )
        for report in reports:
            for key, value in report.items():
                if key.startswith("truncated_"):
                    stats[key] = stats.get(key, 0) + value
        if child.get("last_index_error"):
            stats["last_index_error"] = child["last_index_error"]
        return stats


class LiveWriter(ProcessWriter):
    """Live capture's sink: ``put(rows)`` never blocks; ``close()`` stores (or spools)
    everything and never raises; ``stats`` merges both processes' counters."""

    live = True

    def __init__(self, db_url: str, table: str, *, spool_dir: str | None = None,
                 spool_max_bytes: int | None = None, max_queued_rows: int = MAX_QUEUED_ROWS,
                 call_index: bool = True):
        from siptrace.store.schema import check_table_name
        from siptrace.store.urls import parse_db_url

        parse_db_url(db_url)  # a bad URL or table name fails here, as one line
        check_table_name(table)
        super().__init__(db_url, table, call_index, spool_dir=spool_dir,
                         spool_max_bytes=spool_max_bytes, max_queued_rows=max_queued_rows)

    def close(self, timeout: float = LIVE_CLOSE_TIMEOUT) -> None:
        self._worker.close(timeout)  # what could not be stored is in stats, not raised


class StoreJob:
    """The child's side: the URL's store under a BatchWriter (built by worker.py)."""

    def __init__(self, settings: dict, *, log):
        from siptrace.store.batch import BatchWriter

        from siptrace.store.backends import open_store

        # Each batch is thousands of tuples made, stored and dropped again, and they
        # make no reference cycles: the cycle collector's default, a young pass every
        # 700 new objects, would walk them for nothing (-5 % of this process's CPU).
        gc.set_threshold(GC_YOUNG_OBJECTS, 100, 1000)
        self.live = settings["live"]
        store = open_store(settings["db_url"], settings["table"],
                           call_index=settings["call_index"])
        batch = getattr(store, "batch", {})  # a column store wants larger, fewer batches
        try:
            store.connect()  # the table exists from the start, as an operator expects
        except StorageError:
            if not self.live:
                raise  # replay: a database that does not answer is the user's error
            # live: the writer spools and retries
        if self.live:
            kwargs = {} if settings["spool_max_bytes"] is None else {
                "spool_max_bytes": settings["spool_max_bytes"]}
            spool_dir = settings["spool_dir"] or None
            then = "spooling rows and retrying" if spool_dir else "retrying"
            self.writer = BatchWriter(store, spool=spool_dir, **kwargs, **batch,
                                      on_error=lambda text: log(f"{text} ({then})"),
                                      on_refused=log)
        else:
            # SQLite works inside this process: a writer thread would only fight this
            # thread (unpickling) for the GIL, once per row (measured: -10 % rows/s).
            # A server works in its own: a thread lets unpickling overlap with it
            # (PostgreSQL +38 %). Inline, frames already waiting make one transaction.
            threaded = store.dialect != "sqlite"
            if not threaded:
                self.merge_items = MAX_TRANSACTION_ROWS
            # A replay takes what is queued at once, except into a column store, whose
            # batches wait (max_delay) to fill: one part per INSERT, few and large.
            sizes = {"max_rows": MAX_TRANSACTION_ROWS, "max_delay": 0.0, **batch}
            self.writer = BatchWriter(
                store, **sizes, queue_rows=sizes["max_rows"], block=True, thread=threaded,
                on_error=lambda text: log(f"{text} (replay waits and retries)"),
                on_refused=log)

    def handle(self, rows: list) -> None:
        self.writer.put(rows)

    def stats(self) -> dict:
        store = self.writer.store
        index = {k: v for k, v in dict(store.stats).items()
                 if k in ("index_errors", "calls_indexed")}
        if store.last_index_error:
            index["last_index_error"] = store.last_index_error
        return {**self.writer.stats, **index}

    def close(self) -> None:
        self.writer.close(timeout=LIVE_DRAIN_TIMEOUT if self.live else None)
        stats = self.writer.stats
        if not self.live and (stats["dropped"] or stats["pending"]):
            raise StorageError(f"{stats['dropped'] + stats['pending']} rows not stored: "
                               f"{stats['last_error']}")
        if not self.live and stats["rejected"]:
            raise StorageError(f"the database refused {stats['rejected']} rows (the others "
                               f"are stored), the last: {stats['last_rejected']}")
