"""Crafted captures of SIP where operators capture it beyond plain links (issue 11):
GTP-U on a mobile core, SCTP, VXLAN/Geneve overlays, ERSPAN mirror sessions, MPLS
Ethernet pseudowires, HEP as a Homer collector receives it.

Built like crafted.py (scapy, fixed bytes, deterministic; documentation addresses).
Each fixture starts at its own hour of 2024-01-01 (hours 20 and up; crafted.py uses
1-19).
"""

import socket
import struct

from scapy.contrib.erspan import ERSPAN_I, ERSPAN_II, ERSPAN_III, ERSPAN_PlatformSpecific
from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.contrib.gtp import GTPEchoRequest, GTPEchoResponse, GTPHeader
from scapy.contrib.gtp import GTP_U_Header, GTPPDUSessionContainer
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import GRE, IP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.sctp import (SCTP, SCTPChunkCookieAck, SCTPChunkCookieEcho, SCTPChunkData,
                               SCTPChunkIData, SCTPChunkInit, SCTPChunkInitAck,
                               SCTPChunkSACK)
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

from capfile import pcap_bytes
from crafted import LINKTYPE_ETHERNET, MAC_A, MAC_B, ether, stamped, udp_call
from sipcalls import Endpoint, basic_call
from siptrace.mirror.hep import auth_key_chunk, encode_fields

ETHERTYPE_MPLS = 0x8847
ETHERTYPE_ERSPAN_II = 0x88BE  # type I too (no GRE sequence number)
ETHERTYPE_ERSPAN_III = 0x22EB
ETHERTYPE_TEB = 0x6558
GTPU_PORT, VXLAN_PORT, GENEVE_PORT, HEP_PORT = 2152, 4789, 6081, 9060
PDU_SESSION_CONTAINER = 0x85  # GTP-U extension header type (TS 29.281 5.2.1)
SCTP_PPID_SIP = 0  # RFC 4168: no PPID is registered for SIP; 0 is what stacks send
IPV6_FRAGMENT_PAYLOAD = 1232 // 8 * 8  # the IPv6 minimum MTU less headers, as a UE sends

# Mobile core: eNodeB and SGW/UPF on the S1-U/N3 side; UE and P-CSCF inside (IPv6).
ENB, SGW = "203.0.113.11", "203.0.113.12"
UE, PCSCF = Endpoint("2001:db8:e::7", 5060), Endpoint("2001:db8:5::5", 5060)
# Overlays: two hypervisors (VTEPs) carrying tenant traffic.
VTEP_A, VTEP_B = "203.0.113.21", "203.0.113.22"
A4, B4 = Endpoint("192.0.2.10", 5060), Endpoint("198.51.100.20", 5060)
# Mirror sessions: a switch sending to a collector.
SWITCH, COLLECTOR = "203.0.113.31", "203.0.113.32"
# Pseudowire MAC addresses: Wireshark's CW heuristic takes a first nibble 0 for a
# control word, so the frame without one has a destination MAC not starting with 0.
MAC_PW_A, MAC_PW_B = "52:54:00:00:00:0a", "52:54:00:00:00:14"


def _by_caller(pkt: Packet) -> bool:
    inner = pkt[IPv6] if IPv6 in pkt else pkt[IP]
    return inner.src in (A4.ip, UE.ip)


def _outer(src: str, dst: str, forward: bool, ident: int) -> Packet:
    if not forward:
        src, dst = dst, src
    return IP(src=src, dst=dst, ttl=64, id=ident)


def _gtpu(inner: Packet | bytes, seq: int, uplink: bool, extension: bool) -> bytes:
    teid = 0x1000 if uplink else 0x2000
    if extension:  # PDU session container: QFI 5 (IMS signalling), sequence number too
        gtp = (GTP_U_Header(teid=teid, S=1, E=1, seq=seq, next_ex=PDU_SESSION_CONTAINER)
               / GTPPDUSessionContainer(type=1 if uplink else 0, QFI=5))
    else:
        gtp = GTP_U_Header(teid=teid, S=1, seq=seq)
    return ether(_outer(ENB, SGW, uplink, seq) / UDP(sport=GTPU_PORT, dport=GTPU_PORT)
                 / gtp / inner)


def build_gtpu_ipv6() -> bytes:
    """VoLTE: SIP over IPv6/UDP in GTPv1-U (S1-U), sequence numbers on every packet,
    a PDU session container extension header on every other one, an echo exchange."""
    frames = []
    for i, pkt in enumerate(udp_call("gtpu-volte-4a21@[2001:db8:e::7]", UE, PCSCF)):
        frames.append(_gtpu(pkt, 100 + i, _by_caller(pkt), extension=i % 2 == 1))
    echo = [ether(_outer(ENB, SGW, True, 99) / UDP(sport=GTPU_PORT, dport=GTPU_PORT)
                  / GTPHeader(teid=0, S=1, seq=9) / GTPEchoRequest()),
            ether(_outer(ENB, SGW, False, 99) / UDP(sport=GTPU_PORT, dport=GTPU_PORT)
                  / GTPHeader(teid=0, S=1, seq=9) / GTPEchoResponse())]
    frames[2:2] = echo
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 20))


def _ipv6_fragments(pkt: Packet, ident: int, size: int = IPV6_FRAGMENT_PAYLOAD
                    ) -> list[Packet]:
    payload = bytes(pkt)[40:]
    out = []
    for offset in range(0, len(payload), size):
        more = offset + size < len(payload)
        out.append(IPv6(src=pkt[IPv6].src, dst=pkt[IPv6].dst, hlim=64)
                   / IPv6ExtHdrFragment(nh=17, offset=offset // 8, m=int(more), id=ident)
                   / Raw(payload[offset:offset + size]))
    return out


def build_gtpu_ipv6_fragments() -> bytes:
    """GTP-U carrying IPv6 fragments: the UE's INVITE (3.4 KB SDP) in 3 fragments,
    arriving 2,3,1, each in its own G-PDU; the 200 OK in 2 halves, in order."""
    packets = udp_call("gtpu-frag-77c0@[2001:db8:e::7]", UE, PCSCF, ice_candidates=30)
    invite = _ipv6_fragments(packets[0], 0x7001)
    ok = _ipv6_fragments(packets[3], 0x7002, (len(packets[3][UDP]) + 15) // 16 * 8)
    assert len(invite) == 3 and len(ok) == 2, (len(invite), len(ok))
    inner = [invite[1], invite[2], invite[0]] + packets[1:3] + ok + packets[4:]
    frames = [_gtpu(p, 200 + i, _by_caller(p), extension=False)
              for i, p in enumerate(inner)]
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 21))


def build_vxlan() -> bytes:
    """A tenant's call through VXLAN (VNI 5001) between two VTEPs, inner 802.1Q tag."""
    frames = []
    for i, pkt in enumerate(udp_call("vxlan-3b9f@192.0.2.10", A4, B4)):
        forward = _by_caller(pkt)
        inner = (Ether(src=MAC_A, dst=MAC_B) if forward else Ether(src=MAC_B, dst=MAC_A))
        frames.append(ether(_outer(VTEP_A, VTEP_B, forward, 300 + i)
                            / UDP(sport=49152 + i, dport=VXLAN_PORT) / VXLAN(vni=5001)
                            / inner / Dot1Q(vlan=10) / pkt))
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 22))


def build_geneve() -> bytes:
    """Geneve (VNI 7) carrying Ethernet, with one 8-byte option on every packet, and
    two packets carrying IPv4 directly (protocol type 0x0800, no options)."""
    frames = []
    for i, pkt in enumerate(udp_call("geneve-c01d@192.0.2.10", A4, B4)):
        forward = _by_caller(pkt)
        if i in (2, 5):
            geneve = GENEVE(vni=7, proto=0x0800) / pkt
        else:
            option = GeneveOptions(classid=0x0102, type=0x80, data=b"\x00\x00\x00\x2a")
            inner = (Ether(src=MAC_A, dst=MAC_B) if forward else Ether(src=MAC_B, dst=MAC_A))
            geneve = GENEVE(vni=7, proto=ETHERTYPE_TEB, options=[option]) / inner / pkt
        frames.append(ether(_outer(VTEP_A, VTEP_B, forward, 400 + i)
                            / UDP(sport=50000 + i, dport=GENEVE_PORT) / geneve))
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 23))


def _mirrored(pkt: Packet) -> Packet:
    forward = _by_caller(pkt)
    return Ether(src=MAC_A, dst=MAC_B) if forward else Ether(src=MAC_B, dst=MAC_A)


def build_erspan_i() -> bytes:
    """ERSPAN type I: GRE 0x88BE without a sequence number, the frame right after."""
    frames = [ether(_outer(SWITCH, COLLECTOR, True, 500 + i) / GRE(proto=ETHERTYPE_ERSPAN_II)
                    / ERSPAN_I() / _mirrored(p) / p)
              for i, p in enumerate(udp_call("erspan1-5d3a@192.0.2.10", A4, B4))]
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 24))


def build_erspan_ii() -> bytes:
    """ERSPAN type II: GRE with sequence numbers, 8-byte ERSPAN header (session 17)."""
    frames = [ether(_outer(SWITCH, COLLECTOR, True, 600 + i)
                    / GRE(proto=ETHERTYPE_ERSPAN_II, seqnum_present=1, sequence_number=i)
                    / ERSPAN_II(session_id=17, vlan=100) / _mirrored(p) / p)
              for i, p in enumerate(udp_call("erspan2-0e84@192.0.2.10", A4, B4))]
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 25))


def build_erspan_iii() -> bytes:
    """ERSPAN type III (GRE 0x22EB): 12-byte header; every other packet with the
    8-byte platform-specific subheader (O bit)."""
    frames = []
    for i, p in enumerate(udp_call("erspan3-91f2@192.0.2.10", A4, B4)):
        gre = GRE(proto=ETHERTYPE_ERSPAN_III, seqnum_present=1, sequence_number=i)
        if i % 2:
            erspan = (ERSPAN_III(session_id=18, timestamp=1000 + i, o=1)
                      / ERSPAN_PlatformSpecific(platf_id=3))
        else:
            erspan = ERSPAN_III(session_id=18, timestamp=1000 + i)
        frames.append(ether(_outer(SWITCH, COLLECTOR, True, 700 + i) / gre / erspan
                            / _mirrored(p) / p))
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 26))


def build_mpls_pw() -> bytes:
    """MPLS Ethernet pseudowires (RFC 4448): two labels (transport 1001, then the PW
    label); one call with the control word (RFC 4385, sequence number) on PW label 2001,
    one without on 2002."""
    frames = []
    for cw, call_id in ((True, "mplspw-cw-6b11@192.0.2.10"),
                        (False, "mplspw-nocw-2f70@192.0.2.10")):
        for i, p in enumerate(udp_call(call_id, A4, B4)):
            forward = _by_caller(p)
            macs = (MAC_PW_A, MAC_PW_B) if forward else (MAC_PW_B, MAC_PW_A)
            pw_label = 2001 if cw else 2002
            labels = MPLS(label=1001, s=0, ttl=64) / MPLS(label=pw_label, s=1, ttl=64)
            control_word = Raw(struct.pack("!I", i + 1)) if cw else Raw(b"")
            frames.append(bytes(Ether(src=MAC_A, dst=MAC_B, type=ETHERTYPE_MPLS) / labels
                                / control_word / Ether(src=macs[0], dst=macs[1]) / p))
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(frames, 27))


def _sctp_packet(forward: bool, tag: int, *chunks) -> bytes:
    src, dst = (A4, B4) if forward else (B4, A4)
    pkt = IP(src=src.ip, dst=dst.ip, ttl=64, id=800) / SCTP(sport=src.port, dport=dst.port,
                                                           tag=tag)
    for chunk in chunks:
        pkt = pkt / chunk
    return ether(pkt)


def _data(tsn: int, data: bytes, begin: bool = True, end: bool = True, stream: int = 0,
          ssn: int = 0) -> Packet:
    return SCTPChunkData(tsn=tsn, stream_id=stream, stream_seq=ssn, proto_id=SCTP_PPID_SIP,
                         beginning=int(begin), ending=int(end), data=data)


def build_sctp() -> bytes:
    """SIP over SCTP (RFC 4168) on port 5060: association set-up; the INVITE as a user
    message in 3 DATA fragments (two packets: B+middle, then E); 100 and 180 as two DATA
    chunks of one packet with a SACK; SACK-only packets; the 200 OK as I-DATA (RFC 8260)
    in 2 fragments; ACK, BYE, 200 unfragmented, BYE on stream 1."""
    messages = [raw for _, raw in basic_call("sctp-4168-aa01@192.0.2.10", A4, B4, "SCTP")]
    invite, trying, ringing, ok, ack, bye, bye_ok = messages
    a_tag, b_tag = 0x0A0A0A0A, 0x0B0B0B0B
    third = len(invite) // 3
    half = len(ok) // 2
    packets = [
        _sctp_packet(True, 0, SCTPChunkInit(init_tag=b_tag ^ 1, a_rwnd=65536, n_out_streams=2,
                                            n_in_streams=2, init_tsn=1000)),
        _sctp_packet(False, a_tag, SCTPChunkInitAck(init_tag=a_tag ^ 1, a_rwnd=65536,
                                                    n_out_streams=2, n_in_streams=2,
                                                    init_tsn=5000)),
        _sctp_packet(True, b_tag, SCTPChunkCookieEcho(cookie=b"cookie-0001")),
        _sctp_packet(False, a_tag, SCTPChunkCookieAck()),
        _sctp_packet(True, b_tag, _data(1000, invite[:third], end=False),
                     _data(1001, invite[third:2 * third], begin=False, end=False)),
        _sctp_packet(True, b_tag, _data(1002, invite[2 * third:], begin=False)),
        _sctp_packet(False, a_tag, SCTPChunkSACK(cumul_tsn_ack=1002, a_rwnd=65536),
                     _data(5000, trying), _data(5001, ringing, ssn=1)),
        _sctp_packet(True, b_tag, SCTPChunkSACK(cumul_tsn_ack=5001, a_rwnd=65536)),
        _sctp_packet(False, a_tag, SCTPChunkIData(tsn=5002, stream_id=0, message_id=2,
                                                  ppid_fsn=SCTP_PPID_SIP, beginning=1,
                                                  ending=0, data=ok[:half])),
        _sctp_packet(False, a_tag, SCTPChunkIData(tsn=5003, stream_id=0, message_id=2,
                                                  ppid_fsn=1, beginning=0, ending=1,
                                                  data=ok[half:])),
        _sctp_packet(True, b_tag, SCTPChunkSACK(cumul_tsn_ack=5003, a_rwnd=65536),
                     _data(1003, ack, ssn=1)),
        _sctp_packet(True, b_tag, _data(1004, bye, stream=1)),
        _sctp_packet(False, a_tag, SCTPChunkSACK(cumul_tsn_ack=1004, a_rwnd=65536),
                     _data(5004, bye_ok, stream=1)),
    ]
    return pcap_bytes(LINKTYPE_ETHERNET, stamped(packets, 28))


# HEP: what a Homer collector (203.0.113.41:9060) receives from two agents. The
# messages' own times are 1.5 s before the capture time of the HEP packet that
# carries them (an agent's queue), so the row's date is visibly HEP's.
HEP_AGENT_V4, HEP_AGENT_V6, HOMER = "203.0.113.40", "203.0.113.42", "203.0.113.41"
HEP_DELAY_NS = 1_500_000_000
A6, B6 = Endpoint("2001:db8::10", 5060), Endpoint("2001:db8:1::20", 5061)


def hep_records(hour: int) -> list[tuple[int, bytes, str, int, str, int, str, bytes, int]]:
    """The messages the HEP fixtures carry, with the capture time of their HEP packet:
    (capture ts_ns, transport, family, src, sport, dst, dport, raw, message ts_ns)."""
    out = []
    calls = [("udp", A4, B4, "hep-udp4-12ab@192.0.2.10"),
             ("tcp", A6, B6, "hep-tcp6-34cd@[2001:db8::10]")]
    times = iter(ts for ts, _ in stamped([b""] * 14, hour))
    for transport, a, b, call_id in calls:
        for by_a, raw in basic_call(call_id, a, b, transport.upper()):
            src, dst = (a, b) if by_a else (b, a)
            ts = next(times)
            out.append((ts, transport, a.family, src.ip, src.port, dst.ip, dst.port, raw,
                        ts - HEP_DELAY_NS))
    return out


def _hep_frame(payload: bytes, agent: str, ident: int) -> bytes:
    return ether(IP(src=agent, dst=HOMER, ttl=64, id=ident)
                 / UDP(sport=40000, dport=HEP_PORT) / Raw(payload))


def build_hep3() -> bytes:
    """HEPv3 as siptrace's own encoder writes it (capture id 2001, auth key): a call over
    UDP/IPv4 and one over TCP/IPv6, then an RTCP report in HEP (not SIP, skipped)."""
    frames = []
    records = hep_records(29)
    for i, (ts, transport, family, src, sport, dst, dport, raw, msg_ts) in enumerate(records):
        call_id = raw.split(b"Call-ID: ")[1].split(b"\r\n")[0].decode()
        payload = encode_fields(msg_ts, transport, family, src, sport, dst, dport, raw,
                                call_id, 2001, auth_key_chunk("sesame"))
        frames.append((ts, _hep_frame(payload, HEP_AGENT_V4 if family == 4 else HEP_AGENT_V6,
                                      900 + i)))
    rtcp = encode_fields(records[-1][8], "udp", 4, A4.ip, 49171, B4.ip, 3457,
                         bytes.fromhex("80c80006") + bytes(24), "", 2001, b"")
    rtcp = rtcp.replace(bytes.fromhex("0000000b000701"), bytes.fromhex("0000000b000705"))
    frames.append((records[-1][0] + 1_000_000, _hep_frame(rtcp, HEP_AGENT_V4, 999)))
    return pcap_bytes(LINKTYPE_ETHERNET, frames)


def encode_hep2(msg_ts: int, transport: str, family: int, src: str, sport: int, dst: str,
                dport: int, raw: bytes, capture_id: int) -> bytes:
    """HEPv2 as Kamailio's siptrace (hep_version=2) writes it: hep_hdr, addresses,
    hep_timehdr (seconds, microseconds little-endian, capture id, padding), payload."""
    af, size = (socket.AF_INET, 4) if family == 4 else (socket.AF_INET6, 16)
    proto = {"udp": 17, "tcp": 6}[transport]
    header = struct.pack("!BBBBHH", 2, 8 + 2 * size, 2 if family == 4 else 10, proto,
                         sport, dport)
    addresses = socket.inet_pton(af, src) + socket.inet_pton(af, dst)
    seconds, micros = divmod(msg_ts // 1000, 1_000_000)
    # sizeof(struct hep_timehdr) is 12: the uint16 capture id is padded to 4 bytes
    return header + addresses + struct.pack("<IIHxx", seconds, micros, capture_id) + raw


def build_hep2() -> bytes:
    """HEPv2 (Kamailio/OpenSIPS layout): the same two calls as hep3.pcap."""
    frames = []
    for i, (ts, transport, family, src, sport, dst, dport, raw, msg_ts) in enumerate(
            hep_records(30)):
        payload = encode_hep2(msg_ts, transport, family, src, sport, dst, dport, raw, 2002)
        frames.append((ts, _hep_frame(payload, HEP_AGENT_V4 if family == 4 else HEP_AGENT_V6,
                                      950 + i)))
    return pcap_bytes(LINKTYPE_ETHERNET, frames)
