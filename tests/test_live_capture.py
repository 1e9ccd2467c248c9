"""Live capture on loopback: real packets, the kernel filter, the decoding core behind it.

Each test sends from and to its own 127.0.0.2x addresses, so traffic of other tests
running on this host never matches the filter.
"""

import os
import socket
import threading
import time

import pytest

from conftest import missing
from siptrace.capture.live import (ARPHRD_ETHER, ARPHRD_LOOPBACK, DLT_RAW, LINKTYPE_ETHERNET,
                                   LINKTYPE_RAW, PACKET_OUTGOING, SKF_AD_HATYPE, SKF_AD_OFF,
                                   SKF_AD_PKTTYPE, WHOLE_PACKET, LiveCapture, build_filter,
                                   compile_program)
from siptrace.errors import ConfigError
from siptrace.extract import SipExtractor

PROXY = "127.0.0.21"
PEER = "127.0.0.22"
PORT = 15160
WAIT = 2.0  # seconds a read waits for packets that are already on their way


@pytest.fixture(autouse=True)
def _needs_raw_sockets():
    if os.geteuid() != 0:
        missing("live capture needs root (CAP_NET_RAW)")


def options(call_id: str, body: bytes = b"") -> bytes:
    return (f"OPTIONS sip:{PROXY}:{PORT} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {PEER}:5099;branch=z9hG4bK{call_id}\r\n"
            f"From: <sip:a@{PEER}>;tag=1\r\nTo: <sip:b@{PROXY}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def read_until(capture: LiveCapture, count: int) -> list:
    """Records until ``count`` arrived or reads come back empty."""
    records = []
    while len(records) < count:
        batch = capture.read(WAIT)
        if not batch:
            break
        records += batch
    records += capture.read(0.2)  # anything extra (duplicates) shows up too
    return records


def sip_messages(records) -> list:
    extractor = SipExtractor()
    wires = [w for record in records for w in extractor.feed(*record)]
    return wires + extractor.finish()


@pytest.fixture
def sockets():
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind((PROXY, PORT))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind((PEER, 0))
    yield sender, receiver
    sender.close()
    receiver.close()


def test_each_datagram_once_and_retransmissions_kept(sockets):
    sender, _ = sockets
    with LiveCapture(["lo"], build_filter([(PROXY, PORT)])) as capture:
        sender.sendto(options("once"), (PROXY, PORT))
        sender.sendto(options("twice"), (PROXY, PORT))
        sender.sendto(options("twice"), (PROXY, PORT))  # a retransmission: kept
        records = read_until(capture, 3)
        stats = capture.stats
        capture.read_kernel_stats()
    assert [r[1] for r in records] == [LINKTYPE_ETHERNET] * 3
    assert [w.sip.call_id for w in sip_messages(records)] == ["once", "twice", "twice"]
    assert stats["kernel_drops"] == 0
    assert stats["kernel_packets"] == 3  # the outgoing copies never left the kernel
    assert records[0][0] <= records[1][0] <= records[2][0]  # capture time, ns


def test_filter_keeps_only_the_proxy_and_never_the_mirror(sockets):
    sender, _ = sockets
    mirror = ("127.0.0.23", 15161)
    flt = build_filter([(PROXY, PORT)], exclude=[mirror])
    with LiveCapture(["lo"], flt) as capture:
        sender.sendto(options("to-mirror"), mirror)
        sender.sendto(options("elsewhere"), ("127.0.0.24", PORT))
        sender.sendto(options("to-proxy"), (PROXY, PORT))
        records = read_until(capture, 1)
    assert [w.sip.call_id for w in sip_messages(records)] == ["to-proxy"]


def test_any_interface_gives_ip_packets_once(sockets):
    sender, _ = sockets
    with LiveCapture(["any"], build_filter([(PROXY, PORT)])) as capture:
        sender.sendto(options("via-any"), (PROXY, PORT))
        records = read_until(capture, 1)
    assert [r[1] for r in records] == [LINKTYPE_RAW]
    wires = sip_messages(records)
    assert [(w.src, w.dst, w.dport) for w in wires] == [(PEER, PROXY, PORT)]


def test_whole_large_datagram(sockets):
    """60 KB in one datagram: no snap length cuts it."""
    sender, _ = sockets
    body = b"x" * 60000
    with LiveCapture(["lo"], build_filter([(PROXY, PORT)])) as capture:
        sender.sendto(options("large", body), (PROXY, PORT))
        records = read_until(capture, 1)
    [wire] = sip_messages(records)
    assert wire.sip.raw == options("large", body)
    assert capture.stats["truncated"] == 0


def send_frames(frames: list[bytes]) -> None:
    """Puts Ethernet frames on lo as they are (the kernel delivers them back in)."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
        raw.bind(("lo", 0))
        for frame in frames:
            raw.send(frame)


@pytest.mark.parametrize("family", [4, 6])
def test_ip_fragments_pass_the_filter_and_reassemble(family):
    """Non-first fragments carry no UDP port; the filter must still let them in."""
    from scapy.layers.inet import IP, UDP, fragment
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
    from scapy.layers.l2 import Ether

    message = options(f"frag{family}", b"v=0\r\n" + b"a=x\r\n" * 600)
    if family == 4:
        packet = IP(src=PEER, dst=PROXY) / UDP(sport=5099, dport=PORT) / message
        pieces = fragment(packet, fragsize=1200)
        proxy = PROXY
    else:
        proxy = "::1"
        packet = IPv6(src="::1", dst=proxy) / IPv6ExtHdrFragment() / \
            UDP(sport=5099, dport=PORT) / message
        pieces = fragment6(packet, 1280)
    frames = [bytes(Ether(src="00:00:00:00:00:00", dst="00:00:00:00:00:00") / p)
              for p in pieces]
    assert len(frames) >= 3
    with LiveCapture(["lo"], build_filter([(proxy, PORT)])) as capture:
        send_frames(frames)
        records = read_until(capture, len(frames))
    assert len(records) == len(frames)
    [wire] = sip_messages(records)
    assert wire.sip.raw == message
    assert (wire.dst, wire.dport) == (proxy, PORT)


def test_tcp_stream_each_segment_once():
    """SIP over TCP, one message split over two segments: reassembled once."""
    message = options("tcp-call").replace(b"UDP", b"TCP")
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # last run's TIME_WAIT
        server.bind((PROXY, PORT))
        server.listen(1)
        with LiveCapture(["lo"], build_filter([(PROXY, PORT)])) as capture:
            with socket.create_connection((PROXY, PORT), source_address=(PEER, 0)) as client:
                conn, _ = server.accept()
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                client.sendall(message[:40])
                assert conn.recv(65536)
                client.sendall(message[40:])
                received = b""
                while len(received) < len(message) - 40:
                    received += conn.recv(65536)
                conn.close()
            records = read_until(capture, 8)
    wires = sip_messages(records)
    assert [(w.transport, w.sip.raw) for w in wires] == [("tcp", message)]


def test_kernel_drops_are_counted(sockets):
    """A tiny kernel buffer that nobody reads overflows; the drops are reported."""
    sender, _ = sockets
    with LiveCapture(["lo"], build_filter([(PROXY, PORT)]), buffer_bytes=4096) as capture:
        for i in range(200):
            sender.sendto(options(f"drop{i}"), (PROXY, PORT))
        # sendto() on lo queues the packet for the kernel's receive path, which may
        # run a little later on a busy machine: wait until all 200 went through it.
        deadline = time.monotonic() + WAIT
        packets, drops = capture.read_kernel_stats()
        while packets < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
            packets, drops = capture.read_kernel_stats()
        kept = len(read_until(capture, 1))
    assert drops > 0
    assert packets == 200
    assert kept == packets - drops


def test_records_stop_when_asked():
    stop = threading.Event()
    with LiveCapture(["lo"], build_filter([(PROXY, PORT)])) as capture:
        stop.set()
        assert list(capture.records(stop, poll_interval=0.01)) == []


def run_bpf(program, packet: bytes, pkttype: int = 0, hatype: int = ARPHRD_ETHER) -> int:
    """Classic BPF as the kernel runs it, for the instructions libpcap emits here:
    the number of bytes the socket keeps (0: dropped)."""
    ancillary = {(SKF_AD_OFF + SKF_AD_PKTTYPE) & 0xFFFFFFFF: pkttype,
                 (SKF_AD_OFF + SKF_AD_HATYPE) & 0xFFFFFFFF: hatype}
    a = x = pc = 0
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        kind, size, mode, op = code & 0x07, code & 0x18, code & 0xE0, code & 0xF0
        if kind == 0x06:  # RET k
            return k
        if kind == 0x01 and mode == 0xA0:  # LDX 4*(P[k] & 0xf)
            if k >= len(packet):
                return 0
            x = (packet[k] & 0x0F) * 4
        elif kind == 0x00 and k in ancillary and mode == 0x20:
            a = ancillary[k]
        elif kind == 0x00 and mode in (0x20, 0x40):  # LD P[k:n], P[x+k:n]
            start, length = k + (x if mode == 0x40 else 0), {0x00: 4, 0x08: 2, 0x10: 1}[size]
            if start + length > len(packet):
                return 0
            a = int.from_bytes(packet[start:start + length], "big")
        elif kind == 0x04 and op == 0x50:  # AND k
            a &= k
        elif kind == 0x05 and op == 0x00:  # JA
            pc += k
        elif kind == 0x05:
            taken = {0x10: a == k, 0x20: a > k, 0x30: a >= k, 0x40: a & k != 0}[op]
            pc += jt if taken else jf
        else:
            raise AssertionError(f"instruction {code:#04x} not covered by run_bpf")


def frames(linktype: int, *layers) -> bytes:
    from scapy.layers.l2 import Ether

    packet = layers[0]
    for layer in layers[1:]:
        packet = packet / layer
    ether = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")  # no ARP lookups
    return bytes(ether / packet if linktype == LINKTYPE_ETHERNET else packet)


@pytest.mark.parametrize("linktype", [LINKTYPE_ETHERNET, DLT_RAW])
def test_compiled_filters_keep_the_proxys_packets_whole_and_nothing_else(linktype):
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6

    mirror = ("127.0.0.1", 9060)
    flt = build_filter([(PROXY, PORT), (PROXY, 5080), ("::1", 5060), ("10.0.0.1", None)],
                       exclude=[mirror, ("::2", None)])
    program = compile_program(flt, linktype)
    udp = lambda src, dst, dport, v6=False: frames(  # noqa: E731
        linktype, (IPv6 if v6 else IP)(src=src, dst=dst), UDP(sport=5099, dport=dport))
    kept = [udp(PEER, PROXY, PORT), udp(PEER, PROXY, 5080), udp("::3", "::1", 5060, True),
            udp(PEER, "10.0.0.1", 7), frames(linktype, IP(src=PEER, dst=PROXY), TCP(dport=80)),
            frames(linktype, IP(src=PEER, dst="192.0.2.9", frag=100, proto=17), b"x" * 16)]
    dropped = [udp(PEER, PROXY, 5081), udp(PEER, "10.0.0.2", PORT), udp("::3", "::1", 5070, True),
               udp(PROXY, *mirror), udp("::1", "::2", 5060, True)]
    for packet in kept:
        assert run_bpf(program, packet) == WHOLE_PACKET, packet.hex()
    for packet in dropped:
        assert run_bpf(program, packet) == 0, packet.hex()
    # The outgoing copy on a loopback device: dropped before the compiled filter.
    assert run_bpf(program, kept[0], PACKET_OUTGOING, ARPHRD_LOOPBACK) == 0
    assert run_bpf(program, kept[0], PACKET_OUTGOING, ARPHRD_ETHER) == WHOLE_PACKET
    for simple in (build_filter(), build_filter([(None, 5060)])):
        assert run_bpf(compile_program(simple, linktype), udp(PEER, PROXY, 5060)) == WHOLE_PACKET
    assert run_bpf(compile_program(build_filter([(None, 5060)]), linktype),
                   udp(PEER, PROXY, 5061)) == 0


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="not an IP address"):
        build_filter([("proxy.example.com", 5060)])
    with pytest.raises(ConfigError, match="capture filter"):
        compile_program("port nonsense", 1)
    with pytest.raises(ConfigError, match="no network interface named 'nope0'"):
        LiveCapture(["nope0"], "udp")
    with pytest.raises(ConfigError, match="'any'"):
        LiveCapture(["any", "lo"], "udp")
