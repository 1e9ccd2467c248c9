"""Packet decoding: link types, encapsulations, IP, UDP/TCP, fragment reassembly.

Packets are built with scapy; crafted and real captures are checked against
tshark's own dissection (innermost addresses, ports, payload, capture time).
"""

import struct
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (ICMPv6DestUnreach, IPv6, IPv6ExtHdrDestOpt,
                                IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.ipsec import AH, ESP
from scapy.layers.l2 import ARP, GRE, GRE_PPTP, LLC, CookedLinux, CookedLinuxV2, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.packet import Raw

from conftest import REAL_PCAPS, real_pcaps, require_tool
from siptrace.capture.files import open_capture
from siptrace.decode.fragments import FragmentReassembler
from siptrace.decode.layers import PacketDecoder
from siptrace.decode.packet import ACK, PSH, SYN, TCP as TCP_PROTO, UDP as UDP_PROTO
from siptrace.errors import DecodeError, TruncatedPacket

SIP = b"OPTIONS sip:alice@example.org SIP/2.0\r\nCall-ID: x1\r\nContent-Length: 0\r\n\r\n"
S4, D4 = "192.0.2.10", "198.51.100.20"
S6, D6 = "2001:db8::a", "2001:db8:0:1::14"
TS = 1_700_000_000_000_000_000


def ether(**kw):
    """Ethernet with both addresses given: scapy would otherwise resolve one (ARP)."""
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", **kw)



def ip4(src=S4, dst=D4, **kw):
    return IP(src=src, dst=dst, **kw)


def ip6(src=S6, dst=D6, **kw):
    return IPv6(src=src, dst=dst, **kw)


def sip_udp(sport=5060, dport=5080):
    return UDP(sport=sport, dport=dport) / SIP


def null_header(family: int, order: str) -> bytes:
    return struct.pack(order + "I", family)


def decode(data, linktype=1, ts=TS, decoder=None):
    return (decoder or PacketDecoder()).decode(ts, linktype, bytes(data))


def expect(pkt, family, src, dst, proto=UDP_PROTO, sport=5060, dport=5080, payload=SIP):
    assert pkt is not None
    assert (pkt.proto, pkt.family, pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.payload) == (
        proto, family, src, sport, dst, dport, payload)


# (name, linktype, packet, family of the innermost IP): every layer combination the
# decoder supports, each carrying the same SIP datagram.
def crafted():
    v4 = ip4() / sip_udp()
    v6 = ip6() / sip_udp()
    cases = [
        ("ethernet", 1, ether() / v4, 4),
        ("ethernet ipv6", 1, ether() / v6, 6),
        ("802.1q", 1, ether() / Dot1Q(vlan=10) / v4, 4),
        ("802.1ad qinq", 1, ether(type=0x88A8) / Dot1Q(vlan=10, type=0x8100)
         / Dot1Q(vlan=20) / v6, 6),
        ("0x9100 qinq", 1, ether(type=0x9100) / Dot1Q(vlan=10, type=0x8100)
         / Dot1Q(vlan=20) / v4, 4),
        ("sll", 113, CookedLinux(proto=0x0800) / v4, 4),
        ("sll ipv6", 113, CookedLinux(proto=0x86DD) / v6, 6),
        ("sll2", 276, CookedLinuxV2(proto=0x86DD) / v6, 6),
        ("sll2 ipv4", 276, CookedLinuxV2(proto=0x0800) / v4, 4),
        ("raw 101 v4", 101, v4, 4),
        ("raw 101 v6", 101, v6, 6),
        ("raw 12", 12, v4, 4),
        ("raw 14", 14, v6, 6),
        ("ipv4 228", 228, v4, 4),
        ("ipv6 229", 229, v6, 6),
        ("null le inet", 0, Raw(null_header(2, "<")) / v4, 4),
        ("null be inet", 0, Raw(null_header(2, ">")) / v4, 4),
        ("null le inet6 24", 0, Raw(null_header(24, "<")) / v6, 6),
        ("null le inet6 28", 0, Raw(null_header(28, "<")) / v6, 6),
        ("null be inet6 30", 0, Raw(null_header(30, ">")) / v6, 6),
        ("openbsd loop", 108, Raw(null_header(24, ">")) / v6, 6),
        ("ppp", 9, Raw(b"\xff\x03\x00\x21") / v4, 4),
        ("pppoe v4", 1, ether() / PPPoE(sessionid=7) / PPP(proto=0x0021) / v4, 4),
        ("pppoe v6", 1, ether() / Dot1Q(vlan=5) / PPPoE(sessionid=7) / PPP(proto=0x0057) / v6, 6),
        ("ip in ip", 1, ether() / ip4("10.0.0.1", "10.0.0.2") / v4, 4),
        ("ipv6 in ip", 1, ether() / ip4("10.0.0.1", "10.0.0.2") / v6, 6),
        ("ip in ipv6", 1, ether() / ip6("fd00::1", "fd00::2") / v4, 4),
        ("ipv6 in ipv6", 1, ether() / ip6("fd00::1", "fd00::2") / v6, 6),
        ("gre", 1, ether() / ip4("10.0.0.1", "10.0.0.2") / GRE() / v4, 4),
        ("gre key seq checksum", 1, ether() / ip4("10.0.0.1", "10.0.0.2")
         / GRE(chksum_present=1, key_present=1, key=99, seqnum_present=1, sequence_number=5)
         / v6, 6),
        ("gre over ipv6", 1, ether() / ip6("fd00::1", "fd00::2") / GRE(key_present=1) / v4, 4),
        ("gre bridged ethernet", 1, ether() / ip4("10.0.0.1", "10.0.0.2") / GRE(proto=0x6558)
         / ether() / Dot1Q(vlan=3) / v4, 4),
        ("erspan ii", 1, ether() / ip4("10.0.0.1", "10.0.0.2") / GRE(seqnum_present=1)
         / ERSPAN_II(session_id=1) / ether() / v4, 4),
        ("erspan iii", 1, ether() / ip4("10.0.0.1", "10.0.0.2") / GRE(seqnum_present=1)
         / ERSPAN_III(session_id=1) / ether() / v6, 6),
        ("mpls", 1, ether(type=0x8847) / MPLS(label=16, s=0) / MPLS(label=17, s=1) / v4, 4),
        ("mpls ipv6", 1, ether(type=0x8847) / MPLS(label=16, s=1) / v6, 6),
        ("ipv6 extension headers", 1, ether() / ip6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting()
         / IPv6ExtHdrDestOpt() / sip_udp(), 6),
        ("ipv6 atomic fragment", 1, ether() / ip6() / IPv6ExtHdrFragment(m=0, offset=0, id=9)
         / sip_udp(), 6),
        ("ah ipv4", 1, ether() / ip4() / AH(nh=17, payloadlen=4, spi=1, icv=bytes(12))
         / sip_udp(), 4),
        ("ah ipv6", 1, ether() / ip6() / AH(nh=17, payloadlen=4, spi=1, icv=bytes(12))
         / sip_udp(), 6),
        ("pptp enhanced gre", 1, ether() / ip4("10.0.0.1", "10.0.0.2")
         / GRE_PPTP(seqnum_present=1, acknum_present=1, call_id=3)
         / Raw(b"\xff\x03\x00\x21") / v4, 4),
        ("erspan i", 1, ether() / ip4("10.0.0.1", "10.0.0.2") / GRE(proto=0x88BE)
         / ether() / v4, 4),
        ("erspan iii platform subheader", 1, ether() / ip4("10.0.0.1", "10.0.0.2")
         / GRE(proto=0x22EB) / ERSPAN_III(session_id=1, o=1) / Raw(bytes(8)) / ether() / v4, 4),
        ("ipv4 options", 1, ether() / ip4(options=b"\x94\x04\x00\x00") / sip_udp(), 4),
    ]
    return cases


CRAFTED = crafted()


@pytest.mark.parametrize("name, linktype, packet, family", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_layers_give_the_innermost_addresses(name, linktype, packet, family):
    decoder = PacketDecoder()
    pkt = decoder.decode(TS, linktype, bytes(packet))
    if family == 4:
        expect(pkt, 4, S4, D4)
    else:
        expect(pkt, 6, S6, D6)
    assert pkt.ts_ns == TS
    assert decoder.stats["udp"] == 1 and decoder.stats["packets"] == 1


def test_crafted_packets_decode_as_tshark_decodes_them(tmp_path):
    by_linktype: dict[int, list] = {}
    for _, linktype, packet, _ in CRAFTED:
        by_linktype.setdefault(linktype, []).append(bytes(packet))
    for linktype, frames in by_linktype.items():
        path = tmp_path / f"l{linktype}.pcap"
        path.write_bytes(pcap_bytes(linktype, frames))
        assert decoded(path) == tshark_transport(path), linktype


def test_ethernet_padding_is_stripped():
    short = ether() / ip4() / UDP(sport=5060, dport=5080) / b"ping"
    padded = bytes(short) + b"\xee" * (60 - len(short))
    expect(decode(padded), 4, S4, D4, payload=b"ping")
    padded6 = bytes(ether() / ip6() / UDP(sport=5060, dport=5080) / b"") + b"\xee" * 8
    expect(decode(padded6), 6, S6, D6, payload=b"")
    pppoe = bytes(ether() / PPPoE() / PPP(proto=0x21) / ip4() / UDP(sport=5060, dport=5080)
                  / b"p") + b"\xee" * 10
    expect(decode(pppoe), 4, S4, D4, payload=b"p")


def test_tcp_segment_fields_and_options():
    frame = ether() / ip4() / TCP(sport=5061, dport=5060, seq=4_000_000_000, flags="PA",
                                  options=[("MSS", 1460), ("NOP", None), ("NOP", None),
                                           ("Timestamp", (1, 2))]) / SIP
    pkt = decode(frame)
    expect(pkt, 4, S4, D4, proto=TCP_PROTO, sport=5061, dport=5060)
    assert (pkt.seq, pkt.flags) == (4_000_000_000, PSH | ACK)
    syn = decode(ether() / ip6() / TCP(sport=1, dport=5060, seq=5, flags="S"))
    assert (syn.proto, syn.payload, syn.flags, syn.seq) == (TCP_PROTO, b"", SYN, 5)


def test_ipv6_addresses_are_rfc5952_text():
    pkt = decode(ip6("2001:DB8:0:0:1:0:0:1", "::ffff:192.0.2.1") / sip_udp(), 229)
    assert (pkt.src, pkt.dst) == ("2001:db8::1:0:0:1", "::ffff:c000:201")
    pkt = decode(ip6("fe80::", "1::") / sip_udp(), 229)
    assert (pkt.src, pkt.dst) == ("fe80::", "1::")


@pytest.mark.parametrize("linktype, packet, counter", [
    (1, ether() / ip4() / ICMP(type=3, code=3) / ip4(D4, S4) / sip_udp(), "other_proto"),
    (1, ether() / ip6() / ICMPv6DestUnreach() / ip6(D6, S6) / sip_udp(), "other_proto"),
    (1, ether() / ip4() / ESP(spi=1, seq=1, data=SIP), "esp"),
    (1, ether() / ip6(nh=59) / Raw(SIP), "other_proto"),
    (1, ether() / ARP(), "non_ip"),
    (1, ether() / LLC() / Raw(SIP), "non_ip"),
    (1, ether(type=0x8847) / MPLS(s=1) / Raw(b"\x00" * 30), "non_ip"),
    (1, ether() / PPPoE() / PPP(proto=0xC021) / Raw(b"\x01" * 10), "non_ip"),
    (0, Raw(null_header(17, "<")) / ip4() / sip_udp(), "non_ip"),
    (147, ip4() / sip_udp(), "unknown_linktype"),
])
def test_what_is_not_udp_or_tcp_gives_none_and_is_counted(linktype, packet, counter):
    decoder = PacketDecoder()
    assert decoder.decode(TS, linktype, bytes(packet)) is None
    assert decoder.stats[counter] == 1


@pytest.mark.parametrize("data, error", [
    (bytes(ether() / ip4() / sip_udp())[:-10], TruncatedPacket),  # snap length
    (bytes(ether() / ip6() / sip_udp())[:-1], TruncatedPacket),
    (bytes(ether())[:10], TruncatedPacket),
    (bytes(ether() / ip4())[:30], TruncatedPacket),
    (bytes(ether() / ip6() / IPv6ExtHdrDestOpt() / sip_udp())[:60], TruncatedPacket),
    (bytes(ether() / ip4(ihl=4) / sip_udp()), DecodeError),
    (bytes(ether() / ip4(version=6) / sip_udp()), DecodeError),
    (bytes(ether() / ip4() / UDP(len=5) / SIP), DecodeError),
    (bytes(ether() / ip4() / UDP(len=len(SIP) + 100) / SIP), DecodeError),
    (bytes(ether() / ip4() / TCP(dataofs=3) / SIP), DecodeError),
    (bytes(ether() / ip4() / TCP(dataofs=15) / b"x"), DecodeError),
    (bytes(ether() / ip4() / GRE(version=3) / ip4() / sip_udp()), DecodeError),
])
def test_bad_packets_raise_the_documented_errors(data, error):
    decoder = PacketDecoder()
    with pytest.raises(error):
        decoder.decode(TS, 1, data)
    counter = "truncated" if error is TruncatedPacket else "malformed"
    assert decoder.stats[counter] == 1


def test_nesting_is_bounded():
    packet = sip_udp()
    for _ in range(40):
        packet = ip4() / packet
    with pytest.raises(DecodeError, match="nested layers"):
        decode(packet, 101)


# --- fragments -------------------------------------------------------------------

BIG = bytes(range(256)) * 12  # 3072 bytes, every fragment's bytes distinct


def fragments4(ident=1, size=800, src=S4):
    datagram = ip4(src=src, id=ident) / UDP(sport=5060, dport=5080) / BIG
    return [bytes(ether() / f) for f in fragment(datagram, fragsize=size)]


def fragments6(ident=1, size=1000, extra=()):
    """Ethernet frames of one IPv6 datagram cut after its hop-by-hop header.

    Cut by hand: scapy's fragment6 takes seconds.
    """
    datagram = ip6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(id=ident)
    for header in extra:
        datagram = datagram / header
    whole = bytes(datagram / UDP(sport=5060, dport=5080) / BIG)
    fixed, hop_by_hop, next_header, rest = whole[:40], whole[40:48], whole[48], whole[56:]
    frames = []
    for off in range(0, len(rest), size):
        chunk = rest[off:off + size]
        more = off + size < len(rest)
        header = bytearray(fixed)
        struct.pack_into("!H", header, 4, 16 + len(chunk))
        fragment_header = struct.pack("!BBHI", next_header, 0, off | more, ident)
        frames.append(bytes(ether(type=0x86DD)) + bytes(header) + hop_by_hop
                      + fragment_header + chunk)
    return frames


def feed(decoder, frames, start=TS, step=1000):
    """Decode frames in order, one microsecond apart; the packets that came out."""
    out = []
    for i, frame in enumerate(frames):
        pkt = decoder.decode(start + i * step, 1, frame)
        if pkt is not None:
            out.append((i, pkt))
    return out


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("order", ["in order", "reverse", "duplicated", "shuffled"])
def test_fragments_are_reassembled_once(family, order):
    frames = fragments4() if family == 4 else fragments6()
    assert len(frames) >= 4
    if order == "reverse":
        frames = frames[::-1]
    elif order == "duplicated":
        frames = [f for f in frames for _ in (0, 1)][:-1]
    elif order == "shuffled":
        frames = [frames[i] for i in (2, 0, 3, 1)] + frames[4:]
    decoder = PacketDecoder()
    out = feed(decoder, frames)
    assert len(out) == 1
    index, pkt = out[0]
    expect(pkt, family, S4 if family == 4 else S6, D4 if family == 4 else D6, payload=BIG)
    assert index == len(frames) - 1 and pkt.ts_ns == TS + index * 1000  # completing fragment
    assert decoder.stats["reassembled"] == 1 and decoder.pending_fragment_sets == 0
    if order == "duplicated":
        assert decoder.stats["fragments_duplicate"] == len(frames) // 2


def test_ipv6_extension_headers_after_the_fragment_header():
    frames = fragments6(extra=[IPv6ExtHdrDestOpt()])
    (_, pkt), = feed(PacketDecoder(), frames[::-1])
    expect(pkt, 6, S6, D6, payload=BIG)


def test_interleaved_datagrams_and_a_fragmented_tunnel():
    a, b = fragments4(ident=1), fragments4(ident=1, src="192.0.2.99")
    frames = [f for pair in zip(a, b) for f in pair]
    out = feed(PacketDecoder(), frames)
    assert sorted(p.src for _, p in out) == ["192.0.2.10", "192.0.2.99"]
    inner = ip6() / UDP(sport=5060, dport=5080) / BIG
    tunnel = ip4("10.0.0.1", "10.0.0.2", id=77) / GRE() / inner
    frames = [bytes(ether() / f) for f in fragment(tunnel, fragsize=600)]
    (_, pkt), = feed(PacketDecoder(), frames)
    expect(pkt, 6, S6, D6, payload=BIG)


def overlapping_frames():
    """Three IPv4 fragments of one UDP datagram; the second overlaps the first."""
    udp_header = struct.pack("!HHHH", 5060, 5080, 8 + 32, 0)
    pieces = [(0, udp_header + b"A" * 16, 1), (16, b"B" * 16, 1), (24, b"C" * 16, 0)]
    return [bytes(ether() / IP(src=S4, dst=D4, proto=17, id=5, flags=mf, frag=off // 8)
                  / Raw(data)) for off, data, mf in pieces]


def test_overlapping_fragments_first_data_wins():
    frames = overlapping_frames()
    (_, pkt), = feed(PacketDecoder(), frames)
    assert pkt.payload == b"A" * 16 + b"B" * 8 + b"C" * 8
    (_, pkt), = feed(PacketDecoder(), frames[::-1])  # C arrived first, then B
    assert pkt.payload == b"A" * 8 + b"B" * 8 + b"C" * 16


def test_incomplete_sets_time_out_and_are_never_emitted():
    frames = fragments4()
    decoder = PacketDecoder(fragment_timeout_ns=30_000_000_000)
    assert feed(decoder, frames[:2]) == []
    # 31 s later (capture time) an unrelated packet arrives: the set times out.
    decoder.decode(TS + 31_000_000_000, 1, bytes(ether() / ip4() / sip_udp()))
    assert decoder.stats["fragments_timed_out"] == 1 and decoder.pending_fragment_sets == 0
    # The rest of the datagram alone cannot complete it.
    assert feed(decoder, frames[2:], start=TS + 32_000_000_000) == []
    assert decoder.pending_fragment_sets == 1
    assert decoder.expire() == 1  # end of input
    assert decoder.stats["fragments_timed_out"] == 2 and decoder.stats["reassembled"] == 0


def test_fragment_sets_are_bounded_in_number_and_bytes():
    decoder = PacketDecoder(max_fragment_sets=2)
    firsts = [fragments4(ident=i)[0] for i in (1, 2, 3)]
    assert feed(decoder, firsts) == []
    assert decoder.stats["fragments_overflow"] == 1 and decoder.pending_fragment_sets == 2
    assert feed(decoder, fragments4(ident=1)[1:]) == []  # its start was evicted
    decoder = PacketDecoder(max_fragment_bytes=1000)  # each first fragment holds 800
    feed(decoder, [fragments4(ident=i)[0] for i in (1, 2, 3)])
    assert decoder.stats["fragments_overflow"] == 2 and decoder.pending_fragment_sets == 1
    assert decoder._fragments.held == 800


def test_inconsistent_fragments_are_malformed():
    decoder = PacketDecoder()
    past_64k = ether() / IP(src=S4, dst=D4, proto=17, id=1, flags=1, frag=8190) / Raw(b"x" * 64)
    with pytest.raises(DecodeError):
        decoder.decode(TS, 1, bytes(past_64k))
    last = [ether() / IP(src=S4, dst=D4, proto=17, id=2, frag=frag) / Raw(b"x" * 16)
            for frag in (4, 6)]
    decoder.decode(TS, 1, bytes(last[0]))
    with pytest.raises(DecodeError):
        decoder.decode(TS, 1, bytes(last[1]))
    assert decoder.stats["fragments_malformed"] == 2 and decoder.stats["malformed"] == 2


def test_reassembler_coverage_with_gaps_and_touching_pieces():
    stats = Counter()
    reassembler = FragmentReassembler(10, 10, 1 << 20, stats)
    key = (4, "a", "b", 17, 1)
    assert reassembler.add(0, key, 16, 1, b"b" * 8, 17) is None
    assert reassembler.add(0, key, 32, 0, b"d" * 8, 17) is None
    assert reassembler.add(0, key, 0, 1, b"a" * 16, 17) is None  # gap 24..32 remains
    assert reassembler.add(0, key, 16, 1, b"z" * 8, 17) is None  # duplicate: ignored
    assert reassembler.add(0, key, 24, 1, b"c" * 8, 17) == (17, b"a" * 16 + b"b" * 8 + b"c" * 8
                                                            + b"d" * 8)
    assert stats["fragments_duplicate"] == 1 and reassembler.held == 0


# --- real captures ----------------------------------------------------------------

TSHARK_FIELDS = ["frame.number", "frame.time_epoch", "frame.protocols", "ip.src", "ip.dst",
                 "ipv6.src", "ipv6.dst", "udp.srcport", "udp.dstport", "udp.payload",
                 "tcp.srcport", "tcp.dstport", "tcp.seq_raw", "tcp.payload"]


def pcap_bytes(linktype: int, frames: list[bytes]) -> bytes:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype)]
    for i, frame in enumerate(frames):
        out.append(struct.pack("<IIII", 1_700_000_000 + i, i, len(frame), len(frame)) + frame)
    return b"".join(out)


def tshark_transport(path: Path) -> dict[int, tuple]:
    """Per frame number: what tshark dissects as the innermost UDP/TCP packet.

    Frames with ICMP are left out: tshark also dissects the datagram an ICMP
    error quotes, which was never sent as such.
    """
    command = [require_tool("tshark"), "-n", "-r", str(path), "-T", "fields", "-E", "occurrence=l"]
    for field in TSHARK_FIELDS:
        command += ["-e", field]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    frames = {}
    for line in out.splitlines():
        v = dict(zip(TSHARK_FIELDS, line.split("\t")))
        protocols = v["frame.protocols"].split(":")
        if "icmp" in protocols or "icmpv6" in protocols:
            continue
        if v["udp.srcport"]:
            proto, transport = UDP_PROTO, "udp"
        elif v["tcp.srcport"]:
            proto, transport = TCP_PROTO, "tcp"
        else:
            continue
        ip = "ip" if [p for p in protocols if p in ("ip", "ipv6")][-1] == "ip" else "ipv6"
        frames[int(v["frame.number"])] = (
            v["frame.time_epoch"], proto, v[ip + ".src"], int(v[transport + ".srcport"]),
            v[ip + ".dst"], int(v[transport + ".dstport"]), v[transport + ".payload"],
            int(v["tcp.seq_raw"] or 0))
    return frames


def decoded(path: Path) -> dict[int, tuple]:
    """Per frame number: what PacketDecoder gives, in tshark_transport's terms."""
    decoder = PacketDecoder()
    frames = {}
    for number, (ts, linktype, data) in enumerate(open_capture(path), 1):
        pkt = decoder.decode(ts, linktype, data)
        if pkt is not None:
            frames[number] = (f"{ts // 10**9}.{ts % 10**9:09d}", pkt.proto, pkt.src, pkt.sport,
                              pkt.dst, pkt.dport, pkt.payload.hex(), pkt.seq)
    return frames


@pytest.mark.parametrize("path", real_pcaps(), ids=lambda p: p.name)
def test_real_capture_decodes_as_tshark_decodes_it(path):
    ours = decoded(path)
    assert ours, "nothing decoded"
    assert ours == tshark_transport(path)


def test_real_captures_are_there(real_pcaps_dir):
    assert len(real_pcaps()) >= 20


def test_real_capture_encapsulations(real_pcaps_dir):
    ipip = decoded(REAL_PCAPS / "irontec_sngrep__tests_ipip.pcap")
    assert len(ipip) == 4 and all(p[1] == TCP_PROTO for p in ipip.values())
    # Frames 2 and 3 are IP-in-IP: the inner header's addresses, not the tunnel's.
    assert [ipip[n][2:6] for n in (2, 3)] == [("10.15.193.31", 33093, "10.15.197.103", 5090)] * 2
    pppoe = decoded(REAL_PCAPS / "seladb_PcapPlusPlus__sip_reqs.pcap")
    assert len(pppoe) == 4 and all(p[1] == UDP_PROTO for p in pppoe.values())
    assert pppoe[2][2:6] == ("178.45.73.241", 1032, "213.192.59.75", 5060)
    raw = decoded(REAL_PCAPS / "sipcapture_heplify__testdata_ipip0.pcap")
    assert len(raw) == 8 and all(p[1] == UDP_PROTO for p in raw.values())


@pytest.mark.parametrize("path", real_pcaps(), ids=lambda p: p.name)
def test_fast_path_agrees_with_the_layers_on_real_traffic(path):
    """Ethernet and one 802.1Q tag take the fast path; an 802.1ad tag does not."""
    decoders = [PacketDecoder() for _ in range(3)]
    for ts, linktype, data in open_capture(path):
        if linktype != 1:
            continue
        variants = [data, data[:12] + b"\x81\x00\x00\x07" + data[12:],
                    data[:12] + b"\x88\xa8\x00\x07" + data[12:]]
        results = [outcome(d, ts, v) for d, v in zip(decoders, variants)]
        assert results[0] == results[1] == results[2]


def outcome(decoder, ts, data):
    try:
        return decoder.decode(ts, 1, data)
    except DecodeError as exc:
        return type(exc)


def test_a_set_of_too_many_pieces_is_dropped():
    stats = Counter()
    reassembler = FragmentReassembler(10, 10, 1 << 20, stats)
    key = (4, "a", "b", 17, 1)
    for i in range(2048):  # every other 8-byte block: nothing merges
        assert reassembler.add(0, key, i * 16, 1, b"x" * 8, 17) is None
    with pytest.raises(DecodeError, match="more than 2048 fragments"):
        reassembler.add(0, key, 2048 * 16, 1, b"x" * 8, 17)
    assert not reassembler.sets and reassembler.held == 0
