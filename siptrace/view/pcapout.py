"""Stored messages written back as a capture file (pcap or pcapng). No I/O of its own.

One packet per stored message, at its stored time, between its stored addresses and
ports; a TCP message over ``TCP_MSS`` bytes is split into several segments. Synthetic:

- Ethernet (LINKTYPE_ETHERNET), not LINKTYPE_RAW: sngrep and every tool read it. Fixed
  locally administered MACs: the endpoint that sorts first is 02:00:00:00:00:01, its
  peer 02:00:00:00:00:02. IPv4 (DF, ID 0: RFC 6864) or IPv6 as the stored address is.
  IPv4, UDP and TCP checksums and SCTP's CRC32c are computed.
- udp -> UDP; a datagram over 65,507 bytes (IPv4) or 65,527 (IPv6) is skipped.
- tcp, tls, ws, wss -> TCP carrying the stored bytes as they are: tls/wss rows hold the
  decrypted text, ws/wss rows no WebSocket framing, so tshark must be told
  (``-d tcp.port==5061,sip``, or ``-o tcp.try_heuristic_first:TRUE``).
  A connection (4-tuple) opens with a synthetic SYN, SYN-ACK, ACK at its first message's
  time, that message's sender as client, ISNs from that time. Every segment continues its
  direction's sequence and acknowledges all the peer sent: Wireshark reassembles each
  message whole, with no missing segment. Window scale 14 keeps long streams in window.
- sctp -> one DATA chunk (unordered, PPID 0, TSNs consecutive per direction) of an
  association without INIT; Wireshark finds SIP by port 5060 or its SCTP heuristic.
- Connection state is an LRU table of ``max_flows`` entries: an evicted connection that
  speaks again gets a new handshake (Wireshark notes the port reuse).
- ``date`` is naive UTC (an aware one is converted), written to the microsecond.
"""

import struct
from collections import Counter, OrderedDict
from datetime import datetime, timezone
from ipaddress import ip_address
from typing import BinaryIO, Iterable

from siptrace.view.model import Address, StoredMessage

LINKTYPE_ETHERNET = 1  # https://www.tcpdump.org/linktypes.html
PCAP_MAGIC_MICROSECONDS = 0xA1B2C3D4  # https://www.tcpdump.org/manpages/pcap-savefile.5.html
PCAP_VERSION = (2, 4)
SNAPLEN = 262144
# pcapng: draft-ietf-opsawg-pcapng, sections 4.1 (SHB), 4.2 (IDB), 4.3 (EPB)
PCAPNG_SHB, PCAPNG_IDB, PCAPNG_EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
PCAPNG_OPT_ENDOFOPT, PCAPNG_SHB_USERAPPL = 0, 4
USER_APPLICATION = b"siptrace export"

MAC_FIRST, MAC_SECOND = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
ETHERTYPE = {4: 0x0800, 6: 0x86DD}  # IEEE 802 EtherType: IPv4, IPv6
IP_PROTO_TCP, IP_PROTO_UDP, IP_PROTO_SCTP = 6, 17, 132  # IANA protocol numbers
IPV4_DONT_FRAGMENT = 0x4000  # RFC 791
TTL = 64
IP_PAYLOAD_MAX = {4: 65535 - 20, 6: 65535}  # total length / payload length fields
UDP_HEADER, TCP_HEADER, SCTP_HEADER, SCTP_DATA_HEADER = 8, 20, 12, 16
TCP_MSS = 65495  # as Linux loopback: 65535 - 20 (IPv4) - 20 (TCP); fits IPv6 too
TCP_SYN, TCP_PSH, TCP_ACK = 0x02, 0x08, 0x10  # RFC 9293 control bits
TCP_WINDOW, TCP_WINDOW_SHIFT = 65535, 14  # RFC 7323 window scale
TCP_SYN_OPTIONS = struct.pack("!BBHBBBB", 2, 4, TCP_MSS, 1, 3, 3, TCP_WINDOW_SHIFT)  # MSS, NOP, WS
TCP_ISN_TICK_US, TCP_SERVER_ISN_OFFSET = 4, 1 << 31  # ISN clock of RFC 9293 3.4.1
SEQ_MODULO = 1 << 32  # TCP sequence numbers and SCTP TSNs
SCTP_DATA, SCTP_DATA_UNORDERED_WHOLE = 0, 0x07  # RFC 9260: chunk type, U|B|E flags
SCTP_VERIFICATION_TAGS, SCTP_PPID_UNSPECIFIED, SCTP_FIRST_TSN = (1, 2), 0, 1
SCTP_DATA_MAX = IP_PAYLOAD_MAX[4] - SCTP_HEADER - SCTP_DATA_HEADER - 3  # room for padding
MAX_FLOWS = 65536
EPOCH = datetime(1970, 1, 1)
TCP_TRANSPORTS = frozenset({"tcp", "tls", "ws", "wss"})


def _crc32c_entry(crc: int) -> int:
    for _ in range(8):
        crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
    return crc


CRC32C_TABLE = [_crc32c_entry(byte) for byte in range(256)]


def crc32c(data: bytes) -> int:
    """CRC-32C (RFC 9260 appendix A), as SCTP checksums its packets."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def internet_checksum(data: bytes) -> int:
    """RFC 1071 ones' complement sum, complemented."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def microseconds_since_epoch(date: datetime) -> int:
    if date.tzinfo is not None:
        date = date.astimezone(timezone.utc).replace(tzinfo=None)
    delta = date - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


class CaptureWriter:
    """Writes stored messages to ``out`` as pcap (microseconds) or pcapng, Ethernet frames.

    The file header is written at once. ``skipped`` counts the messages left out by
    reason: "no address" (unparseable), "empty message", "mixed IPv4/IPv6", "bad time"
    (before 1970 or past pcap's 2106), "udp too large", "sctp too large", "unknown
    transport". ``stats`` counts "messages" and "packets" written, and the same reasons.
    """

    def __init__(self, out: BinaryIO, fmt: str = "pcap", max_flows: int = MAX_FLOWS):
        if fmt not in ("pcap", "pcapng"):
            raise ValueError(f"capture format {fmt!r}: pcap or pcapng")
        self.out, self.fmt, self.max_flows = out, fmt, max_flows
        self.stats: Counter = Counter()
        self.skipped: Counter = Counter()
        self._flows: OrderedDict = OrderedDict()  # endpoint pair -> {endpoint: next seq/TSN}
        out.write(self._file_header())

    def write(self, message: StoredMessage) -> int:
        """Packets written for ``message`` (a TCP handshake included); 0 when skipped."""
        source, destination = message.source, message.destination
        transport = source.transport
        time_us = microseconds_since_epoch(message.date)
        if not source.ip or not destination.ip:
            return self._skip("no address")
        if not message.msg:
            return self._skip("empty message")
        if source.family != destination.family:
            return self._skip("mixed IPv4/IPv6")
        if not 0 <= time_us < 2**32 * 1_000_000:
            return self._skip("bad time")
        if transport == "udp":
            if len(message.msg) > IP_PAYLOAD_MAX[source.family] - UDP_HEADER:
                return self._skip("udp too large")
            packets = [self._udp(source, destination, message.msg)]
        elif transport in TCP_TRANSPORTS:
            packets = self._tcp(source, destination, message.msg, time_us)
        elif transport == "sctp":
            if len(message.msg) > SCTP_DATA_MAX:
                return self._skip("sctp too large")
            packets = [self._sctp(source, destination, message.msg)]
        else:
            return self._skip("unknown transport")
        for packet in packets:
            self.out.write(self._record(time_us, packet))
        self.stats.update(messages=1, packets=len(packets))
        return len(packets)

    def _skip(self, reason: str) -> int:
        self.skipped[reason] += 1
        self.stats[reason] += 1
        return 0

    def _flow(self, source: Address, destination: Address) -> tuple[dict, bool]:
        """The sequence state of a connection or association, and whether it is new."""
        key = tuple(sorted([(source.ip, source.port), (destination.ip, destination.port)]))
        key += (source.transport == "sctp",)
        state = self._flows.get(key)
        if state is not None:
            self._flows.move_to_end(key)
            return state, False
        if len(self._flows) >= self.max_flows:
            self._flows.popitem(last=False)
        state = self._flows[key] = {}
        return state, True

    def _tcp(self, source: Address, destination: Address, data: bytes, time_us: int) -> list:
        """Segments of one message; a new connection's handshake first, its sender the client."""
        next_seq, new = self._flow(source, destination)
        sender, receiver = (source.ip, source.port), (destination.ip, destination.port)
        packets = []
        if new:
            client = time_us // TCP_ISN_TICK_US % SEQ_MODULO
            server = (client + TCP_SERVER_ISN_OFFSET) % SEQ_MODULO
            next_seq[sender] = (client + 1) % SEQ_MODULO
            next_seq[receiver] = (server + 1) % SEQ_MODULO
            packets += [
                self._tcp_segment(source, destination, client, 0, TCP_SYN, b""),
                self._tcp_segment(destination, source, server, next_seq[sender],
                                  TCP_SYN | TCP_ACK, b""),
                self._tcp_segment(source, destination, next_seq[sender], next_seq[receiver],
                                  TCP_ACK, b"")]
        for start in range(0, len(data), TCP_MSS):
            chunk = data[start:start + TCP_MSS]
            flags = TCP_ACK | (TCP_PSH if start + TCP_MSS >= len(data) else 0)
            packets.append(self._tcp_segment(source, destination, next_seq[sender],
                                             next_seq[receiver], flags, chunk))
            next_seq[sender] = (next_seq[sender] + len(chunk)) % SEQ_MODULO
        return packets

    def _tcp_segment(self, source, destination, seq, ack, flags, data) -> bytes:
        options = TCP_SYN_OPTIONS if flags & TCP_SYN else b""
        offset_words = (TCP_HEADER + len(options)) // 4
        header = struct.pack("!HHIIBBHHH", source.port, destination.port, seq, ack,
                             offset_words << 4, flags, TCP_WINDOW, 0, 0) + options
        return self._ip(source, destination, IP_PROTO_TCP, header + data, checksum_at=16)

    def _udp(self, source: Address, destination: Address, data: bytes) -> bytes:
        header = struct.pack("!HHHH", source.port, destination.port,
                             UDP_HEADER + len(data), 0)
        return self._ip(source, destination, IP_PROTO_UDP, header + data, checksum_at=6)

    def _sctp(self, source: Address, destination: Address, data: bytes) -> bytes:
        state, _ = self._flow(source, destination)
        sender = (source.ip, source.port)
        tsn = state.get(sender, SCTP_FIRST_TSN)
        state[sender] = (tsn + 1) % SEQ_MODULO
        chunk = struct.pack("!BBHIHHI", SCTP_DATA, SCTP_DATA_UNORDERED_WHOLE,
                            SCTP_DATA_HEADER + len(data), tsn, 0, 0, SCTP_PPID_UNSPECIFIED)
        chunk += data + b"\0" * (-len(data) % 4)
        tag = SCTP_VERIFICATION_TAGS[sender < (destination.ip, destination.port)]
        common = struct.pack("!HHII", source.port, destination.port, tag, 0)
        checksum = struct.pack("<I", crc32c(common + chunk))  # RFC 9260 B: sent reflected
        return self._ip(source, destination, IP_PROTO_SCTP, common[:8] + checksum + chunk)

    @staticmethod
    def _ip(source, destination, protocol, segment, checksum_at=None) -> bytes:
        """Ethernet + IP header around ``segment``, its UDP/TCP checksum filled in."""
        src, dst = ip_address(source.ip).packed, ip_address(destination.ip).packed
        if checksum_at is not None:
            pseudo = src + dst + struct.pack("!IxxxB", len(segment), protocol)  # RFC 8200 8.1
            if source.family == 4:  # RFC 793/768: the same sum over a 12-byte header
                pseudo = src + dst + struct.pack("!xBH", protocol, len(segment))
            checksum = internet_checksum(pseudo + segment) or 0xFFFF  # 0 means none in UDP
            segment = b"".join((segment[:checksum_at], struct.pack("!H", checksum),
                                segment[checksum_at + 2:]))
        if source.family == 4:
            header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), 0,
                                 IPV4_DONT_FRAGMENT, TTL, protocol, 0, src, dst)
            header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
        else:
            header = struct.pack("!IHBB16s16s", 6 << 28, len(segment), protocol, TTL, src, dst)
        first = (source.ip, source.port) <= (destination.ip, destination.port)
        macs = MAC_SECOND + MAC_FIRST if first else MAC_FIRST + MAC_SECOND  # destination first
        return macs + struct.pack("!H", ETHERTYPE[source.family]) + header + segment

    def _file_header(self) -> bytes:
        if self.fmt == "pcap":
            return struct.pack("<IHHiIII", PCAP_MAGIC_MICROSECONDS, *PCAP_VERSION, 0, 0,
                               SNAPLEN, LINKTYPE_ETHERNET)
        options = _pcapng_option(PCAPNG_SHB_USERAPPL, USER_APPLICATION)
        options += _pcapng_option(PCAPNG_OPT_ENDOFOPT, b"")
        section = struct.pack("<IHHq", PCAPNG_BYTE_ORDER_MAGIC, 1, 0, -1) + options
        interface = struct.pack("<HHI", LINKTYPE_ETHERNET, 0, SNAPLEN)
        return _pcapng_block(PCAPNG_SHB, section) + _pcapng_block(PCAPNG_IDB, interface)

    def _record(self, time_us: int, frame: bytes) -> bytes:
        if self.fmt == "pcap":
            seconds, micros = divmod(time_us, 1_000_000)
            return struct.pack("<IIII", seconds, micros, len(frame), len(frame)) + frame
        body = struct.pack("<IIIII", 0, time_us >> 32, time_us & 0xFFFFFFFF,
                           len(frame), len(frame))
        return _pcapng_block(PCAPNG_EPB, body + frame + b"\0" * (-len(frame) % 4))


def _pcapng_option(code: int, value: bytes) -> bytes:
    """One option, its value padded to 32 bits."""
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _pcapng_block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


def write_capture(out: BinaryIO, messages: Iterable[StoredMessage], fmt: str = "pcap") -> Counter:
    """Writes every message; returns the writer's ``stats`` (written and skip reasons)."""
    writer = CaptureWriter(out, fmt)
    for message in messages:
        writer.write(message)
    return writer.stats
