"""SIP over WebSocket (RFC 7118): the HTTP Upgrade, then RFC 6455 frames.

Each WebSocket data message (text or binary, possibly fragmented over continuation
frames) carries exactly one SIP message (RFC 7118 section 5). Client frames are
masked; control frames (close, ping, pong) may sit between fragments and are
skipped. Messages compressed with permessage-deflate (RFC 7692, RSV1 set) are
inflated. A gap in the stream cannot be resynchronised: the decoder stops.
"""

import re
import zlib
from collections import Counter
from struct import Struct

from siptrace.sip.framing import MESSAGE_STEP_NS, held_after, held_then

# RFC 6455 section 5.2: opcodes and header bits.
OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE = 0x8  # 0x8-0xF are control frames (0x9 ping, 0xA pong)
FIN_BIT, RSV1_BIT, RSV23_BITS, MASK_BIT = 0x80, 0x40, 0x30, 0x80
DEFLATE_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 section 7.2.2

MAX_WS_MESSAGE = 1 << 20
MAX_HANDSHAKE = 16 << 10  # HTTP Upgrade request or 101 response, headers included
INFLATE_STATE = 40 << 10  # zlib inflate state and 32 KB window, kept between messages

_U16 = Struct("!H")
_U64 = Struct("!Q")

# RFC 6455 section 4 and RFC 7118 section 4: the handshake headers that matter.
_UPGRADE = re.compile(rb"\nupgrade[ \t]*:[ \t]*websocket[ \t]*\r?\n", re.I)
_SIP_PROTOCOL = re.compile(rb"\nsec-websocket-protocol[ \t]*:[^\n]*\bsip\b", re.I)


def handshake_end(head: bytes) -> int:
    """Where the bytes after an HTTP header section start; -1 if not complete."""
    end = head.find(b"\r\n\r\n")
    return end + 4 if end >= 0 else -1


def is_sip_upgrade(header: bytes) -> bool:
    """An HTTP request or 101 response upgrading to WebSocket with the "sip"
    subprotocol (RFC 7118 section 4)."""
    return bool(_UPGRADE.search(header)) and bool(_SIP_PROTOCOL.search(header))


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR with the 4-byte masking key (RFC 6455 section 5.3), as one big integer."""
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


class WebSocketDecoder:
    """Frames of one direction in, whole data messages out; buffers capped.

    ``feed`` returns ``(ts_ns, payload)`` per data message completed; counts go to
    ``stats``: ws_frames, ws_control_frames, ws_overflow, ws_bad_frames.
    """

    __slots__ = ("stats", "max_message", "broken", "_buf", "_parts", "_size",
                 "_compressed", "_inflater", "_discard")

    def __init__(self, stats: Counter | None = None, *, max_message: int = MAX_WS_MESSAGE):
        self.stats = Counter() if stats is None else stats
        self.max_message = max_message
        self.broken = False  # after a gap or a frame that is not WebSocket
        self._buf = b""
        self._parts: list[bytes] | None = None  # fragments of the message in progress
        self._size = 0
        self._compressed = False
        self._inflater = None
        self._discard = 0  # bytes still to drop of an oversized frame

    @property
    def buffered(self) -> int:
        return len(self._buf) + self._size

    @property
    def state_bytes(self) -> int:
        """Memory held besides ``buffered``: the inflate state, once a message was inflated."""
        return 0 if self._inflater is None else INFLATE_STATE

    def feed(self, data: bytes, ts_ns: int, gap: bool = False) -> list[tuple[int, bytes]]:
        if gap or self.broken:
            self._stop()
            return []
        if self._discard:
            skip = min(self._discard, len(data))
            self._discard -= skip
            data = data[skip:]
        buf = held_then(self._buf, data)
        out = []
        pos, n = 0, len(buf)
        stats = self.stats
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = _U16.unpack_from(buf, pos + 2)[0]
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = _U64.unpack_from(buf, pos + 2)[0]
                head = 10
            if b1 & MASK_BIT:
                head += 4
            opcode = b0 & 0x0F
            if b0 & RSV23_BITS or opcode in (3, 4, 5, 6, 7) or opcode > 0xA \
                    or (opcode >= OP_CLOSE and (length > 125 or not b0 & FIN_BIT)):
                stats["ws_bad_frames"] += 1
                self._stop()
                return out
            if head + length > self.max_message:
                stats["ws_overflow"] += 1
                self._parts, self._size = None, 0
                self._discard = max(0, pos + head + length - n)
                pos = min(n, pos + head + length)
                continue
            if n - pos < head + length:
                break
            stats["ws_frames"] += 1
            payload = buf[pos + head:pos + head + length]
            if b1 & MASK_BIT:
                payload = unmask(payload, buf[pos + head - 4:pos + head])
            pos += head + length
            if opcode >= OP_CLOSE:
                stats["ws_control_frames"] += 1
                continue
            if opcode != OP_CONTINUATION:  # a new message (an unfinished one is lost)
                if self._parts is not None:
                    stats["ws_bad_frames"] += 1
                self._parts, self._size = [], 0
                self._compressed = bool(b0 & RSV1_BIT)
            elif self._parts is None:
                stats["ws_bad_frames"] += 1  # a continuation with no message started
                continue
            self._parts.append(payload)
            self._size += len(payload)
            if self._size > self.max_message:
                stats["ws_overflow"] += 1
                self._parts, self._size = None, 0
            elif b0 & FIN_BIT:
                message = b"".join(self._parts)
                self._parts, self._size = None, 0
                if self._compressed:
                    message = self._inflate(message)
                    if message is None:
                        return out
                out.append((ts_ns + len(out) * MESSAGE_STEP_NS, message))
        self._buf = held_after(buf, self._buf, pos)
        return out

    def _inflate(self, message: bytes) -> bytes | None:
        """permessage-deflate (RFC 7692 section 7.2.2), context kept across messages."""
        if self._inflater is None:
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = self._inflater.decompress(message + DEFLATE_TAIL, self.max_message)
        except zlib.error:
            self.stats["ws_bad_frames"] += 1
            self._stop()
            return None
        if self._inflater.unconsumed_tail:
            self.stats["ws_overflow"] += 1
            self._stop()
            return None
        return data

    def _stop(self) -> None:
        """Give up on this direction: frames cannot be found again after a loss."""
        if not self.broken:
            self.broken = True
            if self._parts is not None or self._buf:
                self.stats["incomplete_messages"] += 1
        self._buf, self._parts, self._size, self._inflater = b"", None, 0, None

    def finish(self) -> None:
        self._stop()
