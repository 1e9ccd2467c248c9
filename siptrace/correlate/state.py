"""The correlator's table entries: transactions, messages and decisions that wait."""

from collections import deque

from siptrace.correlate.decision import Decision


class SwitchHistory:
    """trace_on over time: the state in force when a message was captured."""

    __slots__ = ("on", "_initial", "_switches", "_limit")

    def __init__(self, on: bool, limit: int):
        self.on = bool(on)
        self._initial = self.on  # the state before the oldest switch remembered
        self._switches: deque = deque()  # (at_ns, on), oldest first
        self._limit = limit

    def switch(self, on: bool, at_ns: int) -> None:
        if len(self._switches) >= self._limit:
            self._initial = self._switches.popleft()[1]
        self._switches.append((at_ns, bool(on)))
        self.on = bool(on)

    def on_at(self, ts_ns: int) -> bool:
        switches = self._switches
        if not switches or ts_ns >= switches[-1][0]:
            return self.on
        for at, on in reversed(switches):
            if ts_ns >= at:
                return on
        return self._initial


class Transaction:
    """A request the proxy received, and what it sent and received on its behalf."""

    __slots__ = ("key", "callid", "cseq_num", "method", "traced", "users", "branches",
                 "completed", "last_ns", "long")

    def __init__(self, key, decision: Decision, traced: bool, users, now_ns: int):
        self.key = key
        self.callid = decision.callid
        self.cseq_num = decision.cseq_num
        self.method = decision.cseq_method
        self.traced = traced
        self.users = users
        self.branches: list[str] = []  # top Via branches of what the proxy sent
        self.completed = self.method == "ACK"  # an ACK gets no reply
        self.long = not self.completed and self.method == "INVITE"
        self.last_ns = now_ns


class PendingMessage:
    """A captured message still waiting for a decision that could claim it."""

    __slots__ = ("seq", "wire", "deadline", "b0", "b1", "callid", "cseq_num", "method",
                 "status", "need_rcv", "need_out", "need_in", "claimed", "settled")

    def __init__(self, seq, wire, deadline, b0, b1, callid, cseq_num, method, status,
                 need_rcv, need_out, need_in, claimed):
        self.seq = seq
        self.wire = wire
        self.deadline = deadline
        self.b0 = b0
        self.b1 = b1
        self.callid = callid
        self.cseq_num = cseq_num
        self.method = method
        self.status = status
        self.need_rcv = need_rcv  # its own decision (it was sent to the proxy)
        self.need_out = need_out  # a transaction that explains it being sent
        self.need_in = need_in  # a transaction it is a reply to (received on a branch)
        self.claimed = claimed
        self.settled = False

    @property
    def done(self) -> bool:
        return not (self.need_rcv or self.need_out or self.need_in)


class PendingDecision:
    """A decision waiting for the message it was made for."""

    __slots__ = ("decision", "users", "rt_ns", "key", "done")

    def __init__(self, decision, users, rt_ns, key):
        self.decision = decision
        self.users = users
        self.rt_ns = rt_ns
        self.key = key
        self.done = False


def reply_fits(txn: Transaction, method: str) -> bool:
    """A reply's CSeq method fits a transaction: its own, or CANCEL on an INVITE."""
    return method == txn.method or (method == "CANCEL" and txn.method == "INVITE")


def unindex(index: dict, key, item) -> None:
    """Remove ``item`` from the list ``index[key]``, and the key once it is empty."""
    items = index.get(key)
    if items is None:
        return
    try:
        items.remove(item)
    except ValueError:
        return
    if not items:
        del index[key]
