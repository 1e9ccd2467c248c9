"""Stored messages written as pcap and pcapng: Wireshark reads every one back as stored.

tshark is the reader: every SIP message it finds is compared with its stored row, the
bytes, the time to the microsecond, the addresses, ports and transport; its expert
analysis (checksums verified, TCP sequence analysis on) must find nothing to say. sngrep
must open the files too.
"""

import ast
import json
import subprocess
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from io import BytesIO
from pathlib import Path

import pytest

from conftest import REPO, require_tool
from siptrace.view.model import StoredMessage
from siptrace.view.pcapout import TCP_MSS, CaptureWriter, write_capture

FORMATS = ("pcap", "pcapng")
START = datetime(2024, 5, 1, 12, 0, 0, 123457)
# The stored text of tls/wss rows is decrypted and of ws rows de-framed: tshark is told.
DECODE_AS = ("tcp.port==5061,sip", "tcp.port==8080,sip", "tcp.port==7443,sip")
TSHARK_CHECKS = ("ip.check_checksum:TRUE", "udp.check_checksum:TRUE",
                 "tcp.check_checksum:TRUE", "sctp.checksum:CRC-32C",
                 "tcp.analyze_sequence_numbers:TRUE", "tcp.desegment_tcp_streams:TRUE")
EXPERT_FINDING = '_ws.expert.severity >= "Note" || tcp.analysis.flags || _ws.malformed'
TCP_LIKE = {"tcp", "tls", "ws", "wss"}
SDP = (b"v=0\r\no=alice 2890844526 2890844526 IN IP4 10.0.0.1\r\ns=-\r\n"
       b"c=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def sip(first_line: str, call_id: str, cseq: str, transport: str, body: bytes = b"",
        content_type: str = "application/sdp") -> bytes:
    head = [first_line, f"Via: SIP/2.0/{transport.upper()} 10.0.0.1:5060;branch=z9hG4bK{cseq[:1]}",
            "Max-Forwards: 70", "From: <sip:alice@example.com>;tag=1928301774",
            "To: <sip:bob@example.com>;tag=a6c85cf", f"Call-ID: {call_id}", f"CSeq: {cseq}",
            "Contact: <sip:alice@10.0.0.1:5060>"]
    if body:
        head.append(f"Content-Type: {content_type}")
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def row(when: datetime, fromip: str, toip: str, msg: bytes) -> StoredMessage:
    first = msg.split(b"\r\n", 1)[0].decode()
    method, status = ("", first.split()[1]) if first.startswith("SIP/") else (first.split()[0], "")
    return StoredMessage(0, when, "", method, status, fromip, toip, "", "", "", msg)


def call(transport: str, caller: str, callee: str, call_id: str, start: datetime) -> list:
    """INVITE/100/180/200/ACK, then BYE/200 from the callee: both directions of a connection."""
    a, b = f"{transport}:{caller}", f"{transport}:{callee}"
    steps = [(a, b, "INVITE sip:bob@example.com SIP/2.0", "1 INVITE", SDP),
             (b, a, "SIP/2.0 100 Trying", "1 INVITE", b""),
             (b, a, "SIP/2.0 180 Ringing", "1 INVITE", b""),
             (b, a, "SIP/2.0 200 OK", "1 INVITE", SDP),
             (a, b, "ACK sip:bob@example.com SIP/2.0", "1 ACK", b""),
             (b, a, "BYE sip:alice@example.com SIP/2.0", "2 BYE", b""),
             (a, b, "SIP/2.0 200 OK", "2 BYE", b"")]
    return [row(start + timedelta(milliseconds=37 * n, microseconds=n), src, dst,
                sip(line, call_id, cseq, transport, body))
            for n, (src, dst, line, cseq, body) in enumerate(steps)]


def big_message(start: datetime) -> list:
    """A 100 KB MESSAGE on the TCP call's connection, and its reply."""
    body = bytes(range(32, 127)) * 1100
    request = sip("MESSAGE sip:bob@example.com SIP/2.0", "big@example.com", "3 MESSAGE", "tcp",
                  body, "text/plain")
    reply = sip("SIP/2.0 200 OK", "big@example.com", "3 MESSAGE", "tcp")
    caller, callee = "tcp:10.0.0.1:40000", "tcp:10.0.0.2:5060"
    return [row(start, caller, callee, request),
            row(start + timedelta(microseconds=900), callee, caller, reply)]


def everyday_rows() -> list:
    """UDP and TCP over IPv4 and IPv6, tls and ws, every message small.

    What sngrep 1.6 reads too: it has no SCTP, and drops messages over about 10 KB.
    """
    calls = [("udp", "10.0.0.1:5060", "10.0.0.2:5060"),
             ("tcp", "10.0.0.1:40000", "10.0.0.2:5060"),
             ("udp", "[2001:db8::1]:5060", "[2001:db8::2]:5060"),
             ("tcp", "[2001:db8::1]:40002", "[2001:db8::2]:5060"),
             ("tls", "10.0.0.1:40003", "10.0.0.2:5061"),
             ("ws", "10.0.0.1:40004", "10.0.0.2:8080")]
    rows = []
    for n, (transport, caller, callee) in enumerate(calls):
        start = START + timedelta(seconds=n / 10)
        rows += call(transport, caller, callee, f"call{n}@example.com", start)
    return sorted(rows, key=lambda r: r.date)  # calls interleaved, as an export is ordered


def all_rows() -> list:
    rows = everyday_rows()
    second = timedelta(seconds=1)
    rows += call("wss", "10.0.0.1:40005", "10.0.0.2:7443", "wss@example.com", START + second)
    rows += call("sctp", "10.0.0.1:5060", "10.0.0.2:5060", "sctp@example.com", START + 2 * second)
    return rows + big_message(START + timedelta(seconds=3))


def unwritable_rows() -> list:
    invite = sip("INVITE sip:bob@example.com SIP/2.0", "x@example.com", "1 INVITE", "udp")
    huge = sip("MESSAGE sip:bob@example.com SIP/2.0", "huge@example.com", "1 MESSAGE", "udp",
               b"x" * 70_000, "text/plain")
    return [row(START, "udp:not-an-address:5060", "udp:10.0.0.2:5060", invite),
            row(START, "udp:10.0.0.1:5060", "udp:10.0.0.2:5060", huge),
            row(datetime(1969, 12, 31, 23, 59), "udp:10.0.0.1:5060", "udp:10.0.0.2:5060", invite),
            row(START, "udp:10.0.0.1:5060", "udp:[2001:db8::2]:5060", invite)]


def as_stored(message: StoredMessage) -> tuple:
    """What tshark must show for a message: time (µs), transport layer, addresses, bytes."""
    source, destination = message.source, message.destination
    layer = "tcp" if source.transport in TCP_LIKE else source.transport
    time_us = (message.date - datetime(1970, 1, 1)) // timedelta(microseconds=1)
    return (time_us, layer, source.ip, source.port, destination.ip, destination.port, message.msg)


def tshark(path: Path, *args: str) -> str:
    command = [require_tool("tshark"), "-n", "-r", str(path)]
    for decode in DECODE_AS:
        command += ["-d", decode]
    for pref in TSHARK_CHECKS:
        command += ["-o", pref]
    done = subprocess.run(command + list(args), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def wireshark_messages(path: Path) -> list[tuple]:
    """Every SIP message tshark finds, as ``as_stored`` gives it, in frame order."""
    packets = json.loads(tshark(path, "-Y", "sip", "-T", "json", "-x"))
    found = []
    for packet in packets:
        layers = packet["_source"]["layers"]
        time_us = int(Decimal(layers["frame"]["frame.time_epoch"]) * 1_000_000)
        ip_name = "ip" if "ip" in layers else "ipv6"
        ip = layers[ip_name]
        layer = next(name for name in ("udp", "tcp", "sctp") if name in layers)
        ports = layers[layer]
        raw = layers["sip_raw"]
        assert isinstance(raw[0], str), "one SIP message per frame"
        found.append((time_us, layer, ip[f"{ip_name}.src"], int(ports[f"{layer}.srcport"]),
                      ip[f"{ip_name}.dst"], int(ports[f"{layer}.dstport"]), bytes.fromhex(raw[0])))
    return found


def expert_findings(path: Path) -> str:
    """Frames on which Wireshark notes, warns or errs (checksums, TCP analysis, malformed)."""
    return tshark(path, "-Y", EXPERT_FINDING)


def write_file(tmp_path: Path, rows: list, fmt: str, **options) -> tuple[Path, CaptureWriter]:
    out = BytesIO()
    writer = CaptureWriter(out, fmt, **options)
    for message in rows:
        writer.write(message)
    path = tmp_path / f"export.{fmt}"
    path.write_bytes(out.getvalue())
    return path, writer


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_stored_message_reads_back_as_stored(tmp_path, fmt):
    rows = all_rows()
    path, writer = write_file(tmp_path, rows + unwritable_rows(), fmt)

    assert writer.stats["messages"] == len(rows)
    assert wireshark_messages(path) == [as_stored(message) for message in rows]


def test_rows_that_cannot_be_packets_are_skipped_and_counted():
    rows = all_rows()
    stats = write_capture(BytesIO(), rows + unwritable_rows())

    handshakes = 5  # tcp over IPv4 (the 100 KB message's too) and IPv6, tls, ws, wss
    assert stats == Counter({"messages": len(rows),
                             "packets": len(rows) + 3 * handshakes + 1,  # 100 KB: 2 segments
                             "no address": 1, "udp too large": 1, "bad time": 1,
                             "mixed IPv4/IPv6": 1})


@pytest.mark.parametrize("fmt", FORMATS)
def test_tcp_streams_and_checksums_leave_wireshark_nothing_to_say(tmp_path, fmt):
    rows = all_rows()
    path, _ = write_file(tmp_path, rows, fmt)

    assert expert_findings(path) == ""
    openings = {}
    for message in rows:
        if message.source.transport in TCP_LIKE:
            pair = frozenset({message.source[1:], message.destination[1:]})
            openings.setdefault(pair, as_stored(message)[:4])
    syns = tshark(path, "-Y", "tcp.flags.syn == 1 && tcp.flags.ack == 0", "-T", "fields",
                  "-e", "frame.time_epoch", "-e", "ip.src", "-e", "ipv6.src", "-e", "tcp.srcport")
    seen = [line.split("\t") for line in syns.splitlines()]
    assert [(int(Decimal(t) * 1_000_000), "tcp", v4 or v6, int(port)) for t, v4, v6, port in seen] \
        == list(openings.values())


def test_a_damaged_packet_is_what_the_expert_check_finds(tmp_path):
    path, _ = write_file(tmp_path, everyday_rows(), "pcap")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last message's last byte: its checksum no longer matches
    path.write_bytes(data)

    assert len(expert_findings(path).splitlines()) == 1


def test_a_tcp_message_over_the_mss_is_split_into_segments(tmp_path):
    rows = big_message(START)
    path, writer = write_file(tmp_path, rows, "pcap")

    assert len(rows[0].msg) > TCP_MSS
    assert writer.stats["packets"] == 3 + 2 + 1  # handshake, the two segments, the reply
    lengths = tshark(path, "-T", "fields", "-e", "tcp.len").split()
    assert [int(n) for n in lengths] == [0, 0, 0, TCP_MSS, len(rows[0].msg) - TCP_MSS,
                                         len(rows[1].msg)]
    assert wireshark_messages(path) == [as_stored(message) for message in rows]
    assert expert_findings(path) == ""


def test_the_connection_table_is_bounded_and_an_evicted_connection_reopens(tmp_path):
    rows = []
    for n, port in enumerate([40001, 40002, 40003, 40001]):  # 40001 is evicted, then back
        msg = sip("OPTIONS sip:bob@example.com SIP/2.0", f"o{n}@example.com", "1 OPTIONS", "tcp")
        when = START + timedelta(seconds=n)
        rows.append(row(when, f"tcp:10.0.0.1:{port}", "tcp:10.0.0.2:5060", msg))
    out = BytesIO()
    writer = CaptureWriter(out, "pcap", max_flows=2)

    assert [writer.write(message) for message in rows] == [4, 4, 4, 4]
    path = tmp_path / "evicted.pcap"
    path.write_bytes(out.getvalue())
    assert wireshark_messages(path) == [as_stored(message) for message in rows]
    reopened = tshark(path, "-Y", "tcp.analysis.reused_ports", "-T", "fields", "-e", "frame.number")
    assert reopened.split() == ["13"]  # the new SYN: Wireshark's one note
    assert [line.split()[0] for line in expert_findings(path).splitlines()] == ["13"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_sngrep_opens_the_capture(tmp_path, fmt):
    sngrep = require_tool("sngrep")
    rows = everyday_rows()
    path, _ = write_file(tmp_path, rows, fmt)
    saved = tmp_path / "sngrep.pcap"

    done = subprocess.run([sngrep, "-I", str(path), "-N", "-q", "-O", str(saved)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(wireshark_messages(saved)) == sorted(as_stored(message) for message in rows)


def test_an_aware_time_is_written_as_its_utc_instant():
    naive, aware = BytesIO(), BytesIO()
    message = call("udp", "10.0.0.1:5060", "10.0.0.2:5060", "tz@example.com", START)[0]
    write_capture(naive, [message])
    message.date = START.replace(tzinfo=timezone.utc).astimezone(timezone(timedelta(hours=2)))
    write_capture(aware, [message])

    assert aware.getvalue() == naive.getvalue()


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="pcap or pcapng"):
        CaptureWriter(BytesIO(), "erf")


def test_the_writer_does_no_io():
    source = (REPO / "siptrace" / "view" / "pcapout.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported <= {"struct", "collections", "datetime", "ipaddress", "typing",
                        "siptrace.view.model"}
    assert "open(" not in source
