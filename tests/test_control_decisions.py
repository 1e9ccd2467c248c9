"""The decision socket, for real: a Unix datagram socket, datagrams sent to it, the
recording of what it received, and the replay of that recording."""

import ipaddress
import json
import os
import socket
import stat
import struct
import time
from collections import Counter

import pytest

from siptrace.control.decisions import (DecisionRecorder, DecisionSocket,
                                        read_recorded_decisions, replay_tracer)
from siptrace.correlate import Correlator, RecordedEvent, correlate_offline
from siptrace.correlate.decision import parse_decision
from siptrace.errors import ConfigError
from siptrace.replay import replay_files
from hostile import hostile_decisions, nested
from test_correlate import (FLAGGED, PROXY_ADDRESSES, TRACE_FLAG, answered_call)

DECISION = {"callid": "a84b4c76e66710@pc33", "cseq": "1 INVITE", "branch": "z9hG4bK776",
            "kind": "request", "flags": 8, "avps": {"6843": ["sip:alice@example.com"]},
            "trace": True}
WAIT_S = 10.0  # an upper bound for a datagram to cross loopback, never a measurement


def send(path, *datagrams):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        for datagram in datagrams:
            client.sendto(datagram, str(path))


def wait_for(predicate):
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, "the reader thread did not get there"
        time.sleep(0.005)


@pytest.fixture
def sock_path(tmp_path):
    return tmp_path / "run" / "siptrace" / "d.sock"


def test_socket_is_created_with_its_directory_and_modes(sock_path):
    with DecisionSocket(sock_path):
        mode = os.stat(sock_path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
        assert stat.S_IMODE(os.stat(sock_path.parent).st_mode) == 0o755
    assert not sock_path.exists()  # removed at close


def test_decisions_are_queued_with_their_receive_time(sock_path):
    with DecisionSocket(sock_path) as decisions:
        before = time.time_ns()
        send(sock_path, json.dumps(DECISION).encode(), json.dumps(dict(DECISION, cseq="2 BYE"))
             .encode())
        wait_for(lambda: len(decisions) == 2)
        after = time.time_ns()
        received = decisions.drain()
    assert [d.cseq for _, d in received] == ["1 INVITE", "2 BYE"]
    assert all(before <= rt <= after for rt, _ in received)
    assert received[0][1] == parse_decision(json.dumps(DECISION).encode())
    assert decisions.stats["datagrams"] == decisions.stats["decisions"] == 2


def test_garbage_and_oversize_datagrams_are_counted_and_dropped(sock_path):
    with DecisionSocket(sock_path) as decisions:
        send(sock_path, b"\x00\xff garbage", b"{}", b"[1]",
             json.dumps(dict(DECISION, pad="x" * 70_000)).encode(),
             json.dumps(DECISION).encode())
        wait_for(lambda: decisions.stats["datagrams"] == 5)
        assert [d.callid for _, d in decisions.drain()] == [DECISION["callid"]]
    assert decisions.stats["malformed"] == 4 and decisions.stats["oversize"] == 1
    assert list(decisions.recent_errors) == ["not JSON", "missing field callid",
                                             "not a JSON object", "datagram over 64 KB"]


def test_queue_is_bounded(sock_path):
    with DecisionSocket(sock_path, max_queue=3) as decisions:
        send(sock_path, *[json.dumps(dict(DECISION, cseq=f"{i} INVITE")).encode()
                          for i in range(5)])
        wait_for(lambda: decisions.stats["datagrams"] == 5)
        assert len(decisions.drain()) == 3
    assert decisions.stats["dropped"] == 2


def test_stale_socket_file_is_replaced(sock_path):
    sock_path.parent.mkdir(parents=True)
    crashed = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    crashed.bind(str(sock_path))
    crashed.close()  # the file stays behind, nobody reads it
    with DecisionSocket(sock_path) as decisions:
        send(sock_path, json.dumps(DECISION).encode())
        wait_for(lambda: len(decisions) == 1)


def test_a_file_that_is_not_a_socket_is_never_removed(sock_path):
    sock_path.parent.mkdir(parents=True)
    sock_path.write_text("precious")
    with pytest.raises(ConfigError) as info:
        DecisionSocket(sock_path).start()
    assert str(info.value) == \
        f"decision_socket: {sock_path} exists and is not a socket; not removing it"
    assert sock_path.read_text() == "precious"


def test_a_socket_in_use_is_not_taken_over(sock_path):
    with DecisionSocket(sock_path):
        with pytest.raises(ConfigError, match="is in use by another process"):
            DecisionSocket(sock_path).start()
        assert stat.S_ISSOCK(os.stat(sock_path).st_mode)


def test_unusable_directory_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="decision_socket: cannot create"):
        DecisionSocket(blocker / "sub" / "d.sock").start()


# -- recording and replay ------------------------------------------------------------------

def test_recording_round_trip(tmp_path):
    path = tmp_path / "decisions.jsonl"
    recorder = DecisionRecorder(path)
    decision = parse_decision(json.dumps(dict(DECISION, ts=1700000000.5)).encode())
    recorder.record_trace_on(1_700_000_000_000_000_001, True)
    recorder.record_decision(1_700_000_000_123_456_789, decision)
    recorder.record_trace_on(1_700_000_001_000_000_000, False)
    recorder.close()
    first = json.loads(path.read_text().splitlines()[1])
    assert first["decision"]["callid"] == DECISION["callid"]
    stats = Counter()
    assert list(read_recorded_decisions(path, stats)) == [
        RecordedEvent(1_700_000_000_000_000_001, trace_on=True),
        RecordedEvent(1_700_000_000_123_456_789, decision=decision),
        RecordedEvent(1_700_000_001_000_000_000, trace_on=False)]
    assert stats == {"decisions": 1, "switches": 2}


def test_bad_recorded_lines_are_counted_and_skipped(tmp_path):
    path = tmp_path / "decisions.jsonl"
    good = json.dumps({"rt": 1700000000.5, "decision": DECISION})
    path.write_text("\n".join([
        "not json", "[]", '{"decision": {}}', '{"rt": "x", "trace_on": true}',
        '{"rt": 1e999999999, "trace_on": true}', '{"rt": NaN, "trace_on": true}',
        '{"rt": 1700000000, "decision": {"callid": 1}}', '{"rt": 1700000000}',
        "", good]) + "\n")
    stats = Counter()
    events = list(read_recorded_decisions(path, stats))
    assert [e.rt_ns for e in events] == [1_700_000_000_500_000_000]
    assert stats["bad_lines"] == 8


def test_hostile_recorded_lines_are_counted_and_skipped_at_any_stack_depth(tmp_path):
    path = tmp_path / "decisions.jsonl"
    bad = [line.decode() for line in hostile_decisions()] + [nested(500)]
    path.write_text("".join(f'{{"rt": 1700000000, "decision": {d}}}\n' for d in bad)
                    + "[" * 500 + "]" * 500 + "\n" + '{"rt": NaN, "trace_on": true}\n'
                    + '{"rt": 1700000000, "x": "' + "y" * (3 << 20) + '"}\n')  # 3 MB
    stats = Counter()

    def deep(depth):  # read from deep down a stack, as replay's callers are
        return deep(depth - 1) if depth else list(read_recorded_decisions(path, stats))

    assert deep(400) == []
    assert stats["bad_lines"] == len(bad) + 3


def test_queue_is_bounded_in_bytes_too(sock_path):
    big = json.dumps(dict(DECISION, avps={"7000": ["v" * 1000] * 50})).encode()
    with DecisionSocket(sock_path, max_queue_bytes=200_000) as decisions:
        send(sock_path, *[big] * 5)
        wait_for(lambda: decisions.stats["datagrams"] == 5)
        assert len(decisions.drain()) == 3
        send(sock_path, big)  # what was taken makes room again
        wait_for(lambda: decisions.stats["datagrams"] == 6)
        assert len(decisions.drain()) == 1
    assert decisions.stats["dropped"] == 2


def test_missing_recording_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="decisions: cannot read .*: No such file"):
        read_recorded_decisions(tmp_path / "missing.jsonl")


def test_replaying_the_recording_gives_the_rows_live_gave(sock_path, tmp_path):
    """Live: decisions through the real socket, applied at their receive time while
    the packets arrive; then the recording replayed against the same packets."""
    flow = answered_call()
    record = tmp_path / "decisions.jsonl"
    recorder = DecisionRecorder(record)
    live = Correlator(PROXY_ADDRESSES, trace_flag=TRACE_FLAG)
    out = []
    received = {"INVITE in": {"flags": FLAGGED, "users": ("u1", "u2")}, "180 in":
                {"trace": True}, "200 in": {}, "100 in": {}, "ACK in": {"flags": FLAGGED}}
    clock = iter(range(10**9))  # receive times: each wire's capture time plus 1 ms
    with DecisionSocket(sock_path, recorder=recorder) as decisions:
        for name, wire in flow.wires.items():
            out += live.on_packet(wire, wire.ts_ns)
            if name in received:
                decisions.clock = lambda ts=wire.ts_ns: ts + 1_000_000 + next(clock)
                send(sock_path, json.dumps(flow.decision(name, **received[name])
                                           .to_object()).encode())
                wait_for(lambda: len(decisions) == 1)
                for rt, decision in decisions.drain():
                    out += live.on_decision(decision, rt)
    out += live.finish()
    recorder.close()
    events = read_recorded_decisions(record)
    replayed = list(correlate_offline(Correlator(PROXY_ADDRESSES, trace_flag=TRACE_FLAG),
                                      flow.wires.values(), events))
    as_rows = lambda traced: sorted((flow.names[id(t.wire)], t.direction, t.traced_users)
                                    for t in traced)
    assert len(out) == 9 and as_rows(replayed) == as_rows(out)


def write_pcap(path, wires):
    """A classic pcap (Ethernet, IPv4, UDP) holding the wire messages, in order."""
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for wire in wires:
            payload = wire.sip.raw
            udp = struct.pack("!HHHH", wire.sport, wire.dport, 8 + len(payload), 0) + payload
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                             ipaddress.ip_address(wire.src).packed,
                             ipaddress.ip_address(wire.dst).packed)
            frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp
            seconds, ns = divmod(wire.ts_ns, 10**9)
            out.write(struct.pack("<IIII", seconds, ns // 1000, len(frame), len(frame)))
            out.write(frame)


class RowSink:
    def __init__(self):
        self.rows = []

    def put(self, rows):
        self.rows += rows


def test_replay_with_a_recording_stores_the_rows_of_the_traced_messages(tmp_path):
    flow = answered_call()
    capture = tmp_path / "call.pcap"
    write_pcap(capture, flow.wires.values())
    record = tmp_path / "decisions.jsonl"
    recorder = DecisionRecorder(record)
    recorder.record_trace_on(flow.wires["INVITE in"].ts_ns - 10**9, True)
    users = ("sip:alice@example.com", "sip:carol@example.com")
    for name, kwargs in {"INVITE in": {"flags": FLAGGED, "users": users}, "100 in": {},
                         "180 in": {}, "200 in": {}, "ACK in": {}}.items():
        recorder.record_decision(flow.wires[name].ts_ns + 500_000,
                                 flow.decision(name, **kwargs))
    recorder.close()
    tracer = replay_tracer(record, PROXY_ADDRESSES, trace_flag=TRACE_FLAG, trace_on=False)
    sink = RowSink()
    summary = replay_files([capture], tracer=tracer, row_sink=sink)
    assert summary.sip_messages == 10 and summary.traced_messages == 7
    assert [(r.method, r.status, r.direction, r.traced_user) for r in sink.rows[:3]] == [
        ("INVITE", "100", "out", ""), ("INVITE", "100", "out", users[0]),
        ("INVITE", "100", "out", users[1])]
    assert len(sink.rows) == 21  # 7 traced messages, three rows each
    assert [r.fromip for r in sink.rows[3:6]] == ["udp:10.0.0.1:5060"] * 3
    assert tracer.stats["matched"] == 5 and tracer.recording_stats["decisions"] == 5
