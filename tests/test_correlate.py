"""Correlation of wire messages with the proxy's decisions, on realistic call flows.

Each flow is the wire view of a UAC (10.0.0.10), a proxy (10.0.0.1:5060) and a UAS
(10.0.0.20:5070): messages are written out as bytes, parsed by the real SIP parser,
and fed with the decisions the proxy would publish for what it received.
"""

from hypothesis import given, settings, strategies as st

from siptrace.correlate import Correlator, RecordedEvent, correlate_offline
from siptrace.correlate.correlator import MAX_TRACED_USERS
from siptrace.correlate.decision import decision_from_object
from siptrace.direction import ProxyAddresses
from siptrace.extract import WireMessage
from siptrace.sip.parser import parse_message

MS = 1_000_000
SECOND = 1000 * MS
BASE_NS = 1_700_000_000 * SECOND
UAC = ("10.0.0.10", 5060)
PROXY = ("10.0.0.1", 5060)
UAS = ("10.0.0.20", 5070)
PROXY_ADDRESSES = ProxyAddresses.parse(["10.0.0.1:5060"])
TRACE_FLAG = 3
FLAGGED = 1 << TRACE_FLAG | 1  # bit 0 too: only the configured bit counts


def _via(hop, branch):
    return f"Via: SIP/2.0/UDP {hop[0]}:{hop[1]};branch={branch}\r\n"


class Flow:
    """Named wire messages of one scenario, and the decisions for what the proxy got."""

    def __init__(self, callid="a84b4c76e66710@10.0.0.10"):
        self.callid = callid
        self.wires: dict[str, WireMessage] = {}
        self.names: dict[int, str] = {}

    def request(self, name, t_ms, src, dst, method, vias, cseq=1, cseq_method=None,
                to_tag=""):
        to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
        raw = (f"{method} sip:bob@example.com SIP/2.0\r\n"
               + "".join(_via(hop, branch) for hop, branch in vias)
               + "Max-Forwards: 70\r\nFrom: Alice <sip:alice@example.com>;tag=1928301774\r\n"
               f"To: {to}\r\nCall-ID: {self.callid}\r\n"
               f"CSeq: {cseq} {cseq_method or method}\r\nContent-Length: 0\r\n\r\n")
        return self._add(name, t_ms, src, dst, raw)

    def reply(self, name, t_ms, src, dst, status, vias, cseq=1, method="INVITE",
              to_tag="a6c85cf"):
        raw = (f"SIP/2.0 {status} Reason\r\n"
               + "".join(_via(hop, branch) for hop, branch in vias)
               + "From: Alice <sip:alice@example.com>;tag=1928301774\r\n"
               f"To: <sip:bob@example.com>;tag={to_tag}\r\nCall-ID: {self.callid}\r\n"
               f"CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n")
        return self._add(name, t_ms, src, dst, raw)

    def _add(self, name, t_ms, src, dst, raw):
        wire = WireMessage(BASE_NS + int(t_ms * MS), "udp", 4, src[0], src[1], dst[0],
                           dst[1], parse_message(raw.encode()))
        self.wires[name] = wire
        self.names[id(wire)] = name
        return wire

    def decision(self, name, flags=0, trace=False, users=None, **extra):
        """The decision the proxy publishes for the message ``name`` it received."""
        sip = self.wires[name].sip
        obj = {"callid": sip.call_id, "cseq": f"{sip.cseq_num} {sip.cseq_method}",
               "branch": sip.via_branches[0], "flags": flags, "trace": trace,
               "avps": {"6843": list(users)} if users else {},
               "kind": "request" if sip.is_request else "reply"}
        if not sip.is_request:
            obj["status"] = sip.status
        obj.update(extra)
        return decision_from_object(obj)

    def run(self, correlator, steps):
        """Feed steps; the outputs as (name, direction, traced_users), in emitted order.

        Steps: a message name (fed at its capture time), ("d", name, rt_ms, kwargs)
        for its decision, ("tick", ms), ("switch", on, ms).
        """
        out = []
        for step in steps:
            if isinstance(step, str):
                wire = self.wires[step]
                out += correlator.on_packet(wire, wire.ts_ns)
            elif step[0] == "d":
                _, name, rt_ms, kwargs = step
                out += correlator.on_decision(self.decision(name, **kwargs),
                                              BASE_NS + int(rt_ms * MS))
            elif step[0] == "tick":
                out += correlator.tick(BASE_NS + int(step[1] * MS))
            elif step[0] == "switch":
                correlator.set_trace_on(step[1], BASE_NS + int(step[2] * MS))
        return [(self.names[id(t.wire)], t.direction, t.traced_users) for t in out]


def correlator(**kwargs):
    kwargs.setdefault("trace_flag", TRACE_FLAG)
    return Correlator(PROXY_ADDRESSES, **kwargs)


B, X = "z9hG4bK74bf9", "z9hG4bKproxy1.0"  # the UAC's branch, the proxy's branch
B_ACK, X_ACK = "z9hG4bKack2", "z9hG4bKproxyack.0"


def answered_call() -> Flow:
    """INVITE through a stateful proxy: its own 100, the UAS's 100/180/200, ACK for 2xx."""
    f = Flow()
    f.request("INVITE in", 0, UAC, PROXY, "INVITE", [(UAC, B)])
    f.reply("100 out", 2, PROXY, UAC, 100, [(UAC, B)], to_tag="")
    f.request("INVITE out", 3, PROXY, UAS, "INVITE", [(PROXY, X), (UAC, B)])
    f.reply("100 in", 10, UAS, PROXY, 100, [(PROXY, X), (UAC, B)], to_tag="")
    f.reply("180 in", 20, UAS, PROXY, 180, [(PROXY, X), (UAC, B)])
    f.reply("180 out", 21, PROXY, UAC, 180, [(UAC, B)])
    f.reply("200 in", 30, UAS, PROXY, 200, [(PROXY, X), (UAC, B)])
    f.reply("200 out", 31, PROXY, UAC, 200, [(UAC, B)])
    f.request("ACK in", 40, UAC, PROXY, "ACK", [(UAC, B_ACK)], to_tag="a6c85cf")
    f.request("ACK out", 41, PROXY, UAS, "ACK", [(PROXY, X_ACK), (UAC, B_ACK)],
              to_tag="a6c85cf")
    return f


RECEIVED = ("INVITE in", "100 in", "180 in", "200 in", "ACK in")
TRANSACTION_ROWS = [("100 out", "out", ()), ("INVITE out", "out", ()),
                    ("100 in", "in", ()), ("180 in", "in", ()), ("180 out", "out", ()),
                    ("200 in", "in", ()), ("200 out", "out", ())]


def with_decisions(flow, delay_ms=1, decide=None, order=None):
    """Steps: every message in capture order, each received one's decision after it."""
    decide = decide or {}
    steps = []
    for name, wire in flow.wires.items():
        steps.append(name)
        if name in RECEIVED or name in decide:
            t_ms = (wire.ts_ns - BASE_NS) / MS
            steps.append(("d", name, t_ms + delay_ms, decide.get(name, {})))
    return steps


# -- the trace flag: TM callbacks --------------------------------------------------------

def test_flag_traces_what_the_proxy_sends_and_the_replies_it_receives():
    flow = answered_call()
    c = correlator()
    out = flow.run(c, with_decisions(flow, decide={"INVITE in": {"flags": FLAGGED}}))
    # Not the INVITE as received (that is sip_trace()'s), not the ACK (its own
    # transaction, not flagged); the proxy's own 100 Trying is there.
    assert out == TRANSACTION_ROWS
    assert c.stats["traced_requests"] == 1 and c.stats["traced_replies"] == 6
    assert c.stats["matched"] == 5 and c.stats["decisions"] == 5


def test_flag_bit_is_the_configured_one():
    flow = answered_call()
    out = flow.run(correlator(), with_decisions(flow, decide={"INVITE in": {"flags": 1}}))
    assert out == []


def test_decision_after_the_packets_gives_the_same_rows_in_capture_order():
    flow = answered_call()
    steps = list(flow.wires)  # every message first
    steps.insert(7, ("d", "INVITE in", 30.5, {"flags": FLAGGED}))  # after the 200 in
    out = flow.run(correlator(), steps)
    assert out == TRANSACTION_ROWS


def test_decision_before_its_packet_gives_the_same_rows():
    flow = answered_call()
    steps = [("d", "INVITE in", -1, {"flags": FLAGGED})] + list(flow.wires)
    c = correlator()
    assert flow.run(c, steps) == TRANSACTION_ROWS
    assert c.stats["matched"] == 1 and c.stats["unmatched_decisions"] == 0


def test_ack_for_2xx_is_traced_when_its_own_decision_carries_the_flag():
    flow = answered_call()
    out = flow.run(correlator(), with_decisions(
        flow, decide={"INVITE in": {"flags": FLAGGED}, "ACK in": {"flags": FLAGGED}}))
    assert out == TRANSACTION_ROWS + [("ACK out", "out", ())]


def test_traced_user_values_of_the_flagging_request_apply_to_the_whole_transaction():
    flow = answered_call()
    users = ("sip:alice@example.com", "sip:carol@example.com")
    out = flow.run(correlator(), with_decisions(
        flow, decide={"INVITE in": {"flags": FLAGGED, "users": users}}))
    assert out == [(name, d, users) for name, d, _ in TRANSACTION_ROWS]


def test_traced_user_avp_id_is_configurable():
    flow = answered_call()
    steps = with_decisions(flow, decide={"INVITE in": {
        "flags": FLAGGED, "avps": {"123": ["u1"], "6843": ["ignored"]}}})
    out = flow.run(correlator(traced_user_avp=123), steps)
    assert {users for _, _, users in out} == {("u1",)}


def cancelled_call() -> Flow:
    """INVITE, 180, then the caller cancels: the proxy answers the CANCEL, builds its own
    CANCEL downstream, relays the 487 and ACKs it hop by hop."""
    f = Flow()
    f.request("INVITE in", 0, UAC, PROXY, "INVITE", [(UAC, B)])
    f.reply("100 out", 1, PROXY, UAC, 100, [(UAC, B)], to_tag="")
    f.request("INVITE out", 2, PROXY, UAS, "INVITE", [(PROXY, X), (UAC, B)])
    f.reply("180 in", 10, UAS, PROXY, 180, [(PROXY, X), (UAC, B)])
    f.reply("180 out", 11, PROXY, UAC, 180, [(UAC, B)])
    f.request("CANCEL in", 50, UAC, PROXY, "CANCEL", [(UAC, B)])
    f.reply("200/CANCEL out", 51, PROXY, UAC, 200, [(UAC, B)], method="CANCEL")
    f.request("CANCEL out", 52, PROXY, UAS, "CANCEL", [(PROXY, X)])
    f.reply("200/CANCEL in", 60, UAS, PROXY, 200, [(PROXY, X)], method="CANCEL")
    f.reply("487 in", 61, UAS, PROXY, 487, [(PROXY, X), (UAC, B)])
    f.request("ACK out", 62, PROXY, UAS, "ACK", [(PROXY, X)], to_tag="a6c85cf")
    f.reply("487 out", 63, PROXY, UAC, 487, [(UAC, B)])
    f.request("ACK in", 70, UAC, PROXY, "ACK", [(UAC, B)], to_tag="a6c85cf")
    return f


CANCEL_RECEIVED = {"INVITE in": {}, "180 in": {}, "CANCEL in": {}, "200/CANCEL in": {},
                   "487 in": {}, "ACK in": {}}


def test_cancel_built_by_the_proxy_and_the_487_belong_to_the_flagged_invite():
    flow = cancelled_call()
    decide = dict(CANCEL_RECEIVED, **{"INVITE in": {"flags": FLAGGED}})
    c = correlator()
    out = flow.run(c, [s for s in with_decisions(flow, decide=decide)])
    assert out == [("100 out", "out", ()), ("INVITE out", "out", ()),
                   ("180 in", "in", ()), ("180 out", "out", ()),
                   ("CANCEL out", "out", ()), ("200/CANCEL in", "in", ()),
                   ("487 in", "in", ()), ("ACK out", "out", ()), ("487 out", "out", ())]
    # The 200 for the CANCEL goes with the CANCEL's own transaction: not flagged.
    assert c.stats["matched"] == 6


def test_flagged_cancel_traces_its_own_200():
    flow = cancelled_call()
    decide = dict(CANCEL_RECEIVED, **{"CANCEL in": {"flags": FLAGGED}})
    out = flow.run(correlator(), with_decisions(flow, decide=decide))
    assert out == [("200/CANCEL out", "out", ())]


def test_negative_reply_is_relayed_and_acked_hop_by_hop():
    f = Flow()
    f.request("INVITE in", 0, UAC, PROXY, "INVITE", [(UAC, B)])
    f.reply("100 out", 1, PROXY, UAC, 100, [(UAC, B)], to_tag="")
    f.request("INVITE out", 2, PROXY, UAS, "INVITE", [(PROXY, X), (UAC, B)])
    f.reply("486 in", 10, UAS, PROXY, 486, [(PROXY, X), (UAC, B)])
    f.request("ACK out", 11, PROXY, UAS, "ACK", [(PROXY, X)], to_tag="a6c85cf")
    f.reply("486 out", 12, PROXY, UAC, 486, [(UAC, B)])
    f.request("ACK in", 20, UAC, PROXY, "ACK", [(UAC, B)], to_tag="a6c85cf")
    steps = ["INVITE in", ("d", "INVITE in", 0.5, {"flags": FLAGGED}), "100 out",
             "INVITE out", "486 in", ("d", "486 in", 10.5, {}), "ACK out", "486 out",
             "ACK in", ("d", "ACK in", 20.5, {"flags": FLAGGED})]
    c = correlator()
    assert f.run(c, steps) == [("100 out", "out", ()), ("INVITE out", "out", ()),
                               ("486 in", "in", ()), ("ACK out", "out", ()),
                               ("486 out", "out", ())]
    assert c.stats["matched"] == 3 and c.stats["unclaimed_packets"] == 0


def test_locally_generated_replies_are_traced_even_long_after_the_request():
    f = Flow()
    f.request("INVITE in", 0, UAC, PROXY, "INVITE", [(UAC, B)])
    f.request("INVITE out", 2, PROXY, UAS, "INVITE", [(PROXY, X), (UAC, B)])
    f.reply("408 out", 120_000, PROXY, UAC, 408, [(UAC, B)])  # fr_inv_timer fired
    f.request("ACK in", 120_010, UAC, PROXY, "ACK", [(UAC, B)], to_tag="a6c85cf")
    steps = ["INVITE in", ("d", "INVITE in", 1, {"flags": FLAGGED}), "INVITE out",
             ("tick", 60_000), "408 out", "ACK in", ("d", "ACK in", 120_011, {})]
    assert f.run(correlator(), steps) == [("INVITE out", "out", ()), ("408 out", "out", ())]


def test_stateless_reply_to_a_flagged_request():
    f = Flow()
    f.request("REGISTER in", 0, UAC, PROXY, "REGISTER", [(UAC, B)])
    f.reply("404 out", 1, PROXY, UAC, 404, [(UAC, B)], method="REGISTER")
    steps = ["REGISTER in", ("d", "REGISTER in", 0.5, {"flags": FLAGGED}), "404 out"]
    assert f.run(correlator(), steps) == [("404 out", "out", ())]


def test_stateless_forward_is_traced_when_its_decision_carries_the_flag():
    # forward(): no 100 Trying, no transaction in the proxy; the wire view still
    # links the copy (second Via = received branch) and the replies on its branch.
    f = Flow()
    f.request("OPTIONS in", 0, UAC, PROXY, "OPTIONS", [(UAC, B)])
    f.request("OPTIONS out", 1, PROXY, UAS, "OPTIONS", [(PROXY, X), (UAC, B)])
    f.reply("200 in", 5, UAS, PROXY, 200, [(PROXY, X), (UAC, B)], method="OPTIONS")
    f.reply("200 out", 6, PROXY, UAC, 200, [(UAC, B)], method="OPTIONS")
    steps = ["OPTIONS in", ("d", "OPTIONS in", 0.5, {"flags": FLAGGED}), "OPTIONS out",
             "200 in", ("d", "200 in", 5.5, {}), "200 out"]
    assert f.run(correlator(), steps) == [("OPTIONS out", "out", ()), ("200 in", "in", ()),
                                          ("200 out", "out", ())]


def test_forked_invite_traces_every_branch():
    x1, x2 = "z9hG4bKfork.1", "z9hG4bKfork.2"
    uas2 = ("10.0.0.30", 5080)
    f = Flow()
    f.request("INVITE in", 0, UAC, PROXY, "INVITE", [(UAC, B)])
    f.request("INVITE out 1", 1, PROXY, UAS, "INVITE", [(PROXY, x1), (UAC, B)])
    f.request("INVITE out 2", 2, PROXY, uas2, "INVITE", [(PROXY, x2), (UAC, B)])
    f.reply("180 in 2", 10, uas2, PROXY, 180, [(PROXY, x2), (UAC, B)], to_tag="t2")
    f.reply("200 in 1", 20, UAS, PROXY, 200, [(PROXY, x1), (UAC, B)])
    f.request("CANCEL out 2", 21, PROXY, uas2, "CANCEL", [(PROXY, x2)])
    f.reply("200 out", 22, PROXY, UAC, 200, [(UAC, B)])
    f.reply("487 in 2", 30, uas2, PROXY, 487, [(PROXY, x2), (UAC, B)], to_tag="t2")
    f.request("ACK out 2", 31, PROXY, uas2, "ACK", [(PROXY, x2)], to_tag="t2")
    steps = ["INVITE in", ("d", "INVITE in", 0.5, {"flags": FLAGGED})] + list(f.wires)[1:]
    out = f.run(correlator(), steps)
    assert [name for name, _, _ in out] == list(f.wires)[1:]


# -- sip_trace(): the message as received --------------------------------------------------

def test_explicit_trace_of_a_request_stores_it_as_received():
    flow = answered_call()
    c = correlator()
    out = flow.run(c, with_decisions(flow, decide={"INVITE in": {"trace": True}}))
    assert out == [("INVITE in", "in", ())]
    assert c.stats["traced_requests"] == 1 and c.stats["traced_replies"] == 0


def test_explicit_trace_of_a_reply_stores_it_as_received():
    flow = answered_call()
    out = flow.run(correlator(), with_decisions(
        flow, decide={"180 in": {"trace": True, "users": ("sip:alice@example.com",)}}))
    assert out == [("180 in", "in", ("sip:alice@example.com",))]


def test_explicit_trace_and_flag_together():
    flow = answered_call()
    out = flow.run(correlator(), with_decisions(
        flow, decide={"INVITE in": {"trace": True, "flags": FLAGGED}}))
    assert out == [("INVITE in", "in", ())] + TRANSACTION_ROWS


def test_reply_traced_by_sip_trace_and_by_the_flag_is_stored_twice_like_the_original():
    flow = answered_call()
    out = flow.run(correlator(), with_decisions(
        flow, decide={"INVITE in": {"flags": FLAGGED}, "180 in": {"trace": True}}))
    assert out.count(("180 in", "in", ())) == 2


def test_flag_on_a_reply_decision_has_no_effect():
    # TM callbacks look at the request's flags, as in the original.
    flow = answered_call()
    out = flow.run(correlator(), with_decisions(flow, decide={"180 in": {"flags": FLAGGED}}))
    assert out == []


def test_retransmitted_request_is_stored_once_per_sip_trace_call():
    f = Flow()
    f.request("INVITE in", 0, UAC, PROXY, "INVITE", [(UAC, B)])
    f.request("INVITE again", 500, UAC, PROXY, "INVITE", [(UAC, B)])
    steps = ["INVITE in", ("d", "INVITE in", 1, {"trace": True}),
             "INVITE again", ("d", "INVITE again", 501, {"trace": False})]
    c = correlator()
    assert f.run(c, steps) == [("INVITE in", "in", ())]
    # The same two decisions arriving before both packets pair in order too.
    c2 = correlator()
    steps2 = [steps[1], steps[3], "INVITE in", "INVITE again"]
    assert f.run(c2, steps2) == [("INVITE in", "in", ())]
    assert c.stats["matched"] == c2.stats["matched"] == 2


def test_decision_src_must_match_the_sender():
    flow = answered_call()
    steps = ["INVITE in", ("d", "INVITE in", 1, {"trace": True, "src": "udp:10.9.9.9:5060"})]
    c = correlator()
    assert flow.run(c, steps + [("tick", 15_000)]) == []
    assert c.stats["unmatched_decisions"] == 1 and c.stats["unclaimed_packets"] == 1
    steps = ["INVITE in", ("d", "INVITE in", 1, {"trace": True, "src": "udp:10.0.0.10:5060"})]
    assert flow.run(correlator(), steps) == [("INVITE in", "in", ())]


def test_spiral_through_the_proxy_is_out_for_the_first_pass_and_in_for_the_second():
    f = Flow()
    f.request("INVITE in", 0, UAC, PROXY, "INVITE", [(UAC, B)])
    f.request("INVITE spiral", 1, PROXY, PROXY, "INVITE", [(PROXY, X), (UAC, B)])
    steps = ["INVITE in", ("d", "INVITE in", 0.5, {"flags": FLAGGED}),
             "INVITE spiral", ("d", "INVITE spiral", 1.5, {"trace": True})]
    assert f.run(correlator(), steps) == [("INVITE spiral", "out", ()),
                                          ("INVITE spiral", "in", ())]


# -- on/off -----------------------------------------------------------------------------------

def test_trace_off_emits_nothing_but_still_consumes():
    flow = answered_call()
    c = correlator(trace_on=False)
    out = flow.run(c, with_decisions(flow, decide={"INVITE in": {"trace": True,
                                                               "flags": FLAGGED}}))
    assert out == []
    assert c.stats["matched"] == 5 and c.stats["traced_requests"] == 0
    assert c.sizes()["pending_packets"] == 0 and c.sizes()["pending_decisions"] == 0


def test_switch_applies_by_capture_time():
    flow = answered_call()
    steps = with_decisions(flow, decide={"INVITE in": {"flags": FLAGGED}})
    steps.insert(steps.index("180 out"), ("switch", False, 20.5))
    assert flow.run(correlator(), steps) == TRANSACTION_ROWS[:4]
    # Decided late: the messages captured before the switch are still traced.
    late = list(flow.wires) + [("d", "INVITE in", 40, {"flags": FLAGGED})]
    late.insert(late.index("180 out"), ("switch", False, 20.5))
    assert flow.run(correlator(), late) == TRANSACTION_ROWS[:4]


def test_switching_on_during_a_call_traces_the_rest_of_it():
    flow = answered_call()
    steps = with_decisions(flow, decide={"INVITE in": {"flags": FLAGGED}})
    steps.insert(steps.index("180 in"), ("switch", True, 15))
    assert flow.run(correlator(trace_on=False), steps) == TRANSACTION_ROWS[3:]


# -- the race window and bounds ------------------------------------------------------------

def test_grace_expiry_is_counted():
    flow = answered_call()
    c = correlator(grace_ns=2 * SECOND)
    flow.run(c, ["INVITE in", ("tick", 1_999)])
    assert c.stats["unclaimed_packets"] == 0
    flow.run(c, [("tick", 2_001)])
    assert c.stats["unclaimed_packets"] == 1 and c.sizes()["pending_packets"] == 0
    # Its decision, too late, waits for the capture to pass it by the grace window.
    flow.run(c, [("d", "INVITE in", 2_002, {"trace": True})])
    flow.request("OPTIONS", 4_001, UAC, PROXY, "OPTIONS", [(UAC, "z9hG4bKo1")], cseq=7)
    flow.request("OPTIONS later", 4_003, UAC, PROXY, "OPTIONS", [(UAC, "z9hG4bKo2")], cseq=8)
    flow.run(c, ["OPTIONS"])
    assert c.stats["unmatched_decisions"] == 0
    flow.run(c, ["OPTIONS later", ("tick", 4_003)])  # counters follow at the next sweep
    assert c.stats["unmatched_decisions"] == 1


def test_decision_with_no_capture_progress_expires_by_wall_time():
    flow = answered_call()
    c = correlator(grace_ns=2 * SECOND, max_capture_lag_ns=10 * SECOND)
    flow.run(c, [("d", "INVITE in", 0, {"trace": True}), ("tick", 11_999)])
    assert c.stats["unmatched_decisions"] == 0 and c.sizes()["pending_decisions"] == 1
    flow.run(c, [("tick", 12_001)])
    assert c.stats["unmatched_decisions"] == 1 and c.sizes()["pending_decisions"] == 0


def test_decision_waits_for_packets_by_capture_time_not_wall_time():
    # The capture loop lags 3 s behind: the decision still meets its packet.
    flow = answered_call()
    c = correlator(grace_ns=2 * SECOND)
    c.on_decision(flow.decision("INVITE in", trace=True), BASE_NS + MS)
    wire = flow.wires["INVITE in"]
    out = c.on_packet(wire, wire.ts_ns + 3 * SECOND)
    assert [t.wire for t in out] == [wire]


def test_outgoing_message_of_a_known_untraced_transaction_does_not_wait():
    flow = answered_call()
    c = correlator()
    flow.run(c, ["INVITE in", ("d", "INVITE in", 1, {}), "100 out", "INVITE out"])
    assert c.sizes()["pending_packets"] == 0


def test_foreign_packets_are_ignored_at_once():
    f = Flow()
    f.request("elsewhere", 0, UAC, UAS, "OPTIONS", [(UAC, B)])
    c = correlator()
    assert f.run(c, ["elsewhere"]) == []
    assert c.stats["foreign_packets"] == 1 and c.sizes()["pending_packets"] == 0


def test_tables_stay_bounded_under_a_flood_of_unmatched_packets_and_decisions():
    c = correlator(max_pending_packets=50, max_pending_decisions=40, max_transactions=30)
    for i in range(1000):
        f = Flow(callid=f"flood-{i}")
        f.request("in", i * 0.001, UAC, PROXY, "OPTIONS", [(UAC, f"z9hG4bK{i}")])
        c.on_packet(f.wires["in"], f.wires["in"].ts_ns)
        g = Flow(callid=f"ghost-{i}")
        g.request("in", 0, UAC, PROXY, "OPTIONS", [(UAC, f"z9hG4bKg{i}")])
        c.on_decision(g.decision("in", flags=FLAGGED), BASE_NS + i * 1000)
        sizes = c.sizes()
        assert sizes["pending_packets"] <= 50 and sizes["pending_decisions"] <= 40
        assert sizes["transactions"] <= 30
    assert c.stats["evicted_packets"] == 950
    assert c.stats["evicted_decisions"] == 960
    assert c.stats["evicted_transactions"] == 970
    c.finish()
    assert c.sizes() == {"pending_packets": 0, "pending_decisions": 0, "transactions": 0,
                         "pending_bytes": 0, "decision_bytes": 0}


def test_tables_stay_bounded_in_bytes_whatever_the_entries_hold():
    bound = 1 << 20
    c = correlator(max_pending_bytes=bound, max_decision_bytes=bound)
    big_avps = {"7000": ["v"] * 4000, "6843": [f"user{n}" for n in range(100)]}
    for i in range(200):
        f = Flow(callid=f"big-{i}" + "x" * 30000)  # 30 kB Call-IDs, in packets and decisions
        f.request("in", i * 0.001, UAC, PROXY, "OPTIONS", [(UAC, f"z9hG4bK{i}")])
        c.on_packet(f.wires["in"], f.wires["in"].ts_ns)
        g = Flow(callid=f"ghost-{i}" + "y" * 30000)
        g.request("in", 0, UAC, PROXY, "INVITE", [(UAC, f"z9hG4bKg{i}")])
        c.on_decision(g.decision("in", flags=FLAGGED, avps=big_avps), BASE_NS + i * 1000)
        sizes = c.sizes()
        assert sizes["pending_bytes"] <= bound and sizes["decision_bytes"] <= bound
    assert c.stats["evicted_packets"] > 150 and c.stats["evicted_decisions"] > 50
    assert c.stats["evicted_transactions"] > 50
    assert c.stats["traced_users_cut"] == 200 * (100 - MAX_TRACED_USERS)
    c.finish()
    assert c.sizes()["pending_bytes"] == 0 and c.sizes()["decision_bytes"] == 0


def test_transactions_expire():
    flow = answered_call()
    c = correlator(completed_ttl_ns=40 * SECOND)
    flow.run(c, with_decisions(flow, decide={"INVITE in": {"flags": FLAGGED}}))
    assert c.sizes()["transactions"] == 2  # the INVITE and the ACK
    flow.run(c, [("tick", 100_000)])
    assert c.sizes() == {"pending_packets": 0, "pending_decisions": 0, "transactions": 0,
                         "pending_bytes": 0, "decision_bytes": 0}


# -- trace_all ---------------------------------------------------------------------------------

def test_trace_all_traces_every_message_with_direction_from_the_addresses():
    flow = answered_call()
    c = Correlator(PROXY_ADDRESSES, trace_all=True)
    out = flow.run(c, with_decisions(flow, decide={"INVITE in": {"flags": FLAGGED}}))
    assert out == [(name, "in" if name.endswith("in") else "out", ()) for name in flow.wires]
    assert c.stats["decisions_ignored"] == 5
    off = Correlator(PROXY_ADDRESSES, trace_all=True, trace_on=False)
    assert flow.run(off, list(flow.wires)) == []


# -- live and offline agree ---------------------------------------------------------------

def _events(flow, decide, delays):
    decisions = []
    for (name, kwargs), delay in zip(decide.items(), delays):
        rt = flow.wires[name].ts_ns + delay
        decisions.append(RecordedEvent(rt, flow.decision(name, **kwargs)))
    return sorted(decisions, key=lambda e: e.rt_ns)


DECIDE = {"INVITE in": {"flags": FLAGGED, "trace": True, "users": ("u1", "u2")},
          "100 in": {}, "180 in": {"trace": True}, "200 in": {}, "ACK in": {"flags": FLAGGED}}
EXPECTED = sorted([("INVITE in", "in", ("u1", "u2")), ("180 in", "in", ()),
                   ("ACK out", "out", ())]
                  + [(n, d, ("u1", "u2")) for n, d, _ in TRANSACTION_ROWS])


@settings(max_examples=150, deadline=None)
@given(delays=st.lists(st.integers(-200 * MS, 1500 * MS), min_size=5, max_size=5),
       lags=st.lists(st.integers(0, 400 * MS), min_size=10, max_size=10))
def test_any_interleaving_within_the_grace_window_gives_the_same_rows(delays, lags):
    """Live: decisions at their receive time, packets processed a little late; offline:
    the recorded merge. Same rows whatever the race."""
    flow = answered_call()
    events = _events(flow, DECIDE, delays)
    live_steps, done = [], 0
    for wire, lag in zip(flow.wires.values(), lags):
        done = max(done, wire.ts_ns + lag)  # processed in capture order, late
        live_steps.append((done, 1, wire))
    live_steps += [(e.rt_ns, 0, e.decision) for e in events]
    live = correlator()
    out = []
    for now, kind, item in sorted(live_steps, key=lambda s: (s[0], s[1])):
        out += live.on_decision(item, now) if kind == 0 else live.on_packet(item, now)
    out += live.finish()
    as_rows = lambda traced: sorted((flow.names[id(t.wire)], t.direction, t.traced_users)
                                    for t in traced)
    assert as_rows(out) == EXPECTED
    offline = list(correlate_offline(correlator(), flow.wires.values(), events))
    assert as_rows(offline) == EXPECTED


def test_offline_applies_recorded_switches():
    flow = answered_call()
    events = _events(flow, {"INVITE in": {"flags": FLAGGED}}, [MS])
    events.append(RecordedEvent(BASE_NS + 20_500_000, trace_on=False))  # at 20.5 ms
    out = correlate_offline(correlator(), flow.wires.values(), events)
    assert [(flow.names[id(t.wire)], t.direction) for t in out] == \
        [(n, d) for n, d, _ in TRANSACTION_ROWS[:4]]


# -- robustness ----------------------------------------------------------------------------

HOPS = [UAC, PROXY, UAS]
BRANCHES = ["z9hG4bKa", "z9hG4bKb", "z9hG4bKc", ""]


def random_message(i, data):
    f = Flow(callid=data.draw(st.sampled_from(["c1", "c2"])))
    src, dst = data.draw(st.sampled_from([(a, b) for a in HOPS for b in HOPS]))
    vias = [((src if k == 0 else UAC), b) for k, b in enumerate(
        data.draw(st.lists(st.sampled_from(BRANCHES), min_size=1, max_size=3)))]
    method = data.draw(st.sampled_from(["INVITE", "ACK", "CANCEL", "BYE"]))
    cseq = data.draw(st.integers(1, 2))
    t_ms = i * data.draw(st.integers(0, 900))
    if data.draw(st.booleans()):
        f.request("m", t_ms, src, dst, method, vias, cseq=cseq)
    else:
        f.reply("m", t_ms, src, dst, data.draw(st.sampled_from([100, 180, 200, 487])),
                vias, cseq=cseq, method=method)
    return f


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_mix_of_messages_and_decisions_keeps_the_invariants(data):
    c = correlator(max_pending_packets=5, max_pending_decisions=5, max_transactions=5,
                   grace_ns=SECOND)
    fed = set()
    now = BASE_NS
    for i in range(data.draw(st.integers(1, 25))):
        f = random_message(i, data)
        wire = f.wires["m"]
        action = data.draw(st.sampled_from(["packet", "decision", "both", "tick", "switch"]))
        now = max(now, wire.ts_ns) + data.draw(st.integers(0, 3 * SECOND))
        out = []
        if action in ("packet", "both"):
            fed.add(id(wire))
            out += c.on_packet(wire, now)
        if action in ("decision", "both"):
            flags = data.draw(st.sampled_from([0, FLAGGED]))
            out += c.on_decision(f.decision("m", flags=flags, trace=data.draw(st.booleans()),
                                            users=("u",)), now)
        if action == "tick":
            out += c.tick(now)
        if action == "switch":
            c.set_trace_on(data.draw(st.booleans()), now)
        assert all(id(t.wire) in fed and t.direction in ("in", "out") for t in out)
        sizes = c.sizes()
        assert 0 <= sizes["pending_packets"] <= 5 and 0 <= sizes["pending_decisions"] <= 5
        assert sizes["transactions"] <= 5
    c.finish(now)
    assert c.sizes() == {"pending_packets": 0, "pending_decisions": 0, "transactions": 0,
                         "pending_bytes": 0, "decision_bytes": 0}
    assert c.stats["matched"] + c.stats["unmatched_decisions"] + \
        c.stats["evicted_decisions"] == c.stats["decisions"]
