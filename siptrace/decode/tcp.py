"""TCP stream reassembly, one direction at a time (RFC 9293), for passive capture.

Each direction ``(src, sport, dst, dport)`` is a stream. Data comes out in sequence
order as contiguous chunks: retransmitted bytes are dropped, overlapping segments
trimmed (the first copy of a byte wins), out-of-order segments held until the hole
before them is filled. A hole that cannot be filled (held data past its bounds, held
longer than ``gap_timeout_ns`` of capture time, the stream's end, the end of input)
is skipped and the chunk after it is flagged as following a gap.

Every table is bounded: streams (least recently used evicted), held bytes per stream
and in total, streams idle for ``idle_timeout_ns`` of capture time are closed.
"""

from collections import Counter, OrderedDict
from typing import NamedTuple

from siptrace.decode.packet import FIN, RST, SYN

SEQ_MOD = 1 << 32  # sequence numbers are modulo 2**32 (RFC 9293 section 3.4)
SEQ_HALF = 1 << 31  # a segment "before" the next expected byte is less than half away

MAX_STREAMS = 65536
MAX_HELD_BYTES = 256 << 10  # out-of-order bytes held per stream
MAX_HELD_SEGMENTS = 256  # out-of-order segments held per stream
MAX_HELD_TOTAL = 64 << 20  # out-of-order bytes held over all streams
MAX_JUMP = 16 << 20  # a segment further ahead than this restarts the stream after a gap
GAP_TIMEOUT_NS = 5 * 10**9  # held data waiting this long for a hole: skip the hole
IDLE_TIMEOUT_NS = 600 * 10**9  # a stream silent this long is closed
MAX_CLOSED = 4096  # closed streams remembered, so late retransmissions are dropped
SWEEP_EVERY_NS = 10**9  # how often (capture time) idle streams are looked for

StreamKey = tuple[str, int, str, int]  # (src, sport, dst, dport)


class TcpChunk(NamedTuple):
    """Contiguous stream bytes; ``gap``: bytes are missing right before ``data``
    (or the stream was picked up mid-way); ``end``: the stream is over after it."""

    key: StreamKey
    ts_ns: int
    data: bytes
    gap: bool
    end: bool


class _Stream:
    __slots__ = ("next_seq", "isn", "held", "held_bytes", "held_since", "last_ts",
                 "fin_seq", "started", "gap")

    def __init__(self, next_seq: int, isn: int | None, ts_ns: int):
        self.next_seq = next_seq  # the next byte expected, modulo 2**32
        self.isn = isn  # the SYN's sequence number, None when picked up mid-way
        self.held = {}  # seq -> (data, ts_ns) of out-of-order segments
        self.held_bytes = 0
        self.held_since = 0  # capture time the oldest held segment arrived
        self.last_ts = ts_ns
        self.fin_seq = None  # where the stream ends, once a FIN was seen
        self.started = False  # some data was delivered
        self.gap = isn is None  # the next chunk follows a gap (or a mid-way start)


class TcpReassembler:
    """Per-direction TCP reassembly: segments in, ``TcpChunk``s out.

    ``feed`` returns the chunks that the segment makes available, those of other
    streams ended by eviction or idleness first. Counts go to ``stats``: streams,
    streams_midway, retransmitted, overlaps_trimmed, out_of_order, gaps, gap_bytes,
    held_overflow, streams_evicted, streams_idle, streams_ended.
    """

    def __init__(self, stats: Counter | None = None, *, max_streams: int = MAX_STREAMS,
                 max_held_bytes: int = MAX_HELD_BYTES,
                 max_held_segments: int = MAX_HELD_SEGMENTS,
                 max_held_total: int = MAX_HELD_TOTAL, gap_timeout_ns: int = GAP_TIMEOUT_NS,
                 idle_timeout_ns: int = IDLE_TIMEOUT_NS):
        self.stats = Counter() if stats is None else stats
        self.max_streams = max_streams
        self.max_held_bytes = max_held_bytes
        self.max_held_segments = max_held_segments
        self.max_held_total = max_held_total
        self.gap_timeout_ns = gap_timeout_ns
        self.idle_timeout_ns = idle_timeout_ns
        self.held_total = 0
        self._streams: OrderedDict[StreamKey, _Stream] = OrderedDict()
        self._closed: OrderedDict[StreamKey, int] = OrderedDict()  # key -> final next_seq
        self._holding: set[StreamKey] = set()  # streams that may hold segments
        self._next_sweep = 0

    def __len__(self) -> int:
        return len(self._streams)

    def feed(self, pkt) -> list[TcpChunk]:
        """Take one TCP segment (a ``TransportPacket``)."""
        ts = pkt.ts_ns
        out = []
        if ts >= self._next_sweep:
            self._sweep(ts, out)
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        flags = pkt.flags
        data = pkt.payload
        seq = pkt.seq
        stream = self._streams.get(key)
        if stream is None:
            if not data and not flags & SYN:
                return out  # a bare ACK, FIN or RST of a stream we do not know
            stream = self._open(key, seq, flags, data, ts, out)
            if stream is None:
                return out
        else:
            self._streams.move_to_end(key)
            if flags & SYN and seq != stream.isn:  # the 4-tuple reused by a new connection
                self._end(key, stream, ts, out)
                stream = self._open(key, seq, flags, data, ts, out)
        stream.last_ts = ts
        if flags & SYN:
            seq = (seq + 1) % SEQ_MOD
        if flags & FIN:
            stream.fin_seq = (seq + len(data)) % SEQ_MOD
        if data:
            self._add(key, stream, seq, data, ts, out)
        if flags & RST or (stream.fin_seq is not None and stream.fin_seq == stream.next_seq):
            self._end(key, stream, ts, out)
        return out

    def finish(self) -> list[TcpChunk]:
        """End of input: every stream's held data is delivered (after its holes)."""
        out = []
        for key, stream in list(self._streams.items()):
            self._end(key, stream, stream.last_ts, out)
        return out

    # -- internals -----------------------------------------------------------------

    def _open(self, key, seq: int, flags: int, data: bytes, ts: int, out: list):
        """A new stream, or None for a late segment of a stream already closed."""
        closed = self._closed.pop(key, None)
        if closed is not None and not flags & SYN:
            behind = (closed - seq) % SEQ_MOD
            if 0 < behind < SEQ_HALF or (behind == 0 and not data):
                self.stats["retransmitted"] += 1
                self._closed[key] = closed
                return None
        if len(self._streams) >= self.max_streams:
            old_key, old = next(iter(self._streams.items()))
            self.stats["streams_evicted"] += 1
            self._end(old_key, old, ts, out)
        if flags & SYN:
            stream = _Stream((seq + 1) % SEQ_MOD, seq, ts)
        else:
            stream = _Stream(seq, None, ts)
            self.stats["streams_midway"] += 1
        self.stats["streams"] += 1
        self._streams[key] = stream
        return stream

    def _add(self, key, stream: _Stream, seq: int, data: bytes, ts: int, out: list) -> None:
        ahead = (seq - stream.next_seq) % SEQ_MOD
        if ahead >= SEQ_HALF:  # starts before the next byte expected
            behind = SEQ_MOD - ahead
            if behind >= len(data):
                self.stats["retransmitted"] += 1
                return
            self.stats["overlaps_trimmed"] += 1
            data = data[behind:]
            ahead = 0
        if ahead == 0:
            stream.next_seq = (stream.next_seq + len(data)) % SEQ_MOD
            if stream.held:
                data, ts = self._drain(stream, [data], ts)
            self._deliver(key, stream, data, ts, out)
            return
        if ahead > MAX_JUMP:  # far ahead: we lost too much, start over from here
            self._flush(key, stream, out)
            self._skip_to(stream, seq)
            self._add(key, stream, seq, data, ts, out)
            return
        self.stats["out_of_order"] += 1
        prior = stream.held.get(seq)
        if prior is not None:
            if len(prior[0]) >= len(data):
                self.stats["retransmitted"] += 1
                return
            self._unhold(stream, len(prior[0]))
        if not stream.held:
            stream.held_since = ts
            self._holding.add(key)
        stream.held[seq] = (data, ts)
        stream.held_bytes += len(data)
        self.held_total += len(data)
        if (stream.held_bytes > self.max_held_bytes
                or len(stream.held) > self.max_held_segments
                or self.held_total > self.max_held_total
                or ts - stream.held_since > self.gap_timeout_ns):
            self.stats["held_overflow"] += 1
            self._flush(key, stream, out)

    def _drain(self, stream: _Stream, parts: list, ts: int) -> tuple[bytes, int]:
        """Append the held segments that now follow the stream's data without a hole."""
        for seq in sorted(stream.held, key=lambda s: (s - stream.next_seq) % SEQ_MOD):
            ahead = (seq - stream.next_seq) % SEQ_MOD
            if 0 < ahead < SEQ_HALF:
                break
            data, held_ts = stream.held.pop(seq)
            self._unhold(stream, len(data))
            ts = max(ts, held_ts)
            if ahead:  # starts before the next byte: trim what was delivered already
                behind = SEQ_MOD - ahead
                if behind >= len(data):
                    self.stats["retransmitted"] += 1
                    continue
                self.stats["overlaps_trimmed"] += 1
                data = data[behind:]
            parts.append(data)
            stream.next_seq = (stream.next_seq + len(data)) % SEQ_MOD
        if stream.held:
            stream.held_since = min(t for _, t in stream.held.values())
        return b"".join(parts), ts

    def _flush(self, key, stream: _Stream, out: list) -> None:
        """Skip the holes: deliver every held segment in order, after gaps."""
        while stream.held:
            first = min(stream.held, key=lambda s: (s - stream.next_seq) % SEQ_MOD)
            self._skip_to(stream, first)
            data, ts = stream.held.pop(first)
            self._unhold(stream, len(data))
            stream.next_seq = (first + len(data)) % SEQ_MOD
            data, ts = self._drain(stream, [data], ts)
            self._deliver(key, stream, data, ts, out)

    def _skip_to(self, stream: _Stream, seq: int) -> None:
        """Move the stream on to ``seq``, counting the hole skipped (if any)."""
        hole = (seq - stream.next_seq) % SEQ_MOD
        if hole and hole < SEQ_HALF:
            self.stats["gaps"] += 1
            self.stats["gap_bytes"] += hole
            stream.gap = True
        stream.next_seq = seq

    def _unhold(self, stream: _Stream, size: int) -> None:
        stream.held_bytes -= size
        self.held_total -= size

    def _deliver(self, key, stream: _Stream, data: bytes, ts: int, out: list) -> None:
        if data:
            out.append(TcpChunk(key, ts, data, stream.gap, False))
            stream.gap = False
            stream.started = True

    def _end(self, key, stream: _Stream, ts: int, out: list) -> None:
        """Close a stream: held data delivered after its holes, then an end chunk."""
        self._flush(key, stream, out)
        del self._streams[key]
        self.stats["streams_ended"] += 1
        out.append(TcpChunk(key, ts, b"", False, True))
        self._closed[key] = stream.next_seq
        if len(self._closed) > MAX_CLOSED:
            self._closed.popitem(last=False)

    def _sweep(self, now: int, out: list) -> None:
        """Close the streams idle for too long; skip holes waiting too long."""
        self._next_sweep = now + SWEEP_EVERY_NS
        idle_before = now - self.idle_timeout_ns
        streams = self._streams
        while streams:
            key, stream = next(iter(streams.items()))
            if stream.last_ts >= idle_before:
                break
            self.stats["streams_idle"] += 1
            self._end(key, stream, stream.last_ts, out)
        late = now - self.gap_timeout_ns
        for key in list(self._holding):
            stream = streams.get(key)
            if stream is None or not stream.held:
                self._holding.discard(key)
            elif stream.held_since < late:
                self.stats["held_overflow"] += 1
                self._flush(key, stream, out)
                self._holding.discard(key)
