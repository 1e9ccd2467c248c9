"""The proxy's decisions: the Unix datagram socket, and their recording for replay.

``DecisionSocket`` receives datagrams in a thread, parses them and queues
``(rt_ns, Decision)`` pairs (``rt_ns``: when siptrace received it) for the
capture loop, which applies them with ``Correlator.on_decision(decision, rt_ns)``.
``DecisionRecorder`` writes what was queued, and on/off switches, as JSON lines;
``read_recorded_decisions`` reads them back for ``siptrace replay --decisions``.
"""

import json
import os
import socket
import threading
import time
from collections import Counter, deque
from decimal import Decimal

from siptrace.control.unixsock import POLL_S, UnixSocketServer
from siptrace.correlate.decision import (MAX_DECISION_BYTES, MAX_TS_S, Decision,
                                         decision_from_object, parse_decision,
                                         refuse_constant)
from siptrace.correlate.correlator import Correlator
from siptrace.correlate.offline import DecisionReplayTracer, RecordedEvent
from siptrace.direction import ProxyAddresses
from siptrace.filemode import private_opener
from siptrace.errors import ConfigError, DecodeError

RECEIVE_BUFFER = 4 << 20  # SO_RCVBUF asked for: bursts of decisions while the loop is busy
FLUSH_S = 1.0  # the recording is flushed at least this often
MAX_RECENT_ERRORS = 8
MAX_QUEUE_BYTES = 8 << 20  # decisions parsed, waiting for the processing loop
MAX_LINE = 1 << 20  # characters of a recorded line: a 64 KB decision, escaped, is less
NS = 10**9


class DecisionSocket(UnixSocketServer):
    """A Unix datagram socket the proxy sends its decisions to; read in a thread.

    ``stats``: datagrams, decisions (queued), malformed, oversize (also malformed),
    dropped (queue full: ``max_queue`` decisions or ``max_queue_bytes`` of them).
    ``recent_errors`` keeps the last reasons a datagram was refused.
    """

    KIND = socket.SOCK_DGRAM
    THREAD_NAME = "siptrace-decisions"

    def __init__(self, path, *, mode: int = 0o660, max_queue: int = 100_000,
                 max_queue_bytes: int = MAX_QUEUE_BYTES,
                 recorder: "DecisionRecorder | None" = None, clock=time.time_ns,
                 key: str = "decision_socket"):
        super().__init__(path, mode, key)
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        # Bytes queued, and taken by drain(): each written by one thread only.
        self._bytes_in = self._bytes_out = 0
        self.recorder = recorder
        self.clock = clock
        self.stats: Counter = Counter()
        self.recent_errors: deque[str] = deque(maxlen=MAX_RECENT_ERRORS)
        self._queue: deque = deque()
        self._ready = threading.Event()

    def _prepare(self, sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        except OSError:
            pass  # the kernel caps it at rmem_max; what we get is still used

    def __len__(self) -> int:
        return len(self._queue)

    def drain(self, limit: int | None = None) -> list[tuple[int, Decision]]:
        """The decisions received so far, oldest first: ``(rt_ns, decision)``."""
        self._ready.clear()
        queue = self._queue
        count = len(queue) if limit is None else min(limit, len(queue))
        out = [queue.popleft() for _ in range(count)]
        self._bytes_out += sum(decision.size for _, decision in out)
        if queue:
            self._ready.set()
        return out

    def wait(self, timeout: float) -> bool:
        """Block until a decision is queued (True) or ``timeout`` seconds pass (False)."""
        return self._ready.wait(timeout)

    def close(self) -> None:
        """Stop reading, close and remove the socket file (if it is still ours)."""
        super().close()
        if self.recorder is not None:
            self.recorder.flush()

    def _serve_loop(self) -> None:
        sock, stats, stop = self._sock, self.stats, self._stop
        while not stop.is_set():
            try:
                datagram = sock.recv(MAX_DECISION_BYTES + 1)
            except socket.timeout:
                if self.recorder is not None:
                    self.recorder.flush_if_due()
                continue
            except OSError as exc:  # never expected on a bound datagram socket
                stats["receive_errors"] += 1
                self.recent_errors.append(f"receive: {exc.strerror or exc}")
                stop.wait(POLL_S)
                continue
            if stop.is_set():
                break
            self.accept(datagram, self.clock())

    def accept(self, datagram: bytes, rt_ns: int) -> bool:
        """Parse, count and queue one datagram (what the reader thread does with each)."""
        stats = self.stats
        stats["datagrams"] += 1
        try:
            decision = parse_decision(datagram)
        except DecodeError as exc:
            stats["malformed"] += 1
            if len(datagram) > MAX_DECISION_BYTES:
                stats["oversize"] += 1
            self.recent_errors.append(str(exc))
            return False
        if len(self._queue) >= self.max_queue \
                or self._bytes_in - self._bytes_out + decision.size > self.max_queue_bytes:
            stats["dropped"] += 1
            return False
        if self.recorder is not None:
            self.recorder.record_decision(rt_ns, decision)
        self._bytes_in += decision.size
        self._queue.append((rt_ns, decision))
        stats["decisions"] += 1
        self._ready.set()
        return True


class DecisionRecorder:
    """Appends decisions and on/off switches as JSON lines (``--record-decisions``).

    Lines: ``{"rt": SECONDS, "decision": {...}}`` or ``{"rt": SECONDS, "trace_on": B}``,
    ``rt`` the receive time in epoch seconds with nanoseconds. Thread-safe; write
    errors are counted in ``stats["errors"]``, never raised.
    """

    def __init__(self, path, *, monotonic=time.monotonic):
        self.path = os.fspath(path)
        self.stats: Counter = Counter()
        self._monotonic = monotonic
        self._lock = threading.Lock()
        try:
            self._file = open(self.path, "a", encoding="utf-8", opener=private_opener)
        except OSError as exc:
            raise ConfigError(f"record_decisions: cannot open {self.path}: "
                              f"{exc.strerror}") from None
        self._flushed_at = monotonic()
        self._dirty = False

    def record_decision(self, rt_ns: int, decision: Decision) -> None:
        self._write(rt_ns, "decision", decision.to_object())

    def record_trace_on(self, rt_ns: int, on: bool) -> None:
        """An on/off switch (and the state at start), applied at ``rt_ns``."""
        self._write(rt_ns, "trace_on", bool(on))
        self.flush()

    def _write(self, rt_ns: int, field: str, value) -> None:
        line = (f'{{"rt": {rt_ns // NS}.{rt_ns % NS:09d}, "{field}": '
                f'{json.dumps(value, separators=(",", ":"))}}}\n')
        with self._lock:
            if self._file is None:
                return
            try:
                self._file.write(line)
            except OSError:
                self.stats["errors"] += 1
                return
            self.stats["recorded"] += 1
            self._dirty = True
        self.flush_if_due()

    def flush_if_due(self) -> None:
        if self._dirty and self._monotonic() - self._flushed_at >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if self._file is None:
                return
            try:
                self._file.flush()
            except OSError:
                self.stats["errors"] += 1
            self._dirty = False
            self._flushed_at = self._monotonic()

    def close(self) -> None:
        self.flush()
        with self._lock:
            if self._file is not None:
                try:
                    self._file.close()
                except OSError:
                    self.stats["errors"] += 1
                self._file = None


def read_recorded_decisions(path, stats: Counter | None = None):
    """Events of a recording, in file order: an iterator of RecordedEvent.

    Opens the file at once (ConfigError when it cannot); a bad line is counted in
    ``stats["bad_lines"]`` and skipped.
    """
    path = os.fspath(path)
    try:
        handle = open(path, encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"decisions: cannot read {path}: {exc.strerror}") from None
    return _events(handle, Counter() if stats is None else stats)


def replay_tracer(path, proxy: ProxyAddresses, **correlator_options) -> DecisionReplayTracer:
    """The tracer for ``siptrace replay --decisions PATH``: a Correlator (options as
    its keywords: trace_flag, traced_user_avp, grace_ns...) fed the recording by time.

    Tracing starts on unless ``trace_on=False`` is given; the recording's switches
    (``siptrace run`` records the state at start) then apply by time.
    """
    stats: Counter = Counter()
    events = read_recorded_decisions(path, stats)
    return DecisionReplayTracer(Correlator(proxy, **correlator_options), events, stats)


def _events(handle, stats: Counter):
    with handle:
        while line := handle.readline(MAX_LINE):
            if len(line) == MAX_LINE and not line.endswith("\n"):  # no decision: skip it
                while (line := handle.readline(MAX_LINE)) and not line.endswith("\n"):
                    pass
                stats["bad_lines"] += 1
                continue
            if not line.strip():
                continue
            event = _event(line)
            if event is None:
                stats["bad_lines"] += 1
            else:
                stats["decisions" if event.decision is not None else "switches"] += 1
                yield event


def _event(line: str) -> RecordedEvent | None:
    """One line's event; None when it is not one (bad JSON or a bad decision). Numbers
    with a fraction are read exactly (``rt``'s nanoseconds); NaN and Infinity refused."""
    try:
        obj = json.loads(line, parse_float=Decimal, parse_constant=refuse_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    rt = obj.get("rt")
    if isinstance(rt, bool) or not isinstance(rt, (int, Decimal)):
        return None
    if not 0 <= rt < MAX_TS_S:
        return None
    rt_ns = int(rt * NS)
    if "decision" in obj:
        decision = obj["decision"]
        if isinstance(decision, dict) and isinstance(decision.get("ts"), Decimal):
            decision["ts"] = float(decision["ts"])  # the one number with a fraction
        try:
            return RecordedEvent(rt_ns, decision=decision_from_object(decision))
        except DecodeError:
            return None
    if isinstance(obj.get("trace_on"), bool):
        return RecordedEvent(rt_ns, trace_on=obj["trace_on"])
    return None
