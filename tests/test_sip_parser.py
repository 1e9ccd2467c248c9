"""SIP detection by content and message parsing: what is accepted, what each field holds."""

import pytest

from conftest import REAL_PCAPS, missing
from siptrace.capture.files import open_capture
from siptrace.decode.layers import PacketDecoder
from siptrace.decode.packet import UDP
from siptrace.errors import SipParseError
from siptrace.sip.detect import looks_like_sip
from siptrace.sip.params import split_header_values
from siptrace.sip.parser import COMPACT_FORMS, parse_message

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP client.atlanta.example.com:5060;branch=z9hG4bK74bf9\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:alice@client.atlanta.example.com;transport=tcp>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 31\r\n"
    b"\r\n"
    b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\n"
)


def reply(*headers: bytes, start=b"SIP/2.0 200 OK") -> bytes:
    return b"\r\n".join((start,) + headers) + b"\r\n\r\n"


# --- detection ------------------------------------------------------------------

@pytest.mark.parametrize("payload", [
    INVITE,
    b"SIP/2.0 180 Ringing\r\n",
    b"SIP/2.0 200\r\n",  # no reason phrase
    b"FOO-BAR.x sip:x@y SIP/2.0\r\n",  # any token is a method
    b"MESSAGE tel:+15551234 SIP/2.0\n",  # bare LF, tel: URI
    b"OPTIONS sip:10.0.0.1 SIP/2.0\r\n",
])
def test_sip_start_lines_are_recognised(payload):
    assert looks_like_sip(payload)


@pytest.mark.parametrize("payload", [
    b"",
    b"\r\n\r\n",  # RFC 5626 keep-alive
    b"\r\n",
    b"\x80\x00\x12\x34" + bytes(168),  # RTP
    b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12),  # STUN binding request
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS client hello
    b"hello",  # nDPI's sip_hello keep-alives
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"OPTIONS rtsp://x/y RTSP/1.0\r\n",
    b"INVITE sip:x@y SIP/2.0",  # no line end
    b"INVITE  SIP/2.0\r\n",  # no URI
    b"INVITE bob SIP/2.0\r\n",  # a URI without a scheme
    b"INV(TE sip:x@y SIP/2.0\r\n",  # "(" is not a token character
    b"SIP/2.0 20 OK\r\n",
    b"SIP/2.0 2000 OK\r\n",
    b"sip/2.0 200 OK\r\n",
])
def test_other_payloads_are_not_sip(payload):
    assert not looks_like_sip(payload)


# --- start line -----------------------------------------------------------------

def test_request_fields():
    msg = parse_message(INVITE)
    assert (msg.method, msg.request_uri, msg.status, msg.reason) == (
        "INVITE", "sip:bob@biloxi.example.com", None, None)
    assert msg.is_request
    assert msg.call_id == "3848276298220188511@atlanta.example.com"
    assert (msg.cseq_num, msg.cseq_method) == (1, "INVITE")
    assert (msg.from_tag, msg.to_tag) == ("9fxced76sl", "")
    assert msg.via_branches == ["z9hG4bK74bf9"]
    assert msg.content_length == 31
    assert msg.defects == ()
    assert msg.raw is INVITE


def test_reply_fields():
    msg = parse_message(reply(b"Via: SIP/2.0/UDP h;branch=z9hG4bKa", b"From: <sip:a@b>;tag=1",
                              b"To: <sip:c@d>;tag=2", b"Call-ID: c1", b"CSeq: 7 BYE",
                              start=b"SIP/2.0 486 Busy Here"))
    assert (msg.method, msg.request_uri, msg.status, msg.reason) == (None, None, 486, "Busy Here")
    assert not msg.is_request
    assert (msg.cseq_num, msg.cseq_method, msg.from_tag, msg.to_tag) == (7, "BYE", "1", "2")


@pytest.mark.parametrize("raw, reason", [
    (b"", "empty"),
    (b"hello world", "neither a request nor a status line"),
    (b"INVITE sip:x@y SIP/2.0", "no line end"),
    (b"SIP/2.0 99 Weird\r\n\r\n", "bad status code"),
    (b"SIP/2.0 2000 OK\r\n\r\n", "bad status code"),
    (b"GET / HTTP/1.1\r\n\r\n", "neither a request nor a status line"),
    (b"INVITE bob SIP/2.0\r\n\r\n", "neither a request nor a status line"),
])
def test_bad_start_lines_raise_sip_parse_error_with_a_reason(raw, reason):
    with pytest.raises(SipParseError, match=reason):
        parse_message(raw)


# --- headers --------------------------------------------------------------------

def test_header_names_are_case_insensitive_and_may_have_space_before_the_colon():
    msg = parse_message(reply(b"VIA: SIP/2.0/UDP h;BRANCH=z9hG4bKx", b"fRoM : <sip:a@b>;TAG=ft",
                              b"call-id:   spaced-out   ", b"cseq: 3 ack", b"CONTENT-LENGTH: 0"))
    assert (msg.call_id, msg.cseq_num, msg.cseq_method) == ("spaced-out", 3, "ack")
    assert (msg.from_tag, msg.via_branches, msg.content_length) == ("ft", ["z9hG4bKx"], 0)


def test_compact_forms():
    msg = parse_message(reply(b"v: SIP/2.0/UDP h;branch=z9hG4bKv", b"f: <sip:a@b>;tag=ff",
                              b"t: <sip:c@d>;tag=tt", b"i: compact@host", b"CSeq: 5 INFO",
                              b"l: 0", b"m: <sip:a@h>", b"c: text/plain", b"k: timer",
                              b"s: hi", b"e: gzip", b"o: presence", b"r: <sip:x@y>",
                              b"u: dialog", b"x: 1800", b"y: abc"))
    assert (msg.call_id, msg.from_tag, msg.to_tag) == ("compact@host", "ff", "tt")
    assert (msg.via_branches, msg.content_length, msg.defects) == (["z9hG4bKv"], 0, ())
    assert set(COMPACT_FORMS) == {bytes([c]) for c in b"iftvlmksceoruxy"}


def test_suricata_compact_form_with_odd_escaped_quotes():
    # From sip_compact_form.pcap: the display name has backslashes outside quotes,
    # leaving a quote open; Wireshark still reads the tag after the URI.
    msg = parse_message(
        b"INVITE sip:97239287044@voip.brujula.net SIP/2.0\r\n"
        b"v: SIP/2.0/UDP 192.168.1.2:5060;branch=z9hG4bKnp104984053-44ce4a41192.168.1.2;rport\r\n"
        b'f: \\"arik\\" <sip:816666@voip.brurjula.net>;tag=6433ef9\r\n'
        b"t: <sip:97239287044@voip.brujula.net>\r\n"
        b"Call-ID: 105090259-446faf7a@192.168.1.2\r\n"
        b"CSeq: 1 INVITE\r\nc: application/sdp\r\nl: 4\r\n\r\nv=0\n")
    assert (msg.from_tag, msg.call_id, msg.content_length) == (
        "6433ef9", "105090259-446faf7a@192.168.1.2", 4)
    assert msg.via_branches == ["z9hG4bKnp104984053-44ce4a41192.168.1.2"]


def test_folded_lines_are_joined():
    msg = parse_message(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\n ;branch=z9hG4bKf\r\n"
                        b"From:\r\n\t<sip:a@b>\r\n\t;tag=folded\r\nCall-ID: \r\n abc\r\n"
                        b"CSeq: 1\r\n  REGISTER\r\n\r\n")
    assert (msg.via_branches, msg.from_tag, msg.call_id) == (["z9hG4bKf"], "folded", "abc")
    assert (msg.cseq_num, msg.cseq_method) == (1, "REGISTER")


def test_bare_lf_line_ends_are_tolerated():
    msg = parse_message(b"BYE sip:b@h SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bKlf\n"
                        b"From: <sip:a@b>;tag=lf\nCall-ID: lf-only\nCSeq: 2 BYE\n"
                        b"Content-Length: 2\n\nhi")
    assert (msg.call_id, msg.from_tag, msg.via_branches, msg.content_length, msg.defects) == (
        "lf-only", "lf", ["z9hG4bKlf"], 2, ())


def test_an_lf_empty_line_ends_the_headers_even_when_a_crlf_one_follows():
    msg = parse_message(b"BYE sip:b@h SIP/2.0\nCall-ID: head\n\nCall-ID: body\r\n\r\n")
    assert msg.call_id == "head"


def test_every_via_value_counts_topmost_first():
    msg = parse_message(reply(
        b'Via: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/TCP b;branch=z9hG4bK2;received="x,y"',
        b"v: SIP/2.0/UDP c;rport;branch=z9hG4bK3 , SIP/2.0/UDP d",
        b"Via: SIP/2.0/UDP e;branch = z9hG4bK5", b"Call-ID: v"))
    assert msg.via_branches == ["z9hG4bK1", "z9hG4bK2", "z9hG4bK3", "", "z9hG4bK5"]


def test_comma_splitting_keeps_quoted_and_bracketed_commas():
    value = b' "Doe, John" <sip:j@h;x=a,b>;tag=1 , <sip:k@h>, "a\\",b" <sip:l@h>,'
    assert split_header_values(value) == [
        b' "Doe, John" <sip:j@h;x=a,b>;tag=1 ', b" <sip:k@h>", b' "a\\",b" <sip:l@h>']
    assert split_header_values(b"SIP/2.0/UDP a, SIP/2.0/UDP b") == [
        b"SIP/2.0/UDP a", b" SIP/2.0/UDP b"]


@pytest.mark.parametrize("value, tag", [
    (b"<sip:a@b;tag=uri-param>;tag=header", "header"),  # a URI parameter is not the tag
    (b"<sip:a@b;tag=uri-param>", ""),
    (b"sip:a@b;tag=no-brackets", "no-brackets"),
    (b'"x>y" <sip:a@b>;foo=1;tag=after;bar', "after"),
    (b"<sip:a@b> ; Tag = spaced ; x", "spaced"),
    (b"<sip:a@b>;tag=", ""),
])
def test_from_tag_is_the_header_parameter(value, tag):
    msg = parse_message(reply(b"From: " + value, b"Call-ID: t", b"CSeq: 1 INVITE"))
    assert msg.from_tag == tag


def test_the_first_of_repeated_single_headers_counts():
    msg = parse_message(reply(b"Call-ID: first", b"i: second", b"CSeq: 1 A", b"CSeq: 2 B"))
    assert (msg.call_id, msg.cseq_num) == ("first", 1)


def test_non_utf8_call_id_and_tag_keep_their_bytes():
    msg = parse_message(reply(b"Call-ID: caf\xe9@h", b"From: <sip:a@b>;tag=\xff",
                              b"To: <sip:b@c>;tag=\xfe"))
    assert (msg.call_id, msg.from_tag, msg.to_tag) == ("caf\udce9@h", "\udcff", "\udcfe")
    assert msg.call_id.encode("utf-8", "surrogateescape") == b"caf\xe9@h"


# --- what is tolerated, and said ---------------------------------------------------

def test_missing_fields_are_empty_and_named_as_defects():
    msg = parse_message(b"OPTIONS sip:x@y SIP/2.0\r\nMax-Forwards: 70\r\n\r\n")
    assert (msg.call_id, msg.cseq_num, msg.cseq_method, msg.from_tag) == ("", 0, "", "")
    assert (msg.via_branches, msg.content_length) == ([], None)
    assert msg.defects == ("no Call-ID", "no CSeq", "no From")


def test_invalid_content_length_counts_as_zero_like_wireshark():
    # zeek's invalid-content-length.pcap: "Content-Length: bad" (Wireshark shows 0).
    msg = parse_message(reply(b"From: <sip:a@b>;tag=1928301774",
                              b"Call-ID: a84b4c76e66710@10.0.0.1", b"CSeq: 1 INVITE",
                              b"Content-Length: xyz"))
    assert (msg.content_length, msg.defects) == (0, ("bad Content-Length",))
    assert msg.call_id == "a84b4c76e66710@10.0.0.1"


def test_non_numeric_cseq_is_a_defect():
    msg = parse_message(reply(b"Call-ID: x", b"From: <sip:a@b>;tag=1", b"CSeq: one INVITE"))
    assert (msg.cseq_num, msg.cseq_method, msg.defects) == (0, "", ("bad CSeq",))


def test_numbers_too_long_to_be_real_are_defects_not_crashes():
    msg = parse_message(reply(b"Call-ID: x", b"From: <sip:a@b>;tag=1",
                              b"CSeq: " + b"9" * 5000 + b" INVITE",
                              b"Content-Length: " + b"1" * 5000))
    assert (msg.cseq_num, msg.content_length) == (0, 0)
    assert msg.defects == ("bad CSeq", "bad Content-Length")


def test_a_message_cut_inside_a_header_keeps_what_came_before():
    # PcapPlusPlus sip_reqs.pcap frame 4: the BYE ends in "Content-Lengt".
    raw = (b"BYE sip:sipp@10.0.2.20:5060 SIP/2.0\r\n"
           b"Via: SIP/2.0/UDP 10.0.2.15;rport;branch=z9hG4bKHUc1tjFS5809r\r\n"
           b"From: test <sip:test@10.0.2.15:5060>;tag=j6QZcFDB22vSN\r\n"
           b"To: \"speex/16000\" <sip:sipp@10.0.2.20:5060>;tag=1\r\n"
           b"Call-ID: 1-4247@10.0.2.20\r\nCSeq: 99791795 BYE\r\n"
           b"Reason: Q.850;cause=16;text=\"NORMAL_CLEARING\"\r\nContent-Lengt")
    msg = parse_message(raw)
    assert (msg.method, msg.call_id, msg.cseq_num, msg.cseq_method, msg.from_tag) == (
        "BYE", "1-4247@10.0.2.20", 99791795, "BYE", "j6QZcFDB22vSN")
    assert (msg.to_tag, msg.content_length, msg.defects) == ("1", None, ("no end of headers",))


def test_headers_without_an_empty_line_after_them_run_to_the_end():
    msg = parse_message(b"ACK sip:a@b SIP/2.0\r\nCall-ID: ack\r\nCSeq: 11 ACK\r\n")
    assert (msg.call_id, msg.cseq_num, msg.defects[:1]) == ("ack", 11, ("no end of headers",))


def test_header_lines_without_a_colon_are_skipped():
    msg = parse_message(reply(b"garbage line", b"Call-ID: kept", b"CSeq: 1 X"))
    assert msg.call_id == "kept"


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_a_known_header_name_without_a_colon_is_skipped_with_either_line_end(eol):
    raw = eol.join([b"SIP/2.0 200 OK", b"Call-ID", b"Via", b"CSeq", b"f: <sip:a@b>;tag=1",
                    b"i: second", b"", b""])
    msg = parse_message(raw)
    assert (msg.call_id, msg.via_headers, msg.defects) == ("second", [], ("no CSeq",))


def test_a_start_line_ending_in_a_bare_cr_is_no_start_line():
    raw = b"OPTIONS sip:x@y SIP/2.0\r\r\nCall-ID: x\r\n\r\n"
    with pytest.raises(SipParseError):
        parse_message(raw)
    assert not looks_like_sip(raw)


def test_an_empty_header_section():
    msg = parse_message(b"SIP/2.0 100 Trying\r\n\r\nCall-ID: in-the-body\r\n")
    assert msg.call_id == "" and "no Call-ID" in msg.defects


def test_a_long_header_section_is_parsed_whole():
    raw = (b"OPTIONS sip:x@y SIP/2.0\r\n" + b"X-A: 1\r\n" * 600
           + b"Call-ID: last\r\n\r\nCall-ID: body\r\n")
    msg = parse_message(raw)
    assert (msg.call_id, msg.defects) == ("last", ("no CSeq", "no From"))


# --- against Wireshark, on the odd messages of real captures ------------------------

ODD_CAPTURES = ("seladb_PcapPlusPlus__sip_reqs.pcap",
                "OISF_suricata-verify__sip_compact_form.pcap",
                "zeek_zeek__sip_invalid-content-length.pcap")


@pytest.mark.parametrize("name", ODD_CAPTURES)
def test_odd_real_messages_parse_to_wiresharks_fields(name):
    from oracle import tshark_available, wireshark_sip_messages
    path = REAL_PCAPS / name
    if not path.exists():
        missing(f"{path} is absent")
    if not tshark_available():
        missing("tshark is not installed")
    decoder = PacketDecoder()
    ours = []
    for ts, linktype, data in open_capture(path):
        pkt = decoder.decode(ts, linktype, data)
        if pkt is not None and pkt.proto == UDP and looks_like_sip(pkt.payload):
            m = parse_message(pkt.payload)
            ours.append((m.call_id, m.cseq_num, m.cseq_method, m.method, m.status, m.from_tag))
    theirs = [(m.call_id, m.cseq_num, m.cseq_method, m.method, m.status, m.from_tag)
              for m in wireshark_sip_messages(path)]
    assert ours == theirs
