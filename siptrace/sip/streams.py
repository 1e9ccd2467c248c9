"""SIP messages out of TCP segments: reassembly, then SIP or WebSocket framing.

Each stream direction is judged by its first bytes when its start (SYN) was seen:
a SIP start line makes it a SIP stream; an HTTP Upgrade to WebSocket with the "sip"
subprotocol (or the 101 answering it) a SIP-over-WebSocket one; anything else
(HTTP, TLS, SMB...) is not SIP and its bytes are dropped unread, until a gap. A
stream picked up mid-way, or one with a gap, is searched for a SIP start line, for
at most ``RESYNC_BUDGET`` bytes before it is taken for non-SIP.

The bytes held over all streams (out-of-order segments, incomplete messages, heads
not judged yet, WebSocket state) are bounded by ``max_buffered``: past it, the
direction that has held bytes longest without completing a message is cut first
(a peer trickling in a large Content-Length, or opening many such streams, loses
its own messages, not everyone's memory). A cut message whose length is known has
the rest of it skipped exactly; otherwise the framer searches for the next start
line. Cuts are counted in ``buffer_cuts`` and ``buffer_cut_bytes``.
"""

from collections import Counter, OrderedDict

from siptrace.decode.payloads import payload_kind
from siptrace.decode.tcp import (GAP_TIMEOUT_NS, IDLE_TIMEOUT_NS, MAX_STREAMS, StreamKey,
                                 TcpReassembler)
from siptrace.sip.detect import MAX_START_LINE, TOKEN_TABLE, looks_like_sip, start_line_ok
from siptrace.sip.framing import MAX_MESSAGE, SipStreamFramer
from siptrace.sip.websocket import (MAX_HANDSHAKE, WebSocketDecoder, handshake_end,
                                    is_sip_upgrade)

RESYNC_BUDGET = 64 << 10  # bytes searched for a SIP start line before giving up
MAX_PENDING = 10000  # messages of other streams waiting for take_other()/finish()
MAX_PENDING_BYTES = 16 << 20  # and their bytes
MAX_BUFFERED = 32 << 20  # bytes held over all streams (the stream_buffer_bytes setting)

# What a stream direction is, as far as we know.
_NEW, _SIP, _WS, _HANDSHAKE, _NOT_SIP = range(5)

Message = tuple[int, str, bytes]  # (ts_ns, "tcp" | "ws", raw)


class _Direction:
    __slots__ = ("kind", "framer", "ws", "head", "held")

    def __init__(self, kind: int):
        self.kind = kind
        self.framer: SipStreamFramer | None = None
        self.ws: WebSocketDecoder | None = None
        self.head = b""  # first bytes held until the stream can be judged
        self.held = 0  # bytes held, as last counted in the assembler's total

    def size(self) -> int:
        """Bytes held now: head, framer buffer, WebSocket buffers and state."""
        return (len(self.head) + (self.framer.buffered if self.framer else 0)
                + (self.ws.buffered + self.ws.state_bytes if self.ws else 0))


class TcpMessageAssembler:
    """TCP ``TransportPacket``s in, SIP messages out (``(ts_ns, transport, raw)``).

    ``feed(pkt)`` returns the messages of the packet's own stream direction.
    Messages that other streams complete meanwhile (when eviction or a timeout
    skips a hole in them) wait in a bounded queue: ``take_other()`` hands them over
    as ``(ts_ns, transport, raw, key)``, and ``finish()`` returns them with the rest.
    ``stats`` counts everything (see the reassembler, framer and WebSocket decoder),
    plus non_sip_streams, non_sip_bytes, ws_streams, ws_messages, ws_non_sip,
    pending_dropped, buffer_cuts, buffer_cut_bytes.
    """

    def __init__(self, *, max_streams: int = MAX_STREAMS, max_message: int = MAX_MESSAGE,
                 max_buffered: int = MAX_BUFFERED, gap_timeout_ns: int = GAP_TIMEOUT_NS,
                 idle_timeout_ns: int = IDLE_TIMEOUT_NS, **reassembler_limits):
        self.stats = Counter()
        self.not_sip_kinds: Counter = Counter()  # streams not SIP, by what they carry
        self.max_message = max_message
        self.max_buffered = max_buffered
        reassembler_limits.setdefault("max_held_total", max_buffered)
        self.reassembler = TcpReassembler(self.stats, max_streams=max_streams,
                                          gap_timeout_ns=gap_timeout_ns,
                                          idle_timeout_ns=idle_timeout_ns,
                                          **reassembler_limits)
        self._directions: dict[StreamKey, _Direction] = {}
        # Directions holding bytes, the one longest without a completed message first.
        self._holding: OrderedDict[StreamKey, _Direction] = OrderedDict()
        self._held = 0  # bytes held by the directions (the reassembler counts its own)
        self._pending: list = []
        self._pending_bytes = 0

    def feed(self, pkt) -> list[Message]:
        """Take one TCP segment; the SIP messages of its direction it completes."""
        chunks = self.reassembler.feed(pkt)
        if not chunks:
            return []
        out = []
        own = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        for key, ts, data, gap, end in chunks:
            messages = self._chunk(key, ts, data, gap, end)
            if messages:
                if key == own:
                    out += messages
                else:
                    self._hold_other(key, messages)
        return out

    def take_other(self) -> list[tuple[int, str, bytes, StreamKey]]:
        """Messages other streams completed during earlier ``feed`` calls."""
        if not self._pending:
            return []
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        return pending

    def finish(self) -> list[tuple[int, str, bytes, StreamKey]]:
        """End of input: what can still be framed, with its stream; the rest counted."""
        out = self.take_other()
        for key, ts, data, gap, end in self.reassembler.finish():
            out += [(t, transport, raw, key)
                    for t, transport, raw in self._chunk(key, ts, data, gap, end)]
        return out

    @property
    def buffered(self) -> int:
        """Bytes held over all streams: what ``max_buffered`` bounds."""
        return self.reassembler.held_total + self._held

    # -- internals -----------------------------------------------------------------

    def _hold_other(self, key, messages: list[Message]) -> None:
        for ts, transport, raw in messages:
            if len(self._pending) >= MAX_PENDING \
                    or self._pending_bytes + len(raw) > MAX_PENDING_BYTES:
                self.stats["pending_dropped"] += 1
                continue
            self._pending.append((ts, transport, raw, key))
            self._pending_bytes += len(raw)

    def _chunk(self, key, ts: int, data: bytes, gap: bool, end: bool) -> list[Message]:
        d = self._directions.get(key)
        if d is None:
            if not data:
                return []
            d = self._directions[key] = _Direction(_SIP if gap else _NEW)
            if gap:
                d.framer = SipStreamFramer(self.stats, synced=False,
                                           max_message=self.max_message)
        out = self._data(d, ts, data, gap) if data else []
        if end:
            if d.framer is not None:
                d.framer.finish()
            if d.ws is not None:
                d.ws.finish()
            del self._directions[key]
            if d.held:
                self._account(key, d, 0, False)
        else:
            size = d.framer.buffered if d.kind == _SIP else d.size()
            if size != d.held or (size and out):
                self._account(key, d, size, bool(out))
        return out

    def _account(self, key, d: _Direction, size: int, progressed: bool) -> None:
        """Keep the total and the age order: a direction is as old as the time it
        started holding bytes, or last completed a message while holding some."""
        grown = size > d.held
        self._held += size - d.held
        if not size:
            self._holding.pop(key, None)
        elif not d.held or progressed:
            self._holding[key] = d
            self._holding.move_to_end(key)
        d.held = size
        if grown and self._held + self.reassembler.held_total > self.max_buffered:
            self._cut_oldest()

    def _cut_oldest(self) -> None:
        """Over the bound: cut the directions holding bytes longest until within it."""
        stats = self.stats
        limit = self.max_buffered - self.reassembler.held_total
        while self._held > limit and self._holding:
            key, d = self._holding.popitem(last=False)
            stats["buffer_cuts"] += 1
            stats["buffer_cut_bytes"] += d.held
            self._held -= d.held
            d.held = 0
            d.head = b""
            if d.framer is not None:
                d.framer.cut()
            elif d.ws is not None:  # WebSocket frames cannot be found again
                d.ws.finish()
                d.kind, d.ws = _NOT_SIP, None
            else:  # a head too slow to be judged
                d.kind = _NOT_SIP

    def _data(self, d: _Direction, ts: int, data: bytes, gap: bool) -> list[Message]:
        kind = d.kind
        if kind == _SIP:
            framer = d.framer
            messages = framer.feed(data, ts, gap)
            if not framer.synced and framer.skipped > RESYNC_BUDGET:
                self._not_sip(d)
            return [(t, "tcp", raw) for t, raw in messages]
        if kind == _NOT_SIP:
            if not gap:
                self.stats["non_sip_bytes"] += len(data)
                return []
            d.kind = _SIP  # a gap: look for SIP again
            d.framer = SipStreamFramer(self.stats, synced=False, max_message=self.max_message)
            return self._data(d, ts, data, gap)
        if kind == _WS:
            messages = []
            for t, payload in d.ws.feed(data, ts, gap):
                if looks_like_sip(payload):
                    messages.append((t, "ws", payload))
                else:
                    self.stats["ws_non_sip"] += 1
            self.stats["ws_messages"] += len(messages)
            if d.ws.broken:
                self._not_sip(d)
            return messages
        # _NEW or _HANDSHAKE: the first bytes decide.
        head = d.head + data if d.head else data
        d.head = b""
        if gap:  # bytes lost before these: not the stream's start any more
            return self._to_sip(d, ts, head, synced=False)
        if kind == _NEW:
            start = 0
            while start < len(head) and head[start] in (13, 10):
                start += 1  # CRLF keep-alives before the first message
            if start == len(head):
                return []
            if not TOKEN_TABLE[head[start]]:
                return self._not_sip(d, head)
            eol = head.find(b"\n", start, start + MAX_START_LINE)
            if eol < 0:
                if len(head) - start >= MAX_START_LINE:
                    return self._not_sip(d, head)
                d.head = head
                return []
            line = head[start:eol]
            if start_line_ok(line):
                return self._to_sip(d, ts, head, synced=True)
            if not (line.startswith(b"GET ") and line.rstrip().endswith(b" HTTP/1.1")) \
                    and not line.startswith(b"HTTP/1.1 101"):
                return self._not_sip(d, head)
            d.kind = _HANDSHAKE
        end = handshake_end(head)
        if end < 0:
            if len(head) > MAX_HANDSHAKE:
                return self._not_sip(d, head)
            d.head = head
            return []
        if not is_sip_upgrade(head[:end]):
            return self._not_sip(d, head)
        d.kind = _WS
        d.ws = WebSocketDecoder(self.stats, max_message=self.max_message)
        self.stats["ws_streams"] += 1
        return self._data(d, ts, head[end:], False) if len(head) > end else []

    def _to_sip(self, d: _Direction, ts: int, data: bytes, synced: bool) -> list[Message]:
        d.kind = _SIP
        d.framer = SipStreamFramer(self.stats, synced=synced, max_message=self.max_message)
        messages = d.framer.feed(data, ts)
        return [(t, "tcp", raw) for t, raw in messages]

    def _not_sip(self, d: _Direction, head: bytes = b"") -> list:
        """The direction is not SIP: what it seems to carry (by its first bytes,
        ``head``) is counted in ``not_sip_kinds``."""
        d.kind = _NOT_SIP
        d.framer = d.ws = None
        d.head = b""
        self.stats["non_sip_streams"] += 1
        self.stats["non_sip_bytes"] += len(head)
        self.not_sip_kinds[payload_kind(head)] += 1
        return []
