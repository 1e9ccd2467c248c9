"""Crafted SIP-over-TCP captures: segmentation, reordering, retransmission, keep-alives."""

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet, Raw

from capfile import pcap_bytes
from crafted import LINKTYPE_ETHERNET, ether, stamped
from sipcalls import Endpoint, basic_call


class TcpConnection:
    """Builds the segments of one TCP connection with consistent sequence numbers."""

    def __init__(self, client: Endpoint, server: Endpoint, isn_client: int, isn_server: int):
        self.ends = (client, server)
        self.next_seq = [isn_client, isn_server]

    def _ip(self, from_client: bool) -> Packet:
        src, dst = self.ends if from_client else self.ends[::-1]
        if src.family == 6:
            return IPv6(src=src.ip, dst=dst.ip, hlim=64)
        return IP(src=src.ip, dst=dst.ip, ttl=64, id=0, flags="DF")

    def segment(self, from_client: bool, payload: bytes = b"", flags: str = "PA",
                advance: bool = True) -> bytes:
        me, peer = (0, 1) if from_client else (1, 0)
        src, dst = self.ends if from_client else self.ends[::-1]
        seq = self.next_seq[me]
        ack = self.next_seq[peer] if "A" in flags else 0
        pkt = self._ip(from_client) / TCP(sport=src.port, dport=dst.port, seq=seq, ack=ack,
                                          flags=flags, window=65535)
        if payload:
            pkt = pkt / Raw(payload)
        if advance:
            self.next_seq[me] += len(payload) + (1 if ("S" in flags or "F" in flags) else 0)
        return ether(pkt, outbound=from_client)

    def handshake(self) -> list[bytes]:
        return [self.segment(True, flags="S"), self.segment(False, flags="SA"),
                self.segment(True, flags="A")]

    def close(self) -> list[bytes]:
        return [self.segment(True, flags="FA"), self.segment(False, flags="FA"),
                self.segment(True, flags="A")]


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *cuts, len(data)]
    return [data[edges[i]:edges[i + 1]] for i in range(len(edges) - 1)]


def build_tcp_multi_in_segment() -> bytes:
    """100+180+200 in one segment, ACK+BYE in another, on TCP 5080 (not a SIP port)."""
    a, b = Endpoint("192.0.2.10", 40512), Endpoint("198.51.100.20", 5080)
    msgs = [raw for _, raw in basic_call("tcp-multi-0a9b@192.0.2.10", a, b, "TCP")]
    conn = TcpConnection(a, b, 1000, 5000)
    frames = conn.handshake()
    frames.append(conn.segment(True, msgs[0]))
    frames.append(conn.segment(False, msgs[1] + msgs[2] + msgs[3]))
    frames.append(conn.segment(True, msgs[4] + msgs[5]))
    frames.append(conn.segment(False, msgs[6]))
    frames += conn.close()
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 20))


def build_tcp_split_message() -> bytes:
    """An INVITE over six segments (cut in the start line, in a header, after the blank
    line, in the body) and a 200 over two, with pure ACKs between."""
    a, b = Endpoint("192.0.2.10", 40514), Endpoint("198.51.100.20", 5060)
    msgs = [raw for _, raw in basic_call("tcp-split-5c3e@192.0.2.10", a, b, "TCP",
                                         ice_candidates=8)]
    invite, ok = msgs[0], msgs[3]
    head_end = invite.index(b"\r\n\r\n") + 4
    call_id_at = invite.index(b"Call-ID")
    conn = TcpConnection(a, b, 20_000, 90_000)
    frames = conn.handshake()
    for part in _split(invite, [7, call_id_at + 4, head_end - 2, head_end, head_end + 300]):
        frames.append(conn.segment(True, part))
        frames.append(conn.segment(False, flags="A"))
    frames.append(conn.segment(False, msgs[1]))
    frames.append(conn.segment(False, msgs[2]))
    for part in _split(ok, [len(ok) // 2]):
        frames.append(conn.segment(False, part))
    for raw in msgs[4:6]:
        frames.append(conn.segment(True, raw))
    frames.append(conn.segment(False, msgs[6]))
    frames += conn.close()
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 21))


def build_tcp_out_of_order() -> bytes:
    """INVITE in four segments arriving 1,3,2,4 with segment 3 retransmitted; the 180's
    two halves arrive reversed."""
    a, b = Endpoint("192.0.2.10", 40516), Endpoint("198.51.100.20", 5060)
    msgs = [raw for _, raw in basic_call("tcp-ooo-2d6f@192.0.2.10", a, b, "TCP",
                                         ice_candidates=4)]
    conn = TcpConnection(a, b, 300_000, 700_000)
    frames = conn.handshake()
    quarter = len(msgs[0]) // 4
    s1, s2, s3, s4 = (conn.segment(True, part) for part in
                      _split(msgs[0], [quarter, 2 * quarter, 3 * quarter]))
    frames += [s1, s3, s2, s3, s4]
    frames.append(conn.segment(False, msgs[1]))
    r1, r2 = (conn.segment(False, part) for part in _split(msgs[2], [40]))
    frames += [r2, r1]
    frames.append(conn.segment(False, msgs[3]))
    for raw in msgs[4:6]:
        frames.append(conn.segment(True, raw))
    frames.append(conn.segment(False, msgs[6]))
    frames += conn.close()
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 22))


def build_tcp_keepalive_compact() -> bytes:
    """Compact header names (l: i: f: t: v: m: c:) over TCP over IPv6, with RFC 5626
    CRLF keep-alives: double-CRLF pings in their own segments, single-CRLF pongs alone
    and right after a message in the same segment.

    (A ping in front of a message in one segment is left out: tshark 4.0 then misses
    the message, and tshark is the fidelity oracle.)"""
    a, b = Endpoint("2001:db8::10", 40518), Endpoint("2001:db8:1::20", 5060)
    msgs = [raw for _, raw in basic_call("tcp-compact-9f40@2001:db8::10", a, b, "TCP",
                                         compact=True)]
    conn = TcpConnection(a, b, 4_000_000, 8_000_000)
    frames = conn.handshake()
    frames.append(conn.segment(True, b"\r\n\r\n"))
    frames.append(conn.segment(False, b"\r\n"))
    frames.append(conn.segment(True, msgs[0]))
    frames.append(conn.segment(False, msgs[1] + b"\r\n"))
    for raw in msgs[2:4]:
        frames.append(conn.segment(False, raw))
    frames.append(conn.segment(True, msgs[4]))
    frames.append(conn.segment(True, b"\r\n\r\n"))
    frames.append(conn.segment(False, b"\r\n"))
    frames.append(conn.segment(True, msgs[5]))
    frames.append(conn.segment(False, msgs[6]))
    frames += conn.close()
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 23))
