"""Joins wire messages with the proxy's decisions: which messages to trace. No I/O.

The clock is injected: every method takes ``now_ns`` (live: wall clock; replay: the
time of the event fed). Matching is by Call-ID, CSeq and the chain of Via branches
(RFC 3261 section 16.6 step 8: a proxy pushes its own Via, so the branch it
received becomes the second one of what it sends; section 16.7 step 3: it pops
that Via from replies). The semantics are those of the original module's TM/SL
callbacks; docs/decisions.md says what is traced, and where siptrace differs.

A waiting message keeps three flags rather than one explicit state: what it waits
for (its own decision, a transaction that sent it, one it is a reply to) are
independent claims arriving in any order, and a state per combination would be a
table of seven states saying what the three flags say.
"""

from collections import Counter, OrderedDict, deque
from typing import NamedTuple

from siptrace.correlate.decision import Decision
from siptrace.correlate.state import (BRANCH_OVERHEAD, PendingDecision, PendingMessage,
                                      SwitchHistory, Transaction, reply_fits, unindex)
from siptrace.direction import ProxyAddresses

SECOND = 1_000_000_000
T1_NS = SECOND // 2  # RFC 3261 section 17.1.1.1: T1, the RTT estimate
# RFC 3261 section 16.6 step 11: Timer C (an INVITE waiting for its final reply)
# runs for more than 3 minutes; Kamailio's fr_inv_timer is 120 s.
INVITE_TTL_NS = 190 * SECOND
# 64*T1 (Timers B, F, H, J): how long a completed transaction can still see
# retransmissions; plus a margin for the ACK and late CANCEL replies.
COMPLETED_TTL_NS = 64 * T1_NS + 8 * SECOND
GRACE_NS = 2 * SECOND  # the grace setting's default (config.Settings takes it from here)
TRACED_USER_AVP = 6843  # the module's traced_user_avp default (config.Settings too)
MAX_CAPTURE_LAG_NS = 10 * SECOND
MAX_BRANCHES = 64  # forks remembered per transaction
MAX_SWITCHES = 64  # on/off history kept to judge a message by its capture time
MAX_TRACED_USERS = 64  # traced_user_avp values used per message (one row each)
# Bytes held, whatever the peers send: messages waiting for their decision, and
# decisions waiting for their message together with the transactions remembered
# (the decision_buffer_bytes setting). Past them, the oldest entries are evicted.
MAX_PENDING_BYTES = 32 << 20
MAX_DECISION_BUFFER = 16 << 20
# Tables are swept at most this often (clock time); the grace window itself is
# checked exactly when matching, so results never depend on when sweeps ran.
SWEEP_NS = 10_000_000

# Requests a proxy builds itself on a branch of an INVITE it forwarded
# (RFC 3261 section 9.1 and 17.1.1.3: same top Via branch as that INVITE).
BUILT_ON_INVITE_BRANCH = frozenset(("CANCEL", "ACK"))


class Traced(NamedTuple):
    """A wire message to store: one row with traced_user '' plus one per user."""

    wire: object  # extract.WireMessage
    direction: str  # "in" or "out" ("" in trace_all mode off the proxy)
    traced_users: tuple[str, ...]


class Correlator:
    """Decides which wire messages are traced, from the proxy's decisions.

    ``on_packet`` and ``on_decision`` return the Traced outputs they complete, a
    transaction's messages in capture order. ``tick`` (time passes) and ``finish``
    (the input ends) only expire what waits, which is never traced; they return []
    all the same, so that a loop drains every entry point alike.

    ``stats`` counts: packets, decisions, matched (a decision paired with the
    message it was made for), unclaimed_packets (nothing claimed them within the
    grace window), unmatched_decisions, traced_requests, traced_replies (the
    module's statistics: messages emitted, not rows), foreign_packets (neither to
    nor from the proxy), transactions, evicted_packets, evicted_decisions,
    evicted_transactions (over a bound in entries or bytes), traced_users_cut (values
    past MAX_TRACED_USERS), decisions_ignored (trace_all mode).
    """

    def __init__(self, proxy: ProxyAddresses | None = None, *, trace_flag: int = 0,
                 traced_user_avp: int = TRACED_USER_AVP, trace_on: bool = True,
                 trace_all: bool = False, grace_ns: int = GRACE_NS,
                 transaction_ttl_ns: int = INVITE_TTL_NS,
                 completed_ttl_ns: int = COMPLETED_TTL_NS,
                 max_capture_lag_ns: int = MAX_CAPTURE_LAG_NS,
                 max_transactions: int = 100_000, max_pending_packets: int = 100_000,
                 max_pending_decisions: int = 100_000,
                 max_pending_bytes: int = MAX_PENDING_BYTES,
                 max_decision_bytes: int = MAX_DECISION_BUFFER):
        self.proxy = proxy or ProxyAddresses()
        self.trace_flag = trace_flag
        self.avp_key = str(traced_user_avp) if traced_user_avp else None
        self.trace_all = trace_all
        self.grace_ns = int(grace_ns)
        self.transaction_ttl_ns = int(transaction_ttl_ns)
        self.completed_ttl_ns = int(completed_ttl_ns)
        self.max_capture_lag_ns = int(max_capture_lag_ns)
        self.max_transactions = max(1, max_transactions)
        self.max_pending_packets = max(1, max_pending_packets)
        self.max_pending_decisions = max(1, max_pending_decisions)
        self.max_pending_bytes = max_pending_bytes
        self.max_decision_bytes = max_decision_bytes
        self._pending_bytes = 0  # of the entries in _pending (settled ones are small)
        self._claim_bytes = 0  # of the decisions in _claims (done ones included)
        self._txn_bytes = 0  # of the transactions
        self.stats: Counter = Counter()
        self._switches = SwitchHistory(trace_on, MAX_SWITCHES)
        self._clock = 0  # the latest now_ns seen
        self._next_sweep = 0
        self._watermark = 0  # the latest capture time seen
        self._seq = 0
        # transactions by (received branch, Call-ID, CSeq number, CSeq method)
        self._txns: dict[tuple, Transaction] = {}
        # the same, by (branch the proxy sent on, Call-ID, CSeq number)
        self._by_sent_branch: dict[tuple, Transaction] = {}
        self._long: OrderedDict = OrderedDict()  # open INVITEs, least recently active first
        self._short: OrderedDict = OrderedDict()  # everything else
        self._pending: deque[PendingMessage] = deque()  # arrival order; settled ones linger
        self._waiting_packets = 0
        self._waiting_claims = 0
        self._pending_b0: dict[tuple, list[PendingMessage]] = {}  # (top branch, Call-ID)
        self._pending_b1: dict[tuple, list[PendingMessage]] = {}  # (second branch, Call-ID)
        self._claims: deque[PendingDecision] = deque()
        self._request_claims: dict[tuple, list[PendingDecision]] = {}
        self._reply_claims: dict[tuple, list[PendingDecision]] = {}

    # -- trace on/off -----------------------------------------------------------

    @property
    def trace_on(self) -> bool:
        return self._switches.on

    def set_trace_on(self, on: bool, now_ns: int) -> None:
        """Switch tracing; messages captured from ``now_ns`` on follow the new state.

        Off: nothing is emitted, but packets and decisions are still consumed.
        """
        self._advance(now_ns)
        self._switches.switch(on, now_ns)

    # -- public entry points ------------------------------------------------------

    def sizes(self) -> dict:
        """Current table sizes (all bounded), for status output."""
        return {"pending_packets": self._waiting_packets,
                "pending_decisions": self._waiting_claims, "transactions": len(self._txns),
                "pending_bytes": self._pending_bytes,
                "decision_bytes": self._claim_bytes + self._txn_bytes}

    def tick(self, now_ns: int) -> list[Traced]:
        """Let time pass: expire what waited too long. Returns [] (expiry never traces)."""
        self._advance(now_ns)
        self._next_sweep = 0
        self._expire()
        return []

    def finish(self, now_ns: int | None = None) -> list[Traced]:
        """End of input: everything still waiting is given up and counted. Returns []."""
        if now_ns is not None:
            self._advance(now_ns)
        while self._pending:
            self._pop_pending("unclaimed_packets")
        while self._claims:
            self._pop_claim("unmatched_decisions")
        self._txns.clear()
        self._by_sent_branch.clear()
        self._long.clear()
        self._short.clear()
        self._txn_bytes = 0
        return []

    def on_packet(self, wire, now_ns: int) -> list[Traced]:
        """A captured SIP message (an extract.WireMessage)."""
        self.stats["packets"] += 1
        if now_ns > self._clock:
            self._clock = now_ns
        ts = wire.ts_ns
        if ts > self._watermark:
            self._watermark = ts
        if self.trace_all:  # nothing ever waits in this mode
            if not self._switches.on_at(ts):
                return []
            self._count(wire)
            return [Traced(wire, self.proxy.direction(wire), ())]
        self._expire()
        out: list = []
        self._correlate(wire, out)
        if len(out) > 1:
            out.sort(key=_seq_of)
        return [item for _, item in out]

    def on_decision(self, decision: Decision, now_ns: int) -> list[Traced]:
        """A decision, with ``now_ns`` the time siptrace received it."""
        stats = self.stats
        stats["decisions"] += 1
        self._advance(now_ns)
        self._expire()
        if self.trace_all:
            stats["decisions_ignored"] += 1
            return []
        users = decision.avp_values(self.avp_key) if self.avp_key else ()
        if len(users) > MAX_TRACED_USERS:
            stats["traced_users_cut"] += len(users) - MAX_TRACED_USERS
            users = users[:MAX_TRACED_USERS]
        out: list = []
        if decision.is_request:
            key = (decision.branch, decision.callid, decision.cseq_num, decision.cseq_method)
            self._decide_transaction(key, decision, users, out)
            claims = self._request_claims
        else:
            key = (decision.branch, decision.callid, decision.cseq_num, decision.cseq_method,
                   decision.status)
            claims = self._reply_claims
        entry = self._pending_received(decision)
        if entry is not None:
            stats["matched"] += 1
            entry.need_rcv = False
            entry.claimed = True
            if decision.trace:
                self._emit(entry.seq, entry.wire, "in", users, out)
            self._settle(entry)
        else:
            claim = PendingDecision(decision, users, now_ns, key)
            if len(self._claims) >= self.max_pending_decisions:
                self._pop_claim("evicted_decisions")
            self._fit_decisions(claim.size)
            self._claims.append(claim)
            self._waiting_claims += 1
            self._claim_bytes += claim.size
            claims.setdefault(key, []).append(claim)
        if len(out) > 1:
            out.sort(key=_seq_of)
        return [item for _, item in out]

    # -- packets ------------------------------------------------------------------------

    def _correlate(self, wire, out: list) -> None:
        sip = wire.sip
        proxy = self.proxy
        if proxy:
            to_proxy = proxy.received(wire)
            from_proxy = proxy.sent(wire)
            if not (to_proxy or from_proxy):
                self.stats["foreign_packets"] += 1
                return
        else:
            to_proxy = from_proxy = True
        self._seq += 1
        seq = self._seq
        vias = sip.via_branches
        b0 = vias[0] if vias else ""
        b1 = vias[1] if len(vias) > 1 else None
        callid = sip.call_id
        num = sip.cseq_num
        method = sip.cseq_method
        status = sip.status
        is_request = status is None
        need_out = from_proxy
        need_in = to_proxy and not is_request
        claimed = False
        if from_proxy:
            if is_request:
                txn = self._txns.get((b1, callid, num, method)) if b1 is not None else None
                if txn is not None:  # forwarded, statefully or not, on a new branch
                    self._emit_txn(txn, seq, wire, "out", out)
                    self._learn_branch(txn, b0, out)
                    need_out = False
                elif method in BUILT_ON_INVITE_BRANCH:
                    txn = self._by_sent_branch.get((b0, callid, num))
                    if txn is not None and txn.method == "INVITE":
                        self._emit_txn(txn, seq, wire, "out", out)
                        need_out = False
            else:
                txn = self._txns.get((b0, callid, num, method))
                if txn is not None:  # sent upstream: relayed or generated locally
                    self._emit_txn(txn, seq, wire, "out", out)
                    if status >= 200:
                        self._complete(txn)
                    need_out = False
            claimed = not need_out
        if need_in:
            txn = self._by_sent_branch.get((b0, callid, num))
            if txn is not None and reply_fits(txn, method):  # received on a branch
                self._emit_txn(txn, seq, wire, "in", out)
                need_in = False
                claimed = True
        need_rcv = to_proxy
        if need_rcv:
            claim = self._take_claim(wire, b0, callid, num, method, status)
            if claim is not None:
                self.stats["matched"] += 1
                need_rcv = False
                claimed = True
                if claim.decision.trace:
                    self._emit(seq, wire, "in", claim.users, out)
        if need_rcv or need_out or need_in:
            self._add_pending(PendingMessage(seq, wire, wire.ts_ns + self.grace_ns, b0, b1,
                                             callid, num, method, status, need_rcv,
                                             need_out, need_in, claimed))

    def _take_claim(self, wire, b0, callid, num, method, status) -> PendingDecision | None:
        if status is None:
            claims = self._request_claims.get((b0, callid, num, method))
        else:
            claims = self._reply_claims.get((b0, callid, num, method, status))
        if not claims:
            return None
        for i, claim in enumerate(claims):
            addr = claim.decision.src_addr
            if self._claim_expired(claim):
                continue
            if addr is None or (addr[0] == wire.src and addr[1] == wire.sport):
                del claims[i]
                if not claims:
                    del (self._request_claims if status is None
                         else self._reply_claims)[claim.key]
                claim.done = True
                self._waiting_claims -= 1
                return claim
        return None

    def _add_pending(self, entry: PendingMessage) -> None:
        pending = self._pending
        while pending and (len(pending) >= self.max_pending_packets
                           or self._pending_bytes + entry.size > self.max_pending_bytes):
            self._pop_pending("evicted_packets")
        pending.append(entry)
        self._pending_bytes += entry.size
        self._waiting_packets += 1
        self._pending_b0.setdefault((entry.b0, entry.callid), []).append(entry)
        if entry.b1 is not None and entry.need_out and entry.status is None:
            self._pending_b1.setdefault((entry.b1, entry.callid), []).append(entry)

    def _settle(self, entry: PendingMessage) -> None:
        """Take a pending message out of the indexes once nothing more can claim it;
        until it leaves _pending, it no longer holds the message."""
        if entry.done and not entry.settled:
            entry.settled = True
            self._waiting_packets -= 1
            unindex(self._pending_b0, (entry.b0, entry.callid), entry)
            if entry.b1 is not None:
                unindex(self._pending_b1, (entry.b1, entry.callid), entry)
            released = entry.message_size
            entry.size -= released
            self._pending_bytes -= released
            entry.wire = None

    def _pop_pending(self, counter: str) -> None:
        """Take the oldest waiting message out (``counter`` says why, if still waiting)."""
        entry = self._pending.popleft()
        self._drop_pending(entry, counter)  # settles it: what it holds is smaller now
        self._pending_bytes -= entry.size

    def _drop_pending(self, entry: PendingMessage, counter: str) -> None:
        if entry.settled:
            return
        if counter == "evicted_packets" or not entry.claimed:
            self.stats[counter] += 1
        entry.need_rcv = entry.need_out = entry.need_in = False
        self._settle(entry)

    # -- decisions ------------------------------------------------------------------------

    def _decide_transaction(self, key, decision: Decision, users, out: list) -> None:
        traced = decision.has_flag(self.trace_flag)
        txn = self._txns.get(key)
        if txn is not None:  # a retransmission the proxy saw again
            if traced and not txn.traced:
                txn.traced, txn.users = True, users
            self._touch(txn)
            return
        if len(self._txns) >= self.max_transactions:
            self._evict_transaction()
        txn = Transaction(key, decision, traced, users, self._clock)
        self._fit_decisions(txn.size)
        self.stats["transactions"] += 1
        self._txns[key] = txn
        self._txn_bytes += txn.size
        (self._long if txn.long else self._short)[key] = txn
        self._adopt_pending(txn, out)

    def _adopt_pending(self, txn: Transaction, out: list) -> None:
        """Claim the messages captured before the decision that created ``txn``."""
        branch, callid, num, method = txn.key
        clock = self._clock
        for entry in list(self._pending_b1.get((branch, callid), ())):
            if (entry.need_out and entry.deadline >= clock and entry.cseq_num == num
                    and entry.method == method):
                entry.need_out = False
                entry.claimed = True
                self._emit_txn(txn, entry.seq, entry.wire, "out", out)
                self._settle(entry)
                self._learn_branch(txn, entry.b0, out)
        for entry in list(self._pending_b0.get((branch, callid), ())):
            if (entry.need_out and entry.deadline >= clock and entry.status is not None
                    and entry.cseq_num == num and entry.method == method):
                entry.need_out = False
                entry.claimed = True
                self._emit_txn(txn, entry.seq, entry.wire, "out", out)
                if entry.status >= 200:
                    self._complete(txn)
                self._settle(entry)

    def _learn_branch(self, txn: Transaction, branch: str, out: list) -> None:
        """Remember a branch the proxy sent ``txn`` on; claim what waited on it."""
        key = (branch, txn.callid, txn.cseq_num)
        if len(txn.branches) >= MAX_BRANCHES or key in self._by_sent_branch:
            return
        txn.branches.append(branch)
        txn.size += BRANCH_OVERHEAD + len(branch)
        self._txn_bytes += BRANCH_OVERHEAD + len(branch)
        self._by_sent_branch[key] = txn
        clock = self._clock
        for entry in list(self._pending_b0.get((branch, txn.callid), ())):
            if entry.cseq_num != txn.cseq_num or entry.deadline < clock:
                continue
            if entry.status is None:
                if (entry.need_out and entry.method in BUILT_ON_INVITE_BRANCH
                        and txn.method == "INVITE"):
                    entry.need_out = False
                    entry.claimed = True
                    self._emit_txn(txn, entry.seq, entry.wire, "out", out)
            elif entry.need_in and reply_fits(txn, entry.method):
                entry.need_in = False
                entry.claimed = True
                self._emit_txn(txn, entry.seq, entry.wire, "in", out)
            self._settle(entry)

    def _pending_received(self, decision: Decision) -> PendingMessage | None:
        """The earliest waiting message that ``decision`` was made for."""
        candidates = self._pending_b0.get((decision.branch, decision.callid))
        if not candidates:
            return None
        addr = decision.src_addr
        clock = self._clock
        for entry in candidates:
            if (entry.need_rcv and entry.deadline >= clock
                    and entry.cseq_num == decision.cseq_num
                    and entry.method == decision.cseq_method
                    and entry.status == decision.status
                    and (addr is None or (addr[0] == entry.wire.src
                                          and addr[1] == entry.wire.sport))):
                return entry
        return None

    def _pop_claim(self, counter: str) -> None:
        """Take the oldest waiting decision out (``counter`` says why, if still waiting)."""
        claim = self._claims.popleft()
        self._claim_bytes -= claim.size
        self._drop_claim(claim, counter)

    def _fit_decisions(self, size: int) -> None:
        """Make room for ``size`` more bytes: evict the oldest waiting decisions or
        transactions, from whichever of the two holds more."""
        while self._claim_bytes + self._txn_bytes + size > self.max_decision_bytes:
            if self._claims and (self._claim_bytes >= self._txn_bytes or not self._txns):
                self._pop_claim("evicted_decisions")
            elif self._txns:
                self._evict_transaction()
            else:
                break

    def _drop_claim(self, claim: PendingDecision, counter: str) -> None:
        if claim.done:
            return
        claim.done = True
        self._waiting_claims -= 1
        self.stats[counter] += 1
        table = self._request_claims if claim.decision.is_request else self._reply_claims
        unindex(table, claim.key, claim)

    # -- transactions ------------------------------------------------------------------

    def _touch(self, txn: Transaction) -> None:
        txn.last_ns = self._clock
        (self._long if txn.long else self._short).move_to_end(txn.key)

    def _complete(self, txn: Transaction) -> None:
        if not txn.completed:
            txn.completed = True
            if txn.long:
                txn.long = False
                del self._long[txn.key]
                self._short[txn.key] = txn

    def _evict_transaction(self) -> None:
        """Forget the least recently active transaction, completed ones first."""
        table = self._short if self._short else self._long
        self._forget(table.popitem(last=False)[1])
        self.stats["evicted_transactions"] += 1

    def _forget(self, txn: Transaction) -> None:
        del self._txns[txn.key]
        self._txn_bytes -= txn.size
        for branch in txn.branches:
            self._by_sent_branch.pop((branch, txn.callid, txn.cseq_num), None)

    # -- output and time ----------------------------------------------------------------

    def _emit_txn(self, txn: Transaction, seq: int, wire, direction: str, out: list) -> None:
        self._touch(txn)
        if txn.traced:
            self._emit(seq, wire, direction, txn.users, out)

    def _emit(self, seq: int, wire, direction: str, users, out: list) -> None:
        if self._switches.on_at(wire.ts_ns):
            self._count(wire)
            out.append((seq, Traced(wire, direction, users)))

    def _count(self, wire) -> None:
        if wire.sip.status is None:
            self.stats["traced_requests"] += 1
        else:
            self.stats["traced_replies"] += 1

    def _advance(self, now_ns: int) -> None:
        if now_ns > self._clock:
            self._clock = now_ns

    def _expire(self) -> None:
        clock = self._clock
        if clock < self._next_sweep:
            return
        self._next_sweep = clock + SWEEP_NS
        pending = self._pending
        while pending and (pending[0].settled or pending[0].deadline < clock):
            self._pop_pending("unclaimed_packets")
        claims = self._claims
        while claims and (claims[0].done or self._claim_expired(claims[0])):
            self._pop_claim("unmatched_decisions")
        for table, ttl in ((self._long, self.transaction_ttl_ns),
                           (self._short, self.completed_ttl_ns)):
            while table:
                txn = next(iter(table.values()))
                if txn.last_ns + ttl >= clock:
                    break
                table.popitem(last=False)
                self._forget(txn)
        self._fit_decisions(0)  # branches learned since the last decision


    def _claim_expired(self, claim: PendingDecision) -> bool:
        # A decision waits for messages captured up to ``grace`` after it arrived
        # (capture time), and at most ``max_capture_lag`` more of wall time.
        rt = claim.rt_ns + self.grace_ns
        return rt < self._watermark or rt + self.max_capture_lag_ns < self._clock


def _seq_of(item) -> int:
    return item[0]
