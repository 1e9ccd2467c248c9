"""Issue 11's encapsulations through the one decoder: GTP-U, VXLAN, Geneve, ERSPAN, MPLS
pseudowires, SIP over SCTP (reassembly), HEPv1/v2/v3. What each gives, what it counts,
the bounds, and that every packet keeps exactly one fate on hostile input.

Wireshark's view of the fixtures is checked by tests/test_fidelity.py; this file checks
the decoder's own contracts with packets built by scapy.
"""

import gzip
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.contrib.geneve import GENEVE
from scapy.contrib.gtp import GTP_U_Header, GTPHeader, GTPEchoRequest, GTPPDUSessionContainer
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.sctp import (SCTP, SCTPChunkData, SCTPChunkHeartbeatReq, SCTPChunkIData,
                               SCTPChunkSACK)
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from conftest import PCAPS
from siptrace.capture.files import CaptureFile
from siptrace.decode.layers import PacketDecoder
from siptrace.decode.tunnels import UDP_TUNNELS
from siptrace.extract import FATES, SipExtractor
from siptrace.mirror.hep import encode_fields

TS = 1_700_000_000_000_000_000


def sip(call_id: str = "t1", extra: bytes = b"") -> bytes:
    return (b"OPTIONS sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n"
            b"From: <sip:alice@example.org>;tag=f1\r\nTo: <sip:bob@example.org>\r\n"
            b"Call-ID: " + call_id.encode() + b"\r\nCSeq: 1 OPTIONS\r\n" + extra
            + b"Content-Length: 0\r\n\r\n")


def ether(**kw):
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", **kw)


def outer_udp(dport: int, sport: int = 40000):
    return ether() / IP(src="203.0.113.1", dst="203.0.113.2") / UDP(sport=sport, dport=dport)


INNER4 = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5060, dport=5070)
INNER6 = IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=5060, dport=5070)


def feed_all(packets, extractor=None):
    """(extractor, wire messages) after feeding the packets and finishing."""
    extractor = extractor or SipExtractor()
    out = []
    for i, pkt in enumerate(packets):
        out += extractor.feed(TS + i * 1000, 1, bytes(pkt))
    out += extractor.finish()
    return extractor, out


def assert_one_fate_each(extractor, packets: int) -> dict:
    fates = extractor.fates()
    assert list(fates) == list(FATES)
    assert sum(fates.values()) == packets == extractor.decoder.stats["packets"], fates
    return fates


# -- GTP-U -----------------------------------------------------------------------------


def test_gtpu_with_sequence_number_and_two_extension_headers():
    gtp = (GTP_U_Header(teid=7, S=1, E=1, seq=99, next_ex=0x85)
           / GTPPDUSessionContainer(type=1, QFI=9, NextExtHdr=0x40)
           / Raw(bytes([1, 0x13, 0xC4, 0])))  # UDP port extension (type 0x40), last one
    ex, out = feed_all([outer_udp(2152, 2152) / gtp / INNER6 / sip()])
    assert [(w.transport, w.family, w.src, w.sport, w.dst, w.dport) for w in out] == [
        ("udp", 6, "2001:db8::1", 5060, "2001:db8::2", 5070)]
    assert ex.decoder.stats["gtpu"] == 1
    assert assert_one_fate_each(ex, 1)["sip_udp"] == 1


def test_gtpu_signalling_and_gtp_prime_stay_udp_that_is_not_sip():
    echo = outer_udp(2152, 2152) / GTPHeader(teid=0, S=1, seq=1) / GTPEchoRequest()
    prime = outer_udp(2152, 2152) / Raw(bytes([0x0E, 0xFF, 0, 4, 0, 0, 0, 0]) + sip())
    ex, out = feed_all([echo, prime])
    assert out == []
    assert ex.decoder.stats["gtpu_signalling"] == 1
    assert ex.decoder.stats["gtpu_not_gtpu"] == 1
    assert assert_one_fate_each(ex, 2)["udp_not_sip"] == 2


def test_gtpu_cut_inside_its_headers_is_cut_short_not_a_traceback():
    whole = bytes(outer_udp(2152, 2152) / GTP_U_Header(teid=1, S=1, E=1, next_ex=0x85)
                  / GTPPDUSessionContainer(type=1, QFI=5) / INNER4 / sip())
    gtp_at = 14 + 20 + 8
    # the UDP and IP lengths are kept, the GTP length points past the datagram
    cut = bytearray(whole)
    struct.pack_into("!H", cut, gtp_at + 2, 5000)
    ex, out = feed_all([bytes(cut)])
    assert out == []
    assert assert_one_fate_each(ex, 1)["cut_short"] == 1


def test_gtpu_extension_header_of_length_zero_is_malformed():
    gtp = GTP_U_Header(teid=1, E=1, next_ex=0x85, gtp_type=255) / Raw(b"\x00\x00\x00\x00")
    ex, out = feed_all([outer_udp(2152, 2152) / gtp / INNER4 / sip()])
    assert out == []
    assert assert_one_fate_each(ex, 1)["malformed"] == 1


def test_gtpu_carrying_sip_over_tcp_goes_through_the_stream_framer():
    inner = IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40001, dport=5060, seq=1000,
                                                    flags="PA")
    ex, out = feed_all([outer_udp(2152, 2152) / GTP_U_Header(teid=1) / inner / sip("tcp1")])
    assert [(w.transport, w.sip.call_id) for w in out] == [("tcp", "tcp1")]
    assert assert_one_fate_each(ex, 1)["tcp_segments"] == 1


def test_tunnels_in_tunnels_are_opened_up_to_the_bound():
    # VXLAN -> GTP-U -> Geneve(IPv4) -> SIP: three UDP tunnels
    pkt = (outer_udp(4789) / VXLAN(vni=1) / ether()
           / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=2152, dport=2152)
           / GTP_U_Header(teid=2) / IP(src="198.51.100.1", dst="198.51.100.2")
           / UDP(sport=1, dport=6081) / GENEVE(proto=0x0800) / INNER4 / sip("deep"))
    ex, out = feed_all([pkt])
    assert [w.sip.call_id for w in out] == ["deep"]
    assert (ex.decoder.stats["vxlan"], ex.decoder.stats["gtpu"], ex.decoder.stats["geneve"]) == (
        1, 1, 1)
    assert_one_fate_each(ex, 1)
    # VXLAN in VXLAN, more times than MAX_UDP_TUNNELS: stopped, the packet still has a fate
    nested = INNER4 / sip("never")
    for _ in range(8):
        nested = IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1, dport=4789) / VXLAN() / ether(
            ) / nested
    ex, out = feed_all([ether() / nested])
    assert out == [] and ex.decoder.stats["udp_tunnels_too_deep"] == 1
    assert assert_one_fate_each(ex, 1)["udp_not_sip"] == 1


def test_ordinary_sip_never_pays_for_the_tunnel_check():
    """SIP datagrams (here every datagram of a real capture) never reach decapsulate."""

    class Counting(PacketDecoder):
        calls = 0

        def decapsulate(self, pkt):
            Counting.calls += 1
            return super().decapsulate(pkt)

    extractor = SipExtractor(decoder=Counting())
    for ts, linktype, data in CaptureFile(PCAPS / "kamailio-udp.pcap"):
        extractor.feed(ts, linktype, data)
    assert extractor.stats["sip_messages"] == 65 and Counting.calls == 0
    # ... and a non-SIP datagram on a tunnel port does
    extractor.feed(TS, 1, bytes(outer_udp(4789) / VXLAN() / ether() / INNER4 / sip()))
    assert Counting.calls == 1


# -- VXLAN, Geneve, MPLS ----------------------------------------------------------------


def test_geneve_options_are_skipped_and_other_versions_left_alone():
    from scapy.contrib.geneve import GeneveOptions
    options = [GeneveOptions(classid=1, type=2, data=b"\x00" * 8),
               GeneveOptions(classid=3, type=4, data=b"\x01" * 4)]
    ex, out = feed_all([outer_udp(6081) / GENEVE(vni=3, proto=0x6558, options=options)
                        / ether() / INNER4 / sip("gen")])
    assert [w.sip.call_id for w in out] == ["gen"]
    version_1 = bytes(outer_udp(6081) / GENEVE(proto=0x0800) / INNER4 / sip())
    raw = bytearray(version_1)
    raw[14 + 20 + 8] |= 0x40
    ex, out = feed_all([bytes(raw)])
    assert out == [] and ex.decoder.stats["geneve_not_geneve"] == 1
    assert assert_one_fate_each(ex, 1)["udp_not_sip"] == 1


def test_vxlan_carrying_arp_is_not_ip():
    from scapy.layers.l2 import ARP
    ex, out = feed_all([outer_udp(4789) / VXLAN() / ether() / ARP()])
    assert out == [] and assert_one_fate_each(ex, 1)["non_ip"] == 1


@pytest.mark.parametrize("control_word", [True, False])
def test_mpls_ethernet_pseudowire(control_word):
    cw = Raw(b"\x00\x00\x00\x05") if control_word else Raw(b"")
    inner = Ether(src="52:54:00:00:00:01", dst="52:54:00:00:00:02") / INNER4 / sip("pw")
    ex, out = feed_all([ether(type=0x8847) / MPLS(label=16, s=1) / cw / inner])
    assert [w.sip.call_id for w in out] == ["pw"]
    kind = "mpls_pw_control_word" if control_word else "mpls_pw"
    assert ex.decoder.stats[kind] == 1


def test_mpls_payload_neither_ip_nor_ethernet_is_not_ip():
    ex, out = feed_all([ether(type=0x8847) / MPLS(label=16, s=1) / Raw(b"\x10" + bytes(40))])
    assert out == [] and assert_one_fate_each(ex, 1)["non_ip"] == 1


# -- SCTP ------------------------------------------------------------------------------


def sctp_packet(*chunks, src="192.0.2.1", dst="192.0.2.2", tag=0x1234):
    pkt = ether() / IP(src=src, dst=dst) / SCTP(sport=5060, dport=5060, tag=tag)
    for chunk in chunks:
        pkt = pkt / chunk
    return pkt


def data(tsn, payload, begin=True, end=True, stream=0):
    return SCTPChunkData(tsn=tsn, stream_id=stream, beginning=int(begin), ending=int(end),
                         data=payload)


def test_sctp_fragments_arriving_out_of_order_and_twice_make_one_message():
    message = sip("frag", b"X-Pad: " + b"p" * 900 + b"\r\n")
    parts = [message[:300], message[300:700], message[700:]]
    packets = [sctp_packet(data(12, parts[2], begin=False)),
               sctp_packet(data(10, parts[0], end=False)),
               sctp_packet(data(10, parts[0], end=False)),  # retransmitted
               sctp_packet(data(11, parts[1], begin=False, end=False), SCTPChunkSACK())]
    ex, out = feed_all(packets)
    assert [(w.transport, w.sip.raw) for w in out] == [("sctp", message)]
    stats = ex.decoder.stats
    assert stats["sctp_reassembled"] == 1 and stats["sctp_fragments_duplicate"] == 1
    assert stats["sctp_other_chunks"] == 1
    assert assert_one_fate_each(ex, 4)["sctp"] == 4
    assert not ex.decoder._sctp.sets and ex.decoder._sctp.held == 0


def test_sctp_streams_and_directions_are_reassembled_apart():
    a, b = sip("a"), sip("b")
    packets = [sctp_packet(data(1, a[:50], end=False, stream=1)),
               sctp_packet(data(7, b[:50], end=False, stream=2)),
               sctp_packet(data(8, b[50:], begin=False, stream=2)),
               sctp_packet(data(2, a[50:], begin=False, stream=1))]
    _, out = feed_all(packets)
    assert [w.sip.call_id for w in out] == ["b", "a"]


def test_sctp_i_data_fragments_by_message_id():
    m1, m2 = sip("i1"), sip("i2")
    chunks = [SCTPChunkIData(tsn=1, stream_id=0, message_id=5, ppid_fsn=0, beginning=1,
                             ending=0, data=m1[:40]),
              SCTPChunkIData(tsn=2, stream_id=0, message_id=6, ppid_fsn=0, beginning=1,
                             ending=1, data=m2),
              SCTPChunkIData(tsn=3, stream_id=0, message_id=5, ppid_fsn=1, beginning=0,
                             ending=1, data=m1[40:])]
    ex, out = feed_all([sctp_packet(*chunks)])
    assert [w.sip.call_id for w in out] == ["i2", "i1"]
    assert ex.decoder.stats["sctp_idata_chunks"] == 3


def test_sctp_held_fragments_are_bounded_in_bytes_and_sets():
    decoder = PacketDecoder(max_sctp_sets=2, max_sctp_bytes=1000)
    ex = SipExtractor(decoder=decoder)
    packets = [sctp_packet(data(100 * s, b"x" * 300, end=False, stream=s)) for s in range(5)]
    feed_all(packets, ex)
    reassembler = decoder._sctp
    assert len(reassembler.sets) <= 2 and reassembler.held <= 1000
    assert decoder.stats["sctp_sets_evicted"] == 3
    big = sctp_packet(data(9000, b"y" * 1500, end=False, stream=9))
    ex.feed(TS, 1, bytes(big))
    assert reassembler.held <= 1000 and decoder.stats["sctp_fragments_dropped"] >= 4
    assert_one_fate_each(ex, 6)


def test_sctp_cut_and_bad_chunks_and_non_sip_messages_are_counted():
    whole = bytes(sctp_packet(data(1, sip("ok")), data(2, sip("cut"))))
    cut = whole[:-20]  # the second chunk ends past the captured bytes (IP length fixed up)
    cut = bytearray(cut)
    struct.pack_into("!H", cut, 14 + 2, len(cut) - 14)
    zero_length = sctp_packet(Raw(b"\x00\x03\x00\x00" + b"\x00" * 12))
    diameter = sctp_packet(data(3, bytes.fromhex("01000014") + bytes(16)))
    heartbeat = sctp_packet(SCTPChunkHeartbeatReq())
    ex, out = feed_all([bytes(cut), zero_length, diameter, heartbeat])
    assert [w.sip.call_id for w in out] == ["ok"]
    stats = ex.decoder.stats
    assert stats["sctp_chunks_cut"] == 1 and stats["sctp_chunks_malformed"] == 1
    assert ex.stats["non_sip_carried"] == 1 and stats["sctp_other_chunks"] == 1
    assert assert_one_fate_each(ex, 4)["sctp"] == 4


# -- HEP -------------------------------------------------------------------------------


def hep3(raw=None, **kw):
    fields = dict(ts_ns=TS + 5_000_000_123, transport="udp", family=4, src="10.1.1.1",
                  sport=5060, dst="10.2.2.2", dport=5080, raw=raw or sip("hep"),
                  call_id="hep", capture_id=1, auth_chunk=b"")
    fields.update(kw)
    return encode_fields(**fields)


def test_hep3_gives_the_message_with_heps_addresses_and_time():
    ex, out = feed_all([outer_udp(9060) / Raw(hep3(transport="tcp", family=6, src="2001:db8::5",
                                                  dst="2001:db8::6"))])
    (wire,) = out
    assert (wire.ts_ns, wire.transport, wire.family, wire.src, wire.dst) == (
        TS + 5_000_000_000, "tcp", 6, "2001:db8::5", "2001:db8::6")
    assert assert_one_fate_each(ex, 1)["hep"] == 1


def test_hep3_compressed_payload_is_inflated_and_bounded():
    packet = bytearray(hep3())
    at = packet.index(b"\x00\x00\x00\x0f")
    length = struct.unpack_from("!H", packet, at + 4)[0]
    compressed = gzip.compress(bytes(packet[at + 6:at + length]), mtime=0)
    rebuilt = (packet[:at] + struct.pack("!HHH", 0, 0x10, 6 + len(compressed)) + compressed
               + packet[at + length:])
    struct.pack_into("!H", rebuilt, 4, len(rebuilt))
    bomb = gzip.compress(b"A" * 200_000, mtime=0)
    bombed = (packet[:at] + struct.pack("!HHH", 0, 0x10, 6 + len(bomb)) + bomb
              + packet[at + length:])
    struct.pack_into("!H", bombed, 4, len(bombed))
    ex, out = feed_all([outer_udp(9060) / Raw(bytes(rebuilt)),
                        outer_udp(9060) / Raw(bytes(bombed))])
    assert [w.sip.call_id for w in out] == ["hep"]
    fates = assert_one_fate_each(ex, 2)
    assert fates["hep"] == 1 and fates["malformed"] == 1


def test_hep_that_is_not_sip_or_not_hep_stays_udp_not_sip():
    rtcp = hep3().replace(bytes.fromhex("0000000b000701"), bytes.fromhex("0000000b000705"))
    ex, out = feed_all([outer_udp(9060) / Raw(rtcp), outer_udp(9060) / Raw(b"\x80" + bytes(40))])
    assert out == []
    assert ex.decoder.stats["hep_not_sip"] == 1 and ex.decoder.stats["hep_not_hep"] == 1
    assert assert_one_fate_each(ex, 2)["udp_not_sip"] == 2


def test_hep3_bad_chunk_length_is_malformed_and_short_packet_cut_short():
    bad = bytearray(hep3())
    struct.pack_into("!H", bad, 6 + 4, 3)  # the first chunk's length
    short = hep3()[:-10]  # total length says more than the datagram holds
    ex, out = feed_all([outer_udp(9060) / Raw(bytes(bad)), outer_udp(9060) / Raw(short)])
    assert out == []
    fates = assert_one_fate_each(ex, 2)
    assert fates["malformed"] == 1 and fates["cut_short"] == 1


def test_hepv1_has_no_time_of_its_own_the_capture_time_is_used():
    raw = sip("v1")
    v1 = struct.pack("!BBBBHH4s4s", 1, 16, 2, 17, 5060, 5070, bytes([10, 0, 0, 1]),
                     bytes([10, 0, 0, 2])) + raw
    ex, out = feed_all([outer_udp(9060) / Raw(v1)])
    assert [(w.ts_ns, w.src, w.dst, w.sip.raw) for w in out] == [(TS, "10.0.0.1", "10.0.0.2", raw)]


def test_a_hep_collector_on_another_port_is_one_entry():
    decoder = PacketDecoder(udp_tunnels={**UDP_TUNNELS, 9061: UDP_TUNNELS[9060]})
    ex, out = feed_all([outer_udp(9061) / Raw(hep3())], SipExtractor(decoder=decoder))
    assert [w.sip.call_id for w in out] == ["hep"]


# -- hostile input: the new fixtures, damaged ------------------------------------------

NEW_FIXTURES = ["gtpu-ipv6.pcap", "gtpu-ipv6-fragments.pcap", "vxlan.pcap", "geneve.pcap",
                "erspan-i.pcap", "erspan-ii.pcap", "erspan-iii.pcap", "mpls-pw-ethernet.pcap",
                "sctp.pcap", "hep3.pcap", "hep2.pcap"]
RECORDS = {name: [(ts, lt, data) for ts, lt, data in CaptureFile(PCAPS / name)]
           for name in NEW_FIXTURES}


@pytest.mark.parametrize("name", NEW_FIXTURES)
def test_each_fixture_counts_its_kind(name):
    ex = SipExtractor()
    for record in RECORDS[name]:
        ex.feed(*record)
    ex.finish()
    stats = ex.decoder.stats
    expected = {"gtpu-ipv6.pcap": ("gtpu", 7), "gtpu-ipv6-fragments.pcap": ("gtpu", 10),
                "vxlan.pcap": ("vxlan", 7), "geneve.pcap": ("geneve", 7),
                "erspan-i.pcap": ("erspan_i", 7), "erspan-ii.pcap": ("erspan_ii", 7),
                "erspan-iii.pcap": ("erspan_iii", 7),
                "mpls-pw-ethernet.pcap": ("mpls_pw", 7), "sctp.pcap": ("sctp", 13),
                "hep3.pcap": ("hep", 14), "hep2.pcap": ("hep", 14)}[name]
    assert stats[expected[0]] == expected[1], dict(stats)
    assert_one_fate_each(ex, len(RECORDS[name]))


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(NEW_FIXTURES),
       st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), min_size=1, max_size=30),
       st.lists(st.integers(0, 1500), max_size=4))
def test_damaged_packets_keep_one_fate_each_and_never_raise(name, flips, cuts):
    records = [(ts, lt, bytearray(data)) for ts, lt, data in RECORDS[name]]
    for i, (pos, value) in enumerate(flips):
        data = records[i % len(records)][2]
        data[pos % len(data)] = value
    for i, size in enumerate(cuts):
        data = records[(i * 5) % len(records)][2]
        del data[size % max(1, len(data)):]
    ex = SipExtractor()
    for ts, lt, data in records:
        ex.feed(ts, lt, bytes(data))
    ex.finish()
    assert_one_fate_each(ex, len(records))


def test_sip_over_sctp_is_mirrored_in_hep_as_sctp_and_reads_back():
    """What the SCTP decoder yields, HEP-encoded for duplicate_uri, decodes back the same
    (IP protocol 132, as Kamailio's siptrace sends SCTP)."""
    from siptrace.mirror import encode_hep3
    _, (wire,) = feed_all([sctp_packet(data(1, sip("mirrored")))])
    packet = encode_hep3(wire)
    assert bytes.fromhex("00000002000784") in packet  # IP protocol chunk: 132
    _, (back,) = feed_all([outer_udp(9060) / Raw(packet)])
    assert (back.transport, back.src, back.sport, back.dst, back.dport, back.sip.raw) == (
        "sctp", wire.src, wire.sport, wire.dst, wire.dport, wire.sip.raw)


def test_replay_summary_says_what_it_saw_and_skipped_per_kind(tmp_path):
    """A capture of SCTP and GTP-U says so, not only how many SIP messages it held."""
    import subprocess
    from kamailio_lab import SIPTRACE
    result = subprocess.run(SIPTRACE + ["replay", str(PCAPS / "sctp.pcap"),
                                        str(PCAPS / "gtpu-ipv6.pcap"), "--db-url",
                                        f"sqlite:///{tmp_path / 't.db'}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "  SCTP:              13" in lines and "  UDP, not SIP:      2" in lines
    (seen,) = [line for line in lines if line.startswith("encapsulations:")]
    for part in ("GTP-U packets 7", "GTP-U signalling (skipped) 2", "SCTP DATA chunks 8",
                 "SCTP I-DATA chunks 2", "other SCTP chunks (skipped) 8",
                 "SCTP messages reassembled 2"):
        assert part in seen, seen


def test_sctp_fragments_that_never_complete_time_out_and_end_with_the_input():
    ex = SipExtractor()
    ex.feed(TS, 1, bytes(sctp_packet(data(1, b"a" * 100, end=False, stream=1))))
    ex.feed(TS + 1_000_000_000, 1, bytes(sctp_packet(data(50, b"b" * 100, end=False,
                                                          stream=2))))
    # 31 s after the first: the first set is dropped when the next fragment comes
    ex.feed(TS + 31_000_000_000, 1, bytes(sctp_packet(data(90, b"c" * 100, end=False,
                                                           stream=3))))
    reassembler = ex.decoder._sctp
    assert len(reassembler.sets) == 2 and ex.decoder.stats["sctp_sets_timed_out"] == 1
    assert ex.finish() == []
    assert not reassembler.sets and reassembler.held == 0
    assert ex.decoder.stats["sctp_sets_timed_out"] == 3
    assert_one_fate_each(ex, 3)
