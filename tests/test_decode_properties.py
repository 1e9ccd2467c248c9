"""Property-based tests (hypothesis) for the capture reader and the packet decoder.

The one invariant of each: any input gives a result or the documented error,
nothing else. Plus round trips: random layer stacks decode to what was packed
in them, random fragmentations reassemble to the datagram, random records
written as pcap/pcapng read back unchanged whatever the chunk size.
"""

import ipaddress
import os
import struct
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from siptrace.capture.files import CaptureFile
from siptrace.decode.layers import PacketDecoder
from siptrace.decode.link import LINK_LAYERS
from siptrace.decode.packet import TCP, UDP, TransportPacket
from siptrace.errors import CaptureFormatError, DecodeError, TruncatedCapture

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
LINKTYPES = sorted(LINK_LAYERS) + [147]


def outcome(decoder: PacketDecoder, ts: int, linktype: int, data: bytes):
    """The decoder's result, or the class of the documented error it raised."""
    try:
        result = decoder.decode(ts, linktype, data)
    except DecodeError as exc:
        return type(exc)
    assert result is None or isinstance(result, TransportPacket)
    return result


# --- packing layers by hand -------------------------------------------------------

def ipv4(proto: int, src: bytes, dst: bytes, payload: bytes, ident=0, frag=0) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, 64, proto,
                       0, src, dst) + payload


def ipv6(nh: int, src: bytes, dst: bytes, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nh, 64, src, dst) + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport: int, dport: int, seq: int, flags: int, payload: bytes) -> bytes:
    return struct.pack("!HHIIHHHH", sport, dport, seq, 0, 0x5000 | flags, 65535, 0, 0) + payload


def gre(protocol: int, payload: bytes, key: bool, seq: bool, checksum: bool) -> bytes:
    flags = (0x8000 if checksum else 0) | (0x2000 if key else 0) | (0x1000 if seq else 0)
    return (struct.pack("!HH", flags, protocol) + bytes(4 * (checksum + key + seq)) + payload)


ETHERTYPE = {4: 0x0800, 6: 0x86DD}
IP_IN_IP = {4: 4, 6: 41}


@st.composite
def layer_stacks(draw):
    """(linktype, frame, expected TransportPacket fields) for a random encapsulation."""
    family = draw(st.sampled_from([4, 6]))
    size = 4 if family == 4 else 16
    src, dst = draw(st.binary(min_size=size, max_size=size)), draw(
        st.binary(min_size=size, max_size=size))
    sport, dport = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
    payload = draw(st.binary(max_size=64))
    if draw(st.booleans()):
        proto, seq, flags = UDP, 0, 0
        segment = udp(sport, dport, payload)
    else:
        proto, seq, flags = TCP, draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 255))
        segment = tcp(sport, dport, seq, flags, payload)
    packet = (ipv4 if family == 4 else ipv6)(proto, src, dst, segment)
    expected = (proto, family, str(ipaddress.ip_address(src)), sport,
                str(ipaddress.ip_address(dst)), dport, payload, seq, flags)
    inner = family
    for tunnel in draw(st.lists(st.sampled_from(["ip", "gre"]), max_size=3)):
        outer = draw(st.sampled_from([4, 6]))
        osize = 4 if outer == 4 else 16
        addresses = (bytes(range(osize)), bytes(range(1, osize + 1)))
        if tunnel == "gre":
            packet = gre(ETHERTYPE[inner], packet, *draw(st.tuples(*[st.booleans()] * 3)))
            proto_number = 47
        else:
            proto_number = IP_IN_IP[inner]
        packet = (ipv4 if outer == 4 else ipv6)(proto_number, *addresses, packet)
        inner = outer
    ethertype = ETHERTYPE[inner]
    for wrap in draw(st.lists(st.sampled_from(["vlan", "qinq", "mpls", "pppoe"]), max_size=3)):
        if wrap == "mpls" and ethertype in (0x0800, 0x86DD):
            packet = struct.pack("!I", 0x10100) + packet  # bottom-of-stack label
            ethertype = 0x8847
        elif wrap == "pppoe" and ethertype in (0x0800, 0x86DD):
            ppp = 0x0021 if ethertype == 0x0800 else 0x0057
            packet = struct.pack("!BBHHH", 0x11, 0, 1, len(packet) + 2, ppp) + packet
            ethertype = 0x8864
        elif wrap in ("vlan", "qinq"):
            packet = struct.pack("!HH", 7, ethertype) + packet
            ethertype = 0x8100 if wrap == "vlan" else 0x88A8
    link = draw(st.sampled_from(["ethernet", "sll", "sll2", "raw", "null"]))
    if link == "raw" and ethertype in (0x0800, 0x86DD):
        return 101, packet, expected
    if link == "null" and ethertype in (0x0800, 0x86DD):
        return 0, struct.pack("<I", 2 if ethertype == 0x0800 else 30) + packet, expected
    if link == "sll":
        return 113, struct.pack("!HHH8sH", 0, 1, 6, bytes(8), ethertype) + packet, expected
    if link == "sll2":
        return 276, struct.pack("!HHIHBB8s", ethertype, 0, 1, 1, 0, 6, bytes(8)) + packet, expected
    padding = bytes(draw(st.integers(0, 20)))  # Ethernet padding after the IP packet
    return 1, bytes(12) + struct.pack("!H", ethertype) + packet + padding, expected


@SETTINGS
@given(layer_stacks())
def test_random_layer_stacks_decode_to_what_they_carry(stack):
    linktype, frame, expected = stack
    pkt = PacketDecoder().decode(5, linktype, frame)
    assert (pkt.proto, pkt.family, pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.payload,
            pkt.seq, pkt.flags) == expected


@SETTINGS
@given(layer_stacks(), st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)),
                                min_size=1, max_size=4), st.integers(0, 2000))
def test_damaged_layer_stacks_decode_or_raise_decode_error(stack, flips, cut):
    linktype, frame, _ = stack
    data = bytearray(frame)
    for index, value in flips:
        if data:
            data[index % len(data)] = value
    data = bytes(data[:cut]) if cut < len(data) else bytes(data)
    outcome(PacketDecoder(), 5, linktype, data)


@SETTINGS
@given(st.sampled_from(LINKTYPES), st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_decode_error(linktype, data):
    outcome(PacketDecoder(), 5, linktype, data)


@SETTINGS
@given(st.data())
def test_fast_path_agrees_with_the_general_path(data):
    """Ethernet (untagged or with one 802.1Q tag) and Linux SLL with IPv4 take a
    shortcut; an 802.1ad tag forces the general layers. All must agree.

    Lengths are drawn around the consistent values, where the paths could differ.
    """
    proto = data.draw(st.sampled_from([17, 17, 6, 6, 1]))
    body = data.draw(st.binary(max_size=100))
    transport_header = 8 if proto == 17 else 20
    consistent = 20 + transport_header + len(body)
    total = max(0, consistent + data.draw(st.integers(-30, 10)))
    frag = data.draw(st.sampled_from([0, 0, 0x4000, 0x2000, 0x0001]))
    if proto == 17:
        length = max(0, total - 20 + data.draw(st.integers(-20, 5)))
        transport = struct.pack("!HHHH", 5060, 5061, length, 0)
    else:
        data_offset = data.draw(st.integers(0, 15))
        transport = struct.pack("!HHIIBBHHH", 5060, 5061, 7, 0, data_offset << 4, 0x18, 0, 0, 0)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, frag, 64, proto, 0,
                         b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02")
    padding = bytes(data.draw(st.integers(0, 8)))
    ip_packet = header + transport + body + padding
    general = outcome(PacketDecoder(), 5, 1, bytes(12) + b"\x88\xa8\x00\x07\x08\x00" + ip_packet)
    assert outcome(PacketDecoder(), 5, 1, bytes(12) + b"\x08\x00" + ip_packet) == general
    assert outcome(PacketDecoder(), 5, 1,
                   bytes(12) + b"\x81\x00\x00\x07\x08\x00" + ip_packet) == general
    assert outcome(PacketDecoder(), 5, 113, bytes(14) + b"\x08\x00" + ip_packet) == general


@SETTINGS
@given(st.data())
def test_any_fragmentation_reassembles_to_the_datagram(data):
    family = data.draw(st.sampled_from([4, 6]))
    body = data.draw(st.binary(min_size=1, max_size=3000))
    segment = udp(5060, 5080, body)
    units = (len(segment) + 7) // 8
    # Cuts at 8-byte boundaries, from one or more fragmentations of the same datagram:
    # pieces of different cuts overlap, with the same bytes.
    pieces = set()
    for _ in range(data.draw(st.integers(1, 3))):
        cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, units - 1)), max_size=8))))
        bounds = [0] + [c * 8 for c in cuts if c * 8 < len(segment)] + [len(segment)]
        pieces.update(zip(bounds, bounds[1:]))
    order = data.draw(st.permutations(sorted(pieces)))
    decoder = PacketDecoder()
    out = []
    for start, stop in order:
        more = stop < len(segment)
        chunk = segment[start:stop]
        if family == 4:
            packet = ipv4(17, b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", chunk, ident=9,
                          frag=(0x2000 if more else 0) | start // 8)
        else:
            packet = ipv6(44, bytes(15) + b"\x01", bytes(15) + b"\x02",
                          struct.pack("!BBHI", 17, 0, start | more, 9) + chunk)
        pkt = decoder.decode(5, 101, packet)
        if pkt is not None:
            out.append(pkt)
    # Pieces arriving after the datagram completed start a new set, which may
    # complete again (the same datagram seen twice): every emission is whole.
    assert out and all(pkt.payload == body for pkt in out)


# --- capture files ----------------------------------------------------------------

def read_all(content: bytes, chunk_size: int = 1 << 20):
    """Write content to a file and read it: (records, None / "format" / "truncated").

    Any other exception escapes and fails the test.
    """
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "f.cap")
        with open(path, "wb") as f:
            f.write(content)
        records = []
        try:
            for record in CaptureFile(path, chunk_size=chunk_size):
                ts, linktype, data = record
                assert isinstance(ts, int) and isinstance(linktype, int)
                assert isinstance(data, bytes)
                records.append(record)
        except CaptureFormatError:
            return records, "format"
        except TruncatedCapture:
            return records, "truncated"
        return records, None


def pcap_file(records, order: str, nano: bool) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, 1)]
    for ts, data in records:
        sec, frac = divmod(ts, 10**9)
        out.append(struct.pack(order + "IIII", sec, frac if nano else frac // 1000, len(data),
                               len(data)) + data)
    return b"".join(out)


def pcapng_file(records, order: str) -> bytes:
    def block(btype, body):
        body += bytes(-len(body) % 4)
        return (struct.pack(order + "II", btype, len(body) + 12) + body
                + struct.pack(order + "I", len(body) + 12))
    out = [block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1)),
           block(1, struct.pack(order + "HHI", 1, 0, 0) + struct.pack(order + "HHB3xHH", 9, 1, 9,
                                                                       0, 0))]
    for ts, data in records:
        out.append(block(6, struct.pack(order + "IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(data),
                                        len(data)) + data))
    return b"".join(out)


RECORDS = st.lists(st.tuples(st.integers(0, 2**32 * 10**9 - 1), st.binary(max_size=300)),
                   max_size=8)


@SETTINGS
@given(RECORDS, st.sampled_from(["<", ">"]), st.booleans(), st.booleans(),
       st.integers(1, 600))
def test_written_records_read_back_whatever_the_chunk_size(records, order, ng, nano, chunk):
    content = pcapng_file(records, order) if ng else pcap_file(records, order, nano)
    got, error = read_all(content, chunk)
    assert error is None
    scale = 1 if ng or nano else 1000
    assert got == [(ts // scale * scale, 1, data) for ts, data in records]


@SETTINGS
@given(st.binary(max_size=400), st.integers(1, 64))
def test_arbitrary_bytes_read_or_raise_the_documented_errors(content, chunk):
    read_all(content, chunk)


@SETTINGS
@given(RECORDS, st.booleans(), st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 255)),
                                        min_size=1, max_size=4), st.integers(0, 5000),
       st.integers(1, 700))
def test_damaged_captures_read_or_raise_the_documented_errors(records, ng, flips, cut, chunk):
    content = bytearray(pcapng_file(records, "<") if ng else pcap_file(records, ">", True))
    for index, value in flips:
        content[index % len(content)] = value
    got, error = read_all(bytes(content[:cut]), chunk)
    if error == "format":
        assert got == []  # not a capture: said before any record
