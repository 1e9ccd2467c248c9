"""The live capture filter lets through what issue 11's decoders open: SIP over SCTP,
IPv6 extension headers in any order (a fragment header after others), GRE/ERSPAN,
IP-in-IP and the UDP tunnels (GTP-U, VXLAN, Geneve, HEP); and the same decoder turns
what a live capture gives into SIP. The compiled filter runs in the kernel's BPF
semantics (tests/test_live_capture.py's run_bpf); the last test is a real capture.
"""

import os
import socket

import pytest
from scapy.contrib.gtp import GTP_U_Header
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import GRE, IP, TCP, UDP
from scapy.layers.inet6 import (IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.sctp import SCTP, SCTPChunkData
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from conftest import missing
from siptrace.capture.live import (DLT_RAW, LINKTYPE_ETHERNET, WHOLE_PACKET, LiveCapture,
                                   build_filter, compile_program)
from test_live_capture import PEER, PROXY, frames, options, read_until, run_bpf, sip_messages

PORT = 15260
OTHER = "192.0.2.77"  # neither the proxy nor anything the filter names


@pytest.mark.parametrize("linktype", [LINKTYPE_ETHERNET, DLT_RAW])
def test_compiled_filter_passes_the_encapsulations_and_extension_headers(linktype):
    mirror = ("127.0.0.1", 9060)
    program = compile_program(build_filter([(PROXY, PORT), ("2001:db8::5", PORT)],
                                           exclude=[mirror]), linktype)
    sip = Raw(options("f1"))
    frag = IPv6ExtHdrFragment(nh=17, offset=100, m=0, id=7)
    kept = [
        frames(linktype, IP(src=PEER, dst=PROXY), SCTP(sport=PORT, dport=PORT),
               SCTPChunkData(data=b"x")),
        # fragment header after hop-by-hop, routing, destination options: any host
        frames(linktype, IPv6(src="2001:db8::9", dst="2001:db8::8"), IPv6ExtHdrHopByHop(),
               IPv6ExtHdrRouting(), IPv6ExtHdrDestOpt(), frag, Raw(b"y" * 16)),
        frames(linktype, IPv6(src="2001:db8::9", dst="2001:db8::8"), IPv6ExtHdrDestOpt(),
               IPv6ExtHdrFragment(nh=17, offset=0, m=1, id=8), UDP(dport=5060), sip),
        frames(linktype, IP(src=OTHER, dst="192.0.2.78"), UDP(sport=2152, dport=2152),
               GTP_U_Header(), IP(src=PEER, dst=PROXY), UDP(dport=PORT), sip),
        frames(linktype, IP(src=OTHER, dst="192.0.2.78"), UDP(sport=1234, dport=4789),
               VXLAN(), Ether(src="02:00:00:00:00:03", dst="02:00:00:00:00:04"), IP(), UDP(),
               sip),
        frames(linktype, IP(src=OTHER, dst="192.0.2.78"), UDP(dport=6081), Raw(bytes(8))),
        frames(linktype, IP(src=OTHER, dst="192.0.2.78"), UDP(dport=9060), Raw(b"HEP3")),
        frames(linktype, IP(src=OTHER, dst="192.0.2.78"), GRE(proto=0x88BE), Raw(bytes(60))),
        frames(linktype, IPv6(src="2001:db8::9", dst="2001:db8::8"), GRE(), Raw(bytes(60))),
        frames(linktype, IP(src=OTHER, dst="192.0.2.78", proto=4), IP(), UDP(), sip),
    ]
    dropped = [
        frames(linktype, IP(src=PEER, dst=PROXY), SCTP(sport=40000, dport=PORT + 1),
               SCTPChunkData(data=b"x")),
        frames(linktype, IP(src=OTHER, dst="192.0.2.78"), SCTP(sport=PORT, dport=PORT)),
        frames(linktype, IP(src=OTHER, dst="192.0.2.78"), UDP(sport=2152, dport=2153)),
        frames(linktype, IP(src=PROXY, dst=mirror[0]), UDP(dport=mirror[1]), Raw(b"HEP3")),
        frames(linktype, IPv6(src="2001:db8::9", dst="2001:db8::8", nh=50), Raw(bytes(40))),
        frames(linktype, IPv6(src="2001:db8::9", dst="2001:db8::8"), TCP(dport=80)),
    ]
    if linktype == LINKTYPE_ETHERNET:  # MPLS, an Ethernet pseudowire in it too
        kept += [bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x8847)
                       / MPLS(label=100, s=1) / IP(src=OTHER, dst="192.0.2.78")
                       / UDP(dport=PORT) / sip),
                 bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x8848)
                       / MPLS(label=16, s=0) / MPLS(label=2002, s=1)
                       / Ether(src="02:00:00:00:00:03", dst="02:00:00:00:00:04")
                       / IP(src=OTHER, dst="192.0.2.78") / UDP(dport=PORT) / sip),
                 # QinQ, both tags in the frame (802.1ad outer, 802.1Q inner)
                 bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x88A8)
                       / Dot1Q(vlan=10, type=0x8100) / Dot1Q(vlan=20)
                       / IP(src=PEER, dst=PROXY) / UDP(dport=PORT) / sip)]
    for packet in kept:
        assert run_bpf(program, packet) == WHOLE_PACKET, packet.hex()
    for packet in dropped:
        assert run_bpf(program, packet) == 0, packet.hex()


def test_live_capture_decodes_sip_inside_vxlan_gtpu_and_mpls():
    """Datagrams sent over loopback to the VXLAN and GTP-U ports, and an MPLS frame put
    on lo, carrying SIP for the proxy: the filter passes them, the decoder opens them
    (inner addresses)."""
    if os.geteuid() != 0:
        missing("live capture needs root (CAP_NET_RAW)")
    inner = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                  / IP(src="10.20.0.1", dst="10.20.0.2") / UDP(sport=5060, dport=5060)
                  / Raw(options("vx1")))
    gtp_inner = bytes(GTP_U_Header(teid=9) / IP(src="10.20.0.3", dst="10.20.0.4")
                      / UDP(sport=5060, dport=5060) / Raw(options("gtp1")))
    receivers = []
    for port in (4789, 2152):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind((PROXY, port))
        receivers.append(receiver)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind((PEER, 0))
    mpls = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x8847)
                 / MPLS(label=100, s=1) / IP(src="10.20.0.5", dst="10.20.0.6")
                 / UDP(sport=5060, dport=5060) / Raw(options("mpls1")))
    frames_out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    frames_out.bind(("lo", 0))
    try:
        with LiveCapture(["lo"], build_filter([(PROXY, PORT)])) as capture:
            sender.sendto(bytes(VXLAN(vni=5)) + inner, (PROXY, 4789))
            sender.sendto(gtp_inner, (PROXY, 2152))
            frames_out.send(mpls)  # on lo only: an MPLS frame, as a mirror port gives them
            records = read_until(capture, 3)
    finally:
        sender.close()
        frames_out.close()
        for receiver in receivers:
            receiver.close()
    found = {(w.src, w.dst, w.sip.call_id) for w in sip_messages(records)}
    assert found == {("10.20.0.1", "10.20.0.2", "vx1"), ("10.20.0.3", "10.20.0.4", "gtp1"),
                     ("10.20.0.5", "10.20.0.6", "mpls1")}
