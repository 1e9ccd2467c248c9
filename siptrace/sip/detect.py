"""Is this payload SIP? Decided by the start line, never by the port.

Called for every UDP datagram, so the common non-SIP payloads (RTP, RTCP, STUN,
TLS, keep-alives) are rejected on their first byte: none of them starts with a
token character, which every SIP request and status line does.
"""

import string

SIP_VERSION = b"SIP/2.0"  # RFC 3261 section 7.1 (sent upper-case, section 7.1)
STATUS_PREFIX = b"SIP/2.0 "  # Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF
REQUEST_SUFFIX = b" SIP/2.0"  # Request-Line = Method SP Request-URI SP SIP-Version CRLF

# A start line longer than this is not taken for one (Request-URIs stay far below).
MAX_START_LINE = 8192

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
# (RFC 3261 section 25.1); a method is a token.
TOKEN_CHARS = (string.ascii_letters + string.digits + "-.!%*_+`'~").encode()
TOKEN_TABLE = bytes(1 if b in TOKEN_CHARS else 0 for b in range(256))  # byte -> 1: token


def looks_like_sip(payload: bytes) -> bool:
    """True when ``payload`` starts with a SIP request line or status line.

    Any method is accepted (a token, RFC 3261 section 25.1), with a Request-URI that
    has a scheme; a status line needs three digits. A CRLF keep-alive is not SIP.
    Never raises for any bytes-like input.
    """
    if not payload or not TOKEN_TABLE[payload[0]]:
        return False
    eol = payload.find(b"\n", 0, MAX_START_LINE)
    if eol < 0:
        return False
    return start_line_ok(payload[:eol])


def start_line_ok(line) -> bool:
    """True when ``line`` (without its LF; a trailing CR is allowed) is a start line."""
    if line[-1:] == b"\r":
        line = line[:-1]
    if line[:8] == STATUS_PREFIX:
        # Status-Code = 3DIGIT; the reason phrase may be missing altogether.
        return len(line) >= 11 and line[8:11].isdigit() and (len(line) == 11 or line[11] == 32)
    if line[-8:] != REQUEST_SUFFIX:
        return False
    sp = line.find(b" ")
    uri = line[sp + 1:-8]
    # The method is a non-empty token; the URI has a scheme and no space.
    return (sp > 0 and not line[:sp].translate(None, TOKEN_CHARS)
            and uri.find(b":") > 0 and b" " not in uri)
