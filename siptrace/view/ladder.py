"""A call's ladder (sngrep's call flow): its layout, and its rendering as terminal text. No I/O.

Columns are the addresses (``ip:port``, transport left out) in order of first appearance,
the source of a message before its destination, as sngrep orders them. Everything shown
in a terminal is first made printable: SIP text is attacker-controlled, and an escape
sequence in a reason phrase must not reach the terminal.
"""

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from siptrace.view.model import UNKNOWN_ADDRESS, Address, StoredMessage, unique_messages

RETRANS_SUFFIX = " (retrans)"
RETRANS_SHAFT = "."  # dotted, as the SVG's dashed line
MAX_SLOT = 30  # widest column slot, as sngrep's fixed column width
MIN_SLOT = 3  # narrower than this, the time margin is given up
COMFORT_SLOT = 12  # below this, the delta column is given up for room
MIN_WIDTH = 20
FULL_INDENT = 4

# ANSI SGR parameters.
BOLD, DIM, RED = "1", "2", "31"
REQUEST_STYLE = "1;36"
REPLY_STYLES = {"1": "33", "2": "32", "3": "35"}  # by status class; 4xx-6xx red
LEG_STYLES = ("34", "35", "36", "33", "32", "94", "95", "96")


@dataclass(frozen=True)
class Arrow:
    """One message on the ladder."""

    index: int  # position in time order, from 0
    message: StoredMessage
    src_column: int
    dst_column: int
    since_first: float  # seconds
    since_previous: float
    retransmission: bool  # same fromip, toip and bytes as an earlier message
    call_index: int  # position of its Call-ID in Ladder.callids


@dataclass(frozen=True)
class Ladder:
    columns: list[str]  # "ip:port", in order of first appearance
    arrows: list[Arrow]
    callids: list[str]  # the Call-IDs asked for, then any other seen, in order


def column_name(address: Address, stored: str) -> str:
    """``ip:port``; the stored text itself when it is not an address."""
    return str(address) if address != UNKNOWN_ADDRESS else (stored.strip() or "?")


def build_ladder(messages: Iterable[StoredMessage], callids: Sequence[str] | None = None) -> Ladder:
    """Messages in (date, id) order, each stored copy once, laid out on columns."""
    ordered = unique_messages(sorted(messages, key=lambda m: (m.date, m.id)))
    calls = list(dict.fromkeys(callids or ()))
    asked = set(calls)
    calls += [c for c in dict.fromkeys(m.callid for m in ordered) if c not in asked]
    call_index = {callid: i for i, callid in enumerate(calls)}
    columns: dict[str, int] = {}
    seen: set[tuple] = set()
    arrows = []
    first = previous = ordered[0].date if ordered else None
    for index, message in enumerate(ordered):
        src = columns.setdefault(column_name(message.source, message.fromip), len(columns))
        dst = columns.setdefault(column_name(message.destination, message.toip), len(columns))
        key = (message.fromip, message.toip, message.msg)
        arrows.append(Arrow(index, message, src, dst,
                            (message.date - first).total_seconds(),
                            (message.date - previous).total_seconds(),
                            key in seen, call_index[message.callid]))
        seen.add(key)
        previous = message.date
    return Ladder(list(columns), arrows, calls)


def printable(text: str) -> str:
    """Text whose every character takes one terminal cell and moves the cursor by one."""
    out = []
    for char in text:
        if (unicodedata.category(char)[0] in "CMZ" and char != " ") \
                or unicodedata.east_asian_width(char) in "WF":
            out.append("\ufffd")
        else:
            out.append(char)
    return "".join(out)


def cut(text: str, room: int) -> str:
    """Text at most ``room`` long, its end replaced by '…' when cut."""
    if len(text) <= room:
        return text
    return "" if room <= 0 else text[:room - 1] + "…"


def cut_left(text: str, room: int) -> str:
    """Cut from the start: an address's end (last digits, port) tells columns apart."""
    if len(text) <= room:
        return text
    return "" if room <= 0 else "…" + text[len(text) - room + 1:]


def arrow_label(arrow: Arrow, room: int) -> str:
    """The longest of: label, status code alone, either cut; the retrans mark kept if it fits."""
    message = arrow.message
    bases = [printable(message.label)]
    if not message.is_request and bases[0] != message.status:
        bases.append(printable(message.status))
    suffix = RETRANS_SUFFIX if arrow.retransmission else ""
    for base in bases:
        if len(base + suffix) <= room:
            return base + suffix
    if suffix and room >= len(suffix) + 2:
        return cut(bases[-1], room - len(suffix)) + suffix
    return cut(bases[-1], room)


class _Row:
    """One line of cells, each with a character and an ANSI style (or None)."""

    def __init__(self, width: int):
        self.chars = [" "] * width
        self.styles: list[str | None] = [None] * width

    def put(self, x: int, text: str, style: str | None = None) -> None:
        for i, char in enumerate(text, x):
            if 0 <= i < len(self.chars):
                self.chars[i], self.styles[i] = char, style

    def free(self, start: int, end: int) -> bool:
        return start >= 0 and end <= len(self.chars) and set(self.chars[start:end]) <= {" "}

    def render(self, color: bool) -> str:
        end = len(self.chars)
        while end and self.chars[end - 1] == " " and self.styles[end - 1] is None:
            end -= 1
        if not color:
            return "".join(self.chars[:end])
        out, i = [], 0
        while i < end:
            j = i
            while j < end and self.styles[j] == self.styles[i]:
                j += 1
            text = "".join(self.chars[i:j])
            out.append(f"\x1b[{self.styles[i]}m{text}\x1b[0m" if self.styles[i] else text)
            i = j
        return "".join(out)


@dataclass(frozen=True)
class _Layout:
    """Where things go on a line: the time margin, then one x per column."""

    width: int
    times: bool
    deltas: bool
    call_width: int  # "#2 " before the time when several calls are shown
    time_width: int
    delta_width: int
    xs: list[int]
    slot: int

    @classmethod
    def fit(cls, ladder: Ladder, width: int) -> "_Layout":
        call_width = len(f"#{len(ladder.callids)} ") if len(ladder.callids) > 1 else 0
        time_width = max((len(_since(a)) for a in ladder.arrows), default=0)
        delta_width = max((len(_delta(a)) for a in ladder.arrows), default=0)
        n = max(len(ladder.columns), 1)
        # Give up the deltas, then the whole margin, while the columns are too cramped.
        for times, deltas, least in ((True, True, COMFORT_SLOT), (True, False, MIN_SLOT),
                                     (False, False, 0)):
            margin = (call_width + time_width + 2 + (delta_width + 1) * deltas) * times
            slot = min(MAX_SLOT, (width - margin) // n)
            if slot >= least:
                break
        slot = max(slot, MIN_SLOT)
        xs = [margin + i * slot + slot // 2 for i in range(len(ladder.columns))]
        return cls(width, times, deltas, call_width, time_width, delta_width, xs, slot)

    @property
    def hidden_columns(self) -> int:
        return sum(x >= self.width for x in self.xs)


def _since(arrow: Arrow) -> str:
    return f"+{arrow.since_first:.3f}s"


def _delta(arrow: Arrow) -> str:
    return f"+{arrow.since_previous:.3f}"


def _leg_style(ladder: Ladder, arrow: Arrow) -> str | None:
    return LEG_STYLES[arrow.call_index % len(LEG_STYLES)] if len(ladder.callids) > 1 else None


def _label_style(arrow: Arrow) -> str:
    message = arrow.message
    style = REQUEST_STYLE if message.is_request else REPLY_STYLES.get(message.status[:1], RED)
    return f"{DIM};{style}" if arrow.retransmission else style


def _dim(style: str | None) -> str:
    return f"{DIM};{style}" if style else DIM


def _summary(ladder: Ladder, layout: _Layout) -> list[_Row]:
    first = ladder.arrows[0].message.date if ladder.arrows else None
    when = f"{first.isoformat(sep=' ', timespec='milliseconds')} UTC" if first else "no messages"
    count = len(ladder.arrows)
    parts = [when, f"{count} message{'s' * (count != 1)}"]
    if len(ladder.callids) == 1:
        parts.append(f"Call-ID {ladder.callids[0]}")
    elif ladder.callids:
        parts.append(f"{len(ladder.callids)} calls")
    if layout.hidden_columns:
        parts.append(f"{layout.hidden_columns} columns cut: too narrow")
    rows = [_text_row(layout.width, "  ".join(parts))]
    if len(ladder.callids) > 1:
        for i, callid in enumerate(ladder.callids):
            rows.append(_text_row(layout.width, f"call {i + 1}: {callid}",
                                  LEG_STYLES[i % len(LEG_STYLES)]))
    return rows


def _text_row(width: int, text: str, style: str | None = None) -> _Row:
    row = _Row(width)
    row.put(0, cut(printable(text), width), style)
    return row


def _header(ladder: Ladder, layout: _Layout) -> list[_Row]:
    """Column names centred on their lines; on two staggered rows when one row is too tight."""
    names = [printable(name) for name in ladder.columns]
    rows = 1 if all(len(name) < layout.slot for name in names) else 2
    room = layout.slot * rows - 1
    out = [_Row(layout.width) for _ in range(rows)]
    ends = [0] * rows
    for i, (name, x) in enumerate(zip(names, layout.xs)):
        name = cut_left(name, room)
        start = max(min(x - len(name) // 2, layout.width - len(name)), ends[i % rows])
        name = cut_left(name, layout.width - start)
        out[i % rows].put(start, name, BOLD)
        ends[i % rows] = start + len(name) + 1
    if layout.times and out[-1].free(0, layout.time_width + layout.call_width + 1):
        out[-1].put(layout.call_width, "time".rjust(layout.time_width))
    return out


def _ladder_row(layout: _Layout) -> _Row:
    row = _Row(layout.width)
    for x in layout.xs:
        row.put(x, "|")
    return row


def _arrow_row(ladder: Ladder, layout: _Layout, arrow: Arrow) -> _Row:
    row = _ladder_row(layout)
    leg = _leg_style(ladder, arrow)
    if layout.times:
        if layout.call_width:
            row.put(0, f"#{arrow.call_index + 1}", leg)
        row.put(layout.call_width, _since(arrow).rjust(layout.time_width))
        if layout.deltas:
            row.put(layout.call_width + layout.time_width + 1,
                    _delta(arrow).rjust(layout.delta_width), DIM)
    shaft = _dim(leg) if arrow.retransmission else leg
    line = RETRANS_SHAFT if arrow.retransmission else "-"  # marked even when its label is cut
    xs = layout.xs
    src, dst = xs[arrow.src_column], xs[arrow.dst_column]
    if src == dst:
        _loop(row, layout, arrow, src, shaft, line)
        return row
    left, right = min(src, dst), max(src, dst)
    span = right - left - 1
    head = ">" if dst > src else "<"
    row.put(left + 1, line * span, shaft)
    row.put(right - 1 if dst > src else left + 1, head, shaft)
    label = arrow_label(arrow, span - 2)
    if label:
        # Spaced out when a dash still fits on both sides of the spaces, head included.
        padded = f" {label} " if len(label) + 2 <= span - 3 else label
        start = left + 1 + (span - len(padded) + (dst < src)) // 2
        row.put(start, padded)
        _put_label(row, start + (padded != label), label, arrow)
    return row


def _loop(row: _Row, layout: _Layout, arrow: Arrow, x: int, shaft: str | None,
          line: str) -> None:
    """A message to its own address: ``|<-) LABEL`` (or mirrored at the right edge)."""
    later = [other for other in layout.xs if other > x]
    right_room = (later[0] if later else layout.width) - x - 1
    if right_room >= 4 or x < 4:
        row.put(x + 1, f"<{line})", shaft)
        _put_label(row, x + 5, arrow_label(arrow, right_room - 4), arrow)
    else:
        row.put(x - 3, f"({line}>", shaft)


def _put_label(row: _Row, start: int, label: str, arrow: Arrow) -> None:
    style = _label_style(arrow)
    if arrow.retransmission and label.endswith(RETRANS_SUFFIX):
        base = label[:-len(RETRANS_SUFFIX)]
        row.put(start, base, style)
        row.put(start + len(base), RETRANS_SUFFIX, f"{DIM};{RED}")
    else:
        row.put(start, label, style)


def _message_rows(layout: _Layout, message: StoredMessage) -> list[_Row]:
    """The whole message, indented, long lines wrapped (never cut: this is the full view)."""
    text = message.msg.decode("utf-8", "replace")
    room = max(layout.width - FULL_INDENT, 1)
    rows = []
    for line in text.replace("\r\n", "\n").split("\n"):
        line = printable(line.expandtabs(4))
        for start in range(0, max(len(line), 1), room):
            row = _Row(layout.width)
            row.put(FULL_INDENT, line[start:start + room])
            rows.append(row)
    while len(rows) > 1 and not "".join(rows[-1].chars).strip():
        rows.pop()  # the blank line that ends a bodiless message
    return rows


def render_text(ladder: Ladder, *, width: int = 100, color: bool = False,
                full: bool = False) -> str:
    """The ladder as lines of at most ``width`` cells; ANSI colours only when ``color``."""
    layout = _Layout.fit(ladder, max(width, MIN_WIDTH))
    rows = _summary(ladder, layout)
    if ladder.arrows:
        rows += _header(ladder, layout)
    for arrow in ladder.arrows:
        rows.append(_arrow_row(ladder, layout, arrow))
        if full:
            rows += _message_rows(layout, arrow.message)
            rows.append(_ladder_row(layout))
    return "".join(row.render(color) + "\n" for row in rows)
