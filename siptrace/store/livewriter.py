"""The live sidecar's store: a BatchWriter (spool, reconnects) in a child process.

Replay's counterpart, which waits instead of dropping, is process.py.

A BatchWriter thread next to the busy capture loop convoys on the GIL (sqlite3
gives it up and takes it back once per row; docs/storage.md): measured at 20,000
messages/s on loopback, the thread fell to ~8,000 rows/s, rows piled up and the
kernel started dropping packets. Here the writer runs in its own interpreter;
``put`` appends to a bounded queue and returns, a feeder thread pickles batches
into a pipe (plain tuples, ~1.5 us/row), and the child's BatchWriter does the rest:
batching, one transaction per batch, the spool while the database is down.
"""

import pickle
import signal
import threading
from collections import Counter, deque

from siptrace.errors import SiptraceError, StorageError
from siptrace.store.process import spawn_store_process
from siptrace.store.schema import check_table_name
from siptrace.store.urls import parse_db_url

MAX_QUEUED_ROWS = 200_000  # rows waiting in this process; beyond, put() drops (counted)
MAX_ROWS_PER_SEND = 5_000  # queued batches are merged into one pipe message up to this
STATS_EVERY_S = 0.25  # the child reports its counters this often
CLOSE_TIMEOUT_S = 60.0


class LiveWriter:
    """``put(rows)`` never blocks; ``stats`` merges both sides; ``close()`` stores all."""

    def __init__(self, db_url: str, table: str, *, spool_dir: str | None = None,
                 spool_max_bytes: int | None = None, max_queued_rows: int = MAX_QUEUED_ROWS,
                 call_index: bool = True):
        parse_db_url(db_url)  # a bad URL or table name fails here, as one line
        check_table_name(table)
        self._process, self._batches, self._results = spawn_store_process(
            _serve, db_url, table, spool_dir, spool_max_bytes, call_index)
        self.max_queued_rows = max_queued_rows
        self.counts = Counter()  # dropped (queue full), sent (rows into the pipe)
        self._child: dict = {}
        self._queue: deque = deque()
        self._queued = 0
        self._closing = False
        self._cond = threading.Condition()
        self._feeder = threading.Thread(target=self._feed, name="siptrace-store-feed",
                                        daemon=True)
        self._listener = threading.Thread(target=self._listen, name="siptrace-store-stats",
                                          daemon=True)
        self._feeder.start()
        self._listener.start()

    def put(self, rows) -> None:
        n = len(rows)
        if not n:
            return
        with self._cond:
            if self._closing or self._queued + n > self.max_queued_rows:
                self.counts["dropped"] += n
                return
            self._queue.append(rows)
            self._queued += n
            self._cond.notify()

    @property
    def stats(self) -> dict:
        child = self._child
        in_pipe = self.counts["sent"] - child.get("received", 0)
        return {
            "rows_written": child.get("rows_written", 0),
            "pending": self._queued + max(0, in_pipe) + child.get("pending", 0),
            "spooled": child.get("spooled", 0),
            "spool_depth": child.get("spool_depth", 0),
            "dropped": child.get("dropped", 0) + self.counts["dropped"],
            "errors": child.get("errors", 0),
            "last_error": child.get("last_error", ""),
        }

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Send what is queued, let the child store (or spool) it, wait for it to exit."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify()
        self._feeder.join(timeout)
        self._listener.join(timeout)
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    # -- threads ------------------------------------------------------------------
    def _feed(self) -> None:
        send = self._batches.send_bytes
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait()
                    if not self._queue:
                        break
                    batch = []
                    while self._queue and len(batch) < MAX_ROWS_PER_SEND:
                        rows = self._queue.popleft()
                        self._queued -= len(rows)
                        batch += rows
                send(pickle.dumps([tuple(r) for r in batch], 5))
                self.counts["sent"] += len(batch)
            send(b"")  # end of input
        except OSError:  # the child is gone: what was queued is lost, counted
            with self._cond:
                self.counts["dropped"] += self._queued
                self._queue.clear()
                self._queued = 0
                self._closing = True
        finally:
            self._batches.close()

    def _listen(self) -> None:
        try:
            while True:
                kind, payload = self._results.recv()
                self._child = payload
                if kind == "done":
                    return
        except (EOFError, OSError):
            if not self._child.get("last_error"):
                self._child = dict(self._child, last_error="the store process stopped")


def _serve(db_url, table, spool_dir, spool_max_bytes, call_index, batches, results) -> None:
    """The child: a BatchWriter fed from the pipe until the empty message (or EOF)."""
    from siptrace.store.batch import BatchWriter
    from siptrace.store.tracestore import TraceStore

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the sidecar decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    received = 0
    try:
        kwargs = {} if spool_max_bytes is None else {"spool_max_bytes": spool_max_bytes}
        store = TraceStore(db_url, table, call_index=call_index)
        try:
            store.connect()  # the table exists from the start, as an operator expects
        except StorageError:
            pass  # the database is down: the writer spools and retries
        writer = BatchWriter(store, spool=spool_dir or None, **kwargs)
    except SiptraceError as exc:
        results.send(("done", {"last_error": str(exc)}))
        return
    lock = threading.Lock()
    stop = threading.Event()

    def report():
        while not stop.wait(STATS_EVERY_S):
            with lock:
                results.send(("stats", dict(writer.stats, received=received)))

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    try:
        while True:
            try:
                data = batches.recv_bytes()
            except (EOFError, OSError):
                break
            if not data:
                break
            rows = pickle.loads(data)
            writer.put(rows)
            received += len(rows)
    finally:
        writer.close()
        stop.set()
        reporter.join()
        with lock:
            results.send(("done", dict(writer.stats, received=received)))
