"""Calls and rows as an aligned text table, JSON or CSV. No I/O: functions return text.

The text table fits a width (80 columns by default): the flexible columns (names,
reasons, Call-IDs) are cut, longest first, with an ellipsis. Without a width (output
to a pipe) nothing is cut.
"""

import csv
import json
from dataclasses import dataclass

from siptrace.view.model import StoredMessage
from siptrace.view.summary import CallSummary

ELLIPSIS = "…"
MIN_FLEX = 8  # a flexible column is never cut below this


@dataclass(frozen=True)
class Column:
    title: str
    flexible: bool = False
    right: bool = False


def render_table(columns: list[Column], rows: list[list[str]], width: int | None = 80) -> str:
    """Header and rows, columns separated by two spaces, cut to ``width`` if given."""
    widths = [max([len(c.title)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    if width:
        excess = sum(widths) + 2 * (len(widths) - 1) - width
        while excess > 0:
            flexible = [i for i, c in enumerate(columns) if c.flexible and widths[i] > MIN_FLEX]
            if not flexible:
                break
            widths[max(flexible, key=lambda i: widths[i])] -= 1
            excess -= 1
    lines = []
    for cells in [[c.title for c in columns], *rows]:
        parts = []
        for cell, column, size in zip(cells, columns, widths):
            if len(cell) > size:
                cell = cell[:size - 1] + ELLIPSIS
            parts.append(cell.rjust(size) if column.right else cell.ljust(size))
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _party(user: str, name: str) -> str:
    if name and user and name != user:
        return f"{name} <{user}>"
    return user or name


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


CALL_COLUMNS = [Column("START (UTC)"), Column("FROM", True), Column("TO", True),
                Column("METHOD"), Column("STATUS", True), Column("STATE"),
                Column("DUR", right=True), Column("MSGS", right=True), Column("CALL-ID", True)]


def calls_table(calls: list[CallSummary], width: int | None = 80) -> str:
    """The call list; the METHOD column only when some call is not an INVITE."""
    years = {c.first_date.year for c in calls if c.first_date}
    date_format = "%m-%d %H:%M:%S" if len(years) <= 1 else "%Y-%m-%d %H:%M:%S"
    rows = [[c.first_date.strftime(date_format) if c.first_date else "",
             _party(c.from_user, c.from_name), _party(c.to_user, c.to_name), c.method,
             f"{c.status} {c.reason}".strip(), c.state, _duration(c.duration),
             str(c.msg_count), c.callid] for c in calls]
    if all(c.method == "INVITE" for c in calls):
        keep = [i for i, c in enumerate(CALL_COLUMNS) if c.title != "METHOD"]
        return render_table([CALL_COLUMNS[i] for i in keep], [[r[i] for i in keep] for r in rows],
                            width)
    return render_table(CALL_COLUMNS, rows, width)


ROW_COLUMNS = [Column("DATE (UTC)"), Column("DIR"), Column("FROM", True), Column("TO", True),
               Column("MESSAGE", True), Column("CALL-ID", True), Column("USER", True)]


def rows_table(rows: list[StoredMessage], width: int | None = 80) -> str:
    cells = [[m.date.isoformat(sep=" ", timespec="microseconds"), m.direction or "-",
              m.fromip, m.toip, m.label, m.callid, m.traced_user] for m in rows]
    columns = ROW_COLUMNS if any(m.traced_user for m in rows) else ROW_COLUMNS[:-1]
    return render_table(columns, [c[:len(columns)] for c in cells], width)


def row_dict(m: StoredMessage, with_msg: bool = True) -> dict:
    out = {"id": m.id, "date": m.date.isoformat(sep=" ", timespec="microseconds"),
           "callid": m.callid, "method": m.method, "status": m.status, "fromip": m.fromip,
           "toip": m.toip, "fromtag": m.fromtag, "direction": m.direction,
           "traced_user": m.traced_user}
    if m.totag:
        out["totag"] = m.totag
    if with_msg:
        out["msg"] = m.msg.decode("utf-8", "surrogateescape").encode(
            "utf-8", "backslashreplace").decode("utf-8")
    return out


def as_json(records: list[dict]) -> str:
    return json.dumps(records, indent=2, ensure_ascii=False)


def as_csv(records: list[dict]) -> str:
    if not records:
        return ""
    lines: list[str] = []
    sink = type("Sink", (), {"write": staticmethod(lines.append)})()  # csv writes to any .write
    writer = csv.DictWriter(sink, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return "".join(lines)
