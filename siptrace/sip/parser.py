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
Values are decoded as UTF-8. In the Call-ID and the tags, which are stored, an
undecodable byte b becomes the lone surrogate U+DC00 + b (surrogateescape), so the
bytes can be had back (the store escapes them: store/text.py); elsewhere it is
replaced (as Wireshark shows it).

Two paths, one header loop (``_scan``): a message with CRLF line ends and an empty line
after its headers is split at CRLF (the common case, and the fast one); ``_scan_slow``
brings any other header section (bare LF, folded lines, no empty line) to the same
lines first. The start line is checked here as ``detect.start_line_ok`` checks it, in a
faster way that also reads the method or status. tests/test_fast_paths.py requires the
same fields from CRLF and LF, and the same decisions as ``detect.looks_like_sip``.
"""

import re

from siptrace.errors import SipParseError
from siptrace.sip.detect import SIP_VERSION, STATUS_PREFIX, TOKEN_CHARS
from siptrace.sip.message import SipMessage
from siptrace.sip.params import header_tag

MAX_HEADER_LINES = 512  # lines split off for the fast path; longer headers take the slow one
MAX_DIGITS = 18  # longer CSeq numbers and Content-Lengths are garbage (int() caps at 4300)

# Header keys the parser keeps; 0 means "known, not needed". They are also the
# indexes of the scan result (see _scan), which parse_message unpacks in this order.
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

# Status-Code = 3DIGIT (RFC 3261 section 25.1): every one, looked up rather than
# checked and converted.
_STATUS_CODES = {b"%03d" % code: code for code in range(1000)}
# Decimal numbers below 1000 as usually written (no leading zero): most CSeq numbers
# and Content-Lengths, looked up rather than checked and converted.
_SMALL_NUMBERS = {b"%d" % number: number for number in range(1000)}
# Common methods, already checked and decoded (RFC 3261, 3262, 3311, 3428, 3515, 3903,
# 6086, 6665): a dict hit costs less than the token check and the decode.
_METHODS = {name.encode(): name for name in (
    "INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "PRACK", "UPDATE", "MESSAGE",
    "REFER", "PUBLISH", "INFO", "SUBSCRIBE", "NOTIFY")}

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
    if line[-1:] == b"\r" and not header_end:  # split at LF: the CR of a CRLF
        line = line[:-1]
    method = status = None
    if line[:8] == STATUS_PREFIX:
        status = _STATUS_CODES.get(line[8:11])
        if status is None or line[11:12] not in (b" ", b""):
            raise SipParseError("bad status code in the status line")
    else:
        parts = line.split(b" ")
        method = _METHODS.get(parts[0]) if len(parts) == 3 else None
        if method is None:
            if len(parts) != 3 or not parts[0] or parts[0].translate(None, TOKEN_CHARS):
                raise SipParseError("start line is neither a request nor a status line"
                                    if raw else "empty message")
            method = parts[0].decode("ascii")
        if parts[2] != SIP_VERSION or parts[1].find(b":") <= 0:
            raise SipParseError("start line is neither a request nor a status line")
    found = _scan(lines[1:]) if header_end else None
    if found is not None:
        ended = True
    elif len(lines) == 1:
        raise SipParseError("no line end after the start line")
    else:
        found, ended = _scan_slow(raw)
    _, vias, from_tag, to_header, call_id, cseq, content_length = found
    # Defects are rare: a tuple grown when one is found, not a list per message.
    defects = () if ended else ("no end of headers",)
    if call_id is None:
        call_id = ""
        defects += ("no Call-ID",)
    else:
        call_id = call_id.strip().decode("utf-8", "surrogateescape")
    cseq_num, cseq_method = 0, ""
    if cseq is None:
        defects += ("no CSeq",)
    else:
        cseq = cseq.split()
        number = _SMALL_NUMBERS.get(cseq[0]) if cseq else None
        if number is None and cseq and cseq[0].isdigit() and len(cseq[0]) <= MAX_DIGITS:
            number = int(cseq[0])
        if number is None:
            defects += ("bad CSeq",)
        else:
            cseq_num = number
            if len(cseq) > 1:
                cseq_method = _METHODS.get(cseq[1]) or cseq[1].decode("utf-8", "replace")
    if from_tag is None:
        from_tag = ""
        defects += ("no From",)
    else:
        from_tag = header_tag(from_tag)
    if content_length is not None:
        digits = content_length.strip()
        content_length = _SMALL_NUMBERS.get(digits)
        if content_length is None:
            if digits.isdigit() and len(digits) <= MAX_DIGITS:
                content_length = int(digits)
            else:
                content_length = 0
                defects += ("bad Content-Length",)
    return SipMessage(raw, line, method, status, call_id, cseq_num, cseq_method, from_tag,
                      to_header, vias, content_length, defects)


def _scan(lines: list) -> list | None:
    """The headers found in ``lines``, header lines without their line ends; None
    when a line is folded (starts with a space or tab): ``_scan_slow`` unfolds it.

    The one header loop: ``_scan_slow`` brings every other header section to these
    lines, so CRLF and LF messages give the same fields. A line without a colon is
    skipped. The headers found are a list indexed by header key: the first value
    (None when missing), and at ``_VIA`` the list of every Via value. A list, not a
    dict: the parser unpacks it in one step.
    """
    exact = _EXACT
    vias = []
    found = [None, vias, None, None, None, None, None]
    for line in lines:
        name, colon, value = line.partition(b":")
        key = exact.get(name)
        if key is None:
            if name[:1] in (b" ", b"\t"):  # folded
                return None
            key = _WANTED.get(name.rstrip().lower())
        if key and colon:
            if key == _VIA:
                vias.append(value)
            elif found[key] is None:
                found[key] = value
    return found


def _scan_slow(raw: bytes) -> tuple[list, bool]:
    """``_scan`` for the rest, and whether an empty line ends the headers: bare LF line
    ends, folded lines (RFC 3261 section 7.3.1), no empty line after the headers, more
    than ``MAX_HEADER_LINES`` lines. Brings the header section to ``_scan``'s lines:
    unfolded, without line ends."""
    text = raw[raw.find(b"\n") + 1:]  # after the start line
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
    # Unfolded, no line starts with a space or tab but the first (white space before
    # the first header): stripped, and dropped when nothing is left of it.
    lines = _FOLD.sub(b" ", text[:end]).lstrip(b" \t").split(b"\n")
    lines = [line[:-1] if line[-1:] == b"\r" else line for line in lines]
    if not lines[0]:
        del lines[0]
    return _scan(lines), ended
