"""Any header of a stored message, and the parts of a From/To value. No I/O.

``parse_message`` keeps only what storing needs, fast; the views need a few more
headers (From/To display names, X-CID, Session-ID), read here on demand by the same
rules: CRLF or bare LF line ends, folded lines joined (RFC 3261 section 7.3.1),
compact forms expanded (``COMPACT_FORMS``), names compared case-insensitively.
"""

import re
from functools import lru_cache
from siptrace.sip.parser import COMPACT_FORMS

_FOLD = re.compile(rb"\r?\n[ \t]+")
_QUOTED = re.compile(rb'^\s*"((?:[^"\\]|\\.)*)"')
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")  # RFC 3986 section 2.1


def header_section(raw: bytes) -> bytes:
    """The header lines of a message, start line excluded, folded lines joined."""
    return _header_lines(raw)[1:]


def _header_lines(raw: bytes) -> bytes:
    """``header_section`` after the newline that ends the start line: every header line
    then follows a newline, which a pattern can look for first."""
    end = raw.find(b"\r\n\r\n")
    lf_end = raw.find(b"\n\n", 0, end if end >= 0 else len(raw))
    if lf_end >= 0:
        end = lf_end
    newline = raw.find(b"\n")
    if newline < 0 or 0 <= end < newline:
        return b"\n"
    head = raw[newline:end] if end >= 0 else raw[newline:]
    if b"\n " in head or b"\n\t" in head:
        return b"\n" + _FOLD.sub(b" ", head[1:])
    return head


def find_headers(raw: bytes, names: tuple[str, ...]) -> dict[str, bytes]:
    """The first value of each of ``names`` (lower-case long forms) present in ``raw``."""
    found: dict[str, bytes] = {}
    for name, value in _header_pattern(names).findall(_header_lines(raw)):
        name = name.rstrip().lower()
        key = COMPACT_FORMS.get(name, name).decode()
        if key not in found:
            found[key] = value.strip()
    return found


@lru_cache(maxsize=16)
def _header_pattern(names: tuple[str, ...]) -> re.Pattern:
    """One scan for the lines of these headers, long or compact form, any case. It
    starts with a newline, the fast first step of the search (not so ``^`` with re.M)."""
    spellings = {name.encode() for name in names}
    spellings |= {short for short, long in COMPACT_FORMS.items() if long in spellings}
    choice = b"|".join(re.escape(s) for s in sorted(spellings, key=len, reverse=True))
    return re.compile(rb"\n[ \t]*(?i:(" + choice + rb"))[ \t]*:([^\n]*)")


def name_addr(value: bytes) -> tuple[str, str]:
    """(display name, user) of a From/To/P-Asserted-Identity value (RFC 3261 section 20.20).

    The user is the user part of a sip:/sips: URI or the number of a tel: URI,
    percent-decoded; '' for a URI without one.
    """
    display = ""
    quoted = _QUOTED.match(value)
    if quoted:
        display = re.sub(rb"\\(.)", rb"\1", quoted.group(1)).decode("utf-8", "replace")
    lt = value.find(b"<", quoted.end() if quoted else 0)
    if lt >= 0:
        if not quoted:
            display = value[:lt].strip().decode("utf-8", "replace")
        uri = value[lt + 1:].partition(b">")[0]
    else:
        uri = value.partition(b";")[0]
    return display, uri_user(uri.strip())


def uri_user(uri: bytes) -> str:
    """The user part of a SIP URI or the number of a tel: URI ('' when there is none)."""
    scheme, colon, rest = uri.partition(b":")
    if not colon:
        return ""
    scheme = scheme.lower()
    if scheme == b"tel":
        user = rest.partition(b";")[0]
    elif scheme in (b"sip", b"sips"):
        userinfo, at, _ = rest.partition(b"@")
        user = userinfo.partition(b":")[0] if at else b""
    else:
        return ""
    user = _PERCENT.sub(lambda m: bytes((int(m[1], 16),)), user)
    return user.decode("utf-8", "replace")
