"""The ladder as a self-contained SVG, and as a standalone HTML page (no script). No I/O.

SIP text is attacker-controlled: every text and attribute is escaped, after the
characters XML 1.0 and HTML forbid even as references are replaced by U+FFFD.
Widths are estimated from a monospace font, ``CHAR_WIDTH`` per character.
"""

import re
from html import escape

from siptrace.view.ladder import Arrow, Ladder, arrow_label, cut, cut_left

FONT = "ui-monospace, Menlo, Consolas, 'DejaVu Sans Mono', monospace"
FONT_SIZE = 12
CHAR_WIDTH = 7.2  # 0.6em, a monospace character at FONT_SIZE
ROW_HEIGHT = 28
NAMES_Y = 22
TOP = 40  # where the column lines start
PAD = 16
MIN_SPACING, MAX_SPACING = 150, 320
LOOP_WIDTH = 24
LEGEND_LINE = 18
LEG_COLOURS = ("#1f5fbf", "#b8336a", "#1a8a6e", "#c0661a",
               "#6a3fbf", "#3f7f1f", "#0e7c9e", "#8a5a00")
RETRANS_DASH = "6 4"

STYLE = """
.column line { stroke: #9aa0a6; stroke-dasharray: 3 3; }
.column text { font-weight: bold; }
.arrow line, .arrow path { stroke-width: 1.5; fill: none; }
.request .label { font-weight: bold; }
.time { fill: #5f6368; }
.hit { fill: transparent; }
.arrow:hover .hit { fill: #f1f3f4; }
"""

# Outside XML 1.0's Char production, or a C1 control (a parse error in HTML).
_NOT_TEXT = re.compile("[^\t\n\r\x20-\x7e\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def text(value: str) -> str:
    """Safe as element content and as a quoted attribute value, in XML and in HTML."""
    return escape(_NOT_TEXT.sub("\ufffd", value), quote=True)


def leg_colour(call_index: int) -> str:
    return LEG_COLOURS[call_index % len(LEG_COLOURS)]


def first_line(arrow: Arrow) -> str:
    return arrow.message.msg.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")


def _since(arrow: Arrow) -> str:
    return f"+{arrow.since_first:.3f}s"


class _Geometry:
    """Where columns and rows are: spacing grows with the longest label, up to a cap."""

    def __init__(self, ladder: Ladder):
        labels = [len(arrow_label(a, 10_000)) for a in ladder.arrows
                  if a.src_column != a.dst_column]
        self.spacing = min(MAX_SPACING, max(MIN_SPACING, max(labels, default=0) * CHAR_WIDTH + 40))
        times = [len(_since(a)) for a in ladder.arrows]
        self.margin = max(times, default=0) * CHAR_WIDTH + PAD
        self.legend = len(ladder.callids) if len(ladder.callids) > 1 else 0
        columns = max(len(ladder.columns), 1)
        self.width = round(self.margin + columns * self.spacing + PAD)
        self.bottom = TOP + (len(ladder.arrows) + 1) * ROW_HEIGHT
        self.height = round(self.bottom + self.legend * LEGEND_LINE + PAD)

    def x(self, column: int) -> float:
        return self.margin + self.spacing * (column + 0.5)

    def y(self, index: int) -> float:
        return TOP + (index + 1) * ROW_HEIGHT

    def chars(self, pixels: float) -> int:
        return int(pixels // CHAR_WIDTH)


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _markers(ladder: Ladder) -> list[str]:
    legs = sorted({a.call_index for a in ladder.arrows})
    return [f'<marker id="head-{k}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="9" '
            f'markerHeight="9" markerUnits="userSpaceOnUse" orient="auto">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{leg_colour(k)}"/></marker>' for k in legs]


def _columns(ladder: Ladder, geo: _Geometry) -> list[str]:
    room = geo.chars(geo.spacing - 8)
    out = []
    for i, name in enumerate(ladder.columns):
        x = _num(geo.x(i))
        shown = text(cut_left(name, room))
        out.append(f'<g class="column"><title>{text(name)}</title>'
                   f'<text x="{x}" y="{NAMES_Y}" text-anchor="middle">{shown}</text>'
                   f'<line x1="{x}" y1="{TOP}" x2="{x}" y2="{geo.bottom}"/></g>')
    return out


def _arrow(arrow: Arrow, geo: _Geometry, group_id: str, href: str | None) -> str:
    message, colour = arrow.message, leg_colour(arrow.call_index)
    kind = "request" if message.is_request else "reply"
    classes = f"arrow {kind}" + (" retrans" if arrow.retransmission else "")
    y = geo.y(arrow.index)
    x1, x2 = geo.x(arrow.src_column), geo.x(arrow.dst_column)
    stroke = f'stroke="{colour}" marker-end="url(#head-{arrow.call_index})"'
    if arrow.retransmission:
        stroke += f' stroke-dasharray="{RETRANS_DASH}"'
    if x1 == x2:
        shape = (f'<path d="M{_num(x1)},{_num(y - 8)} h{LOOP_WIDTH} v12 h-{LOOP_WIDTH}" {stroke}/>')
        label_x, anchor = x1 + LOOP_WIDTH + 6, "start"
        room = geo.chars(geo.spacing - LOOP_WIDTH - 10)
        label_y = y
    else:
        shape = f'<line x1="{_num(x1)}" y1="{_num(y)}" x2="{_num(x2)}" y2="{_num(y)}" {stroke}/>'
        label_x, anchor = (x1 + x2) / 2, "middle"
        room = geo.chars(abs(x2 - x1) - 12)
        label_y = y - 5
    parts = [
        f'<g id="{group_id}" class="{classes}" data-row-id="{message.id}" '
        f'data-call="{arrow.call_index + 1}">',
        f"<title>{text(first_line(arrow))}</title>",
        f'<rect class="hit" x="0" y="{_num(y - ROW_HEIGHT + 6)}" width="{geo.width}" '
        f'height="{ROW_HEIGHT}"/>',
        f'<text class="time" x="{_num(geo.margin - 8)}" y="{_num(y + 4)}" '
        f'text-anchor="end">{_since(arrow)}</text>',
        shape,
        f'<text class="label" x="{_num(label_x)}" y="{_num(label_y)}" text-anchor="{anchor}" '
        f'fill="{colour}">{text(arrow_label(arrow, room))}</text>',
        "</g>",
    ]
    group = "".join(parts)
    return f'<a href="{href}">{group}</a>' if href else group


def _legend(ladder: Ladder, geo: _Geometry) -> list[str]:
    if not geo.legend:
        return []
    room = geo.chars(geo.width - 2 * PAD)
    return [f'<text class="legend" x="{PAD}" y="{_num(geo.bottom + (i + 1) * LEGEND_LINE)}" '
            f'fill="{leg_colour(i)}">{text(cut(f"call {i + 1}: {callid}", room))}</text>'
            for i, callid in enumerate(ladder.callids)]


def _svg(ladder: Ladder, linked: bool) -> str:
    """``linked``: groups are ``arrow-N``, each inside a link to ``#msg-N`` (the HTML page)."""
    geo = _Geometry(ladder)
    count = len(ladder.arrows)
    lines = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{geo.width}" height="{geo.height}" '
        f'viewBox="0 0 {geo.width} {geo.height}" font-family="{FONT}" font-size="{FONT_SIZE}" '
        f'role="img">',
        f"<title>SIP call flow, {count} message{'s' * (count != 1)}</title>",
        f"<style>{STYLE}</style>",
        "<defs>", *_markers(ladder), "</defs>",
        *_columns(ladder, geo),
    ]
    for arrow in ladder.arrows:
        if linked:
            lines.append(_arrow(arrow, geo, f"arrow-{arrow.index}", f"#msg-{arrow.index}"))
        else:
            lines.append(_arrow(arrow, geo, f"msg-{arrow.index}", None))
    lines += _legend(ladder, geo)
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def render_svg(ladder: Ladder) -> str:
    """A standalone SVG: arrow groups ``msg-<index>`` with ``data-row-id`` (the stored id)."""
    return _svg(ladder, linked=False)


PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #202124; }
.ladder { overflow-x: auto; }
.summary { color: #5f6368; }
section.message { border-left: 4px solid; padding-left: 0.8em; margin: 1.5em 0; }
section.message:target { background: #fff8d6; }
section.message h3 { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 1em; }
pre { overflow-x: auto; white-space: pre; font-size: 0.9em; }
.retrans { color: #b3261e; }
"""


def summary(ladder: Ladder) -> str:
    """One line: first date (UTC), message count, Call-ID(s)."""
    if not ladder.arrows:
        return "no messages"
    first = ladder.arrows[0].message.date.isoformat(sep=" ", timespec="milliseconds")
    count = len(ladder.arrows)
    calls = ", ".join(ladder.callids)
    return (f"{first} UTC · {count} message{'s' * (count != 1)} · "
            f"Call-ID{'s' * (len(ladder.callids) != 1)} {calls}")


def _message_section(ladder: Ladder, arrow: Arrow) -> str:
    message = arrow.message
    src, dst = ladder.columns[arrow.src_column], ladder.columns[arrow.dst_column]
    retrans = ' <span class="retrans">(retransmission)</span>' if arrow.retransmission else ""
    when = message.date.isoformat(sep=" ", timespec="milliseconds")
    body = message.msg.decode("utf-8", "replace").replace("\r\n", "\n")
    return (f'<section class="message" id="msg-{arrow.index}" '
            f'style="border-color: {leg_colour(arrow.call_index)}">\n'
            f'<h3><a href="#arrow-{arrow.index}">#{arrow.index + 1}</a> {_since(arrow)} '
            f"{text(src)} → {text(dst)} <b>{text(message.label)}</b>{retrans}</h3>\n"
            f"<p class=\"summary\">{when} UTC · {text(message.source.transport or '?')} · "
            f"Call-ID {text(message.callid)} · stored row {message.id}</p>\n"
            f"<pre>{text(body)}</pre>\n</section>")


def render_html(ladder: Ladder, title: str, full_messages: bool = True) -> str:
    """A standalone HTML5 page: the ladder, then (``full_messages``) each message in full.

    Clicking an arrow jumps to its message (``#msg-<index>``); a message's number jumps back.
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{text(title)}</title>",
        f"<style>{PAGE_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{text(title)}</h1>",
        f'<p class="summary">{text(summary(ladder))}</p>',
        f'<div class="ladder">\n{_svg(ladder, linked=full_messages)}</div>',
    ]
    if full_messages and ladder.arrows:
        parts.append("<h2>Messages</h2>")
        parts += [_message_section(ladder, arrow) for arrow in ladder.arrows]
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"
