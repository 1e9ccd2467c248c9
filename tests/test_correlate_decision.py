"""The decision datagram: what the proxy publishes, and what siptrace refuses."""

import json

import pytest
from hypothesis import given, settings, strategies as st

from siptrace.correlate.decision import (MAX_DECISION_BYTES, Decision, decision_from_object,
                                         parse_decision)
from siptrace.errors import DecodeError

REQUEST = {"callid": "a84b4c76e66710@pc33", "cseq": "314159 INVITE",
           "branch": "z9hG4bK776asdhds", "kind": "request", "flags": 8,
           "avps": {"6843": ["sip:alice@example.com", "sip:bob@example.com"]},
           "trace": False, "src": "udp:10.0.0.10:5060", "ts": 1700000000.25}
REPLY = {"callid": "a84b4c76e66710@pc33", "cseq": "314159 INVITE",
         "branch": "z9hG4bKproxy.0", "kind": "reply", "status": 180, "flags": 0,
         "avps": {}, "trace": True}


def encode(obj) -> bytes:
    return json.dumps(obj).encode()


def test_request_decision_fields():
    d = parse_decision(encode(REQUEST))
    assert (d.callid, d.cseq_num, d.cseq_method, d.branch) == \
        ("a84b4c76e66710@pc33", 314159, "INVITE", "z9hG4bK776asdhds")
    assert d.is_request and d.status is None and d.flags == 8 and d.trace is False
    assert d.has_flag(3) and not d.has_flag(0)
    assert d.avp_values(6843) == ("sip:alice@example.com", "sip:bob@example.com")
    assert d.avp_values(1) == ()
    assert d.src_addr == ("10.0.0.10", 5060) and d.ts == 1700000000.25
    assert d.cseq == "314159 INVITE"


def test_reply_decision_needs_a_status():
    d = parse_decision(encode(REPLY))
    assert not d.is_request and d.status == 180
    with pytest.raises(DecodeError, match="missing field status"):
        parse_decision(encode({k: v for k, v in REPLY.items() if k != "status"}))


def test_unknown_fields_are_ignored_and_status_on_a_request_too():
    d = parse_decision(encode(dict(REQUEST, ruri="sip:x@y", status="whatever", extra=[1])))
    assert d.status is None


def test_round_trip_through_the_protocol_object():
    for obj in (REQUEST, REPLY):
        d = parse_decision(encode(obj))
        assert decision_from_object(json.loads(json.dumps(d.to_object()))) == d


@pytest.mark.parametrize("field", ["callid", "cseq", "branch", "kind", "flags", "avps",
                                   "trace"])
def test_every_required_field_is_required(field):
    obj = {k: v for k, v in REQUEST.items() if k != field}
    with pytest.raises(DecodeError, match=f"missing field {field}"):
        parse_decision(encode(obj))


@pytest.mark.parametrize("field, value, reason", [
    ("callid", 42, "callid: not a string"),
    ("callid", "", "callid: empty"),
    ("cseq", 1, "cseq: not a string"),
    ("cseq", "INVITE", "cseq: not 'NUMBER METHOD'"),
    ("cseq", "1 INVITE extra", "cseq: not 'NUMBER METHOD'"),
    ("cseq", "one INVITE", "cseq: bad number"),
    ("cseq", "2147483648 INVITE", "cseq: bad number"),
    ("cseq", "9" * 5000 + " INVITE", "cseq: bad number"),
    ("cseq", "\u0661 INVITE", "cseq: bad number"),  # an Arabic-Indic digit
    ("branch", None, "branch: not a string"),
    ("kind", "response", "kind: not 'request' or 'reply'"),
    ("flags", True, "flags: not an integer"),
    ("flags", "8", "flags: not an integer"),
    ("flags", 8.0, "flags: not an integer"),
    ("avps", [], "avps: not an object"),
    ("avps", {"6843": "sip:alice@example.com"}, "avps: values must be lists"),
    ("avps", {"6843": [None]}, "avps: values must be strings"),
    ("trace", 1, "trace: not true or false"),
    ("src", 5060, "src: not a string"),
    ("src", "10.0.0.10", "src: not 'proto:ip:port'"),
    ("src", "udp:host.example:5060", "src: not 'proto:ip:port'"),
    ("src", "udp:10.0.0.10:70000", "src: not 'proto:ip:port'"),
    ("ts", "now", "ts: not a number"),
])
def test_ill_typed_fields_are_refused_with_a_short_reason(field, value, reason):
    with pytest.raises(DecodeError) as info:
        parse_decision(encode(dict(REQUEST, **{field: value})))
    assert str(info.value) == reason


@pytest.mark.parametrize("status", [99, 700, "180", True])
def test_reply_status_must_be_a_sip_code(status):
    with pytest.raises(DecodeError, match="status"):
        parse_decision(encode(dict(REPLY, status=status)))


def test_integer_avp_values_become_their_decimal_text():
    d = parse_decision(encode(dict(REQUEST, avps={"6843": [42, "x"]})))
    assert d.avp_values("6843") == ("42", "x")


def test_ipv6_source_is_normalized():
    d = parse_decision(encode(dict(REQUEST, src="tcp:[0:0::1]:5061")))
    assert d.src_addr == ("::1", 5061)
    assert parse_decision(encode(dict(REQUEST, src="udp:::1:5061"))).src_addr == ("::1", 5061)


@pytest.mark.parametrize("datagram, reason", [
    (b"", "not JSON"),
    (b"callid=x", "not JSON"),
    (b"\xff\xfe\x00garbage", "not JSON"),
    (b'{"callid": "x"', "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'"text"', "not a JSON object"),
    (b"[" * 50000 + b"]" * 50000, "datagram over 64 KB"),
    (b"[" * 30000 + b"]" * 30000, "not JSON"),  # too deep for the decoder
])
def test_garbage_is_refused(datagram, reason):
    with pytest.raises(DecodeError) as info:
        parse_decision(datagram)
    assert str(info.value) == reason


def test_size_limit_is_64_kb():
    padding = "x" * (MAX_DECISION_BYTES - len(encode(dict(REQUEST, pad=""))))
    at_limit = encode(dict(REQUEST, pad=padding))
    assert len(at_limit) == MAX_DECISION_BYTES
    assert isinstance(parse_decision(at_limit), Decision)
    with pytest.raises(DecodeError, match="over 64 KB"):
        parse_decision(encode(dict(REQUEST, pad=padding + "x")))


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_decision_or_decode_error(data):
    try:
        parse_decision(data)
    except DecodeError:
        pass


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8)


@settings(max_examples=200)
@given(st.fixed_dictionaries({}, optional={k: JSON_VALUES for k in REQUEST} | {
    "status": JSON_VALUES}))
def test_any_json_object_gives_a_decision_or_decode_error(obj):
    try:
        parse_decision(encode(obj))
    except DecodeError:
        pass


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(sorted(REQUEST)), JSON_VALUES, max_size=3))
def test_any_mix_of_valid_and_garbage_fields(garbage):
    try:
        parse_decision(encode(dict(REQUEST, **garbage)))
    except DecodeError:
        pass


@pytest.mark.parametrize("field, text, reason", [
    ("ts", "NaN", "not JSON"),  # JavaScript's constants, not JSON's (RFC 8259 section 6)
    ("ts", "Infinity", "not JSON"),
    ("ts", "-Infinity", "not JSON"),
    ("ts", "1e400", "ts: out of range"),  # a float that overflows to infinity
    ("ts", "9" * 4000, "ts: out of range"),
    ("flags", "9" * 4000, "flags: out of range"),
    ("avps", '{"6843": [' + "7" * 4000 + "]}", "avps: integer out of range"),
    ("callid", '"a\\ud800b"', "callid: a lone surrogate"),  # JSON syntax, not Unicode
    ("branch", '"z9hG4bK\\udfff"', "branch: a lone surrogate"),
    ("avps", '{"6843": ["\\ud83d"]}', "avps: a lone surrogate"),
    ("avps", '{"\\udc00": []}', "avps: a lone surrogate"),
    ("src", '"udp\\ud800:10.0.0.1:5060"', "src: a lone surrogate"),
])
def test_values_no_proxy_sends_and_strict_json_cannot_carry_are_refused(field, text, reason):
    datagram = encode(dict(REQUEST, **{field: "@"})).replace(b'"@"', text.encode())
    with pytest.raises(DecodeError) as info:
        parse_decision(datagram)
    assert str(info.value) == reason


def test_avps_are_kept_as_compact_text_and_written_back_as_strict_json():
    values = [str(i % 40) for i in range(13000)]  # 13,000 values in a 64 KB datagram
    datagram = json.dumps(dict(REQUEST, avps={"7000": values, "6843": [7, "\u00e9\U0001F600"]}),
                          separators=(",", ":")).encode()
    d = parse_decision(datagram)
    assert isinstance(d.avps, str) and d.size < len(datagram) + 1000
    assert d.avp_values(7000) == tuple(values) and d.avp_values(6843) == ("7", "\u00e9\U0001F600")
    text = json.dumps(d.to_object(), separators=(",", ":"))  # as the recorder writes it
    assert parse_decision(text.encode()) == d
