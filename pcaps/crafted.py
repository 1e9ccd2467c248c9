"""Crafted edge-case captures, built with scapy and written byte for byte (deterministic).

Each fixture is a basic call (sipcalls.basic_call: 7 messages) carried in the way the
fixture is about: fragments, VLAN tags, cooked headers, tunnels, odd capture formats
(TCP ones are in crafted_tcp.py; make_fixtures.py lists them all). Addresses are from the
documentation ranges (RFC 5737, RFC 3849); nothing is sent.
"""

import struct

from scapy.layers.inet import GRE, IP, UDP
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
    udp = UDP(sport=src.port, dport=dst.port) / Raw(payload)
    if src.family == 6:
        return IPv6(src=src.ip, dst=dst.ip, hlim=64) / udp
    return IP(src=src.ip, dst=dst.ip, id=ip_id, ttl=64) / udp


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
