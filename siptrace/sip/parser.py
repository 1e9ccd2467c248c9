"""SIP message parsing (RFC 3261 section 7): the few fields tracing needs, fast.

What is required. A message is SIP when its start line is a request line or a status
line: that is what Wireshark needs to list a packet as SIP, and siptrace stores every
message Wireshark lists. So only a bad start line raises ``SipParseError``. The rest
is taken as Wireshark takes it, and what was tolerated is named in
``SipMessage.defects``:

- a missing Call-ID gives '', a missing or unreadable CSeq gives 0 and '', a missing
  From or To gives an empty tag (the original module stores what it finds too);
- a Content-Length that is not a number counts as 0, as Wireshark shows it;
- header lines without a colon are skipped, as is a last line cut short (datagrams
  cut by the sender or the capture, e.g. a BYE ending in "Content-Lengt");
- a header section with no empty line after it runs to the end of the bytes.

When a header is repeated the first one counts, except Via where every value counts.
Values are decoded as UTF-8, undecodable bytes replaced (as Wireshark shows them).
"""

import re

from siptrace.errors import SipParseError
from siptrace.sip.detect import SIP_VERSION, STATUS_PREFIX, TOKEN_CHARS
from siptrace.sip.message import SipMessage
from siptrace.sip.params import header_tag, split_header_values  # noqa: F401 (re-export)

MAX_HEADER_LINES = 512  # lines split off for the fast path; longer headers take the slow one
MAX_DIGITS = 18  # longer CSeq numbers and Content-Lengths are garbage (int() caps at 4300)

# Header keys the parser keeps; 0 means "known, not needed".
_VIA, _FROM, _TO, _CALL_ID, _CSEQ, _CONTENT_LENGTH = 1, 2, 3, 4, 5, 6

# Lower-cased names of the headers kept, with their compact forms (RFC 3261 section
# 7.3.3 and 20). The other compact forms name headers the parser skips.
_WANTED = {
    b"via": _VIA, b"v": _VIA,
    b"from": _FROM, b"f": _FROM,
    b"to": _TO, b"t": _TO,
    b"call-id": _CALL_ID, b"i": _CALL_ID,
    b"cseq": _CSEQ,
    b"content-length": _CONTENT_LENGTH, b"l": _CONTENT_LENGTH,
}
# Every compact form: RFC 3261 (i f t v l m k s c e), RFC 3515 (r), RFC 6665 (o u),
# RFC 4028 (x), RFC 8224 (y).
COMPACT_FORMS = {
    b"i": b"call-id", b"f": b"from", b"t": b"to", b"v": b"via", b"l": b"content-length",
    b"m": b"contact", b"k": b"supported", b"s": b"subject", b"c": b"content-type",
    b"e": b"content-encoding", b"o": b"event", b"r": b"refer-to", b"u": b"allow-events",
    b"x": b"session-expires", b"y": b"identity",
}
# Common headers the parser skips: found by the exact lookup, so never lower-cased.
_SKIPPED = (b"max-forwards", b"contact", b"user-agent", b"allow", b"supported",
            b"content-type", b"record-route", b"route", b"expires", b"server",
            b"accept", b"p-asserted-identity", b"session-expires", b"min-se",
            b"proxy-authenticate", b"www-authenticate", b"authorization",
            b"proxy-authorization", b"subject", b"date", b"event", b"reason",
            b"allow-events", b"privacy", b"require", b"content-disposition",
            b"accept-language", b"accept-encoding", b"organization", b"priority",
            b"refer-to", b"referred-by", b"subscription-state", b"rack", b"rseq",
            b"p-charging-vector", b"content-encoding", b"identity") + tuple(COMPACT_FORMS)


def _spellings(names: dict) -> dict:
    """Header names as usually written (lower, Canonical-Case, UPPER) -> key."""
    out = {}
    for name, key in names.items():
        canonical = b"-".join(part.capitalize() for part in name.split(b"-"))
        for spelling in (name, canonical, name.upper()):
            out.setdefault(spelling, key)
    return out


_EXACT = _spellings({**{name: 0 for name in _SKIPPED}, **_WANTED})
_EXACT.update({b"Call-ID": _CALL_ID, b"CSeq": _CSEQ, b"WWW-Authenticate": 0})

_FOLD = re.compile(rb"\r?\n[ \t]+")  # LWS line folding, RFC 3261 section 7.3.1


def parse_message(raw: bytes) -> SipMessage:
    """Parse one whole SIP message; raises ``SipParseError`` for a bad start line."""
    # Fast path: CRLF line ends and an empty line: split the header section only.
    end = raw.find(b"\r\n\r\n")
    lines = raw[:end].split(b"\r\n", MAX_HEADER_LINES) if end >= 0 else None
    if lines is None or raw.count(b"\n", 0, end) != len(lines) - 1:  # bare LF, or too long
        lines = raw.split(b"\n", MAX_HEADER_LINES)
        header_end = False
    else:
        header_end = True
    line = lines[0]
    if line[-1:] == b"\r":
        line = line[:-1]
    method = request_uri = reason = status = None
    if line[:8] == STATUS_PREFIX:
        code = line[8:11]
        if not code.isdigit() or len(code) != 3 or line[11:12] not in (b" ", b""):
            raise SipParseError("bad status code in the status line")
        status = int(code)
        reason = line[12:].decode("utf-8", "replace")
    else:
        parts = line.split(b" ")
        if len(parts) != 3 or parts[2] != SIP_VERSION or not parts[0] \
                or parts[0].translate(None, TOKEN_CHARS) or parts[1].find(b":") <= 0:
            raise SipParseError("start line is neither a request nor a status line"
                                if raw else "empty message")
        method = parts[0].decode("ascii")
        request_uri = parts[1].decode("utf-8", "replace")
    if header_end:
        found, vias, ended = _scan(lines, raw)
    elif len(lines) == 1:
        raise SipParseError("no line end after the start line")
    else:
        found, vias, ended = _scan_slow(lines)
    defects = [] if ended else ["no end of headers"]
    call_id = found.get(_CALL_ID)
    if call_id is None:
        call_id = ""
        defects.append("no Call-ID")
    else:
        call_id = call_id.strip().decode("utf-8", "replace")
    cseq_num, cseq_method = 0, ""
    cseq = found.get(_CSEQ)
    if cseq is None:
        defects.append("no CSeq")
    else:
        cseq = cseq.split()
        if cseq and cseq[0].isdigit() and len(cseq[0]) <= MAX_DIGITS:
            cseq_num = int(cseq[0])
            if len(cseq) > 1:
                cseq_method = cseq[1].decode("utf-8", "replace")
        else:
            defects.append("bad CSeq")
    from_tag = found.get(_FROM)
    if from_tag is None:
        from_tag = ""
        defects.append("no From")
    else:
        from_tag = header_tag(from_tag)
    content_length = found.get(_CONTENT_LENGTH)
    if content_length is not None:
        content_length = content_length.strip()
        if content_length.isdigit() and len(content_length) <= MAX_DIGITS:
            content_length = int(content_length)
        else:
            content_length = 0
            defects.append("bad Content-Length")
    return SipMessage(raw, method, request_uri, status, reason, call_id, cseq_num,
                      cseq_method, from_tag, found.get(_TO), vias, content_length,
                      tuple(defects) if defects else ())


def _scan(lines: list, raw: bytes) -> tuple[dict, list, bool]:
    """Header key -> first value, the Via values, and True (the header section ends),
    from ``lines[1:]``, a header section with CRLF line ends only. A folded line sends
    the whole message to ``_scan_slow``."""
    exact = _EXACT
    found = {}
    vias = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        key = exact.get(name)
        if key:
            if key == _VIA:
                vias.append(value)
            elif key not in found:
                found[key] = value
        elif key is None:
            if name[:1] in (b" ", b"\t", b""):  # folded
                return _scan_slow(raw.split(b"\n", MAX_HEADER_LINES))
            key = _WANTED.get(name.rstrip().lower())
            if key and colon:
                if key == _VIA:
                    vias.append(value)
                elif key not in found:
                    found[key] = value
    return found, vias, True


def _scan_slow(lines: list) -> tuple[dict, list, bool]:
    """``_scan`` for the rest: bare LF line ends, folded lines (RFC 3261 section 7.3.1),
    no empty line after the headers, more than ``MAX_HEADER_LINES`` lines."""
    text = b"\n".join(lines[1:])
    if text[:1] == b"\n" or text[:2] == b"\r\n":  # an empty header section
        end = 0
    else:
        end = text.find(b"\n\r\n")
        lf_end = text.find(b"\n\n", 0, len(text) if end < 0 else end)
        if lf_end >= 0:
            end = lf_end
    ended = end >= 0
    if not ended:
        end = len(text)
    found = {}
    vias = []
    for line in _FOLD.sub(b" ", text[:end]).lstrip(b" \t").split(b"\n"):
        name, colon, value = line.partition(b":")
        key = _WANTED.get(name.strip().lower())
        if key and colon:
            if key == _VIA:
                vias.append(value)
            elif key not in found:
                found[key] = value
    return found, vias, ended
