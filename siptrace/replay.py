"""Offline replay: capture files through the decoding core into the sinks."""

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from siptrace.capture.files import CaptureFile
from siptrace.decode.link import LINK_LAYERS
from siptrace.errors import CaptureFormatError, TruncatedCapture
from siptrace.extract import SipExtractor, WireMessage
from siptrace.sip.streams import MAX_BUFFERED, TcpMessageAssembler
from siptrace.rows import BYTES_PER_PUT, ROWS_PER_PUT, trace_row, trace_rows

CHECK_EVERY = 4096  # records between progress callbacks and looks at ``stop`` (a power of 2)


@dataclass
class ReplaySummary:
    """What one replay read, found and stored; printed at the end of the run.

    ``fates`` says what became of every packet (SipExtractor.fates: they add up to
    ``packets``), ``tcp_losses`` what the TCP side dropped, by reason. ``warnings``
    name what could not be read: a file damaged, cut short or not a capture, packets
    of a link type siptrace does not decode.
    """

    files: int = 0  # files read, whole or in part
    packets: int = 0
    sip_messages: int = 0
    traced_messages: int = 0
    rows: int = 0
    malformed: int = 0  # SIP messages rejected, or stored with defects
    fragments_incomplete: int = 0  # IP datagrams never whole
    elapsed: float = 0.0
    fates: dict = field(default_factory=dict)
    tcp_losses: dict = field(default_factory=dict)
    not_sip: dict = field(default_factory=dict)  # SipExtractor.not_sip
    warnings: list[str] = field(default_factory=list)
    malformed_samples: list[str] = field(default_factory=list)
    counters: Counter = field(default_factory=Counter)

    @property
    def messages_per_second(self) -> float:
        return self.sip_messages / self.elapsed if self.elapsed > 0 else 0.0


class Tracer:
    """Which wire messages become rows, and with what direction and traced users.

    Without the proxy's decisions every message is traced; the direction comes
    from the proxy's addresses.
    """

    def __init__(self, proxy):
        self.proxy = proxy

    def on_packet(self, wire: WireMessage, now_ns: int):
        return [(wire, self.proxy.direction(wire), ())]

    def finish(self, now_ns: int):
        return []


def replay_files(paths: Iterable[Path], *, tracer, row_sink, mirror=None,
                 on_progress: Callable[[int], None] | None = None,
                 stop: Callable[[], bool] | None = None,
                 stream_buffer_bytes: int = MAX_BUFFERED) -> ReplaySummary:
    """Replays each capture file in turn through one extractor (state spans files).

    ``row_sink.put(rows)`` receives rows in batches; ``mirror.send(wire)`` each
    traced message once. ``on_progress(bytes)`` is called with bytes consumed.
    A file that cannot be read, or only in part, is a warning and the next one is
    read. ``stop()``, asked every CHECK_EVERY records and between files, ends the
    replay early (Ctrl-C); what was decoded until then is stored all the same.
    """
    summary = ReplaySummary()
    extractor = SipExtractor(streams=TcpMessageAssembler(max_buffered=stream_buffer_bytes))
    packet_stats = extractor.decoder.stats
    started = time.perf_counter()
    rows: list = []
    traced_count = 0
    last_ts = 0
    held = 0  # bytes of the messages in rows

    def flush() -> None:
        nonlocal held
        summary.rows += len(rows)
        row_sink.put(rows[:])
        rows.clear()
        held = 0

    def store(traced) -> None:
        nonlocal traced_count, held
        for wire, direction, users in traced:
            traced_count += 1
            made = trace_rows(wire, direction, users)
            rows.extend(made)
            held += len(wire.sip.raw) * len(made)
            if mirror is not None:
                mirror.send(wire)
        if len(rows) >= ROWS_PER_PUT or held >= BYTES_PER_PUT:
            flush()

    # A plain Tracer traces every message, one row each: the loop asks the proxy for
    # the direction itself, without on_packet's and store's per-message lists. Two
    # paths because one costs 3% more of replay's decoding work (measured), and the
    # decoding process is the slower of replay's two; tests/test_replay.py requires
    # both to store the same rows.
    direction_of = tracer.proxy.direction if type(tracer) is Tracer else None
    check_mask = CHECK_EVERY - 1
    for path in paths:
        if stop is not None and stop():
            break
        try:
            capture = CaptureFile(path)
        except CaptureFormatError as exc:
            summary.warnings.append(str(exc))
            continue
        summary.files += 1
        unknown_before = packet_stats["unknown_linktype"]
        reported = 0
        feed = extractor.feed
        on_packet = tracer.on_packet
        try:
            for count, (ts_ns, linktype, data) in enumerate(capture, 1):
                for wire in feed(ts_ns, linktype, data):
                    if direction_of is None:
                        store(on_packet(wire, ts_ns))
                        continue
                    traced_count += 1
                    rows.append(trace_row(wire, direction_of(wire)))
                    held += len(wire.sip.raw)
                    if mirror is not None:
                        mirror.send(wire)
                    if len(rows) >= ROWS_PER_PUT or held >= BYTES_PER_PUT:
                        flush()
                last_ts = ts_ns
                if not count & check_mask:
                    if on_progress is not None:
                        on_progress(capture.position - reported)
                        reported = capture.position
                    if stop is not None and stop():
                        break
        except (TruncatedCapture, CaptureFormatError) as exc:  # cut, damaged, unreadable
            summary.warnings.append(str(exc))
        if on_progress is not None:
            on_progress(capture.position - reported)
        unknown = packet_stats["unknown_linktype"] - unknown_before
        if unknown:
            kinds = ", ".join(map(str, sorted(set(capture.linktypes) - LINK_LAYERS.keys())))
            summary.warnings.append(f"{capture.name}: {unknown} packets of link type {kinds}, "
                                    "which siptrace does not decode, skipped")
    for wire in extractor.finish():
        store(tracer.on_packet(wire, last_ts))
    store(tracer.finish(last_ts))
    if rows:
        summary.rows += len(rows)
        row_sink.put(rows)
    summary.traced_messages = traced_count

    summary.elapsed = time.perf_counter() - started
    _collect_counters(summary, extractor)
    return summary


def _collect_counters(summary: ReplaySummary, extractor: SipExtractor) -> None:
    stats, packets = extractor.stats, extractor.packet_stats
    summary.packets = packets["packets"]
    summary.sip_messages = stats["sip_messages"]
    summary.malformed = stats["malformed_sip"] + stats["sip_defects"]
    summary.fragments_incomplete = (packets["fragments_timed_out"]
                                    + packets["fragments_overflow"])
    summary.malformed_samples = list(extractor.malformed_samples)
    summary.counters = stats + packets + extractor.stream_stats
    summary.fates = extractor.fates()
    summary.tcp_losses = extractor.tcp_losses()
    summary.not_sip = extractor.not_sip()
