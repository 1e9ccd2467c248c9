"""`siptrace run`: live capture beside the proxy, its decisions, the sinks.

Threads: one captures (LiveCapture -> a bounded queue of record batches, never
waiting on anything downstream), the decision and control sockets have their own,
the BatchWriter and the Mirror send from theirs. One processing loop owns the
SipExtractor and the Correlator: records and decisions in, rows and copies out.
SIGTERM/SIGINT stop the capture, give late decisions one grace window, store
every row still pending, then exit.
"""

import json
import queue
import signal
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Callable

from siptrace.capture.live import LiveCapture, build_filter
from siptrace.correlate.correlator import Correlator
from siptrace.correlate.decision import parse_decision
from siptrace.direction import ProxyAddresses
from siptrace.errors import DecodeError
from siptrace.extract import SipExtractor
from siptrace.rows import trace_rows
from siptrace.store.urls import parse_db_url, redact_url

SECOND = 1_000_000_000
CAPTURE_POLL = 0.2  # seconds the capture thread waits for packets before checking stop
CAPTURE_QUEUE_BATCHES = 1024  # batches (of up to MAX_BATCH packets each) between threads
MAX_DECISIONS_QUEUED = 100_000
TICK_NS = SECOND // 10  # how often time-outs are checked and rows handed to the writer
ROWS_PER_PUT = 1000


class Sidecar:
    """One `siptrace run`: build with the settings, ``run()`` until ``stop()``.

    Everything that can fail on bad settings (filter, interfaces, sockets,
    database URL, mirror hosts) fails in the constructor, as one ConfigError or
    SiptraceError line. ``status()`` may be called from any thread.
    """

    def __init__(self, settings, *, writer, mirror=None, decision_socket=None,
                 control_socket=None, record_decisions: Path | None = None):
        self.settings = settings
        self.writer = writer
        self.mirror = mirror
        self.stats: Counter = Counter()
        proxy = ProxyAddresses.parse(settings.proxy)
        self.correlator = Correlator(
            proxy, trace_flag=settings.trace_flag, traced_user_avp=settings.traced_user_avp,
            trace_on=settings.trace_on, trace_all=settings.trace_all,
            grace_ns=int(settings.grace * SECOND))
        self.extractor = SipExtractor()
        self._mirror_targets = frozenset(mirror.mirror_addresses()) if mirror else frozenset()
        exclude = list(self._mirror_targets) + _database_endpoint(settings.db_url)
        self.capture = LiveCapture(settings.interface, build_filter(
            _proxy_pairs(proxy), exclude=exclude))
        self._records: queue.Queue = queue.Queue(CAPTURE_QUEUE_BATCHES)
        self._decisions: deque = deque()
        self._switches: deque = deque()
        self._stop = threading.Event()
        self._trace_on = bool(settings.trace_on)
        self._record = open(record_decisions, "a", encoding="utf-8") if record_decisions else None
        self.decision_socket = decision_socket
        self.control_socket = control_socket
        self._capture_thread = threading.Thread(target=self._capture_loop,
                                                name="siptrace-capture", daemon=True)

    # -- inputs from other threads ------------------------------------------------------
    def on_datagram(self, datagram: bytes) -> None:
        """A decision datagram (decision socket thread); never blocks."""
        received_ns = time.time_ns()
        if len(self._decisions) >= MAX_DECISIONS_QUEUED:
            self.stats["decisions_dropped"] += 1
            return
        self._decisions.append((datagram, received_ns))

    def set_trace_on(self, on: bool) -> None:
        """`siptrace on|off`: messages captured from now on follow the new state."""
        self._trace_on = bool(on)
        self._switches.append((bool(on), time.time_ns()))

    def stop(self) -> None:
        self._stop.set()

    # -- the loops ----------------------------------------------------------------------------
    def _capture_loop(self) -> None:
        read, put = self.capture.read, self._records.put_nowait
        stop = self._stop
        while not stop.is_set():
            records = read(CAPTURE_POLL)
            if records:
                try:
                    put(records)
                except queue.Full:
                    self.stats["capture_queue_drops"] += len(records)

    def run(self, install_signals: bool = True) -> None:
        """Captures and traces until stop() or SIGTERM/SIGINT; then stores what is pending."""
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        for server in (self.decision_socket, self.control_socket):
            if server is not None:
                server.start()
        self._capture_thread.start()
        next_tick = 0
        get = self._records.get
        try:
            while not self._stop.is_set():
                try:
                    records = get(timeout=0.05)
                except queue.Empty:
                    records = None
                now = time.time_ns()
                self._apply_inputs(now)
                if records:
                    self._process(records, now)
                if now >= next_tick:
                    next_tick = now + TICK_NS
                    self._tick(now)
        finally:
            self._shutdown()

    def _process(self, records, now_ns: int) -> None:
        feed, on_packet = self.extractor.feed, self.correlator.on_packet
        targets = self._mirror_targets
        for ts_ns, linktype, data in records:
            for wire in feed(ts_ns, linktype, data):
                if targets and (wire.dst, wire.dport) in targets:
                    self.stats["own_copies"] += 1  # a mirror copy's late fragments
                    continue
                traced = on_packet(wire, now_ns)
                if traced:
                    self._emit(traced)
        if len(self._rows) >= ROWS_PER_PUT:
            self._flush_rows()

    _rows: list = []

    def _emit(self, traced) -> None:
        rows = self._rows
        mirror = self.mirror
        for wire, direction, users in traced:
            rows += trace_rows(wire, direction, users)
            if mirror is not None:
                mirror.send(wire)

    def _flush_rows(self) -> None:
        if self._rows:
            self.stats["rows"] += len(self._rows)
            self.writer.put(self._rows)
            self._rows = []

    def _apply_inputs(self, now_ns: int) -> None:
        correlator = self.correlator
        while self._switches:
            on, at_ns = self._switches.popleft()
            correlator.set_trace_on(on, at_ns)
        decisions = self._decisions
        while decisions:
            datagram, received_ns = decisions.popleft()
            try:
                decision = parse_decision(datagram)
            except DecodeError as exc:
                self.stats["decisions_malformed"] += 1
                self.stats["last_malformed"] = 0  # keep the key; text below
                self.last_malformed = str(exc)
                continue
            if self._record is not None:
                self._record.write(json.dumps({"received": received_ns / SECOND,
                                               "decision": decision.to_object()}) + "\n")
            traced = correlator.on_decision(decision, received_ns)
            if traced:
                self._emit(traced)

    def _tick(self, now_ns: int) -> None:
        traced = self.correlator.tick(now_ns)
        if traced:
            self._emit(traced)
        self._flush_rows()
        if self._record is not None:
            self._record.flush()

    def _shutdown(self) -> None:
        """Stop capturing; let decisions claim what waits (one grace); store everything."""
        self._capture_thread.join(CAPTURE_POLL * 5)
        self.capture.close()
        while True:
            try:
                self._process(self._records.get_nowait(), time.time_ns())
            except queue.Empty:
                break
        now = time.time_ns()
        for wire in self.extractor.finish():
            self._emit(self.correlator.on_packet(wire, now))
        deadline = now + int(self.settings.grace * SECOND)
        while self.correlator.sizes()["pending_packets"] and time.time_ns() < deadline:
            self._apply_inputs(time.time_ns())
            time.sleep(0.02)
        self._apply_inputs(time.time_ns())
        self._emit(self.correlator.finish(time.time_ns()))
        self._flush_rows()
        if self.decision_socket is not None:
            self.decision_socket.close()
        self.writer.close()
        if self.mirror is not None:
            self.mirror.close()
        if self._record is not None:
            self._record.close()
        if self.control_socket is not None:
            self.control_socket.close()

    # -- status -------------------------------------------------------------------------------
    def status(self) -> dict:
        """Trace state and counters, as `siptrace status` shows them."""
        c = self.correlator.stats
        capture = self.capture.stats
        writer = self.writer.stats
        out = {
            "trace": "on" if self._trace_on else "off",
            "traced_requests": c["traced_requests"],
            "traced_replies": c["traced_replies"],
            "rows_stored": writer["rows_written"],
            "rows_pending": writer["pending"] + len(self._rows),
            "packets_captured": capture["packets"],
            "kernel_drops": capture["kernel_drops"],
            "capture_queue_drops": self.stats["capture_queue_drops"],
            "sip_messages": self.extractor.stats["sip_messages"],
            "decisions_received": c["decisions"] + self.stats["decisions_malformed"],
            "decisions_malformed": self.stats["decisions_malformed"],
            "decisions_unmatched": c["unmatched_decisions"],
            "decisions_matched": c["matched"],
            "packets_unclaimed": c["unclaimed_packets"],
            "spooled": writer["spooled"],
            "spool_depth": writer["spool_depth"],
            "rows_dropped": writer["dropped"],
            "db_url": redact_url(self.settings.db_url),
            "interfaces": self.capture.interfaces,
        }
        if self.mirror is not None:
            out["mirror"] = self.mirror.stats()
        return out


def _proxy_pairs(proxy: ProxyAddresses) -> list[tuple[str | None, int | None]]:
    return [(ip, None) for ip in proxy.hosts] + sorted(proxy.endpoints)


def _database_endpoint(db_url: str) -> list[tuple[str, int]]:
    """The database server, if it is an IP address: its traffic is never captured."""
    url = parse_db_url(db_url)
    if url.host and url.port:
        from siptrace.direction import normalize_ip

        ip = normalize_ip(url.host)
        if ip is not None:
            return [(ip, url.port)]
    return []
