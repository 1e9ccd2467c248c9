"""`siptrace run`: live capture beside the proxy, its decisions, the sinks.

Threads: one captures (LiveCapture -> a bounded queue of record batches; it never
waits on anything downstream), the decision and control sockets read in theirs. The
store writes from a child process (store/process.py), the Mirror from its worker. One
processing loop owns the SipExtractor and the Correlator: records and decisions in,
rows and copies out. SIGTERM/SIGINT stop the capture, give late decisions one grace
window to claim what waits, store every row still pending, then return.
"""

import queue
import signal
import threading
import time
from collections import Counter

from siptrace import __version__
from siptrace.capture.hep_listener import HEP_RECORD, HepListener
from siptrace.capture.live import LiveCapture, build_filter
from siptrace.config import Settings
from siptrace.control import ControlServer, DecisionRecorder, DecisionSocket
from siptrace.correlate.correlator import Correlator
from siptrace.direction import ProxyAddresses, normalize_ip
from siptrace.extract import SipExtractor
from siptrace.sip.streams import TcpMessageAssembler
from siptrace.store.process import LiveWriter
from siptrace.rows import BYTES_PER_PUT, ROWS_PER_PUT, trace_rows
from siptrace.store import parse_db_url
from siptrace.redact import redact_url

CAPTURE_POLL_S = 0.2  # the capture thread looks at its stop flag this often
CAPTURE_QUEUE_BATCHES = 1024  # record batches (up to live.MAX_BATCH each) between threads
CAPTURE_QUEUE_BYTES = 32 << 20  # and their packets' bytes (a peer sends 64 KB segments)
LOOP_WAIT_S = 0.05  # the processing loop waits this long for packets before other work
TICK_NS = 100_000_000  # time-outs checked and rows handed to the writer every 0.1 s


class Sidecar:
    """One `siptrace run`: built from Settings, ``run()`` until ``stop()`` or a signal.

    Everything bad settings can break (interfaces, filter, sockets, database URL,
    mirror hosts) fails in the constructor as one ConfigError/SiptraceError line,
    with whatever was already opened closed again. ``status()`` and
    ``set_trace_on()`` may be called from any thread (the control socket's).
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.stats: Counter = Counter()  # capture_queue_drops, mirror_copies_seen, rows
        self._started = time.monotonic()  # status: uptime
        self._stop = threading.Event()
        self._records: queue.Queue = queue.Queue(CAPTURE_QUEUE_BATCHES)
        self._queued_in = self._queued_out = 0  # bytes put on _records, and taken off
        self._queue_lock = threading.Lock()  # two threads put: capture and HEP listener
        self._switches: list[tuple[bool, int]] = []
        self._switch_lock = threading.Lock()
        self._rows: list = []
        self._rows_bytes = 0  # of their messages
        self._trace_on = settings.trace_on
        self._opened: list = []  # closed in reverse order on a failed start
        try:
            self._build(settings)
        except BaseException:
            for thing in reversed(self._opened):
                thing.close()
            raise

    def _build(self, settings: Settings) -> None:
        proxy = ProxyAddresses.parse(settings.proxy)
        self.extractor = SipExtractor(
            streams=TcpMessageAssembler(max_buffered=settings.stream_buffer_bytes))
        self.correlator = Correlator(
            proxy, trace_flag=settings.trace_flag, traced_user_avp=settings.traced_user_avp,
            trace_on=settings.trace_on, trace_all=settings.trace_all,
            grace_ns=settings.grace_ns, max_decision_bytes=settings.decision_buffer_bytes)
        db_endpoint = _database_endpoint(settings.db_url)
        self.mirror = None
        if settings.duplicate_uri:
            from siptrace.mirror import Mirror

            self.mirror = Mirror(list(settings.duplicate_uri),
                                 hep_capture_id=settings.hep_capture_id,
                                 hep_auth_key=settings.hep_auth_key or None)
            self._opened.append(self.mirror)
        self._mirror_targets = frozenset(self.mirror.mirror_addresses()) if self.mirror \
            else frozenset()
        self.filter = build_filter(_proxy_pairs(proxy),
                                   exclude=sorted(self._mirror_targets) + db_endpoint)
        self.capture = LiveCapture(settings.interface or ("any",), self.filter)
        self._opened.append(self.capture)
        self.hep = None
        if settings.hep_listen:  # HEP agents sending to siptrace (hep_listener.py)
            self.hep = HepListener(settings.hep_listen, self._hand_on)
            self._opened.append(self.hep)
        self.recorder = None
        if settings.record_decisions:
            self.recorder = DecisionRecorder(settings.record_decisions)
            self._opened.append(self.recorder)
        self.decisions = DecisionSocket(settings.decision_socket, recorder=self.recorder)
        self.writer = LiveWriter(settings.db_url, settings.table,
                                 spool_dir=settings.spool_dir or None,
                                 spool_max_bytes=settings.spool_max_bytes,
                                 call_index=settings.call_index)
        self._opened.append(self.writer)
        self.decisions.start()
        self._opened.append(self.decisions)
        if self.recorder is not None:
            self.recorder.record_trace_on(time.time_ns(), settings.trace_on)
        # Last: once the control socket answers, everything is capturing.
        self.control = ControlServer(settings.control_socket, switch=self.set_trace_on,
                                     status=self.status)
        self.control.start()
        self._opened.append(self.control)
        self._capture_thread = threading.Thread(target=self._capture_loop,
                                                name="siptrace-capture", daemon=True)
        self._capture_thread.start()
        if self.hep is not None:
            self.hep.start()

    # -- from other threads -------------------------------------------------------------
    def set_trace_on(self, on: bool) -> None:
        """`siptrace on|off`: messages captured from now on follow the new state."""
        at_ns = time.time_ns()
        with self._switch_lock:
            self._trace_on = bool(on)
            self._switches.append((bool(on), at_ns))
        if self.recorder is not None:
            self.recorder.record_trace_on(at_ns, on)

    def stop(self) -> None:
        self._stop.set()

    def _capture_loop(self) -> None:
        read, hand_on, stop = self.capture.read, self._hand_on, self._stop
        while not stop.is_set():
            records = read(CAPTURE_POLL_S)
            if records:
                hand_on(records)

    def _hand_on(self, records: list) -> None:
        """A batch of records to the processing loop, or counted as dropped when the
        queue is full (in batches or bytes)."""
        size = sum(len(record[2]) for record in records)
        with self._queue_lock:
            try:
                if self._queued_in - self._queued_out + size > CAPTURE_QUEUE_BYTES:
                    raise queue.Full  # full in bytes
                self._records.put_nowait(records)
            except queue.Full:
                self.stats["capture_queue_drops"] += len(records)
            else:
                self._queued_in += size

    # -- the processing loop ----------------------------------------------------------
    def run(self, install_signals: bool = True) -> dict:
        """Trace until stop() or SIGTERM/SIGINT; store what is pending; the final status."""
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        get, stop = self._records.get, self._stop
        next_tick = 0
        try:
            while not stop.is_set():
                try:
                    records = get(timeout=LOOP_WAIT_S)
                except queue.Empty:
                    records = None
                now = time.time_ns()
                self._apply_inputs()
                if records:
                    self._queued_out += sum(len(record[2]) for record in records)
                    self._process(records, now)
                if now >= next_tick:
                    next_tick = now + TICK_NS
                    self.correlator.tick(now)
                    self._flush_rows()
        finally:
            self._shutdown()
        return self.status()

    def _process(self, records, now_ns: int) -> None:
        feed, on_packet, emit = self.extractor.feed, self.correlator.on_packet, self._emit
        if records[0][1] == HEP_RECORD:  # a batch from the HEP listener
            feed = self._feed_hep
        targets = self._mirror_targets
        for ts_ns, linktype, data in records:
            for wire in feed(ts_ns, linktype, data):
                if targets and (wire.dst, wire.dport) in targets:
                    self.stats["mirror_copies_seen"] += 1  # late fragments of our own copy
                    continue
                traced = on_packet(wire, now_ns)
                if traced:
                    emit(traced)
            if len(self._rows) >= ROWS_PER_PUT or self._rows_bytes >= BYTES_PER_PUT:
                self._flush_rows()

    def _feed_hep(self, ts_ns: int, _record_type: int, data: bytes):
        return self.extractor.feed_hep(ts_ns, data)

    def _emit(self, traced) -> None:
        rows, mirror = self._rows, self.mirror
        for wire, direction, users in traced:
            made = trace_rows(wire, direction, users)
            rows += made
            self._rows_bytes += len(wire.sip.raw) * len(made)
            if mirror is not None:
                mirror.send(wire)

    def _flush_rows(self) -> None:
        if self._rows:
            self.stats["rows"] += len(self._rows)
            self.writer.put(self._rows)
            self._rows = []
            self._rows_bytes = 0

    def _apply_inputs(self) -> None:
        """On/off switches, then decisions, in the order they came."""
        correlator = self.correlator
        if self._switches:
            with self._switch_lock:
                switches, self._switches = self._switches, []
            for on, at_ns in switches:
                correlator.set_trace_on(on, at_ns)
        if len(self.decisions):
            for rt_ns, decision in self.decisions.drain():
                traced = correlator.on_decision(decision, rt_ns)
                if traced:
                    self._emit(traced)

    def _shutdown(self) -> None:
        """Stop capturing, let decisions claim what waits, store and close everything."""
        self._capture_thread.join(CAPTURE_POLL_S * 10)
        while True:
            try:
                self._process(self._records.get_nowait(), time.time_ns())
            except queue.Empty:
                break
        while True:  # what the kernel captured before the signal is processed too
            records = self.capture.read(0)
            if not records:
                break
            self._process(records, time.time_ns())
        self.capture.close()
        now = time.time_ns()
        for wire in self.extractor.finish():
            self._emit(self.correlator.on_packet(wire, now))
        deadline = now + self.settings.grace_ns
        while self.correlator.sizes()["pending_packets"] and time.time_ns() < deadline:
            self.decisions.wait(LOOP_WAIT_S)
            self._apply_inputs()
            self.correlator.tick(time.time_ns())
        self.decisions.close()
        self._apply_inputs()
        self.correlator.finish(time.time_ns())
        self._flush_rows()
        self.writer.close()
        if self.mirror is not None:
            self.mirror.close()
        if self.recorder is not None:
            self.recorder.close()
        self.control.close()

    # -- status ------------------------------------------------------------------------
    def status(self) -> dict:
        """Trace state and counters, as `siptrace status` shows them (no secrets)."""
        correlator = self.correlator.stats
        capture = self.capture.stats
        decisions = self.decisions.stats
        writer = self.writer.stats
        out = {
            "trace": "on" if self._trace_on else "off",
            "version": __version__,
            "uptime": int(time.monotonic() - self._started),  # seconds
            "traced_requests": correlator["traced_requests"],
            "traced_replies": correlator["traced_replies"],
            "rows_stored": writer["rows_written"],
            "rows_pending": writer["pending"] + len(self._rows),
            "packets_captured": capture["packets"],
            "kernel_drops": capture["kernel_drops"],
            "capture_queue_drops": self.stats["capture_queue_drops"],
            "sip_messages": self.extractor.stats["sip_messages"],
            "packets": self.extractor.fates(),  # each packet's fate: they add up
            "tcp_not_stored": self.extractor.tcp_losses(),  # by reason
            "not_sip": self.extractor.not_sip(),  # what the rest seems to carry
            "decisions_received": decisions["datagrams"],
            "decisions_malformed": decisions["malformed"],
            "decisions_dropped": decisions["dropped"],
            "decisions_matched": correlator["matched"],
            "decisions_unmatched": correlator["unmatched_decisions"],
            "packets_unclaimed": correlator["unclaimed_packets"],
            "rows_spooled": writer["spooled"],
            "spool_depth": writer["spool_depth"],
            "rows_dropped": writer["dropped"],
            "rows_rejected": writer["rejected"],  # refused by the database for good
            "rows_set_aside": writer["set_aside"],  # of those, in the dead-letter file
            "rows_lost": writer["lost"],  # held by a store process that died
            "store_restarts": writer["store_restarts"],
            "db_url": redact_url(self.settings.db_url),
            "table": self.settings.table,
            "interfaces": self.capture.interfaces,
            "capture_filter": self.filter,
            **self.correlator.sizes(),
        }
        for key in ("last_error", "last_error_at", "last_incident", "last_incident_at",
                    "last_rejected"):
            if writer[key]:  # last_error only while failing; last_incident kept
                out["db_" + key] = writer[key]
        if writer["store_last_exit"]:
            out["store_last_exit"] = writer["store_last_exit"]
        if self.mirror is not None:
            out["mirror"] = self.mirror.stats()
        if self.decisions.recent_errors:
            out["decisions_last_error"] = self.decisions.recent_errors[-1]
        if self.hep is not None:
            decoded = self.extractor.decoder.stats
            out["hep"] = {**self.hep.stats, **{key: decoded[key] for key in (
                "hep_received", "hep_received_not_sip", "hep_received_not_hep",
                "hep_received_malformed")}}
        return out


def run(settings: Settings, install_signals: bool = True) -> dict:
    """`siptrace run` as a function: trace until SIGTERM/SIGINT; the final status."""
    return Sidecar(settings).run(install_signals)


def _proxy_pairs(proxy: ProxyAddresses) -> list[tuple[str | None, int | None]]:
    return [(ip, None) for ip in sorted(proxy.hosts)] + sorted(proxy.endpoints)


def _database_endpoint(db_url: str) -> list[tuple[str, int]]:
    """A database server given by IP address: its traffic is kept out of the capture."""
    url = parse_db_url(db_url)
    ip = normalize_ip(url.host) if url.host else None
    return [(ip, url.port)] if ip and url.port else []


def run_command(config_path, cli_overrides: dict) -> None:
    """`siptrace run`: settings (file < environment < command line), run, summary."""
    import sys

    from siptrace.config import load_settings

    settings = load_settings(config_path, cli_overrides=cli_overrides)
    sidecar = Sidecar(settings)
    print(f"siptrace: capturing on {', '.join(sidecar.capture.interfaces)}; "
          f"trace {'on' if settings.trace_on else 'off'}"
          f"{' (all messages)' if settings.trace_all else ''}; "
          f"decisions at {settings.decision_socket}; control at {settings.control_socket}; "
          f"storing to {redact_url(settings.db_url)}", file=sys.stderr, flush=True)
    final = sidecar.run()
    for key in ("packets_captured", "kernel_drops", "capture_queue_drops", "sip_messages",
                "decisions_received", "decisions_malformed", "decisions_unmatched",
                "packets_unclaimed", "traced_requests", "traced_replies", "rows_stored",
                "rows_spooled", "rows_dropped", "rows_rejected", "rows_lost"):
        print(f"{key + ':':22}{final[key]}")
