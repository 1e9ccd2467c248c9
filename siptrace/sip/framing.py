"""SIP messages out of one direction of a TCP stream (RFC 3261 section 18.3).

A message is its header section up to the empty line, then Content-Length bytes of
body; a message without Content-Length has no body on a stream. Segment boundaries
(PSH included) mean nothing. CRLF keep-alives between messages are skipped. After a
gap, or when the bytes at a message boundary are not a start line, the framer
searches for the next start line at a line start and counts the bytes it skipped.

The line-end style of a message is taken from its start line: CRLF (as RFC 3261
requires) means the header section ends at the first CRLF CRLF; a bare LF means at
the first empty line, LF or CRLF.
"""

import re
from collections import Counter

from siptrace.sip.detect import (MAX_START_LINE, REQUEST_SUFFIX, SIP_VERSION, STATUS_PREFIX,
                                 start_line_ok)

MAX_MESSAGE = 1 << 20  # whole message, body included
MAX_HEADER = 64 << 10  # header section
# A message over MAX_MESSAGE is skipped exactly, by its Content-Length, up to this
# length; a longer Content-Length is taken for garbage and the stream resynchronised.
MAX_SKIP = 64 << 20
MAX_DIGITS = 18  # a longer Content-Length is garbage too
MESSAGE_STEP_NS = 1000  # i-th message completed by one segment: segment time + i us

# Content-Length, full or compact form (RFC 3261 sections 7.3.3, 20.14).
_CONTENT_LENGTH_LINE = b"\nContent-Length:"
_CONTENT_LENGTH_ANY = re.compile(rb"\n[ \t]*(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)", re.I)



def held_then(held, data: bytes):
    """The bytes to frame: ``data`` after those ``held`` from earlier segments (held is
    a bytearray, extended in place, when not empty), or ``data`` itself."""
    if held:
        held += data
        return held
    return data


def held_after(buf, held, pos: int):
    """What to hold once ``buf`` (from ``held_then``) is framed up to ``pos``."""
    if pos >= len(buf):
        return b""
    if buf is held:
        del buf[:pos]
        return buf
    return bytearray(buf[pos:])

class SipStreamFramer:
    """Bytes of one stream direction in, whole SIP messages out; buffers capped.

    ``feed`` returns ``(ts_ns, raw)`` for each message the data completes, the i-th
    one stamped ``ts_ns + i * MESSAGE_STEP_NS``. Counts go to ``stats``: messages,
    keepalives, resyncs, bytes_skipped, overflow, bad_content_length,
    incomplete_messages (lost to a gap or the stream's end).
    """

    __slots__ = ("stats", "max_message", "max_header", "skipped", "_buf", "_need",
                 "_scan", "_synced", "_discard")

    def __init__(self, stats: Counter | None = None, *, synced: bool = True,
                 max_message: int = MAX_MESSAGE, max_header: int = MAX_HEADER):
        self.stats = Counter() if stats is None else stats
        self.max_message = max_message
        self.max_header = min(max_header, max_message)
        self.skipped = 0  # bytes skipped since the framer last found a start line
        self._buf = b""  # bytes (whole segment) or bytearray (held across segments)
        self._need = 0  # length of the message at the buffer start, once known
        self._scan = 0  # where to resume the search for the header end
        self._synced = synced  # the buffer starts at a message boundary
        self._discard = 0  # bytes still to drop of an oversized message

    @property
    def buffered(self) -> int:
        """Bytes held for a message not complete yet."""
        return len(self._buf)

    @property
    def synced(self) -> bool:
        return self._synced

    def feed(self, data: bytes, ts_ns: int, gap: bool = False) -> list[tuple[int, bytes]]:
        """Add the next bytes of the stream; ``gap`` says bytes are missing before them."""
        stats = self.stats
        if gap:
            self._lose()
            self._synced = False
            self.skipped = 0
        if self._discard:
            if len(data) <= self._discard:
                self._discard -= len(data)
                stats["bytes_skipped"] += len(data)
                return []
            data = data[self._discard:]
            stats["bytes_skipped"] += self._discard
            self._discard = 0
        buf = held_then(self._buf, data)
        out = []
        pos, n = 0, len(buf)
        while pos < n:
            if not self._synced:
                pos = self._resync(buf, pos)
                if not self._synced:
                    break
            need = self._need
            if not need:
                c = buf[pos]
                if c == 13 or c == 10:  # CRLF keep-alive (RFC 5626 section 3.5.1)
                    while pos < n and buf[pos] in (13, 10):
                        pos += 1
                    stats["keepalives"] += 1
                    continue
                need = self._measure(buf, pos, n)
                if need <= 0:
                    if need == 0:
                        break  # the header section is not complete yet
                    # Not a message (or one whose header is too long): skip its first
                    # line, then search for the next start line.
                    stats["bytes_skipped"] += -need - pos
                    self.skipped += -need - pos
                    pos = -need
                    self._synced = False
                    self._scan = 0
                    continue
                if need > self.max_message:
                    stats["overflow"] += 1
                    if need > MAX_SKIP:  # skip the start line, then resync
                        eol = buf.find(b"\n", pos) + 1
                        stats["bytes_skipped"] += eol - pos
                        pos = eol
                        self._scan = 0
                        self._synced = False
                        continue
                    stats["bytes_skipped"] += min(need, n - pos)
                    self._discard = max(0, need - (n - pos))
                    pos = min(n, pos + need)
                    self._scan = 0
                    continue
                self._need = need
            if n - pos < need:
                break
            out.append((ts_ns + len(out) * MESSAGE_STEP_NS, bytes(buf[pos:pos + need])))
            pos += need
            self._need = self._scan = 0
        if out:
            stats["messages"] += len(out)
        self._keep(buf, pos)
        return out

    def finish(self) -> None:
        """End of the stream: a message still incomplete is counted as such."""
        self._lose()

    def cut(self) -> None:
        """Drop what is buffered (a bound over all streams ran out): the rest of a
        message of known length is skipped exactly, else the next start line is sought."""
        if self._need:
            self._discard = self._need - len(self._buf)
        else:
            self._synced = False
        self._buf = b""
        self._need = self._scan = 0

    def _lose(self) -> None:
        """Drop what is buffered; count it when it was the start of a message."""
        if self._synced and (self._need or self._buf.strip(b"\r\n")):
            self.stats["incomplete_messages"] += 1
        elif self._buf:
            self.stats["bytes_skipped"] += len(self._buf)
        self._buf = b""
        self._need = self._scan = self._discard = 0

    def _keep(self, buf, pos: int) -> None:
        """Hold the bytes from ``pos`` for the next segment."""
        self._buf = held_after(buf, self._buf, pos)

    def _measure(self, buf, pos: int, n: int) -> int:
        """Length of the message at ``pos``; 0 when more bytes are needed; ``-p``
        when ``pos`` does not start a SIP message, ``p`` being where its line ends."""
        eol = buf.find(b"\n", pos, pos + MAX_START_LINE)
        if eol < 0:
            return -(pos + MAX_START_LINE) if n - pos >= MAX_START_LINE else 0
        crlf = buf[eol - 1] == 13
        line_end = eol - 1 if crlf else eol
        if buf[pos:pos + 8] != STATUS_PREFIX \
                and buf[max(pos, line_end - 8):line_end] != REQUEST_SUFFIX:
            return -(eol + 1)
        limit = min(n, pos + self.max_header)
        start = max(eol - 1, pos + self._scan)
        if crlf:
            end = buf.find(b"\r\n\r\n", start, limit)
            body = end + 4
        else:
            end = buf.find(b"\n\n", start, limit)
            crlf_end = buf.find(b"\n\r\n", start, limit if end < 0 else end)
            body = end + 2
            if crlf_end >= 0:
                end, body = crlf_end, crlf_end + 3
        if end < 0:
            if limit - pos >= self.max_header:
                self.stats["overflow"] += 1
                return -(eol + 1)
            self._scan = max(0, n - pos - 4)
            return 0
        return body - pos + self._content_length(buf, pos, body)

    def _content_length(self, buf, pos: int, body: int) -> int:
        """The Content-Length value of the header section ``buf[pos:body]``, 0 if none."""
        i = buf.find(_CONTENT_LENGTH_LINE, pos, body)
        if i >= 0:
            value = buf[i + 16:buf.find(b"\n", i + 16, body)].strip()
        else:
            m = _CONTENT_LENGTH_ANY.search(buf, pos, body)
            if m is None:
                return 0
            value = m.group(1).strip()
        if value.isdigit():
            return int(value) if len(value) <= MAX_DIGITS else MAX_SKIP + 1
        self.stats["bad_content_length"] += 1
        return 0

    def _resync(self, buf, pos: int) -> int:
        """Skip to the next start line at a line start (``pos`` counts as one);
        returns its position, or where to keep bytes from when there is none yet."""
        stats = self.stats
        limit = buf.rfind(b"\n", pos) + 1  # only whole lines are searched
        i = pos
        while limit:
            j = buf.find(SIP_VERSION, i, limit)
            if j < 0:
                break
            eol = buf.find(b"\n", j, limit)
            if buf[j + 7] == 32 and (j == pos or buf[j - 1] == 10):
                start = j  # a status line candidate
            else:
                start = max(pos, buf.rfind(b"\n", pos, j) + 1)  # a request line
            if start_line_ok(buf[start:eol]):
                skipped = start - pos
                stats["resyncs"] += 1
                stats["bytes_skipped"] += skipped
                self.skipped = 0
                self._synced = True
                self._need = self._scan = 0
                return start
            i = j + 7
        # No start line in the whole lines: keep only a last line short enough to be one.
        n = len(buf)
        keep_from = max(pos, limit) if n - max(pos, limit) < MAX_START_LINE else n
        stats["bytes_skipped"] += keep_from - pos
        self.skipped += keep_from - pos
        return keep_from
