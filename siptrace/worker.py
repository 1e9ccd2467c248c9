"""Work in a child process, fed in batches: the store's writer and the mirror's sender.

Why a process: a thread doing the database's or the sockets' work beside the busy
decoding loop convoys with it on the GIL (sqlite3 gives the GIL up and takes it back
once per row; a UDP send once per copy), and falls far behind: measured, a writer
thread managed ~8,000 rows/s of 20,000 and a sending thread ~200 copies/s
(docs/storage.md, docs/mirroring.md). A child process has its own interpreter.

Parent (``WorkerProcess``)                 Child (a spawned interpreter)
  put(items), put_one(item)                  job = factory(*args, log=...)
    blocking: pickle and write in the          reads frames, job.handle(items);
      caller; a full pipe makes it wait        reports job.stats() at most every
    bounded: a deque of at most                REPORT_EVERY s (and at the end)
      ``queue_limit`` items, a feeder          end of input (b"" or EOF):
      thread pickles frames and writes;          job.close(), then "done"
      beyond the limit: dropped, counted       SIGINT and SIGTERM are ignored:
  a listener thread keeps the child's          the parent decides when to stop
    last stats, relays its log lines

The child starts with multiprocessing's "spawn" method: a fresh interpreter that
holds only the two pipes and gets its arguments pickled over multiprocessing's own
pipe, never on a command line (the mirror's HEP auth key travels that way). The batch
pipe is widened (8 MB; 1 MB, /proc/sys/fs/pipe-max-size, without CAP_SYS_RESOURCE) so
that parent and child overlap instead of taking turns.

Items are plain picklable values (tuples); counts are in items. The job, built in
the child by ``factory(*args, log=callable)``, has ``handle(items)``, ``stats() ->
dict`` and ``close()``, and may set ``merge_items``: frames already waiting in the pipe
are then joined into one ``handle`` call of up to that many items. A SiptraceError it
raises (building, handling or closing) becomes the worker's ``error``, one line,
never a traceback; so does any exception that ends one of the job's threads, and the
child exits (a job whose writer thread is gone would take items and do nothing).

Supervised (``supervise=True``, bounded mode): a child that dies (kill -9, SIGBUS,
an error) is started again by the feeder, after RESTART_FIRST s doubling to
RESTART_MAX s while it keeps dying young. Its last report is kept in ``past``; the
items it was handed and had not taken from the pipe are counted in ``lost``.

The parent's main module must be importable (a script file, ``python -m``, ``-c``):
"spawn" imports it in the child, as multiprocessing documents.
"""

import fcntl
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections import deque
from typing import Callable

from siptrace.errors import SiptraceError

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux fcntl(2)
PIPE_BYTES = 8 << 20
MERGE_BYTES = 32 << 20  # the child merges waiting frames up to this many bytes
FRAME_BYTES = 8 << 20  # bounded mode: a frame holds items up to about this many bytes
REPORT_EVERY = 0.25  # seconds between the child's reports while its stats change
FLUSH_DELAY = 0.005  # seconds the feeder lets a small frame grow before writing it
FLUSH_AT = 512  # items that make the feeder write at once
IDLE_CHECK = 1.0  # seconds between the idle feeder's looks at the queue
RESTART_FIRST = 0.5  # seconds before a supervised child that died is started again
RESTART_MAX = 30.0
LIVED_LONG = 60.0  # seconds: a child that lived this long starts the backoff afresh

log = logging.getLogger("siptrace.worker")


def pickle_frame(items: list) -> bytes:
    return pickle.dumps(items, protocol=5)


class WorkerProcess:
    """A child process running ``factory(*args, log=...)``'s job on the items put here.

    ``queue_limit=None``: blocking mode, ``put`` waits while the child is behind
    (replay: nothing may be dropped). A number: bounded mode, ``put``/``put_one``
    never wait; items beyond the limit are dropped and counted (live capture,
    mirroring). ``encode(items) -> bytes`` makes a frame (default: pickle). With
    ``size(item) -> bytes`` and ``queue_bytes``, the queue is bounded in bytes too, and
    a frame holds about FRAME_BYTES at most.

    Counters, each written by one thread: ``sent`` (items written to the pipe),
    ``dropped`` (refused by ``put``: queue full, or closing), ``unsent`` (never
    written: the child was gone, or ``close`` gave up), ``rejected`` (items that
    cannot be pickled). ``child`` is the child's last report: ``received`` (items it
    has handled) and its job's stats. ``error`` is the child's one-line error, or
    says that it stopped without finishing.
    """

    def __init__(self, factory: Callable, args: tuple = (), *, name: str,
                 queue_limit: int | None = None, max_batch: int = 2048,
                 encode: Callable[[list], bytes] = pickle_frame,
                 logger: logging.Logger = log, supervise: bool = False,
                 size: Callable | None = None, queue_bytes: int | None = None):
        self.name = name
        self.queue_limit = queue_limit
        self.queue_bytes = queue_bytes
        self._size = size if queue_bytes is not None else None
        self._queued_bytes = 0
        self._bytes_lock = threading.Lock()
        self.max_batch = max_batch
        self.sent = self.dropped = self.unsent = self.rejected = 0
        self.child: dict = {}
        self.error = ""
        self.finished = False  # the child said "done"
        self.killed = False  # close() gave up waiting (or was interrupted) and killed it
        self.supervise = supervise and queue_limit is not None
        self.past: list[dict] = []  # supervised: the last report of each child that died
        self.lost = 0  # supervised: items in the pipe of a child that died
        self.restarts = 0
        self.last_exit = ""  # supervised: how and when the last child died
        self._factory, self._args = factory, args
        self._encode = encode
        self._log = logger
        self._closing = False
        self._closed = False
        self._noted = threading.Lock()  # "stopped" is logged once
        self._stopped_noted = False
        self._closing_now = threading.Event()
        self._spawn()
        self._feeder = None
        if queue_limit is not None:
            self._queue: deque = deque()
            self._wake = threading.Event()
            self._feeder = threading.Thread(target=self._feed, daemon=True,
                                            name=f"siptrace-{name}-feed".replace(" ", "-"))
            self._feeder.start()

    def _spawn(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        batches_in, self._batches = ctx.Pipe(duplex=False)
        self._results, results_out = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=_child_main, name=f"siptrace {self.name}", daemon=True,
                                   args=(self._factory, self._args, self.name, batches_in,
                                         results_out))
        self.process.start()
        self._started = time.monotonic()
        self._sent_before = self.sent  # items handed to earlier children
        self._gone = False  # supervised: the listener saw this child's end
        batches_in.close()
        results_out.close()
        _widen_pipe(self._batches.fileno())
        self._write = self._batches.send_bytes
        self._listener = threading.Thread(target=self._listen, daemon=True,
                                          name=f"siptrace-{self.name}-results".replace(" ", "-"))
        self._listener.start()

    def _restart(self, failures: int) -> int:
        """Supervised: the child died; account for it, wait out the backoff (cut short
        by close), start another. Returns the count of consecutive early deaths."""
        self._listener.join(5.0)
        self.process.join(5.0)
        lived = time.monotonic() - self._started
        failures = 0 if lived >= LIVED_LONG else failures + 1
        how = _exit_text(self.process.exitcode) + (f": {self.error}" if self.error else "")
        self.last_exit = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {how}"
        last = self.child
        in_pipe = max(0, self.sent - self._sent_before - last.get("received", 0))
        self.lost += in_pipe
        self.past.append(last)
        self.child, self.error = {}, ""
        delay = min(RESTART_MAX, RESTART_FIRST * 2 ** (failures - 1)) if failures else 0.0
        self._log.warning("%s %s; %d items it held are lost; starting it again%s", self.name,
                          how, in_pipe + last.get("pending", 0),
                          f" in {delay:g} s" if delay else "")
        self._batches.close()
        self._results.close()
        if delay:
            self._closing_now.wait(delay)  # close() cuts it short: the rest is handed over
        self._spawn()
        self.restarts += 1
        return failures

    # -- the producer side -----------------------------------------------------------
    def put(self, items: list) -> None:
        """Hands items over. Blocking mode: written now, waiting while the pipe is full
        (WorkerStopped when the child has stopped); bounded mode: queued, or dropped
        when the queue is full."""
        n = len(items)
        if not n:
            return
        if self._feeder is None:
            self._put_now(items)
            return
        queue = self._queue
        nbytes = sum(map(self._size, items)) if self._size else 0
        if (self._closing or len(queue) + n > self.queue_limit
                or (nbytes and self._queued_bytes + nbytes > self.queue_bytes)):
            self.dropped += n
            return
        if nbytes:
            with self._bytes_lock:
                self._queued_bytes += nbytes
        queue.extend(items)
        if len(queue) <= n:
            self._wake.set()

    def put_one(self, item) -> None:
        """Bounded mode: one item, queued or dropped; never blocks, never raises."""
        queue = self._queue
        nbytes = self._size(item) if self._size else 0
        if (self._closing or len(queue) >= self.queue_limit
                or (nbytes and self._queued_bytes + nbytes > self.queue_bytes)):
            self.dropped += 1
            return
        if nbytes:
            with self._bytes_lock:
                self._queued_bytes += nbytes
        queue.append(item)
        if len(queue) == 1:
            self._wake.set()

    def _put_now(self, items: list) -> None:
        if self.error:
            raise WorkerStopped(self.error)
        data, count = self._frame(items)
        try:
            self._write(data)
        except (OSError, ValueError):
            self.unsent += count
            self._listener.join(5.0)  # the child's last word, if it had one
            raise WorkerStopped(self.error or f"the {self.name} stopped") from None
        self.sent += count

    @property
    def queued(self) -> int:
        """Items waiting in this process (bounded mode)."""
        return len(self._queue) if self._feeder is not None else 0

    @property
    def in_pipe(self) -> int:
        """Items written to the child and not handled yet (lost if it never does)."""
        return max(0, self.sent - self._sent_before - self.child.get("received", 0))

    @property
    def ended(self) -> bool:
        """The child has exited (and, supervised, is not being started again), or is
        being given up on."""
        if self.supervise and not self._closed:
            return False
        return self.finished or self.killed or not self.process.is_alive()

    def close(self, timeout: float | None = None) -> bool:
        """Ends the input; the child finishes its job and reports. Waits at most
        ``timeout`` s (None: as long as it takes), then kills the child. True when
        the child finished on its own. Idempotent."""
        if self._closed:
            return self.finished
        self._closed = True
        deadline = None if timeout is None else time.monotonic() + timeout
        self._closing = True
        self._closing_now.set()
        try:
            if self._feeder is not None:
                self._wake.set()
                self._feeder.join(_left(deadline))
            else:
                self._end_input()
            self._listener.join(_left(deadline))
            self.process.join(_left(deadline))
        except BaseException:  # Ctrl-C while waiting: no child left behind
            self._kill()
            raise
        if self.process.is_alive():
            self._kill()  # this also unblocks a feeder stuck writing to it
        if self._feeder is not None:
            self._feeder.join()
            self.unsent += len(self._queue)
            self._queue.clear()
        self._listener.join()
        self._results.close()
        if not self.finished and not self.error:
            self.error = (f"the {self.name} did not finish within {timeout:g} s" if self.killed
                          else f"the {self.name} stopped (exit status {self.process.exitcode})")
        return self.finished

    def _kill(self) -> None:
        self.killed = True
        self.process.kill()  # SIGKILL: it ignores SIGTERM
        self.process.join()

    # -- threads -------------------------------------------------------------------
    def _feed(self) -> None:
        queue, wake, max_batch = self._queue, self._wake, self.max_batch
        broken = False
        failures = 0
        while True:
            if self._gone and not self.finished:
                failures = self._restart(failures)  # it died (the listener saw its end)
            if not queue:
                if self._closing:
                    break
                wake.wait(IDLE_CHECK)
                wake.clear()
                continue
            if not self._closing and len(queue) < FLUSH_AT:
                time.sleep(FLUSH_DELAY)
            batch = self._take_batch(queue, max_batch)
            if broken:
                self.unsent += len(batch)
                continue
            data, count = self._frame(batch)
            while True:
                try:
                    self._write(data)
                except (OSError, ValueError):  # the child is gone
                    if self.supervise:
                        failures = self._restart(failures)  # the frame goes to the next
                        continue
                    broken = True
                    self.unsent += count
                    self._note_stopped()
                break
            if not broken:
                self.sent += count
        self._end_input()

    def _take_batch(self, queue: deque, max_batch: int) -> list:
        """The next frame's items: up to max_batch, and up to FRAME_BYTES when items
        are sized (what they hold is released from the byte bound)."""
        popleft = queue.popleft
        if self._size is None:
            return [popleft() for _ in range(min(len(queue), max_batch))]
        batch, nbytes, size = [], 0, self._size
        while queue and len(batch) < max_batch and nbytes < FRAME_BYTES:
            item = popleft()
            batch.append(item)
            nbytes += size(item)
        with self._bytes_lock:
            self._queued_bytes -= nbytes
        return batch

    def _frame(self, items: list) -> tuple[bytes, int]:
        """The frame for items and how many it holds; items that cannot be pickled
        are left out and counted as ``rejected``."""
        try:
            return self._encode(items), len(items)
        except Exception:
            pass
        kept = []
        for item in items:
            try:
                self._encode([item])
            except Exception:
                self.rejected += 1
            else:
                kept.append(item)
        return self._encode(kept), len(kept)

    def _end_input(self) -> None:
        try:
            self._write(b"")
        except (OSError, ValueError):
            pass
        self._batches.close()

    def _listen(self) -> None:
        try:
            while True:
                kind, payload = self._results.recv()
                if kind == "log":
                    self._log.warning("%s", payload)
                elif kind == "error":
                    self.error = payload
                else:
                    self.child = payload
                    if kind == "done":
                        self.finished = True
                        return
        except (EOFError, OSError):
            pass
        if self.supervise and not self.finished:
            self._gone = True  # the feeder starts another
            self._wake.set()
        elif not self.finished and not self.killed:
            self._note_stopped()

    def _note_stopped(self) -> None:
        """The child ended without finishing. In bounded mode, whose put never
        raises, that is one warning (the child's error or its exit status)."""
        with self._noted:
            if self._stopped_noted or self.killed:
                return
            self._stopped_noted = True
        self.process.join(1.0)
        status = self.process.exitcode
        why = self.error or f"exit status {status}"
        if not self.error:
            self.error = f"the {self.name} stopped (exit status {status})"
        if self._feeder is not None:
            self._log.warning("%s stopped (%s): what is handed to it from now on is dropped",
                              self.name, why)


class WorkerStopped(SiptraceError):
    """Blocking put: the child has stopped; the message is its error."""


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _widen_pipe(fd: int) -> None:
    """Room for several frames in the pipe, so that the two processes overlap instead
    of taking turns (1,000 rows are ~700 KB, ten times a default pipe)."""
    for size in (PIPE_BYTES, 1 << 20):
        try:
            fcntl.fcntl(fd, F_SETPIPE_SZ, size)
            return
        except OSError:  # above /proc/sys/fs/pipe-max-size without CAP_SYS_RESOURCE
            continue


# -- the child -----------------------------------------------------------------------
def _child_main(factory, args, name, batches, results) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    lock = threading.Lock()  # a job's own threads may log

    def answer(kind: str, payload) -> None:
        with lock:
            try:
                results.send((kind, payload))
            except OSError:  # the parent is gone
                pass

    def thread_failed(hook) -> None:  # a job's thread died: one line, and the child ends
        answer("error", _one_line(hook.exc_value, name))
        os._exit(1)

    threading.excepthook = thread_failed
    try:
        job = factory(*args, log=lambda line: answer("log", line))
    except Exception as exc:
        answer("error", _one_line(exc, name))
        return
    merge = getattr(job, "merge_items", 0)  # a job may take waiting frames as one
    received = 0
    failure = None
    reported: dict | None = None
    last = 0.0
    try:
        while True:
            now = time.monotonic()
            if now - last >= REPORT_EVERY:
                stats = {"received": received, **job.stats()}
                if stats != reported:
                    answer("stats", stats)
                    reported = stats
                last = now
            data = _next_frame(batches, last + REPORT_EVERY - time.monotonic())
            if data is None:
                continue
            if not data:
                break
            items = pickle.loads(data)
            ended = False
            merged = len(data)
            while len(items) < merge and merged < MERGE_BYTES and batches.poll():  # waiting
                data = batches.recv_bytes()
                if not data:
                    ended = True
                    break
                merged += len(data)
                items += pickle.loads(data)
            job.handle(items)
            received += len(items)
            if ended:
                break
    except EOFError:  # the parent is gone: the same as the end of input
        pass
    except Exception as exc:
        failure = exc
    try:
        job.close()
    except Exception as exc:
        failure = failure or exc
    if failure is not None:
        answer("error", _one_line(failure, name))
    answer("done", {"received": received, **job.stats()})


def _next_frame(batches, wait: float) -> bytes | None:
    """The next frame (b"" at the end of input), or None after ``wait`` s without one."""
    try:
        if not batches.poll(max(0.0, wait)):
            return None
        return batches.recv_bytes()
    except OSError:
        raise EOFError from None


def _exit_text(status: int | None) -> str:
    """How a child ended, from its exit status."""
    if status is not None and status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"stopped (exit status {status})"


def _one_line(exc: BaseException, name: str) -> str:
    if isinstance(exc, SiptraceError):
        return " ".join(str(exc).split())
    return f"the {name} failed: {exc!r}"
