"""msg bytes <-> database text, exact for UTF-8 and reversible for anything else.

The escape (docs/storage.md): the 256 private-use code points U+EF00..U+EFFF stand for
single bytes, U+EF00 + b for byte b. msg_to_text uses them for

- every byte that is not part of valid UTF-8 (0x80..0xFF),
- NUL (0x00, which PostgreSQL text rejects): U+EF00,
- every byte of a *genuine* U+EF00..U+EFFF character in the message (its three
  UTF-8 bytes EE BC..BF xx each become an escape), so the escape is never ambiguous.

text_to_msg maps every U+EF00..U+EFFF back to its byte and encodes the rest as UTF-8.
A message that is valid UTF-8 with no NUL and no U+EFxx (every real SIP message) is
stored as exactly its text.
"""

import re

ESCAPE_BASE = 0xEF00  # Unicode private use area (Unicode 15, section 23.5)
_RESERVED = re.compile("[\x00\uef00-\uefff]")
_SURROGATE_TO_ESCAPE = {0xDC00 + b: ESCAPE_BASE + b for b in range(0x80, 0x100)}
_ESCAPE_TO_BYTE_CHAR = {
    ESCAPE_BASE + b: (chr(b) if b < 0x80 else chr(0xDC00 + b)) for b in range(0x100)}


def _escape_reserved(match: re.Match) -> str:
    return "".join(chr(ESCAPE_BASE + b) for b in match.group().encode("utf-8"))


def msg_to_text(msg: bytes) -> str:
    """Text to store for the wire bytes; never raises for any bytes."""
    if b"\x00" not in msg and b"\xee" not in msg:
        try:
            return msg.decode("utf-8")
        except UnicodeDecodeError:
            pass
    text = msg.decode("utf-8", "surrogateescape")
    text = _RESERVED.sub(_escape_reserved, text)
    return text.translate(_SURROGATE_TO_ESCAPE)


def text_to_msg(text: str) -> bytes:
    """The wire bytes back from stored text (inverse of msg_to_text)."""
    if _RESERVED.search(text) is None:
        return text.encode("utf-8", "surrogateescape")
    return text.translate(_ESCAPE_TO_BYTE_CHAR).encode("utf-8", "surrogateescape")


def clean_text(value: str) -> str:
    """A short column value made storable: no NUL, no lone surrogate (escaped as above)."""
    if value.isascii() and "\x00" not in value:
        return value
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogatepass")
    return msg_to_text(raw)
