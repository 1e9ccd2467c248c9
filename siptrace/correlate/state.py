"""The correlator's table entries: transactions, messages and decisions that wait.

Each entry knows about how many bytes it holds (``size``), for the byte bounds.
"""

from collections import deque
from dataclasses import dataclass

from siptrace.correlate.decision import Decision

# Bytes of an entry besides its strings: objects, slots, index lists.
MESSAGE_OVERHEAD = 800  # a waiting message's WireMessage and SipMessage, besides its bytes
ENTRY_OVERHEAD = 200  # the PendingMessage itself and its index entries
TRANSACTION_OVERHEAD = 600
BRANCH_OVERHEAD = 120  # a branch learned: its string and index entry
STRING_OVERHEAD = 60  # one traced user value


def users_size(users: tuple[str, ...]) -> int:
    """Bytes held by traced user values."""
    return sum(STRING_OVERHEAD + len(u) for u in users) if users else 0


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
                 "completed", "last_ns", "long", "size")

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
        self.size = (TRANSACTION_OVERHEAD + len(decision.callid) + len(decision.branch)
                     + users_size(users))


@dataclass(slots=True, eq=False)
class PendingMessage:
    """A captured message still waiting for a decision that could claim it."""

    seq: int
    wire: object  # the WireMessage; None once settled (its bytes let go)
    deadline: int
    b0: str
    b1: str | None
    callid: str
    cseq_num: int
    method: str
    status: int | None
    need_rcv: bool  # its own decision (it was sent to the proxy)
    need_out: bool  # a transaction that explains it being sent
    need_in: bool  # a transaction it is a reply to (received on a branch)
    claimed: bool
    settled: bool = False
    size: int = 0

    def __post_init__(self):
        self.size = (ENTRY_OVERHEAD + len(self.callid) + len(self.b0) + len(self.b1 or "")
                     + self.message_size)

    @property
    def message_size(self) -> int:
        """Bytes held through ``wire``, released when the entry settles."""
        return MESSAGE_OVERHEAD + len(self.wire.sip.raw) if self.wire is not None else 0

    @property
    def done(self) -> bool:
        return not (self.need_rcv or self.need_out or self.need_in)


class PendingDecision:
    """A decision waiting for the message it was made for."""

    __slots__ = ("decision", "users", "rt_ns", "key", "done", "size")

    def __init__(self, decision, users, rt_ns, key):
        self.decision = decision
        self.users = users
        self.rt_ns = rt_ns
        self.key = key
        self.done = False
        self.size = decision.size + users_size(users)


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
