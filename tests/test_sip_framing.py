"""SIP framing on TCP and WebSocket, and the assembler tying it to TCP reassembly.

The framer is fed whole, byte by byte and with trailing data; real TCP captures go
through the team's capture reader and packet decoder into the assembler and come out
as the messages Wireshark finds, with the same fields, in the same order.
"""

import random
import zlib

import pytest

from conftest import REAL_PCAPS, missing
from siptrace.capture.files import open_capture
from siptrace.decode.layers import PacketDecoder
from siptrace.decode.packet import ACK, FIN, PSH, SYN, TCP, TransportPacket
from siptrace.errors import DecodeError
from siptrace.sip.framing import MESSAGE_STEP_NS, SipStreamFramer
from siptrace.sip.parser import parse_message
from siptrace.sip.streams import RESYNC_BUDGET, TcpMessageAssembler
from siptrace.sip.websocket import INFLATE_STATE, WebSocketDecoder, unmask


def sip(start: bytes, call_id: str, body: bytes = b"", length: bytes | None = None,
        length_name: bytes = b"Content-Length") -> bytes:
    if length is None:
        length = str(len(body)).encode()
    return (start + b"\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK" + call_id.encode()
            + b"\r\nFrom: <sip:a@h>;tag=f\r\nTo: <sip:b@h>\r\nCall-ID: " + call_id.encode()
            + b"\r\nCSeq: 1 INVITE\r\n" + length_name + b": " + length + b"\r\n\r\n" + body)


INVITE = sip(b"INVITE sip:b@h SIP/2.0", "inv", b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\n")
TRYING = sip(b"SIP/2.0 100 Trying", "trying")
OK = sip(b"SIP/2.0 200 OK", "ok", b"v=0\r\n")
STREAM = INVITE + b"\r\n\r\n" + TRYING + b"\r\n" + OK  # with CRLF keep-alives between


def framed(framer, pieces, ts=0):
    out = []
    for i, piece in enumerate(pieces):
        out += framer.feed(piece, ts + i)
    return [raw for _, raw in out]


# --- the framer -------------------------------------------------------------------

def test_fed_whole_the_messages_come_out_with_distinct_ordered_timestamps():
    framer = SipStreamFramer()
    out = framer.feed(STREAM, 5_000_000)
    assert out == [(5_000_000, INVITE), (5_000_000 + MESSAGE_STEP_NS, TRYING),
                   (5_000_000 + 2 * MESSAGE_STEP_NS, OK)]
    assert framer.buffered == 0 and framer.stats["keepalives"] == 2


def test_fed_byte_by_byte_each_message_is_stamped_with_its_last_byte():
    framer = SipStreamFramer()
    out = []
    for i in range(len(STREAM)):
        out += framer.feed(STREAM[i:i + 1], i)
    assert out == [(len(INVITE) - 1, INVITE), (len(INVITE) + 4 + len(TRYING) - 1, TRYING),
                   (len(STREAM) - 1, OK)]
    assert framer.buffered == 0


def test_trailing_data_waits_for_the_rest_of_its_message():
    framer = SipStreamFramer()
    assert framed(framer, [STREAM + OK[:30]]) == [INVITE, TRYING, OK]
    assert framer.buffered == 30
    assert framed(framer, [OK[30:]]) == [OK]
    framer.finish()
    assert framer.stats["incomplete_messages"] == 0


@pytest.mark.parametrize("seed", range(20))
def test_any_segmentation_gives_the_same_messages(seed):
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 40)))
    pieces = [STREAM[a:b] for a, b in zip([0] + cuts, cuts + [len(STREAM)])]
    assert framed(SipStreamFramer(), pieces) == [INVITE, TRYING, OK]


def test_compact_content_length_and_case():
    compact = sip(b"MESSAGE sip:b@h SIP/2.0", "c", b"hello", length_name=b"l")
    lower = sip(b"MESSAGE sip:b@h SIP/2.0", "d", b"hi", length_name=b"content-length")
    assert framed(SipStreamFramer(), [compact + lower + compact]) == [compact, lower, compact]


def test_no_content_length_means_no_body_on_a_stream():
    raw = b"OPTIONS sip:h SIP/2.0\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n"
    assert framed(SipStreamFramer(), [raw + raw]) == [raw, raw]


def test_bare_lf_messages():
    raw = b"BYE sip:h SIP/2.0\nCall-ID: lf\nContent-Length: 2\n\nhi"
    assert framed(SipStreamFramer(), [raw + raw]) == [raw, raw]


def test_invalid_content_length_counts_as_zero():
    bad = sip(b"SIP/2.0 200 OK", "bad", length=b"xyz")
    framer = SipStreamFramer()
    assert framed(framer, [bad + TRYING]) == [bad, TRYING]
    assert framer.stats["bad_content_length"] == 1


def test_after_a_gap_the_framer_resyncs_on_the_next_start_line():
    framer = SipStreamFramer()
    assert framed(framer, [INVITE[:100]]) == []
    out = framer.feed(INVITE[150:] + TRYING + OK, 7, gap=True)
    assert [raw for _, raw in out] == [TRYING, OK]
    assert framer.stats["incomplete_messages"] == 1  # the INVITE lost in the gap
    assert framer.stats["resyncs"] == 1
    assert framer.stats["bytes_skipped"] == len(INVITE) - 150


def test_resync_finds_a_request_line_and_ignores_sip_version_elsewhere():
    framer = SipStreamFramer(synced=False)
    noise = b"xx\r\nVia: SIP/2.0/TCP h\r\nbody SIP/2.0 200 OK\r\nmore"
    assert framed(framer, [noise, b" junk\r\n" + INVITE]) == [INVITE]
    assert framer.stats["bytes_skipped"] == len(noise) + 7


def test_bytes_that_are_not_a_start_line_are_skipped_to_the_next_one():
    framer = SipStreamFramer()
    assert framed(framer, [b"HELLO THERE\r\n" + TRYING]) == [TRYING]
    assert framer.stats["bytes_skipped"] == 13


def test_without_a_start_line_only_a_short_tail_is_kept():
    framer = SipStreamFramer(synced=False)
    framer.feed(b"z" * 20000 + b"\nSIP/2.0 2", 0)
    assert framer.buffered == len(b"SIP/2.0 2")
    assert framed(framer, [OK[9:]]) == [OK]
    framer.feed(b"y" * 100_000, 1)
    assert framer.buffered == 0  # one line of 100 kB cannot start a message


def test_a_body_over_the_cap_is_skipped_exactly():
    framer = SipStreamFramer(max_message=4096)
    big = sip(b"MESSAGE sip:b@h SIP/2.0", "big", b"x" * 10000)
    out = framed(framer, [big[i:i + 1000] for i in range(0, len(big), 1000)] + [TRYING])
    assert out == [TRYING]
    assert framer.stats["overflow"] == 1 and framer.buffered == 0
    assert not framer.stats["resyncs"]


def test_an_absurd_content_length_is_garbage_and_the_stream_resynced():
    framer = SipStreamFramer()
    absurd = sip(b"MESSAGE sip:b@h SIP/2.0", "absurd", length=b"99999999999999")
    huge = sip(b"MESSAGE sip:b@h SIP/2.0", "huge", length=b"7" * 5000)
    assert framed(framer, [absurd + TRYING + huge + OK]) == [TRYING, OK]
    assert framer.stats["overflow"] == 2 and framer.stats["resyncs"] == 2


def test_a_header_section_over_the_cap_is_dropped_and_the_stream_resynced():
    framer = SipStreamFramer(max_header=1024)
    long_header = b"OPTIONS sip:h SIP/2.0\r\n" + b"X-Pad: " + b"p" * 2000 + b"\r\n"
    out = framed(framer, [long_header, b"\r\n", TRYING])
    assert out == [TRYING]
    assert framer.stats["overflow"] == 1 and framer.buffered == 0


def test_finish_counts_an_incomplete_message_but_not_keepalives():
    framer = SipStreamFramer()
    framer.feed(b"\r\n\r\n", 0)
    framer.finish()
    assert framer.stats["incomplete_messages"] == 0
    framer.feed(INVITE[:50], 1)
    framer.finish()
    assert framer.stats["incomplete_messages"] == 1


# --- WebSocket frames -------------------------------------------------------------

def ws_frame(payload: bytes, opcode=1, fin=True, mask: bytes | None = None, rsv1=False) -> bytes:
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    n = len(payload)
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 65536:
        head += bytes([mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + n.to_bytes(8, "big")
    return head + (mask + unmask(payload, mask) if mask else payload)


def test_masked_client_frames_are_unmasked():
    decoder = WebSocketDecoder()
    stream = ws_frame(INVITE, mask=b"\x01\x02\x03\x04") + ws_frame(OK, opcode=2, mask=b"abcd")
    assert [raw for _, raw in decoder.feed(stream, 10)] == [INVITE, OK]


def test_fragmented_messages_with_control_frames_between_are_joined():
    decoder = WebSocketDecoder()
    stream = (ws_frame(INVITE[:40], fin=False, mask=b"kkkk") + ws_frame(b"", opcode=9)  # ping
              + ws_frame(INVITE[40:90], opcode=0, fin=False) + ws_frame(b"", opcode=10)
              + ws_frame(INVITE[90:], opcode=0, mask=b"\x00\xff\x00\xff"))
    out = []
    for i in range(0, len(stream), 7):  # and split at arbitrary points
        out += decoder.feed(stream[i:i + 7], i)
    assert [raw for _, raw in out] == [INVITE]
    assert decoder.stats["ws_control_frames"] == 2 and decoder.buffered == 0


def test_extended_lengths_and_permessage_deflate():
    big = sip(b"MESSAGE sip:b@h SIP/2.0", "big", bytes(range(256)) * 274)
    deflater = zlib.compressobj(wbits=-15)
    compressed = deflater.compress(OK) + deflater.flush(zlib.Z_SYNC_FLUSH)
    decoder = WebSocketDecoder()
    stream = ws_frame(big, opcode=2) + ws_frame(compressed[:-4], rsv1=True)
    assert [raw for _, raw in decoder.feed(stream, 0)] == [big, OK]


def test_a_gap_or_a_bad_frame_stops_the_decoder():
    decoder = WebSocketDecoder()
    assert decoder.feed(b"\xf1\x00", 0) == []  # RSV bits set, no extension to explain them
    assert decoder.broken and decoder.stats["ws_bad_frames"] == 1
    decoder = WebSocketDecoder()
    decoder.feed(ws_frame(INVITE)[:20], 0)
    assert decoder.feed(ws_frame(OK), 1, gap=True) == [] and decoder.broken


def test_an_oversized_frame_is_skipped():
    decoder = WebSocketDecoder(max_message=1000)
    stream = ws_frame(b"x" * 5000, opcode=2) + ws_frame(TRYING)
    out = []
    for i in range(0, len(stream), 1000):
        out += decoder.feed(stream[i:i + 1000], i)
    assert [raw for _, raw in out] == [TRYING] and decoder.stats["ws_overflow"] == 1


# --- the assembler ----------------------------------------------------------------

CLIENT = ("10.0.0.1", 40000, "10.0.0.2", 5060)
SERVER = ("10.0.0.2", 5060, "10.0.0.1", 40000)


def segments(key, data: bytes, size: int, isn=100, ts=0, syn=True):
    src, sport, dst, dport = key
    out = [TransportPacket(ts, TCP, 4, src, sport, dst, dport, b"", isn, SYN)] if syn else []
    for i in range(0, len(data), size):
        out.append(TransportPacket(ts + i + 1, TCP, 4, src, sport, dst, dport,
                                   data[i:i + size], isn + 1 + i, ACK | PSH))
    return out


def assembled(assembler, packets):
    out = []
    for pkt in packets:
        out += assembler.feed(pkt)
    return out


def test_the_assembler_frames_sip_streams_in_each_direction():
    a = TcpMessageAssembler()
    packets = segments(CLIENT, INVITE + OK, 50) + segments(SERVER, TRYING, 1000)
    out = assembled(a, packets)
    assert [(t, raw) for _, t, raw in out] == [("tcp", INVITE), ("tcp", OK), ("tcp", TRYING)]
    assert a.finish() == [] and a.buffered == 0


def test_non_sip_streams_are_skipped_and_counted_until_a_gap():
    a = TcpMessageAssembler()
    http = b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n" + b"z" * 3000
    packets = segments(CLIENT, http, 1000)
    src, sport, dst, dport = CLIENT
    # A hole in the sequence space, then SIP: looked for again and found.
    packets.append(TransportPacket(9, TCP, 4, src, sport, dst, dport, TRYING,
                                   101 + len(http) + 50, ACK, ))
    assert assembled(a, packets) == []
    assert a.stats["non_sip_streams"] == 1 and a.stats["non_sip_bytes"] == len(http)
    assert [raw for _, _, raw, _ in a.finish()] == [TRYING]


def test_tls_and_binary_streams_are_judged_on_their_first_byte():
    a = TcpMessageAssembler()
    assert assembled(a, segments(CLIENT, b"\x16\x03\x01" + bytes(2000), 500)) == []
    assert a.stats["non_sip_streams"] == 1 and a.buffered == 0


def test_a_stream_picked_up_midway_is_searched_for_sip_within_a_budget():
    a = TcpMessageAssembler()
    out = assembled(a, segments(CLIENT, INVITE[200:] + OK, 100, syn=False))
    assert [raw for _, _, raw in out] == [OK]
    b = TcpMessageAssembler()
    assert assembled(b, segments(CLIENT, b"q" * (RESYNC_BUDGET + 5000), 1400, syn=False)) == []
    assert b.stats["non_sip_streams"] == 1 and b.buffered < 10_000


def test_messages_of_other_streams_wait_for_take_other():
    a = TcpMessageAssembler(gap_timeout_ns=1000)
    src, sport, dst, dport = CLIENT
    packets = segments(CLIENT, b"", 1) + [
        TransportPacket(10, TCP, 4, src, sport, dst, dport, OK, 101 + 7, ACK)]  # a hole first
    assert assembled(a, packets) == []
    other = segments(SERVER, TRYING, 1000, ts=10**10)
    assert [raw for _, _, raw in assembled(a, other)] == [TRYING]
    assert [(t, raw, key) for _, t, raw, key in a.take_other()] == [("tcp", OK, CLIENT)]
    assert a.take_other() == []


def test_bytes_held_over_all_streams_are_bounded_cutting_the_oldest_first():
    big = sip(b"INVITE sip:b@h SIP/2.0", "big", length=b"500000")
    a = TcpMessageAssembler(max_buffered=1 << 20)
    keys = [("10.0.1.%d" % i, 40000 + i, "10.0.0.2", 5060) for i in range(8)]
    for i, key in enumerate(keys):  # eight streams announcing 500 kB, 200 kB of it sent
        assert assembled(a, segments(key, big + b"x" * 200_000, 20_000, ts=i * 10**6)) == []
        assert a.buffered <= 1 << 20
    # The oldest were cut; each cut message's rest is skipped exactly, and the message
    # after it comes out whole, while the newest streams still hold theirs.
    assert a.stats["buffer_cuts"] == 3 and a.stats["buffer_cut_bytes"] > 3 * 200_000
    rest = b"y" * (len(big) + 500_000 - len(big) - 200_000)
    src, sport, dst, dport = keys[0]
    first = TransportPacket(10**9, TCP, 4, src, sport, dst, dport, rest + OK,
                            101 + len(big) + 200_000, ACK | PSH)
    assert [raw for _, _, raw in a.feed(first)] == [OK]
    src, sport, dst, dport = keys[7]
    last = TransportPacket(10**9, TCP, 4, src, sport, dst, dport, rest,
                           101 + len(big) + 200_000, ACK | PSH)
    assert [raw for _, _, raw in a.feed(last)] == [big + b"x" * 200_000 + rest]
    assert a.stats["buffer_cuts"] == 3


def test_a_stream_completing_messages_is_younger_than_one_that_does_not():
    big = sip(b"INVITE sip:b@h SIP/2.0", "big", length=b"900000")
    a = TcpMessageAssembler(max_buffered=600_000)
    assembled(a, segments(SERVER, INVITE + INVITE[:50], 10_000))  # part of a second one
    assembled(a, segments(CLIENT, big + b"x" * 500_000, 20_000))  # a slow, large one
    src, sport, dst, dport = SERVER  # completes its message and starts another
    a.feed(TransportPacket(5, TCP, 4, src, sport, dst, dport, INVITE[50:] + INVITE[:50],
                           101 + len(INVITE) + 50, ACK | PSH))
    src, sport, dst, dport = CLIENT
    a.feed(TransportPacket(6, TCP, 4, src, sport, dst, dport, b"x" * 300_000,
                           101 + len(big) + 500_000, ACK | PSH))
    assert a.stats["buffer_cuts"] == 1 and a.buffered == 50  # the slow one was cut


def test_sip_over_websocket_after_the_http_upgrade():
    a = TcpMessageAssembler()
    upgrade = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               b"Sec-WebSocket-Protocol: sip\r\n\r\n")
    accept = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
              b"Sec-WebSocket-Protocol: sip\r\n\r\n")
    client = upgrade + ws_frame(INVITE, mask=b"\x10\x20\x30\x40") + ws_frame(b"\r\n\r\n")
    server = accept + ws_frame(TRYING) + ws_frame(OK)
    out = assembled(a, segments(CLIENT, client, 100) + segments(SERVER, server, 1400))
    assert [(t, raw) for _, t, raw in out] == [("ws", INVITE), ("ws", TRYING), ("ws", OK)]
    assert a.stats["ws_streams"] == 2 and a.stats["ws_messages"] == 3
    assert a.stats["ws_non_sip"] == 1


def test_websocket_inflate_state_counts_against_the_bound():
    accept = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
              b"Sec-WebSocket-Protocol: sip\r\n\r\n")
    deflater = zlib.compressobj(wbits=-15)
    compressed = deflater.compress(OK) + deflater.flush(zlib.Z_SYNC_FLUSH)
    stream = accept + ws_frame(compressed[:-4], rsv1=True)
    a = TcpMessageAssembler(max_buffered=100 * INFLATE_STATE)
    keys = [("10.0.2.%d" % i, 5060, "10.0.0.1", 40000 + i) for i in range(101)]
    for key in keys:  # each keeps a zlib context for the messages to come
        assert [raw for _, _, raw in assembled(a, segments(key, stream, 1400))] == [OK]
    assert a.stats["buffer_cuts"] == 1 and a.buffered == 100 * INFLATE_STATE


def test_a_websocket_upgrade_without_the_sip_subprotocol_is_not_sip():
    a = TcpMessageAssembler()
    upgrade = b"GET /chat HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    assert assembled(a, segments(CLIENT, upgrade + ws_frame(INVITE), 1400)) == []
    assert a.stats["non_sip_streams"] == 1


# --- real captures, against Wireshark -----------------------------------------------

TCP_CAPTURES = (
    "OISF_suricata-verify__sip-body-large.pcap",
    "OISF_suricata-verify__sip-tcp-method_sip-tcp.pcap",
    "aboutsip_pkts__fragmented_tcp_sip.pcap",
    "sipcapture_heplify__sip_ipv4_tcp.pcap",
    "irontec_sngrep__tests_ipip.pcap",
    "sipcapture_heplify__sip_tcp_websocket.pcap",
    "irontec_sngrep__tests_aaa.pcap",  # TCP that is not SIP (SMB/NetBIOS retransmissions)
)


def tcp_packets(path) -> list[TransportPacket]:
    decoder = PacketDecoder()
    packets = []
    for ts, linktype, data in open_capture(path):
        try:
            pkt = decoder.decode(ts, linktype, data)
        except DecodeError:
            continue
        if pkt is not None and pkt.proto == TCP:
            packets.append(pkt)
    return packets


def assemble_capture(packets):
    a = TcpMessageAssembler()
    out = []
    for pkt in packets:
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        out += [(ts, t, raw, key) for ts, t, raw in a.feed(pkt)]
    out += a.finish()
    return out, a


def fields(messages):
    out = []
    for _, transport, raw, (src, sport, dst, dport) in messages:
        m = parse_message(raw)
        out.append((transport, src, sport, dst, dport, m.call_id, m.cseq_num, m.method, m.status))
    return out


@pytest.fixture(scope="module")
def wireshark():
    from oracle import tshark_available, wireshark_sip_messages
    if not tshark_available():
        missing("tshark is not installed")
    if not REAL_PCAPS.is_dir():
        missing(f"{REAL_PCAPS} is absent")
    return wireshark_sip_messages


@pytest.mark.parametrize("name", TCP_CAPTURES)
def test_real_tcp_captures_frame_as_wireshark_does(name, wireshark):
    path = REAL_PCAPS / name
    ours, assembler = assemble_capture(tcp_packets(path))
    theirs = [m for m in wireshark(path) if m.transport in ("tcp", "ws")]
    assert fields(ours) == [(m.transport, m.src, m.sport, m.dst, m.dport, m.call_id,
                             m.cseq_num, m.method, m.status) for m in theirs]
    # Stamped with the frame completing the message, plus i microseconds.
    for (ts, *_), m in zip(ours, theirs):
        assert 0 <= ts - m.ts_ns < 10 * MESSAGE_STEP_NS
    assert assembler.buffered == 0


@pytest.mark.parametrize("name", TCP_CAPTURES[:6])
def test_real_captures_reordered_and_duplicated_give_the_same_messages(name):
    path = REAL_PCAPS / name
    if not path.exists():
        missing(f"{path} is absent")
    packets = tcp_packets(path)
    expected = fields(assemble_capture(packets)[0])
    rng = random.Random(name)
    shuffled = []
    for pkt in packets:  # data segments twice, neighbours in one direction swapped
        shuffled.append(pkt)
        if pkt.payload and rng.random() < 0.5:
            shuffled.append(pkt)
        prev = shuffled[-2] if len(shuffled) > 1 else None
        if prev and rng.random() < 0.3 and (prev.src, prev.sport) == (pkt.src, pkt.sport) \
                and not (prev.flags | pkt.flags) & (SYN | FIN):
            shuffled[-1], shuffled[-2] = prev, pkt
    assert fields(assemble_capture(shuffled)[0]) == expected
