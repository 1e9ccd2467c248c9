"""Crafted edge-case captures, built with scapy and written byte for byte (deterministic).

Each fixture is a basic call (sipcalls.basic_call: 7 messages) carried in the way the
fixture is about: fragments, VLAN tags, cooked headers, tunnels, TCP segmentation...
Addresses are from the documentation ranges (RFC 5737, RFC 3849); nothing is sent.
"""

from dataclasses import dataclass
import struct
from typing import Callable

from scapy.layers.inet import GRE, IP, TCP, UDP
from scapy.layers.inet6 import (IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, PadN)
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.packet import Packet, Raw

from capfile import PcapngBuilder, pcap_bytes
from sipcalls import Endpoint, basic_call

# Link types (tcpdump.org linktypes).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
ETHERTYPE_IPV4, ETHERTYPE_IPV6 = 0x0800, 0x86DD
ETHERTYPE_TEB = 0x6558  # GRE transparent Ethernet bridging (RFC 1701 registry)
PPP_IPV4 = 0x0021
AF_INET, AF_INET6_BSD = 2, 24  # DLT_NULL family values, host byte order
SLL_HOST, SLL_OUTGOING = 0, 4  # Linux packet types
ARPHRD_ETHER = 1
UDP_MTU_PAYLOAD_V4 = 1480  # 1500 - IPv4 header; fragment payloads are multiples of 8
UDP_MTU_PAYLOAD_V6 = 1448  # 1500 - IPv6 header - fragment header, rounded down to 8

BASE_NS = 1_704_067_200_000_000_000  # 2024-01-01T00:00:00Z
FRAME_STEP_NS = 20_000_000 + 1_111  # 20 ms apart; odd digits keep the units honest
MAC_A, MAC_B = "02:00:5e:00:00:0a", "02:00:5e:00:00:14"
ROUTER_A, ROUTER_B = "203.0.113.1", "203.0.113.2"
A4, B4 = Endpoint("192.0.2.10", 5060), Endpoint("198.51.100.20", 5060)
A6, B6 = Endpoint("2001:db8::10", 5060), Endpoint("2001:db8:1::20", 5060)


def stamped(frames: list[bytes], hour: int, step_ns: int = FRAME_STEP_NS):
    """(ts_ns, frame) records; each fixture starts at its own hour of 2024-01-01."""
    start = BASE_NS + hour * 3600 * 1_000_000_000 + 123_456_789
    return [(start + i * step_ns, frame) for i, frame in enumerate(frames)]


def ip_udp(src: Endpoint, dst: Endpoint, payload: bytes, ip_id: int = 1) -> Packet:
    if src.family == 6:
        return IPv6(src=src.ip, dst=dst.ip, hlim=64) / UDP(sport=src.port, dport=dst.port) / Raw(payload)
    return IP(src=src.ip, dst=dst.ip, id=ip_id, ttl=64) / UDP(sport=src.port, dport=dst.port) / Raw(payload)


def udp_call(call_id: str, a: Endpoint, b: Endpoint, **kw) -> list[Packet]:
    """The 7 messages of a basic call as IP/UDP packets."""
    return [ip_udp(a, b, raw, 100 + i) if by_a else ip_udp(b, a, raw, 100 + i)
            for i, (by_a, raw) in enumerate(basic_call(call_id, a, b, "UDP", **kw))]


def ether(pkt: Packet, outbound: bool = True) -> bytes:
    src, dst = (MAC_A, MAC_B) if outbound else (MAC_B, MAC_A)
    return bytes(Ether(src=src, dst=dst) / pkt)


def ether_frames(packets: list[Packet]) -> list[bytes]:
    return [ether(p) for p in packets]


def fragments_v4(pkt: Packet, ip_id: int) -> list[bytes]:
    """IPv4 fragments of a whole IP/UDP packet, in order (payload sliced by hand)."""
    whole = bytes(pkt)
    payload = whole[(whole[0] & 0x0F) * 4:]
    out = []
    for offset in range(0, len(payload), UDP_MTU_PAYLOAD_V4):
        more = offset + UDP_MTU_PAYLOAD_V4 < len(payload)
        frag = IP(src=pkt[IP].src, dst=pkt[IP].dst, id=ip_id, ttl=64, proto=17,
                  flags="MF" if more else 0, frag=offset // 8)
        out.append(ether(frag / Raw(payload[offset:offset + UDP_MTU_PAYLOAD_V4])))
    return out


def fragments_v6(pkt: Packet, ident: int) -> list[bytes]:
    """IPv6 fragments (fragment extension header) of a whole IPv6/UDP packet, in order."""
    payload = bytes(pkt)[40:]
    out = []
    for offset in range(0, len(payload), UDP_MTU_PAYLOAD_V6):
        more = offset + UDP_MTU_PAYLOAD_V6 < len(payload)
        frag = (IPv6(src=pkt[IPv6].src, dst=pkt[IPv6].dst, hlim=64)
                / IPv6ExtHdrFragment(nh=17, offset=offset // 8, m=int(more), id=ident)
                / Raw(payload[offset:offset + UDP_MTU_PAYLOAD_V6]))
        out.append(ether(frag))
    return out


def build_frag_ipv4() -> bytes:
    packets = udp_call("frag4-7a61c3@192.0.2.10", A4, B4, ice_candidates=30)
    frags = fragments_v4(packets[0], ip_id=0x4A01)
    assert len(frags) == 3
    lost = fragments_v4(udp_call("frag4-lost-5e0d@192.0.2.10", A4, B4,
                                 ice_candidates=30)[0], ip_id=0x4A02)
    frames = [frags[2], frags[0], frags[1]] + ether_frames(packets[1:])
    # An INVITE whose last fragment never arrives: it must never become a message.
    frames[4:4] = lost[:-1]
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 1))


def build_frag_ipv6() -> bytes:
    packets = udp_call("frag6-1b9e44@2001:db8::10", A6, B6, ice_candidates=30)
    frags = fragments_v6(packets[0], ident=0x6B01)
    assert len(frags) == 3
    frames = [frags[1], frags[2], frags[0]] + ether_frames(packets[1:])
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 2))


def build_vlan() -> bytes:
    packets = udp_call("vlan-dot1q-30c2@192.0.2.10", A4, B4)
    frames = [bytes(Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=100, prio=5) / p) for p in packets]
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 3))


def build_qinq() -> bytes:
    packets = udp_call("vlan-qinq-8d17@192.0.2.10", A4, B4)
    frames = [bytes(Ether(src=MAC_A, dst=MAC_B) / Dot1AD(vlan=300) / Dot1Q(vlan=100) / p)
              for p in packets]
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 4))


def _sll_fields(pkt: Packet, by_a: bool) -> tuple[int, int, bytes]:
    proto = ETHERTYPE_IPV6 if isinstance(pkt, IPv6) else ETHERTYPE_IPV4
    mac = bytes.fromhex((MAC_A if by_a else MAC_B).replace(":", "")) + b"\0\0"
    return proto, SLL_OUTGOING if by_a else SLL_HOST, mac


def build_sll2() -> bytes:
    a, b = Endpoint("192.0.2.10", 5080), Endpoint("198.51.100.20", 5080)
    frames = []
    for pkt in udp_call("sll2-e4f019@192.0.2.10", a, b):
        proto, pkttype, mac = _sll_fields(pkt, pkt[IP].src == a.ip)
        frames.append(bytes(CookedLinuxV2(proto=proto, ifindex=2, lladdrtype=ARPHRD_ETHER,
                                          pkttype=pkttype, lladdrlen=6, src=mac) / pkt))
    return pcap_bytes(LINKTYPE_LINUX_SLL2, stamped(frames, 5))


def build_sll() -> bytes:
    frames = []
    for pkt in udp_call("sll-2c7d51@2001:db8::10", A6, B6):
        proto, pkttype, mac = _sll_fields(pkt, pkt[IPv6].src == A6.ip)
        frames.append(bytes(CookedLinux(pkttype=pkttype, lladdrtype=ARPHRD_ETHER,
                                        lladdrlen=6, src=mac, proto=proto) / pkt))
    return pcap_bytes(LINKTYPE_LINUX_SLL, stamped(frames, 6))


def build_pcapng_two_interfaces() -> bytes:
    """Interface 0: Ethernet, microseconds; interface 1: raw IP, nanoseconds.

    Two calls interleaved, one per interface; the 180 of the first call is a Simple
    Packet Block (no timestamp, interface 0).
    """
    eth_call = udp_call("pcapng-eth-91ab@192.0.2.10", A4, B4)
    raw_call = udp_call("pcapng-raw-0f3d@2001:db8::10", A6, B6)
    ng = PcapngBuilder()
    eth_if = ng.interface(LINKTYPE_ETHERNET, "eth0")
    raw_if = ng.interface(LINKTYPE_RAW, "tun0", tsresol_exp=9)
    records = stamped([b""] * 14, 7, step_ns=10_000_000 + 7)
    for i, (ts_ns, _) in enumerate(records):
        call, iface = (eth_call, eth_if) if i % 2 == 0 else (raw_call, raw_if)
        pkt = call[i // 2]
        if iface == eth_if and i // 2 == 2:
            ng.simple_packet(ether(pkt))
        elif iface == eth_if:
            ng.enhanced_packet(iface, ts_ns, ether(pkt))
        else:
            ng.enhanced_packet(iface, ts_ns, bytes(pkt),
                               comment="raw IPv6" if i == 1 else None)
    return ng.to_bytes()


def build_nanosecond() -> bytes:
    """Nanosecond pcap; the 180 and 200 lie 250 ns apart, inside one microsecond."""
    frames = ether_frames(udp_call("nsec-55aa01@192.0.2.10", A4, B4))
    records = stamped(frames, 8)
    ts_180 = records[2][0]
    records[3] = (ts_180 + 250, records[3][1])
    return pcap_bytes(LINKTYPE_ETHERNET, records, nanosecond=True)


def build_big_endian() -> bytes:
    frames = ether_frames(udp_call("bigendian-7c21@192.0.2.10", A4, B4))
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 9), big_endian=True)


def build_raw_ipv4() -> bytes:
    a, b = Endpoint("192.0.2.10", 5062), Endpoint("198.51.100.20", 5062)
    packets = udp_call("raw228-3e8f@192.0.2.10", a, b)
    return pcap_bytes(LINKTYPE_IPV4, stamped([bytes(p) for p in packets], 10))


def build_raw_ipv6() -> bytes:
    packets = udp_call("raw229-b2c4@2001:db8::10", A6, B6)
    return pcap_bytes(LINKTYPE_IPV6, stamped([bytes(p) for p in packets], 11))


def build_null_loopback() -> bytes:
    packets = udp_call("null-4af7@192.0.2.10", A4, B4)[:4] + \
        udp_call("null6-0c83@2001:db8::10", A6, B6)[:4]
    frames = [struct.pack("<I", AF_INET6_BSD if isinstance(p, IPv6) else AF_INET) + bytes(p)
              for p in packets]
    return pcap_bytes(LINKTYPE_NULL, stamped(frames, 12))


def build_pppoe() -> bytes:
    frames = [bytes(Ether(src=MAC_A, dst=MAC_B) / PPPoE(sessionid=0x1234)
                    / PPP(proto=PPP_IPV4) / p)
              for p in udp_call("pppoe-6d02@192.0.2.10", A4, B4)]
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 13))


def _outer(pkt: Packet, proto: int) -> Packet:
    inner_src = pkt[IPv6].src if isinstance(pkt, IPv6) else pkt[IP].src
    a_side = inner_src in (A4.ip, A6.ip)
    src, dst = (ROUTER_A, ROUTER_B) if a_side else (ROUTER_B, ROUTER_A)
    return IP(src=src, dst=dst, ttl=64, id=7, proto=proto)


def build_gre_ip() -> bytes:
    frames = [ether(_outer(p, 47) / GRE(proto=ETHERTYPE_IPV4) / p)
              for p in udp_call("gre-ip-19c0@192.0.2.10", A4, B4)]
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 14))


def build_gre_ethernet() -> bytes:
    frames = [ether(_outer(p, 47) / GRE(proto=ETHERTYPE_TEB)
                    / Ether(src=MAC_A, dst=MAC_B) / p)
              for p in udp_call("gre-eth-a77e@192.0.2.10", A4, B4)]
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 15))


def build_ipip() -> bytes:
    a, b = Endpoint("192.0.2.10", 5090), Endpoint("198.51.100.20", 5090)
    frames = [ether(_outer(p, 4) / p) for p in udp_call("ipip-c4d5@192.0.2.10", a, b)]
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 16))


def build_ipv6_in_ipv4() -> bytes:
    frames = [ether(_outer(p, 41) / p) for p in udp_call("6in4-8e12@2001:db8::10", A6, B6)]
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 17))


def build_ipv6_ext_headers() -> bytes:
    """Hop-by-hop and destination options before UDP on every packet."""
    frames = []
    for pkt in udp_call("ip6ext-f00d@2001:db8::10", A6, B6):
        udp = pkt[UDP]
        frames.append(ether(IPv6(src=pkt.src, dst=pkt.dst, hlim=64)
                            / IPv6ExtHdrHopByHop(options=[PadN(optdata=b"\0\0\0\0")])
                            / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0\0\0\0")])
                            / udp))
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 18))


def build_udp_noise() -> bytes:
    """A call on UDP 6060 among RTP, a STUN request and CRLF keep-alives on 5060."""
    a, b = Endpoint("192.0.2.10", 6060), Endpoint("198.51.100.20", 6060)
    call = udp_call("noise-6060-ee31@192.0.2.10", a, b)
    rtp_a, rtp_b = Endpoint("192.0.2.10", 49170), Endpoint("198.51.100.20", 3456)
    rtp = [ip_udp(rtp_a, rtp_b, struct.pack("!BBHII", 0x80, 0, 1000 + n, 160 * n, 0x5EED)
                  + b"\xff" * 160) for n in range(4)]
    stun = ip_udp(rtp_a, Endpoint("198.51.100.20", 3478),
                  struct.pack("!HHI", 0x0001, 0, 0x2112A442) + bytes(range(12)))
    keepalive = ip_udp(A4, B4, b"\r\n\r\n")
    pong = ip_udp(B4, A4, b"\r\n")
    packets = call[:4] + [keepalive, pong, stun] + call[4:5] + rtp + call[5:]
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(ether_frames(packets), 19))


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


@dataclass(frozen=True)
class Fixture:
    name: str
    holds: str
    build: Callable[[], bytes]


CRAFTED = [
    Fixture("frag-ipv4.pcap", "INVITE (3.4 KB SDP with ICE candidates) in 3 IPv4 fragments "
            "arriving 3,1,2; a second INVITE whose last fragment never arrives", build_frag_ipv4),
    Fixture("frag-ipv6.pcap", "INVITE in 3 IPv6 fragments (fragment extension header) "
            "arriving 2,3,1", build_frag_ipv6),
    Fixture("vlan-dot1q.pcap", "802.1Q VLAN 100, priority 5", build_vlan),
    Fixture("vlan-qinq.pcap", "QinQ: 802.1ad S-tag 300 over 802.1Q C-tag 100", build_qinq),
    Fixture("linux-sll2.pcap", "Linux cooked v2 (LINKTYPE 276), SIP on UDP 5080, "
            "packet types outgoing/host", build_sll2),
    Fixture("linux-sll.pcap", "Linux cooked v1 (LINKTYPE 113), IPv6", build_sll),
    Fixture("two-interfaces.pcapng", "pcapng, interface 0 Ethernet (microseconds), "
            "interface 1 raw IP (DLT 101, if_tsresol nanoseconds); two calls interleaved, "
            "EPBs plus one SPB (the first call's 180: no timestamp), an EPB comment",
            build_pcapng_two_interfaces),
    Fixture("nanosecond.pcap", "pcap with nanosecond timestamps (magic a1b23c4d); the 180 "
            "and 200 are 250 ns apart", build_nanosecond),
    Fixture("big-endian.pcap", "pcap written big-endian (header and records)",
            build_big_endian),
    Fixture("raw-ipv4-dlt228.pcap", "LINKTYPE_IPV4 (228), SIP on UDP 5062", build_raw_ipv4),
    Fixture("raw-ipv6-dlt229.pcap", "LINKTYPE_IPV6 (229)", build_raw_ipv6),
    Fixture("null-loopback.pcap", "BSD loopback/null (DLT 0): 4 IPv4 frames (AF 2) and "
            "4 IPv6 frames (AF 24) of two calls' first messages", build_null_loopback),
    Fixture("pppoe.pcap", "PPPoE session (0x8864) carrying PPP/IPv4", build_pppoe),
    Fixture("gre-ip.pcap", "GRE (IPv4 outer 203.0.113.x) carrying IPv4/UDP", build_gre_ip),
    Fixture("gre-ethernet.pcap", "GRE transparent Ethernet bridging (0x6558) carrying "
            "Ethernet/IPv4/UDP", build_gre_ethernet),
    Fixture("ipip.pcap", "IPv4-in-IPv4 (protocol 4), SIP on UDP 5090", build_ipip),
    Fixture("ipv6-in-ipv4.pcap", "IPv6-in-IPv4 (protocol 41, 6in4)", build_ipv6_in_ipv4),
    Fixture("ipv6-ext-headers.pcap", "IPv6 hop-by-hop and destination options headers "
            "before UDP", build_ipv6_ext_headers),
    Fixture("udp-noise-6060.pcap", "call on UDP 6060 amid 4 RTP packets, a STUN binding "
            "request and CRLF keep-alive datagrams (non-SIP, to be skipped)", build_udp_noise),
    Fixture("tcp-multi-in-segment.pcap", "TCP on port 5080: 100+180+200 in one segment, "
            "ACK+BYE in another", build_tcp_multi_in_segment),
    Fixture("tcp-split-message.pcap", "TCP: INVITE over 6 segments (cut in the "
            "start line, a header, the blank line, the body) with pure ACKs between; the "
            "200 over 2 segments", build_tcp_split_message),
    Fixture("tcp-out-of-order.pcap", "TCP: INVITE's 4 segments arrive 1,3,2,4 with 3 "
            "retransmitted; the 180's 2 segments arrive reversed", build_tcp_out_of_order),
    Fixture("tcp-keepalive-compact.pcap", "TCP over IPv6, compact header names (l: i: f: "
            "t: v: m: c:), RFC 5626 CRLF keep-alives: alone, and a pong after a message",
            build_tcp_keepalive_compact),
]
