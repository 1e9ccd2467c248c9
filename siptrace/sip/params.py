"""Header parameters: the tag of From/To, the branch of each Via (RFC 3261 section 20)."""

import re

_TAG = re.compile(rb";[ \t]*tag[ \t]*=[ \t]*([^;, \t\r]*)", re.I)
_BRANCH = re.compile(rb";[ \t]*branch[ \t]*=[ \t]*([^;, \t\r]*)", re.I)


def header_tag(value: bytes) -> str:
    """The tag parameter of a From/To value (after the <URI> when there is one);
    undecodable bytes kept as surrogates (surrogateescape), as in the Call-ID."""
    i = value.rfind(b";tag=")
    if i < 0 or value.find(b">", i) >= 0:
        gt = value.rfind(b">")
        m = _TAG.search(value, gt + 1)
        return m.group(1).decode("utf-8", "surrogateescape") if m else ""
    tag = value[i + 5:].partition(b";")[0].split(None, 1)
    return tag[0].decode("utf-8", "surrogateescape") if tag else ""


def via_branch(via: bytes) -> str:
    """The branch parameter of one Via value, '' when it has none."""
    i = via.find(b";branch=")
    if i < 0:
        m = _BRANCH.search(via)
        return m.group(1).decode("utf-8", "replace") if m else ""
    branch = via[i + 8:].partition(b";")[0].split(None, 1)
    return branch[0].decode("utf-8", "replace") if branch else ""


def split_header_values(value: bytes) -> list[bytes]:
    """Split a comma-joined header value (RFC 3261 section 7.3.1); commas inside
    quotes or <...> are kept. Empty elements are dropped."""
    if b"," not in value:
        return [value]
    if b'"' not in value and b"<" not in value:
        return [part for part in value.split(b",") if part.strip()]
    parts, start, quoted, angle, i, n = [], 0, False, False, 0, len(value)
    while i < n:
        c = value[i]
        if quoted:
            if c == 0x5C:  # backslash: a quoted-pair, skip the next byte
                i += 1
            elif c == 0x22:
                quoted = False
        elif c == 0x22:
            quoted = True
        elif c == 0x3C:
            angle = True
        elif c == 0x3E:
            angle = False
        elif c == 0x2C and not angle:
            parts.append(value[start:i])
            start = i + 1
        i += 1
    parts.append(value[start:])
    return [part for part in parts if part.strip()]


def via_branches(via_values: list[bytes]) -> list[str]:
    """The branch of each Via value, topmost first, comma-joined values split."""
    branches = []
    for via in via_values:
        if b"," in via:
            branches.extend(map(via_branch, split_header_values(via)))
        else:
            branches.append(via_branch(via))
    return branches
