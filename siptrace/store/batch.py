"""BatchWriter: a writer thread fed through a bounded queue; put() never blocks.

Rows are batched by count (max_rows) and time (max_delay) and written in one
transaction per batch. When the database fails, batches go to the durable Spool and
the writer reconnects with exponential backoff; while the spool holds anything, new
batches queue up behind it, so rows reach the table in the order they were spooled.
A full queue overflows into the spool; a full spool drops rows, counted.

With ``block=True`` (replay) put() waits for room instead, and with ``max_delay=0``
the writer takes whatever is queued at once (up to max_rows) rather than waiting for
a batch to fill: a backlog makes bigger transactions, an idle database no waiting.
Without a spool a failed batch is held in memory and retried until the database
answers (with ``block``, also at close: nothing is given up). ``on_error(text)`` hears
of the first failure after a success. While the server refuses connections the
writer probes it with a connect every PROBE_EVERY s, and drains as soon as one is
taken; other failures (the connection works, the write does not) back off.

Rows the database refuses (store/tracestore.py: a CHECK, a trigger) are set aside in
the spool directory's dead-letter file (store/deadletter.py), or counted when there
is none, and the rest of their batch is stored; ``on_refused(text)`` hears of it, one
line at most every REFUSED_LOG_EVERY s. With ``thread=False`` there is no writer thread:
put() itself writes the rows as one transaction. Both siptrace writers run this class
in their child process (store/process.py).
"""

import random
import threading
import time
from collections import Counter, deque
from datetime import datetime, timezone
from operator import itemgetter
from typing import Callable

from siptrace.errors import StorageError
from siptrace.store.deadletter import DeadLetter
from siptrace.store.spool import Spool
from siptrace.store.tracestore import TraceStore
from siptrace.redact import scrub

RETRY_INITIAL = 0.25  # seconds before the first retry after a failed write
RETRY_MAX = 10.0
PROBE_EVERY = 0.2  # seconds between connection attempts while the server refuses them
REFUSED_LOG_EVERY = 10.0  # seconds: at most one line about refused rows this often
SYNC_INTERVAL = 0.05  # seconds between fsyncs of records put() spooled
IDLE_WAIT = 0.2  # seconds the writer thread sleeps at most while nothing is queued
MAX_BATCH_BYTES = 8 << 20  # a transaction ends after the rows that reach this many bytes
QUEUE_BYTES = 32 << 20  # messages waiting for the writer, at most (besides max rows)


class BatchWriter:
    """Sink for TraceRow lists; ``stats`` says what happened to every row."""

    def __init__(self, store: TraceStore, max_rows: int = 1000, max_delay: float = 0.2,
                 queue_rows: int = 100_000, spool: Spool | str | None = None,
                 spool_max_bytes: int | None = None, retry_max: float = RETRY_MAX,
                 block: bool = False, on_error: Callable[[str], None] | None = None,
                 on_refused: Callable[[str], None] | None = None, thread: bool = True,
                 max_bytes: int = MAX_BATCH_BYTES, queue_bytes: int = QUEUE_BYTES):
        self.store = store
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.queue_bytes = queue_bytes
        self.max_delay = max_delay
        self.queue_rows = queue_rows
        self.block = block
        self.on_error = on_error
        if isinstance(spool, Spool) or spool is None:
            self.spool = spool
        else:
            kwargs = {} if spool_max_bytes is None else {"max_bytes": spool_max_bytes}
            self.spool = Spool(spool, **kwargs)
        self.deadletter = (DeadLetter(self.spool.dir, self.spool.max_bytes)
                           if self.spool is not None else None)
        self.on_refused = on_refused
        self.retry_max = retry_max
        self.counts = Counter()
        self.last_error = self.last_error_at = ""  # cleared by the next success
        self.last_incident = self.last_incident_at = ""  # the last error, kept
        self.last_rejected = ""
        self._refused_logged = 0.0  # when the last line about refused rows was given
        self._refused_unlogged = 0
        self._refused_now = 0  # rows of the transaction being written that were refused
        self._queue: deque = deque()
        self._queued = 0
        self._queued_bytes = 0  # of the messages queued (rows' msg column)
        self._held: list | None = None  # a failed batch kept in memory when there is no spool
        self._held_marker = None  # its marker when its COMMIT outcome is unknown
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        self._abandon = False  # close() timed out: leave the rest in the spool
        self._down_until = 0.0
        self._unreachable = False  # the last failure was a refused connection: probe
        self._next_probe = 0.0
        self._failures = 0
        self._thread = None
        if thread:
            self._thread = threading.Thread(target=self._run, name="siptrace-writer",
                                            daemon=True)
            self._thread.start()

    # -- producer side --------------------------------------------------------------
    def put(self, rows) -> None:
        """Hand rows over; never blocks on the database, unless ``block`` (then it
        waits while the queue is full)."""
        n = len(rows)
        if not n:
            return
        if self._thread is None:
            self._write_now(rows)
            return
        nbytes = _msg_bytes(rows)
        with self._cond:
            if self.block:
                while self._queued and not self._stopping and (
                        self._queued + n > self.queue_rows
                        or self._queued_bytes + nbytes > self.queue_bytes):
                    self._cond.wait()
            if (self._queued + n <= self.queue_rows
                    and self._queued_bytes + nbytes <= self.queue_bytes) \
                    or (self.block and not self._queued):
                if not self._stopping:
                    self._queue.append(rows)
                    self._queued += n
                    self._queued_bytes += nbytes
                    if (self._queued >= self.max_rows or not self.max_delay
                            or self._queued_bytes >= self.max_bytes):
                        self._cond.notify_all()
                    return
        self.counts["overflow"] += n
        self._spool_or_drop(rows)

    def _spool_or_drop(self, rows, marker=None) -> None:
        if self.spool is not None and self.spool.append(rows, marker):
            self.counts["spooled"] += len(rows)
        else:
            self.counts["dropped"] += len(rows)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every row put so far is written or spooled; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._cond.notify()
            while self._queue or self._busy or self._held:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.05 if left is None else min(left, 0.05))
                self._cond.notify()
        return True

    def close(self, timeout: float | None = 30.0) -> None:
        """Write or spool everything, drain the spool while the database answers, stop.

        After ``timeout`` s the writer stops draining: what is left stays spooled."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is None:
            self._final_drain()
        else:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._abandon = True
                with self._cond:
                    self._cond.notify_all()
                self._thread.join()
        if self.spool is not None:
            self.spool.close()
        self.store.close()

    @property
    def stats(self) -> dict:
        spool = self.spool
        store_stats = dict(self.store.stats)  # one C-level copy: the writer thread adds keys
        return {
            "rows_written": self.counts["written"],
            "batches": self.counts["batches"],
            "pending": self._queued + (len(self._held) if self._held else 0),
            "spooled": self.counts["spooled"],
            "spool_depth": spool.rows if spool else 0,
            "spool_bytes": spool.bytes if spool else 0,
            "dropped": self.counts["dropped"],
            "overflow": self.counts["overflow"],
            "errors": self.counts["errors"],
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_incident": self.last_incident,
            "last_incident_at": self.last_incident_at,
            "already_stored": self.counts["already_stored"],
            "rejected": self.counts["rejected"],
            "set_aside": self.counts["set_aside"],
            "last_rejected": self.last_rejected,
            **{k: v for k, v in store_stats.items() if k.startswith("truncated_")},
        }

    def _write_now(self, rows) -> None:
        """Without a thread: the rows are one transaction, stored (or spooled) before
        put() returns; a failed one is retried until the database takes it."""
        self._handle(rows if isinstance(rows, list) else list(rows))
        while self._held is not None and not self._retry_held() and not self._giving_up():
            pass
        self._drain()

    # -- writer thread --------------------------------------------------------------
    def _take(self) -> list:
        """Up to max_rows rows, waiting at most max_delay for a batch to fill, and at
        most IDLE_WAIT (or max_delay, if longer) while nothing is queued."""
        with self._cond:
            started = time.monotonic()
            idle = max(self.max_delay, IDLE_WAIT)
            while (self._queued < self.max_rows and self._queued_bytes < self.max_bytes
                   and not self._stopping):
                if self.spool is not None and self.spool.records and self._is_up():
                    break  # spool to drain: do not sit waiting for rows
                left = (self.max_delay if self._queued else idle) - (time.monotonic() - started)
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = []
            taken = 0  # bytes: a batch ends after the put that reaches max_bytes
            while self._queue and len(batch) < self.max_rows and taken < self.max_bytes:
                rows = self._queue.popleft()
                room = self.max_rows - len(batch)
                if len(rows) > room:
                    self._queue.appendleft(rows[room:])
                    rows = rows[:room]
                batch.extend(rows)
                nbytes = _msg_bytes(rows)
                taken += nbytes
                self._queued -= len(rows)
                self._queued_bytes -= nbytes
            self._busy = bool(batch)
            if batch and self.block:
                self._cond.notify_all()  # room for a waiting put()
            return batch

    def _run(self) -> None:
        last_sync = time.monotonic()
        while True:
            self._probe()
            if self._held is not None and not self._retry_held():
                if self._giving_up():
                    break  # the database is still down: _final_drain counts the rest
                continue  # nothing new is taken while a batch waits for the database
            batch = self._take()
            try:
                if batch:
                    self._handle(batch)
                self._drain()
            except Exception as exc:  # a bug must not kill capture: count, keep going
                self._failed(exc)
                if batch:
                    self._spool_or_drop(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
            if self.spool is not None and time.monotonic() - last_sync >= SYNC_INTERVAL:
                self.spool.sync()
                last_sync = time.monotonic()
            with self._cond:
                if self._stopping and not self._queue and self._held is None:
                    break
        self._final_drain()

    def _final_drain(self) -> None:
        if self.spool is not None:
            self._down_until = 0.0  # one honest try at close
            self._drain()
            self.spool.sync()
        if self._held is not None:  # no spool and the database is still down: lost
            with self._cond:
                lost = len(self._held) + self._queued
                self._held = None
                self._queue.clear()
                self._queued = self._queued_bytes = 0
            self.counts["dropped"] += lost

    def _is_up(self) -> bool:
        return not self._abandon and time.monotonic() >= self._down_until

    def _probe(self) -> None:
        """While the server refuses connections: try one, at most every PROBE_EVERY s;
        once it is taken, write at once instead of sitting out the backoff."""
        now = time.monotonic()
        if not self._unreachable or now >= self._down_until or now < self._next_probe:
            return
        self._next_probe = now + PROBE_EVERY
        try:
            self.store.connect()
        except StorageError:
            return
        self._unreachable = False
        self._down_until = 0.0

    def _handle(self, batch: list) -> None:
        if self.spool is not None and (self.spool.records or not self._is_up()):
            self._spool_or_drop(batch)
            return
        if self.spool is None and not self._is_up():
            self._held, self._held_marker = batch, None
            return
        try:
            self.store.insert(batch, set_aside=self._set_aside)
        except StorageError as exc:
            self._failed(exc)
            marker = exc.marker if getattr(exc, "in_doubt", False) else None
            if self.spool is not None:
                self._spool_or_drop(batch, marker)
            else:
                self._held, self._held_marker = batch, marker
            return
        self._succeeded(len(batch))

    def _retry_held(self) -> bool:
        """Without a spool: the failed batch again, once the backoff has passed (at
        once when giving up); True when it is stored. A batch whose COMMIT outcome
        was unknown is first looked up by its marker, as a spooled one is."""
        self._wait_until_up()
        batch, marker = self._held, self._held_marker
        try:
            batch = self._unstored(batch, [marker] if marker is not None else [])
            if batch:
                self.store.insert(batch, set_aside=self._set_aside)
                self._succeeded(len(batch))
        except Exception as exc:  # StorageError; anything else is a bug, counted the same
            self._failed(exc)
            return False
        with self._cond:
            self._held = self._held_marker = None
            self._cond.notify_all()
        return True

    def _wait_until_up(self) -> None:
        while True:
            self._probe()
            with self._cond:
                if self._is_up() or self._giving_up():
                    return
                wait = self._down_until - time.monotonic()
                if self._unreachable:
                    wait = min(wait, self._next_probe - time.monotonic())
                self._cond.wait(max(0.01, wait))

    def _giving_up(self) -> bool:
        """Stop waiting for the database: at close, unless ``block`` (which never
        drops), and whatever ``block`` says once close() has timed out."""
        return self._abandon or (self._stopping and not self.block)

    def _drain(self) -> None:
        """Send spooled batches, oldest first, while the database takes them."""
        spool = self.spool
        if spool is None:
            return
        while spool.records and self._is_up():
            record = spool.peek()
            if record is None:
                return
            try:
                rows = self._unstored(record.rows, record.markers)
                if not rows:
                    spool.ack()
                    continue
                self.store.insert(rows, before_commit=spool.set_inflight,
                                  set_aside=self._set_aside)
            except StorageError as exc:
                self._failed(exc)
                return
            spool.ack()
            self._succeeded(len(rows))
            with self._cond:
                if self._queued >= self.max_rows or (self._stopping and self._queue):
                    return  # move queued rows behind the spool before they pile up

    def _unstored(self, rows: list, markers) -> list:
        """The rows of a batch still to store: those of a batch whose outcome was in
        doubt (``markers``) that the table does not hold (the store says which)."""
        left = self.store.unstored(rows, markers)
        self.counts["already_stored"] += len(rows) - len(left)
        return left

    def _succeeded(self, n: int) -> None:
        """``n`` rows handled (stored, or refused and set aside)."""
        self.counts["written"] += n - self._refused_now
        self.counts["batches"] += 1
        self._refused_now = 0
        self._failures = 0
        self._unreachable = False
        self.last_error = self.last_error_at = ""

    def _failed(self, exc: BaseException) -> None:
        self._refused_now = 0  # the transaction is gone: its rows come again
        self.counts["errors"] += 1
        self.last_error = self.last_incident = scrub(str(exc), self.store.url.password)
        self.last_error_at = self.last_incident_at = _now()
        if not self._failures and self.on_error is not None:
            self.on_error(self.last_error)  # the first failure after a success
        delay = min(self.retry_max, RETRY_INITIAL * (2 ** self._failures))
        self._failures = min(self._failures + 1, 16)
        self._down_until = time.monotonic() + delay * random.uniform(0.8, 1.2)
        self._unreachable = getattr(exc, "unreachable", False)
        self._next_probe = time.monotonic() + PROBE_EVERY

    def _set_aside(self, refused: list) -> None:
        """Rows the database refuses for good (store.insert's ``set_aside``, called
        before the rest of their batch is committed): into the dead-letter file,
        counted, told in one line at most every REFUSED_LOG_EVERY s."""
        if not refused:
            return
        kept = self.deadletter.append(refused) if self.deadletter is not None else 0
        self._refused_now += len(refused)
        self.counts["rejected"] += len(refused)
        self.counts["set_aside"] += kept
        row, reason = refused[0]
        self.last_rejected = (f"{_now()} Call-ID {row[1]!r} ({row[0]}): {reason}")
        self._refused_unlogged += len(refused)
        now = time.monotonic()
        recently = self._refused_logged and now - self._refused_logged < REFUSED_LOG_EVERY
        if self.on_refused is None or recently:
            return
        if kept == len(refused):
            where = f"set aside in {self.deadletter.path} (siptrace deadletter list)"
        elif self.deadletter is not None:
            where = f"{len(refused) - kept} lost: the dead-letter file is full"
        else:
            where = "not kept: no spool_dir"
        self.on_refused(f"the database refused {self._refused_unlogged} rows, e.g. Call-ID "
                        f"{row[1]!r} ({row[0]}): {reason}; {where}")
        self._refused_logged = now
        self._refused_unlogged = 0


def _now() -> str:
    """The time of an error as status shows it: UTC, ISO 8601, seconds."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _msg_bytes(rows) -> int:
    """Bytes of the rows' messages (the msg column: what makes a row large)."""
    return sum(map(len, map(itemgetter(3), rows)))
