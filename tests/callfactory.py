"""Stored messages of made-up calls, as rows and as StoredMessage, for the view tests."""

from datetime import datetime, timedelta

from siptrace.rows import TraceRow
from siptrace.view.model import StoredMessage

T0 = datetime(2024, 5, 1, 12, 0, 0)
REASONS = {100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 302: "Moved",
           401: "Unauthorized", 403: "Forbidden", 407: "Proxy Authentication Required",
           408: "Request Timeout", 480: "Temporarily Unavailable", 486: "Busy Here",
           487: "Request Terminated", 491: "Request Pending", 503: "Service Unavailable",
           600: "Busy Everywhere"}


def sip(what, callid, *, cseq=1, cseq_method=None, caller="alice", callee="0049301234",
        caller_name="Alice", headers=(), lf=False) -> bytes:
    """A request (``what`` a method) or a reply (``what`` a status code) of a call."""
    if isinstance(what, int):
        start = f"SIP/2.0 {what} {REASONS.get(what, 'Other')}"
        method = cseq_method or "INVITE"
    else:
        start = f"{what} sip:{callee}@example.net SIP/2.0"
        method = cseq_method or what
    lines = [start, "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK" + callid[:8],
             f'From: "{caller_name}" <sip:{caller}@example.com>;tag=f{callid[:6]}',
             f"To: <sip:{callee}@example.net>", f"Call-ID: {callid}", f"CSeq: {cseq} {method}",
             *headers, "Content-Length: 0"]
    end = "\n" if lf else "\r\n"
    return (end.join(lines) + end + end).encode()


def call_rows(callid, steps, *, start=T0, a="udp:10.0.0.1:5060", b="udp:10.0.0.2:5060",
              **kwargs) -> list[TraceRow]:
    """Rows for ``steps``: (what, direction '>' a->b or '<' b->a, seconds), more kwargs
    for ``sip``."""
    rows = []
    for step in steps:
        what, way, seconds, *extra = step
        options = {**kwargs, **(extra[0] if extra else {})}
        msg = sip(what, callid, **options)
        src, dst = (a, b) if way == ">" else (b, a)
        if isinstance(what, int):
            method, status = options.get("cseq_method") or "INVITE", str(what)
        else:
            method, status = what, ""
        rows.append(TraceRow(str(start + timedelta(seconds=seconds)), callid, "", msg, method,
                             status, src, dst, "ftag", "in"))
    return rows


def stored(rows, first_id=1) -> list[StoredMessage]:
    return [StoredMessage(first_id + i, datetime.fromisoformat(r.date), r.callid, r.method, r.status, r.fromip, r.toip,
                          r.fromtag, r.direction, r.traced_user, r.msg)
            for i, r in enumerate(rows)]


ANSWERED = [("INVITE", ">", 0), (100, "<", 0.01), (180, "<", 0.5), (200, "<", 2),
            ("ACK", ">", 2.1), ("BYE", ">", 32), (200, "<", 32.1, {"cseq": 2, "cseq_method": "BYE"})]


def twelve_calls(plans) -> list[TraceRow]:
    """Twelve calls of different parties, numbers, outcomes (``plans`` in turn), addresses
    and times from T0, and a registration; in no particular order."""
    rows = []
    for i in range(12):
        rows += call_rows(
            f"call-{i}@pbx{i % 2}", plans[i % len(plans)], start=T0 + timedelta(minutes=10 * i),
            caller=["alice", "bob", "carol_x", "dave%"][i % 4], caller_name=f"User {i}",
            callee=f"004930123{i:02d}", a=f"udp:10.0.{i % 3}.1:5060", b="udp:192.0.2.9:5060")
    rows += call_rows("reg-1@ua", [("REGISTER", ">", 0),
                                   (200, "<", 0.1, {"cseq_method": "REGISTER"})],
                      start=T0 + timedelta(hours=3), caller="alice", callee="alice")
    return rows
