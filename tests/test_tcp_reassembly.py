"""TCP reassembly per direction: order, retransmissions, overlaps, holes, bounds, ends."""

from siptrace.decode.packet import ACK, FIN, PSH, RST, SYN, TCP, TransportPacket
from siptrace.decode.tcp import MAX_JUMP, SEQ_MOD, TcpChunk, TcpReassembler

A = ("10.0.0.1", 40000, "10.0.0.2", 5060)
B = ("10.0.0.2", 5060, "10.0.0.1", 40000)
C = ("10.0.0.3", 40001, "10.0.0.2", 5060)
ISN = 1000


def seg(seq, data=b"", flags=ACK | PSH, ts=0, key=A):
    src, sport, dst, dport = key
    return TransportPacket(ts, TCP, 4, src, sport, dst, dport, data, seq % SEQ_MOD, flags)


def syn(key=A, isn=ISN, ts=0):
    return seg(isn, flags=SYN, ts=ts, key=key)


def run(reassembler, packets):
    chunks = []
    for pkt in packets:
        chunks += reassembler.feed(pkt)
    return chunks


def data_of(chunks, key=A):
    return b"".join(c.data for c in chunks if c.key == key)


def test_in_order_segments_come_out_as_they_arrive():
    r = TcpReassembler()
    chunks = run(r, [syn(), seg(ISN + 1, b"abc", ts=10), seg(ISN + 4, b"def", ts=20)])
    assert chunks == [TcpChunk(A, 10, b"abc", False, False), TcpChunk(A, 20, b"def", False, False)]
    assert r.stats["streams"] == 1 and not r.stats["streams_midway"]


def test_out_of_order_segments_wait_for_the_hole_and_take_the_completing_time():
    r = TcpReassembler()
    chunks = run(r, [syn(), seg(ISN + 4, b"def", ts=10), seg(ISN + 7, b"ghi", ts=15),
                     seg(ISN + 1, b"abc", ts=20)])
    assert chunks == [TcpChunk(A, 20, b"abcdefghi", False, False)]
    assert r.stats["out_of_order"] == 2 and r.held_total == 0


def test_retransmissions_are_dropped_and_overlaps_trimmed():
    r = TcpReassembler()
    chunks = run(r, [syn(), seg(ISN + 1, b"abcd"), seg(ISN + 1, b"abcd"),  # retransmission
                     seg(ISN + 3, b"cdef"),  # overlaps 2 bytes already delivered
                     seg(ISN + 10, b"jk"), seg(ISN + 9, b"ijkl"),  # held, then covered
                     seg(ISN + 7, b"gh")])
    assert data_of(chunks) == b"abcdefghijkl"
    assert r.stats["retransmitted"] >= 2 and r.stats["overlaps_trimmed"] >= 1


def test_a_longer_copy_of_a_held_segment_replaces_it():
    r = TcpReassembler()
    chunks = run(r, [syn(), seg(ISN + 3, b"c"), seg(ISN + 3, b"cde"), seg(ISN + 1, b"ab")])
    assert data_of(chunks) == b"abcde"


def test_syn_sets_the_initial_sequence_number_and_a_retransmitted_syn_is_ignored():
    r = TcpReassembler()
    chunks = run(r, [syn(), seg(ISN + 1, b"ab"), syn(), seg(ISN + 3, b"cd")])
    assert data_of(chunks) == b"abcd" and r.stats["streams"] == 1


def test_a_stream_picked_up_midway_starts_at_its_first_segment_after_a_gap_flag():
    r = TcpReassembler()
    chunks = run(r, [seg(5000, b"middle"), seg(5006, b"more")])
    assert [(c.data, c.gap) for c in chunks] == [(b"middle", True), (b"more", False)]
    assert r.stats["streams_midway"] == 1 and not r.stats["gaps"]


def test_bare_acks_of_unknown_streams_open_nothing():
    r = TcpReassembler()
    assert run(r, [seg(5000, flags=ACK), seg(5000, flags=RST), seg(5000, flags=FIN | ACK)]) == []
    assert len(r) == 0


def test_fin_ends_the_stream_once_its_data_is_in_and_late_copies_are_dropped():
    r = TcpReassembler()
    chunks = run(r, [syn(), seg(ISN + 4, b"def", flags=FIN | ACK, ts=5),
                     seg(ISN + 1, b"abc", ts=6)])
    assert chunks == [TcpChunk(A, 6, b"abcdef", False, False), TcpChunk(A, 6, b"", False, True)]
    assert len(r) == 0
    # A retransmission after the end opens no new stream.
    assert run(r, [seg(ISN + 1, b"abc", ts=7), seg(ISN + 7, flags=FIN | ACK, ts=8)]) == []
    assert len(r) == 0 and r.stats["streams"] == 1


def test_rst_ends_the_stream_delivering_held_data_after_the_hole():
    r = TcpReassembler()
    chunks = run(r, [syn(), seg(ISN + 1, b"ab"), seg(ISN + 10, b"zz"), seg(ISN + 3, flags=RST)])
    assert [(c.data, c.gap, c.end) for c in chunks] == [
        (b"ab", False, False), (b"zz", True, False), (b"", False, True)]
    assert r.stats["gaps"] == 1 and r.stats["gap_bytes"] == 7


def test_held_data_past_its_bound_skips_the_hole():
    r = TcpReassembler(max_held_bytes=10)
    chunks = run(r, [syn(), seg(ISN + 1, b"a"), seg(ISN + 3, b"cdefgh"), seg(ISN + 9, b"ijklm")])
    assert [(c.data, c.gap) for c in chunks] == [(b"a", False), (b"cdefghijklm", True)]
    assert r.stats["held_overflow"] == 1 and r.stats["gap_bytes"] == 1
    assert r.held_total == 0
    # The missing byte arriving late is a retransmission now.
    assert run(r, [seg(ISN + 2, b"b")]) == []


def test_held_segment_count_and_total_bytes_are_bounded_too():
    r = TcpReassembler(max_held_segments=3, max_held_total=1 << 20)
    chunks = run(r, [syn()] + [seg(ISN + 2 + 2 * i, b"x") for i in range(4)])
    assert [c.gap for c in chunks] == [True] * 4 and r.held_total == 0
    r = TcpReassembler(max_held_total=5)
    chunks = run(r, [syn(), syn(key=C), seg(ISN + 2, b"abc"), seg(ISN + 2, b"def", key=C)])
    assert r.held_total <= 5 and [c.data for c in chunks] == [b"def"]


def test_a_hole_waiting_past_the_gap_timeout_is_skipped_on_capture_time():
    r = TcpReassembler(gap_timeout_ns=1000)
    chunks = run(r, [syn(ts=0), seg(ISN + 5, b"late", ts=100), syn(key=C, ts=500),
                     seg(ISN + 1, b"other", key=C, ts=5 * 10**9)])
    # The sweep on the other stream's packet delivers A's held data first.
    assert [(c.key, c.data, c.gap) for c in chunks] == [(A, b"late", True), (C, b"other", False)]


def test_the_least_recently_used_stream_is_evicted():
    r = TcpReassembler(max_streams=2)
    chunks = run(r, [syn(A), syn(B), seg(ISN + 1, b"a", key=A), syn(C)])
    assert [(c.key, c.end) for c in chunks] == [(A, False), (B, True)]
    assert r.stats["streams_evicted"] == 1 and len(r) == 2


def test_idle_streams_are_closed_on_capture_time():
    r = TcpReassembler(idle_timeout_ns=10**9)
    chunks = run(r, [syn(A, ts=0), syn(B, ts=5 * 10**8), syn(C, ts=3 * 10**9)])
    assert [(c.key, c.end) for c in chunks] == [(A, True), (B, True)]
    assert r.stats["streams_idle"] == 2 and len(r) == 1


def test_sequence_numbers_wrap_around():
    isn = SEQ_MOD - 3
    r = TcpReassembler()
    chunks = run(r, [syn(isn=isn), seg(isn + 4, b"def"), seg(isn + 1, b"abc"),
                     seg(isn + 7, b"ghi")])
    assert data_of(chunks) == b"abcdefghi" and r.held_total == 0


def test_a_far_jump_restarts_the_stream_after_a_gap():
    r = TcpReassembler()
    chunks = run(r, [syn(), seg(ISN + 1, b"a"), seg(ISN + 2 + MAX_JUMP, b"far"),
                     seg(ISN + 5 + MAX_JUMP, b"on")])
    assert [(c.data, c.gap) for c in chunks] == [(b"a", False), (b"far", True), (b"on", False)]


def test_a_new_connection_on_the_same_ports_ends_the_old_stream():
    r = TcpReassembler()
    chunks = run(r, [syn(), seg(ISN + 1, b"old"), syn(isn=77), seg(78, b"new")])
    assert [(c.data, c.end) for c in chunks] == [(b"old", False), (b"", True), (b"new", False)]
    assert r.stats["streams"] == 2


def test_finish_delivers_held_data_after_the_holes_and_ends_every_stream():
    r = TcpReassembler()
    run(r, [syn(A), seg(ISN + 3, b"c"), syn(B), seg(ISN + 1, b"b", key=B)])
    chunks = r.finish()
    assert [(c.key, c.data, c.gap, c.end) for c in chunks] == [
        (A, b"c", True, False), (A, b"", False, True), (B, b"", False, True)]
    assert len(r) == 0 and r.held_total == 0


def test_directions_are_separate_streams():
    r = TcpReassembler()
    chunks = run(r, [syn(A), syn(B), seg(ISN + 1, b"ping", key=A), seg(ISN + 1, b"pong", key=B)])
    assert (data_of(chunks, A), data_of(chunks, B)) == (b"ping", b"pong")
