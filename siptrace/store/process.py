"""A store writer in its own process, for replay: the database's work off the GIL.

A writer thread beside the decoding thread fights it for the GIL (sqlite3 releases and
re-takes it once per row; docs/storage.md); a child process does not. Batches travel
as pickled plain tuples through a pipe whose kernel buffer is the only queue, so a slow
database makes ``put`` wait: right for replay, where nothing must be lost, wrong for
live capture, which uses BatchWriter.
"""

import fcntl
import multiprocessing
import pickle
import signal

from siptrace.errors import SiptraceError, StorageError

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux fcntl(2)
PIPE_BYTES = 8 << 20
MAX_TRANSACTION_ROWS = 10_000


class ProcessWriter:
    """``put(rows)`` sends a batch to the writer process; ``close()`` waits for it."""

    def __init__(self, db_url: str, table: str, call_index: bool = True):
        self._process, self._batches_out, self._results = spawn_store_process(
            _serve, db_url, table, call_index)
        self.stats = {"rows_written": 0, "batches": 0, "pending": 0, "dropped": 0,
                      "spool_depth": 0, "last_error": ""}
        self._closed = False
        self._ready = False  # the table exists: confirmed by the process's first answer

    def put(self, rows) -> None:
        if not rows:
            return
        if not self._ready and self._results.poll():
            self._answer()  # "ready", or the error that stopped the process
        try:
            self._batches_out.send_bytes(pickle.dumps([tuple(r) for r in rows], 5))
        except (BrokenPipeError, OSError):
            self._answer()
            raise StorageError("the store process stopped") from None

    def close(self, timeout: float | None = None) -> None:
        """Send what is left, wait until it is committed; raises StorageError."""
        if self._closed:
            return
        self._closed = True
        try:
            self._batches_out.send_bytes(b"")
        except (BrokenPipeError, OSError):
            pass
        self._batches_out.close()
        try:
            if not self._ready:
                self._answer()
            self._answer()
        finally:
            self._process.join(timeout)

    def _answer(self) -> None:
        try:
            kind, payload = self._results.recv()
        except EOFError:
            raise StorageError("the store process ended without a word") from None
        if kind == "error":
            self.stats["last_error"] = payload
            raise StorageError(payload)
        self._ready = True
        self.stats.update(payload)


def spawn_store_process(target, *args):
    """Starts ``target(*args, batches, results)`` in a spawned child process.

    Returns (process, batches: the parent's sending end, results: the parent's
    receiving end). The batch pipe is widened so that parent and child overlap.
    """
    ctx = multiprocessing.get_context("spawn")
    batches_in, batches_out = ctx.Pipe(duplex=False)
    results_in, results_out = ctx.Pipe(duplex=False)
    process = ctx.Process(target=target, name="siptrace-store", daemon=True,
                          args=(*args, batches_in, results_out))
    process.start()
    batches_in.close()
    results_out.close()
    _widen_pipe(batches_out.fileno())
    return process, batches_out, results_in


def _widen_pipe(fd: int) -> None:
    """Room for several batches in the pipe, so the two processes overlap instead of
    taking turns (a batch of 1,000 rows is ~700 KB, ten times a default pipe)."""
    for size in (PIPE_BYTES, 1 << 20):
        try:
            fcntl.fcntl(fd, F_SETPIPE_SZ, size)
            return
        except OSError:  # above /proc/sys/fs/pipe-max-size without CAP_SYS_RESOURCE
            continue


def _serve(db_url, table, call_index, batches, results) -> None:
    """The writer process: one transaction per batch received, until the empty one."""
    from siptrace.store.tracestore import TraceStore

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    store = None
    written = batches_done = 0
    try:
        store = TraceStore(db_url, table, call_index=call_index)
        store.connect()
        results.send(("ready", {}))
        done = False
        while not done:
            data = batches.recv_bytes()
            if not data:
                break
            rows = pickle.loads(data)
            # Batches already waiting join this transaction: fewer commits (each one
            # a log flush on the server) when the database is the slower side.
            while len(rows) < MAX_TRANSACTION_ROWS and batches.poll():
                data = batches.recv_bytes()
                if not data:
                    done = True
                    break
                rows += pickle.loads(data)
            store.insert(rows)
            written += len(rows)
            batches_done += 1
        stats = {k: v for k, v in store.stats.items()
                 if k.startswith("truncated_") or k in ("index_errors", "calls_indexed")}
        if store.last_index_error:
            stats["last_index_error"] = store.last_index_error
        results.send(("done", {"rows_written": written, "batches": batches_done, **stats}))
    except SiptraceError as exc:  # a dead database, or a bad db_url or table name
        results.send(("error", str(exc)))
    finally:
        if store is not None:
            store.close()
