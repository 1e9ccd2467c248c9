"""SIP messages out of TCP segments: reassembly, then SIP or WebSocket framing.

Each stream direction is judged by its first bytes when its start (SYN) was seen:
a SIP start line makes it a SIP stream; an HTTP Upgrade to WebSocket with the "sip"
subprotocol (or the 101 answering it) a SIP-over-WebSocket one; anything else
(HTTP, TLS, SMB...) is not SIP and its bytes are dropped unread, until a gap. A
stream picked up mid-way, or one with a gap, is searched for a SIP start line, for
at most ``RESYNC_BUDGET`` bytes before it is taken for non-SIP.
"""

from collections import Counter

from siptrace.decode.tcp import (GAP_TIMEOUT_NS, IDLE_TIMEOUT_NS, MAX_STREAMS, StreamKey,
                                 TcpReassembler)
from siptrace.sip.detect import MAX_START_LINE, TOKEN_TABLE, looks_like_sip, start_line_ok
from siptrace.sip.framing import MAX_MESSAGE, SipStreamFramer
from siptrace.sip.websocket import (MAX_HANDSHAKE, WebSocketDecoder, handshake_end,
                                    is_sip_upgrade)

RESYNC_BUDGET = 64 << 10  # bytes searched for a SIP start line before giving up
MAX_PENDING = 10000  # messages of other streams waiting for take_other()/finish()
MAX_PENDING_BYTES = 16 << 20  # and their bytes

# What a stream direction is, as far as we know.
_NEW, _SIP, _WS, _HANDSHAKE, _NOT_SIP = range(5)

Message = tuple[int, str, bytes]  # (ts_ns, "tcp" | "ws", raw)


class _Direction:
    __slots__ = ("kind", "framer", "ws", "head")

    def __init__(self, kind: int):
        self.kind = kind
        self.framer: SipStreamFramer | None = None
        self.ws: WebSocketDecoder | None = None
        self.head = b""  # first bytes held until the stream can be judged


class TcpMessageAssembler:
    """TCP ``TransportPacket``s in, SIP messages out (``(ts_ns, transport, raw)``).

    ``feed(pkt)`` returns the messages of the packet's own stream direction.
    Messages that other streams complete meanwhile (when eviction or a timeout
    skips a hole in them) wait in a bounded queue: ``take_other()`` hands them over
    as ``(ts_ns, transport, raw, key)``, and ``finish()`` returns them with the rest.
    ``stats`` counts everything (see the reassembler, framer and WebSocket decoder),
    plus non_sip_streams, non_sip_bytes, ws_streams, ws_messages, ws_non_sip,
    pending_dropped.
    """

    def __init__(self, *, max_streams: int = MAX_STREAMS, max_message: int = MAX_MESSAGE,
                 gap_timeout_ns: int = GAP_TIMEOUT_NS,
                 idle_timeout_ns: int = IDLE_TIMEOUT_NS, **reassembler_limits):
        self.stats = Counter()
        self.max_message = max_message
        self.reassembler = TcpReassembler(self.stats, max_streams=max_streams,
                                          gap_timeout_ns=gap_timeout_ns,
                                          idle_timeout_ns=idle_timeout_ns,
                                          **reassembler_limits)
        self._directions: dict[StreamKey, _Direction] = {}
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
        """Bytes held over all directions (framers, WebSocket decoders, heads)."""
        total = self.reassembler.held_total
        for d in self._directions.values():
            total += len(d.head)
            total += d.framer.buffered if d.framer else 0
            total += d.ws.buffered if d.ws else 0
        return total

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
        return out

    def _data(self, d: _Direction, ts: int, data: bytes, gap: bool) -> list[Message]:
        kind = d.kind
        if kind == _SIP:
            framer = d.framer
            messages = framer.feed(data, ts, gap)
            if not framer.synced and framer.skipped > RESYNC_BUDGET:
                self._not_sip(d, 0)
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
                self._not_sip(d, 0)
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
                return self._not_sip(d, len(head))
            eol = head.find(b"\n", start, start + MAX_START_LINE)
            if eol < 0:
                if len(head) - start >= MAX_START_LINE:
                    return self._not_sip(d, len(head))
                d.head = head
                return []
            line = head[start:eol]
            if start_line_ok(line):
                return self._to_sip(d, ts, head, synced=True)
            if not (line.startswith(b"GET ") and line.rstrip().endswith(b" HTTP/1.1")) \
                    and not line.startswith(b"HTTP/1.1 101"):
                return self._not_sip(d, len(head))
            d.kind = _HANDSHAKE
        end = handshake_end(head)
        if end < 0:
            if len(head) > MAX_HANDSHAKE:
                return self._not_sip(d, len(head))
            d.head = head
            return []
        if not is_sip_upgrade(head[:end]):
            return self._not_sip(d, len(head))
        d.kind = _WS
        d.ws = WebSocketDecoder(self.stats, max_message=self.max_message)
        self.stats["ws_streams"] += 1
        return self._data(d, ts, head[end:], False) if len(head) > end else []

    def _to_sip(self, d: _Direction, ts: int, data: bytes, synced: bool) -> list[Message]:
        d.kind = _SIP
        d.framer = SipStreamFramer(self.stats, synced=synced, max_message=self.max_message)
        messages = d.framer.feed(data, ts)
        return [(t, "tcp", raw) for t, raw in messages]

    def _not_sip(self, d: _Direction, size: int) -> list:
        d.kind = _NOT_SIP
        d.framer = d.ws = None
        d.head = b""
        self.stats["non_sip_streams"] += 1
        self.stats["non_sip_bytes"] += size
        return []
