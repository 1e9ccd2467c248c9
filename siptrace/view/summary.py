"""A call as sngrep lists one: the messages of one Call-ID folded into a summary. No I/O.

``fold`` takes the messages of calls in time order, a batch at a time: the
writer folds each batch into the summaries it keeps, the index command folds a whole
table, and ``summarize`` folds the messages of one call read back. The summary's
fields are its whole state, so a summary read back from the call index folds on.

Rules (docs/views.md):

- From/To user and display name come from the first request (a reply until then).
- The call's method is that of its first request; its final status is the first 2xx
  answering that method, else the last final reply to it. Replies to other methods
  (BYE, re-INVITE glare on a CANCEL...) never change it.
- Legs of one call across a B2BUA are linked by X-CID / X-Call-ID (the other leg's
  Call-ID, as sngrep reads them) and by the RFC 7989 Session-ID of the first request.
"""

from collections import Counter
from dataclasses import dataclass, fields
from functools import lru_cache
from itertools import chain
from typing import Sequence
from datetime import datetime

from siptrace.sip.headers import find_headers, name_addr
from siptrace.view.model import parse_address

LINK_HEADERS = ("x-cid", "x-call-id")  # sngrep's default "alias" headers for B2BUA legs
NULL_SESSION = "0" * 32  # RFC 7989 section 7: the null UUID of a not-yet-known peer
MAX_SET_TEXT = 254  # methods, codes and ips are kept as space-joined sets this long at most
_WANTED = ("from", "to", *LINK_HEADERS, "session-id")

# States, in sngrep's spirit (its call list's "State" column), for INVITE dialogs.
SETUP, RINGING, IN_CALL, COMPLETED = "setup", "ringing", "in call", "completed"
CANCELLED, REJECTED, BUSY, NO_ANSWER, DIVERTED = "cancelled", "rejected", "busy", "no answer", "diverted"
NO_REPLY = "no reply"
STATES = (SETUP, RINGING, IN_CALL, COMPLETED, CANCELLED, REJECTED, BUSY, NO_ANSWER,
          DIVERTED, NO_REPLY)
BUSY_CODES = {486, 600}
NO_ANSWER_CODES = {408, 480}
CANCELLED_CODES = {487}


@lru_cache(maxsize=4096)
def _ip_of(address: str) -> str:
    """The IP of a stored ``proto:ip:port`` (calls repeat a handful of addresses)."""
    return parse_address(address).ip


def _words(text: str) -> list[str]:
    return text.split()


def _add_word(text: str, word: str) -> str:
    """The set ``text`` (space-joined) with ``word``, unless full or already there."""
    if not word or f" {word} " in f" {text} ":
        return text
    joined = f"{text} {word}" if text else word
    return joined if len(joined) <= MAX_SET_TEXT else text


@dataclass(slots=True)
class CallSummary:
    """One call (one Call-ID): what the call list shows and what searches match."""

    callid: str
    first_date: datetime | None = None
    last_date: datetime | None = None
    from_user: str = ""
    from_name: str = ""
    to_user: str = ""
    to_name: str = ""
    method: str = ""  # of the first request
    status: str = ""  # final status ('' while there is none)
    reason: str = ""
    msg_count: int = 0
    methods: str = ""  # every method seen, space-joined
    codes: str = ""  # every reply code seen, space-joined
    ips: str = ""  # every address seen, space-joined
    xcid: str = ""  # the other leg's Call-ID (X-CID / X-Call-ID)
    session: str = ""  # RFC 7989 Session-ID of the first request ('' when null or absent)
    has_request: bool = False  # From/To taken from a request (else from a reply, for now)

    @property
    def duration(self) -> float:
        if self.first_date is None or self.last_date is None:
            return 0.0
        return (self.last_date - self.first_date).total_seconds()

    @property
    def state(self) -> str:
        """setup, ringing, in call, completed, cancelled, rejected, busy, no answer,
        diverted; for other methods completed, rejected or no reply."""
        code = int(self.status) if self.status else 0
        if self.method != "INVITE":
            return NO_REPLY if not code else COMPLETED if code < 300 else REJECTED
        if 200 <= code < 300:
            return COMPLETED if "BYE" in _words(self.methods) else IN_CALL
        if code in CANCELLED_CODES or (not code and "CANCEL" in _words(self.methods)):
            return CANCELLED
        if code in BUSY_CODES:
            return BUSY
        if code in NO_ANSWER_CODES:
            return NO_ANSWER
        if 300 <= code < 400:
            return DIVERTED
        if code >= 400:
            return REJECTED
        ringing = any(w.startswith("18") for w in _words(self.codes))
        return RINGING if ringing else SETUP

    def _read_headers(self, msg: bytes) -> None:
        found = find_headers(msg, _WANTED)
        self.from_name, self.from_user = name_addr(found.get("from", b""))
        self.to_name, self.to_user = name_addr(found.get("to", b""))
        for name in LINK_HEADERS:
            if name in found and not self.xcid:
                self.xcid = found[name].decode("utf-8", "replace").strip()
        session = found.get("session-id", b"").partition(b";")[0].strip().lower()
        if len(session) == 32 and session != NULL_SESSION.encode():
            self.session = session.decode("ascii", "replace")

    def as_dict(self) -> dict:
        """JSON-ready: dates as ISO text, with the derived state and duration."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "has_request"}
        for key in ("first_date", "last_date"):
            out[key] = out[key].isoformat(sep=" ") if out[key] else None
        out["duration"] = round(self.duration, 6)
        out["state"] = self.state
        return out


def _reason(msg: bytes) -> str:
    line = msg.split(b"\n", 1)[0].rstrip(b"\r")
    return line[12:].decode("utf-8", "replace").strip() if line[:4] == b"SIP/" else ""


def fold(calls: dict[str, CallSummary], callids: Sequence[str], dates: Sequence[datetime],
         methods: Sequence[str], statuses: Sequence[str], fromips: Sequence[str],
         toips: Sequence[str], msgs: Sequence[bytes]) -> None:
    """Fold the next messages of calls, given as columns in time order, into their
    summaries in ``calls`` (created when missing).

    Column-wise, because the writer folds every row it stores: each step is one pass
    over a column in C (dict, zip, Counter), then a little work per call.
    """
    for callid in set(callids).difference(calls):
        calls[callid] = CallSummary(callid)
    for callid, count in Counter(callids).items():
        calls[callid].msg_count += count
    for callid, first in dict(zip(reversed(callids), reversed(dates))).items():
        call = calls[callid]
        if call.first_date is None or first < call.first_date:
            call.first_date = first
    for callid, last in dict(zip(callids, dates)).items():
        call = calls[callid]
        if call.last_date is None or last > call.last_date:
            call.last_date = last
    for callid, address in dict.fromkeys(chain(zip(callids, fromips), zip(callids, toips))):
        ip = _ip_of(address)
        if ip:
            calls[callid].ips = _add_word(calls[callid].ips, ip)
    rows = range(len(callids))
    requests = [i for i, status in enumerate(statuses) if not status]
    for callid, method in dict.fromkeys((callids[i], methods[i]) for i in requests):
        calls[callid].methods = _add_word(calls[callid].methods, method)
    for callid, code in dict.fromkeys((callids[i], statuses[i]) for i in rows if statuses[i]):
        calls[callid].codes = _add_word(calls[callid].codes, code)
    # The parties: from the first request; from the first reply until one comes.
    first_request = dict(zip(reversed([callids[i] for i in requests]), reversed(requests)))
    for callid, i in dict(zip(reversed(callids), reversed(rows))).items():
        call = calls[callid]
        if not call.has_request and callid in first_request:
            i = first_request[callid]
            call.has_request = True
        elif call.method:
            continue
        call.method = methods[i]
        call._read_headers(msgs[i])
    for i in [i for i, status in enumerate(statuses) if status >= "200"]:  # final replies
        status = statuses[i]
        if len(status) == 3:
            call = calls[callids[i]]
            if methods[i] == call.method and not (call.status[:1] == "2"
                                                  and len(call.status) == 3):
                call.status = status
                call.reason = _reason(msgs[i])


def summarize(messages) -> dict[str, CallSummary]:
    """Summaries of the calls of ``messages`` (StoredMessage, in time order), by Call-ID."""
    calls: dict[str, CallSummary] = {}
    messages = list(messages)
    if messages:
        fold(calls, *zip(*((m.callid, m.date, m.method, m.status, m.fromip, m.toip, m.msg)
                           for m in messages)))
    return calls


SUMMARY_FIELDS = tuple(f.name for f in fields(CallSummary))
