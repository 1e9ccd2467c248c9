"""Where the hot path keeps a shortcut, the shortcut and the general path give the same
results (property tests, hypothesis).

- the SIP parser: a message with CRLF line ends and the same message with LF ones; the
  header loop fed by the CRLF split and by the unfolding slow path; folded lines and the
  same lines unfolded; the parser's start-line check and ``looks_like_sip``;
- the packet decoder: IPv4 over Ethernet, 802.1Q and Linux SLL through the fast path and
  through the layers;
- the date column: ``trace_row``'s text (seconds cached) and str() of the exact
  EPOCH + timedelta.

Replay's direct row path for the plain Tracer is checked in tests/test_replay.py.
"""

from dataclasses import fields
from datetime import timedelta
import struct

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from siptrace.decode.layers import PacketDecoder
from siptrace.decode.packet import TransportPacket
from siptrace.errors import DecodeError, SipParseError
from siptrace.extract import WireMessage
from siptrace.rows import COLUMNS, EPOCH, SECOND_CACHE_SIZE, TraceRow, endpoint, trace_row
from siptrace.sip.detect import MAX_START_LINE, looks_like_sip
from siptrace.sip.parser import (_CALL_ID, _CONTENT_LENGTH, _CSEQ, _FROM, _TO, _VIA, _scan,
                                 _scan_slow, parse_message)

SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# --- the SIP parser -------------------------------------------------------------------

# Header names as a key of the scan result (the model below), with names the parser
# must skip: other headers, compact forms of other headers, near misses.
KEYS = {b"via": _VIA, b"v": _VIA, b"from": _FROM, b"f": _FROM, b"to": _TO, b"t": _TO,
        b"call-id": _CALL_ID, b"i": _CALL_ID, b"cseq": _CSEQ,
        b"content-length": _CONTENT_LENGTH, b"l": _CONTENT_LENGTH}
OTHER_NAMES = [b"max-forwards", b"contact", b"m", b"user-agent", b"record-route",
               b"subject", b"s", b"k", b"www-authenticate", b"x-call-id", b"call-info",
               b"via-x", b"tos", b"cseqs", b"content-type", b"c", b"e"]

token = st.text("abcdefXYZ0123456789-.!%*_+`'~", min_size=1, max_size=8).map(str.encode)
junk = st.binary(max_size=24).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@st.composite
def any_case(draw, name: bytes) -> bytes:
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return b"".join(bytes([c]).swapcase() if flip else bytes([c])
                    for c, flip in zip(name, flips))


via_value = st.builds(
    lambda proto, host, branch, params: b"SIP/2.0/%s %s%s;branch=%s" % (
        proto, host, params, branch),
    st.sampled_from([b"UDP", b"TCP", b"WS"]), token, token,
    st.sampled_from([b"", b";rport", b';received="1.2.3.4"', b";branch = z9hG4bKx"]))
VALUES = {
    _VIA: st.lists(via_value, min_size=1, max_size=3).flatmap(
        lambda vias: st.sampled_from([b",", b", ", b" ,"]).map(lambda sep: sep.join(vias))),
    _FROM: st.builds(lambda name, tag, form: form % (name, tag), token, token, st.sampled_from(
        [b'"%s, x" <sip:a@h;tag=uri>;tag=%s', b"sip:%s@h;tag=%s", b"<sip:%s@h>%.0s",
         b"<sip:%s@h> ; Tag = %s", b"%s;tag=%s;x=1"])),
    _CALL_ID: st.builds(lambda a, b: a + b"@" + b, token, token),
    _CSEQ: st.builds(lambda n, m: b"%d %s" % (n, m), st.integers(0, 10**20),
                     st.sampled_from([b"INVITE", b"BYE", b"FOO", b""])),
    _CONTENT_LENGTH: st.integers(0, 10**20).map(b"%d".__mod__),
}
VALUES[_TO] = VALUES[_FROM]
SPACE = st.sampled_from([b"", b" ", b"\t", b"  \t"])


@st.composite
def header_line(draw) -> bytes:
    """One header line in any form: long or compact name in any case, white space
    before and after the colon, or no colon at all."""
    name = draw(st.sampled_from(sorted(KEYS) + OTHER_NAMES))
    value = draw(VALUES.get(KEYS.get(name), junk) | junk)
    name = draw(any_case(name))
    if draw(st.integers(0, 9)) == 0:  # no colon: skipped
        return name + draw(st.sampled_from([b"", b" "])) + value.replace(b":", b"")
    return name + draw(SPACE) + b":" + draw(SPACE) + value


# A folded line: white space, then more of the value (RFC 3261 section 7.3.1).
continuation = st.builds(bytes.__add__, st.sampled_from([b" ", b"\t", b" \t "]), junk)
START_LINES = [b"INVITE sip:b@h SIP/2.0", b"SIP/2.0 200 OK", b"SIP/2.0 180",
               b"X-Y sip:x SIP/2.0", b"SIP/2.0 486 Busy Here"]
ENDS = ["empty line", "line end", "cut"]  # what follows the last header line


@st.composite
def header_groups(draw, folded: bool = True) -> list[list[bytes]]:
    """Header lines, each with the lines folded onto it (none when not ``folded``)."""
    groups = draw(st.lists(st.tuples(header_line(), st.lists(continuation, max_size=2)),
                           max_size=10))
    return [[line, *(more if folded else [])] for line, more in groups]


def message(start: bytes, lines: list[bytes], end: str, body: bytes, eol: bytes) -> bytes:
    raw = eol.join([start, *lines])
    if end == "empty line":
        return raw + eol + eol + body
    return raw + eol if end == "line end" else raw


def parsed(raw: bytes) -> dict | str:
    """Every field of the parsed message but its raw bytes, and what is read on demand;
    the error when there is none."""
    try:
        msg = parse_message(raw)
    except SipParseError as exc:
        return str(exc)
    out = {f.name: getattr(msg, f.name) for f in fields(msg) if f.name != "raw"}
    out.update(to_tag=msg.to_tag, via_branches=msg.via_branches,
               request_uri=msg.request_uri, reason=msg.reason)
    return out


def model_scan(lines: list[bytes]) -> list:
    """What the header loop must find in unfolded lines, written the plain way: names
    stripped and lower-cased, lines without a colon skipped, the first value of each
    header, every Via."""
    found = [None, [], None, None, None, None, None]
    for line in lines:
        name, colon, value = line.partition(b":")
        key = KEYS.get(name.strip().lower())
        if key == _VIA and colon:
            found[_VIA].append(value)
        elif key and colon and found[key] is None:
            found[key] = value
    return found


@SETTINGS
@given(st.sampled_from(START_LINES), header_groups(), st.sampled_from(ENDS),
       st.binary(max_size=30))
@example(b"SIP/2.0 200 OK", [[b"Call-ID"], [b"i: x"]], "empty line", b"")
@example(b"SIP/2.0 200 OK", [[b"Via"], [b"CSeq"]], "empty line", b"")
def test_crlf_and_lf_messages_give_the_same_fields(start, groups, end, body):
    lines = [line for group in groups for line in group]
    crlf = message(start, lines, end, body, b"\r\n")
    lf = message(start, lines, end, body, b"\n")
    assert parsed(crlf) == parsed(lf)


@SETTINGS
@given(st.sampled_from(START_LINES), header_groups(folded=False), st.binary(max_size=30))
@example(b"SIP/2.0 200 OK", [[b"Call-ID"]], b"")
def test_the_crlf_split_and_the_slow_path_find_the_same_headers(start, groups, body):
    lines = [group[0] for group in groups]
    crlf = message(start, lines, "empty line", body, b"\r\n")
    fast = _scan(lines)
    assert fast == model_scan(lines)
    assert _scan_slow(crlf) == (fast, True)
    assert _scan_slow(message(start, lines, "empty line", body, b"\n")) == (fast, True)
    for end in ("line end", "cut")[:1 + bool(lines)]:  # no empty line: a defect
        assert _scan_slow(message(start, lines, end, b"", b"\n")) == (fast, False)


@SETTINGS
@given(st.sampled_from(START_LINES), header_groups(), st.sampled_from([b"\r\n", b"\n"]),
       st.binary(max_size=30))
def test_folded_lines_read_as_the_lines_unfolded(start, groups, eol, body):
    unfolded = [b" ".join([group[0], *(more.lstrip(b" \t") for more in group[1:])])
                for group in groups]
    folded = [line for group in groups for line in group]
    assert (parsed(message(start, folded, "empty line", body, eol))
            == parsed(message(start, unfolded, "empty line", body, eol)))
    assert _scan(unfolded) == model_scan(unfolded)


start_line_parts = st.lists(st.sampled_from(
    [b"INVITE", b"SIP/2.0", b"SIP/2.0 ", b"200", b"2000", b"20", b" ", b"  ", b"sip:a@b",
     b":x", b"x:", b"\r", b"\t", b"OK", b"\xff", b"-"]) | st.binary(max_size=4), max_size=6)


@SETTINGS
@given(start_line_parts.map(b"".join), st.sampled_from([b"\r\n", b"\n", b"\r\r\n", b""]),
       st.sampled_from([b"", b"Call-ID: x\r\n\r\n", b"Call-ID: x\n"]))
@example(b"INVITE sip:a@b SIP/2.0", b"\r\r\n", b"Call-ID: x\r\n\r\n")
@example(b"SIP/2.0 200\r", b"\r\n", b"\r\n")
def test_the_parser_takes_the_start_lines_looks_like_sip_takes(line, eol, rest):
    raw = line + eol + rest
    try:
        parse_message(raw)
        parses = True
    except SipParseError:
        parses = False
    assert parses == looks_like_sip(raw)


def test_a_start_line_longer_than_the_detectors_limit_still_parses():
    # A datagram is whole: only stream framing bounds the start line it waits for.
    raw = b"OPTIONS sip:" + b"a" * MAX_START_LINE + b"@h SIP/2.0\r\nCall-ID: x\r\n\r\n"
    assert parse_message(raw).call_id == "x" and not looks_like_sip(raw)


# --- the packet decoder ---------------------------------------------------------------

def outcome(decoder: PacketDecoder, ts_ns: int, linktype: int, data: bytes):
    """The decoder's result, or the documented error it raised (class and text)."""
    try:
        result = decoder.decode(ts_ns, linktype, data)
    except DecodeError as exc:
        return type(exc), str(exc)
    assert result is None or isinstance(result, TransportPacket)
    return result


@st.composite
def ipv4_frames(draw) -> tuple[int, bytes]:
    """(linktype, frame): mostly what the fast path takes, and every way to miss it."""
    proto = draw(st.sampled_from([17, 17, 17, 6, 6, 1, 4, 47, 50]))
    payload = draw(st.binary(max_size=40))
    sport, dport = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
    if proto == 17:
        length = draw(st.sampled_from([8 + len(payload)] * 4 + [0, 7, 8, 65535])
                      | st.integers(0, 100))
        segment = struct.pack("!HHHH", sport, dport, length, draw(st.integers(0, 65535)))
    else:
        words = draw(st.sampled_from([5, 5, 5, 6, 15, 0, 4]))
        options = draw(st.binary(min_size=max(0, words - 5) * 4, max_size=max(0, words - 5) * 4))
        segment = struct.pack("!HHIIHHHH", sport, dport, draw(st.integers(0, 2**32 - 1)), 0,
                              (words << 12) | draw(st.integers(0, 0xFFF)), 65535, 0, 0) + options
    segment += payload
    version = draw(st.sampled_from([4] * 12 + [6, 0]))
    ihl = draw(st.sampled_from([5] * 10 + [6, 7, 15, 4, 0]))
    options = draw(st.binary(min_size=max(0, ihl - 5) * 4, max_size=max(0, ihl - 5) * 4))
    total = 20 + len(options) + len(segment)
    total = draw(st.sampled_from([total] * 6 + [0, total - 1, total + 1, 20, 27, 39, 65535])
                 | st.integers(0, 120))
    frag = draw(st.sampled_from([0, 0, 0, 0x4000, 0x2000, 0x2001, 0x0001, 0x1FFF])
                | st.integers(0, 0xFFFF))
    header = struct.pack("!BBHHHBBH4s4s", (version << 4) | ihl, 0, total & 0xFFFF,
                         draw(st.integers(0, 3)), frag, 64, proto,
                         draw(st.integers(0, 0xFFFF)),  # checksum: never verified
                         draw(st.sampled_from([b"\x0a\0\0\1", b"\x0a\0\0\2"])),
                         draw(st.binary(min_size=4, max_size=4)))
    packet = header + options + segment + draw(st.binary(max_size=6))  # Ethernet padding
    link = draw(st.sampled_from(["ethernet", "vlan", "qinq", "sll", "sll-vlan"]))
    ethertype = draw(st.sampled_from([0x0800] * 8 + [0x86DD, 0x0806]))
    if link == "ethernet":
        linktype, frame = 1, bytes(12) + struct.pack("!H", ethertype) + packet
    elif link == "vlan":
        linktype, frame = 1, bytes(12) + struct.pack("!HHH", 0x8100, 7, ethertype) + packet
    elif link == "qinq":
        linktype, frame = 1, bytes(12) + struct.pack("!HHHHH", 0x88A8, 7, 0x8100, 8,
                                                     ethertype) + packet
    elif link == "sll":
        linktype, frame = 113, bytes(14) + struct.pack("!H", ethertype) + packet
    else:
        linktype, frame = 113, bytes(14) + struct.pack("!HHH", 0x8100, 7, ethertype) + packet
    if draw(st.integers(0, 5)) == 0:  # cut short by the capture
        frame = frame[:draw(st.integers(0, len(frame)))]
    return linktype, frame


@SETTINGS
@given(st.lists(ipv4_frames(), min_size=1, max_size=8))
def test_the_fast_path_decodes_as_the_layers_do(frames):
    fast, layers = PacketDecoder(), PacketDecoder()
    layers._ipv4_fast = lambda *args: None  # every packet through the layers
    for i, (linktype, frame) in enumerate(frames):
        ts = 1_700_000_000_000_000_000 + i
        assert outcome(fast, ts, linktype, frame) == outcome(layers, ts, linktype, frame)
    assert fast.stats == layers.stats
    assert fast.pending_fragment_sets == layers.pending_fragment_sets


def test_the_fast_path_takes_the_common_packets():
    decoder = PacketDecoder()
    taken = []
    fast = decoder._ipv4_fast
    decoder._ipv4_fast = lambda *args: taken.append(fast(*args)) or taken[-1]
    udp = struct.pack("!HHHH", 5060, 5080, 12, 0) + b"SIP!"
    packet = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 32, 1, 0x4000, 64, 17, 0,
                         b"\x0a\0\0\1", b"\x0a\0\0\2") + udp
    for linktype, frame in ((1, bytes(12) + b"\x08\x00" + packet),
                            (1, bytes(12) + b"\x81\x00\x00\x07\x08\x00" + packet),
                            (113, bytes(14) + b"\x08\x00" + packet)):
        pkt = decoder.decode(1, linktype, frame)
        assert (pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.payload) == (
            "10.0.0.1", 5060, "10.0.0.2", 5080, b"SIP!")
    assert len(taken) == 3 and None not in taken


# --- the date column ------------------------------------------------------------------

PCAP_SECONDS = 2**32  # a pcap record's seconds are 32 bits: 1970 to 2106


def wire_at(ts_ns: int, family: int = 4) -> WireMessage:
    sip = parse_message(b"SIP/2.0 200 OK\r\nCall-ID: c\r\nCSeq: 1 BYE\r\n\r\n")
    if family == 6:
        return WireMessage(ts_ns, "tcp", 6, "2001:db8::1", 5061, "::1", 5060, sip)
    return WireMessage(ts_ns, "udp", 4, "10.0.0.1", 5060, "10.0.0.2", 5080, sip)


def exact_date(ts_ns: int) -> str:
    return str(EPOCH + timedelta(microseconds=ts_ns // 1000))


EDGES = [0, 999, 1000, 999_999_999, 1_000_000_000,
         951_782_400 * 10**9 - 1, 951_782_400 * 10**9,  # 2000-02-29, a leap day
         2_147_483_647 * 10**9 + 999_999_999,  # 2038-01-19 03:14:07, 31-bit seconds
         4_107_542_399 * 10**9 + 999_999_000,  # 2100-02-28 23:59:59, 2100 is no leap year
         4_107_542_400 * 10**9, (PCAP_SECONDS - 1) * 10**9 + 999_999_999]  # 2106-02-07


@settings(max_examples=2000, deadline=None)
@given(st.integers(0, PCAP_SECONDS * 10**9 - 1) | st.sampled_from(EDGES))
def test_the_date_column_is_the_exact_capture_time(ts_ns):
    date = trace_row(wire_at(ts_ns), "").date
    assert date == exact_date(ts_ns) and type(date) is str


def test_the_date_is_exact_on_every_microsecond_edge_of_many_seconds():
    # More seconds than the cache keeps, in and out of order: it is cleared and refilled.
    seconds = list(range(0, PCAP_SECONDS, PCAP_SECONDS // (3 * SECOND_CACHE_SIZE)))
    seconds += seconds[::-7]
    for second in seconds:
        for micro in (0, 1, 499_999, 999_999):
            ts_ns = second * 10**9 + micro * 1000 + 999
            assert trace_row(wire_at(ts_ns), "").date == exact_date(ts_ns)


def test_rows_are_trace_rows_with_every_column():
    for family in (4, 6):
        row = trace_row(wire_at(1_764_460_000_123_456_789, family), "in")
        assert type(row) is TraceRow and len(row) == len(COLUMNS) and row == TraceRow(*row)
    assert row.fromip == "tcp:[2001:db8::1]:5061" == endpoint("tcp", 6, "2001:db8::1", 5061)
    assert endpoint("udp", 4, "10.0.0.1", 5060) == "udp:10.0.0.1:5060"
    assert (row.method, row.status) == ("BYE", "200")
