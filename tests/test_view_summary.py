"""A call folded from its messages: parties, final status, state and links between legs."""

import pytest
from hypothesis import given, strategies as st

from callfactory import ANSWERED, call_rows, sip, stored
from siptrace.sip.headers import find_headers, name_addr
from siptrace.sip.params import header_tag
from siptrace.sip.parser import parse_message
from siptrace.view.summary import CallSummary, summarize


def summary(steps, callid="c1@host", **kwargs) -> CallSummary:
    return summarize(stored(call_rows(callid, steps, **kwargs)))[callid]


def test_an_answered_call_hung_up_is_completed_with_its_parties_and_times():
    call = summary(ANSWERED)
    assert (call.from_user, call.from_name, call.to_user) == ("alice", "Alice", "0049301234")
    assert (call.method, call.status, call.reason, call.state) == ("INVITE", "200", "OK", "completed")
    assert call.msg_count == 7 and call.duration == pytest.approx(32.1)
    assert call.methods.split() == ["INVITE", "ACK", "BYE"]
    assert call.ips.split() == ["10.0.0.1", "10.0.0.2"]


@pytest.mark.parametrize("steps, status, state", [
    ([("INVITE", ">", 0)], "", "setup"),
    ([("INVITE", ">", 0), (100, "<", 0.1)], "", "setup"),
    ([("INVITE", ">", 0), (183, "<", 0.1)], "", "ringing"),
    ([("INVITE", ">", 0), (180, "<", 0.1), (200, "<", 3), ("ACK", ">", 3)], "200", "in call"),
    ([("INVITE", ">", 0), (180, "<", 0.1), ("CANCEL", ">", 5),
      (200, "<", 5, {"cseq_method": "CANCEL"}), (487, "<", 5)], "487", "cancelled"),
    ([("INVITE", ">", 0), (180, "<", 0.1), ("CANCEL", ">", 5)], "", "cancelled"),
    ([("INVITE", ">", 0), (486, "<", 0.1)], "486", "busy"),
    ([("INVITE", ">", 0), (600, "<", 0.1)], "600", "busy"),
    ([("INVITE", ">", 0), (180, "<", 0.1), (480, "<", 30)], "480", "no answer"),
    ([("INVITE", ">", 0), (408, "<", 32)], "408", "no answer"),
    ([("INVITE", ">", 0), (302, "<", 0.1)], "302", "diverted"),
    ([("INVITE", ">", 0), (503, "<", 0.1)], "503", "rejected"),
    ([("REGISTER", ">", 0), (401, "<", 0.1, {"cseq_method": "REGISTER"})], "401", "rejected"),
    ([("REGISTER", ">", 0), (401, "<", 0.1, {"cseq_method": "REGISTER"}),
      ("REGISTER", ">", 0.2, {"cseq": 2}),
      (200, "<", 0.3, {"cseq": 2, "cseq_method": "REGISTER"})], "200", "completed"),
    ([("OPTIONS", ">", 0)], "", "no reply"),
])
def test_final_status_and_state(steps, status, state):
    call = summary(steps)
    assert (call.status, call.state) == (status, state)


def test_an_authentication_challenge_before_the_answer_is_not_the_final_status():
    call = summary([("INVITE", ">", 0), (407, "<", 0.1), ("ACK", ">", 0.1),
                    ("INVITE", ">", 0.2, {"cseq": 2}), (200, "<", 1, {"cseq": 2}),
                    ("ACK", ">", 1, {"cseq": 2})])
    assert (call.status, call.reason, call.state) == ("200", "OK", "in call")
    assert call.codes.split() == ["407", "200"]


def test_a_failed_reinvite_or_a_bye_reply_does_not_change_an_answered_call():
    call = summary(ANSWERED[:5] + [("INVITE", ">", 10, {"cseq": 2}), (491, "<", 10, {"cseq": 2}),
                                   ("BYE", ">", 20, {"cseq": 3}),
                                   (481, "<", 20, {"cseq": 3, "cseq_method": "BYE"})])
    assert (call.status, call.state) == ("200", "completed")


def test_a_capture_that_starts_with_a_reply_takes_the_parties_from_the_first_request():
    rows = call_rows("c2@h", [(180, "<", 0)], caller="ghost") + \
        call_rows("c2@h", [("BYE", ">", 1)], caller="bob", caller_name="Bob")
    call = summarize(stored(rows))["c2@h"]
    assert (call.method, call.from_user, call.from_name) == ("BYE", "bob", "Bob")


def test_legs_name_each_other_by_x_cid_and_session_id():
    leg = summary([("INVITE", ">", 0, {"headers": ["X-CID: a-leg@sbc"]})])
    assert leg.xcid == "a-leg@sbc"
    other = summary([("INVITE", ">", 0, {"headers": ["X-Call-ID: a-leg@sbc"]})])
    assert other.xcid == "a-leg@sbc"
    sid = "ab30317f1a784dc48ff824d0d3715d86"
    assert summary([("INVITE", ">", 0, {"headers": [f"Session-ID: {sid};remote=" + "0" * 32]})]
                   ).session == sid
    assert summary([("INVITE", ">", 0, {"headers": ["Session-ID: " + "0" * 32]})]).session == ""


def test_a_message_stored_again_for_a_traced_user_counts_as_separate_rows_here():
    # summarize() takes messages already made unique (TraceReader.messages does that).
    rows = call_rows("c3@h", ANSWERED)
    assert summarize(stored(rows + rows[-1:]))["c3@h"].msg_count == 8


@pytest.mark.parametrize("value, expected", [
    (b'"Alice \\"A\\" Smith" <sip:alice@example.com>;tag=1', ("Alice \"A\" Smith", "alice")),
    (b"Bob <sips:bob:secret@example.com;transport=tls>", ("Bob", "bob")),
    (b"<tel:+49-30-1234;phone-context=example.com>", ("", "+49-30-1234")),
    (b"sip:carol@example.com;tag=3", ("", "carol")),
    (b"<sip:example.com>", ("", "")),
    (b'"<b>x" <sip:mallory@h>;tag=9', ("<b>x", "mallory")),
    (b"<sip:%2B4930@example.com>", ("", "+4930")),
    (b"<urn:service:sos>", ("", "")),
    (b"", ("", "")),
])
def test_name_addr(value, expected):
    assert name_addr(value) == expected


_names = st.sampled_from([b"From", b"from", b"FROM", b"f", b"F"])
_ids = st.sampled_from([b"Call-ID", b"call-id", b"i"])
_token = st.text("abcdefghij0123456789-.@", min_size=1, max_size=12).map(str.encode)


@given(from_name=_names, id_name=_ids, tag=_token, callid=_token, lf=st.booleans(),
       fold=st.booleans(), space=st.sampled_from([b"", b" ", b"  "]))
def test_headers_are_read_by_the_same_rules_as_the_parser(from_name, id_name, tag, callid,
                                                        lf, fold, space):
    end = b"\n" if lf else b"\r\n"
    from_value = b"<sip:a@h>" + (end + b" " if fold else b"") + b";tag=" + tag
    raw = end.join([b"INVITE sip:b@h SIP/2.0", from_name + b":" + space + from_value,
                    id_name + space + b":" + space + callid, b"CSeq: 1 INVITE", b"", b""])
    parsed = parse_message(raw)
    found = find_headers(raw, ("from", "call-id"))
    assert header_tag(found["from"]) == parsed.from_tag
    assert found["call-id"].decode() == parsed.call_id


def test_the_message_body_is_not_read_as_headers():
    raw = sip("INVITE", "c4@h").replace(b"Content-Length: 0\r\n\r\n",
                                         b"Content-Length: 14\r\n\r\nX-CID: nothing")
    assert "x-cid" not in find_headers(raw, ("x-cid",))
