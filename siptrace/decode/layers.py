"""PacketDecoder: capture records in, UDP datagrams and TCP segments out. No I/O.

The link layer is chosen by link type; every layer after it by a dict lookup on
the key the previous layer returns (an EtherType, or IP_PROTO + protocol
number), so encapsulations nest freely: VLAN tags, PPPoE, MPLS (Ethernet
pseudowires too), GRE (with IP, Ethernet or ERSPAN I/II/III inside), IP-in-IP in any
v4/v6 combination. The innermost IP header gives the addresses. SCTP ends a decode
with the user messages it completes (CarriedMessages).

Tunnels over UDP (GTPv1-U, VXLAN, Geneve, HEP: tunnels.UDP_TUNNELS, by destination
port) are opened by ``decapsulate``, which the extractor calls only for datagrams that
are not SIP: ordinary SIP never pays for the port lookup.
"""

from collections import Counter
from struct import Struct
from struct import error as StructError

from siptrace.decode import hep, ip, link, sctp, transport, tunnels
from siptrace.decode.fragments import FragmentReassembler
from siptrace.decode.ip import IP_PROTO
from siptrace.decode.packet import TCP, UDP, CarriedMessages, TransportPacket
from siptrace.decode.sctp import SctpReassembler
from siptrace.decode.transport import TCP_HEADER, UDP_HEADER
from siptrace.errors import DecodeError, TruncatedPacket

# The fast path: Ethernet (with at most one 802.1Q tag) or Linux SLL, then an
# IPv4 header without options, unfragmented, then UDP or TCP. _LINK_IPV4 reads the
# EtherType at +12, then IPv4 version/IHL, total length, flags/offset, protocol at
# +14; _FAST_LINKS says where to apply it for each link type. It stays because the
# layers take 1.5x as long on these packets, 7% more of replay's whole decoding work
# (measured); tests/test_fast_paths.py requires both to give the same results.
_LINK_IPV4 = Struct("!12xHBxH2xHxB")
_FAST_LINKS = {link.LINKTYPE_ETHERNET: 0, link.LINKTYPE_LINUX_SLL: 2}
_IPV4_FRAGMENTED = ip.IPV4_MORE_FRAGMENTS | ip.IPV4_OFFSET_MASK

MAX_LAYERS = 24  # nesting bound: hostile packets cannot loop or recurse
MAX_UDP_TUNNELS = 4  # UDP tunnels opened inside one another, per packet
IPPROTO_SCTP = 132

LAYERS = {
    ip.ETH_IPV4: ip.ipv4,
    ip.ETH_IPV6: ip.ipv6,
    link.ETH_VLAN: link.vlan_tag,
    link.ETH_QINQ: link.vlan_tag,
    link.ETH_QINQ_OLD: link.vlan_tag,
    link.ETH_PPPOE_SESSION: link.pppoe_session,
    link.ETH_PPP: link.ppp,
    link.ETH_MPLS: link.mpls,
    link.ETH_MPLS_MULTICAST: link.mpls,
    link.ETH_BRIDGED: link.bridged_ethernet,
    IP_PROTO + ip.IPPROTO_IPIP: ip.ipv4,
    IP_PROTO + ip.IPPROTO_IPV6: ip.ipv6,
    IP_PROTO + ip.IPPROTO_AH: ip.authentication_header,
    IP_PROTO + ip.IPPROTO_ESP: ip.encrypted,
    IP_PROTO + ip.IPPROTO_GRE: tunnels.gre,
    IP_PROTO + UDP: transport.udp,
    IP_PROTO + TCP: transport.tcp,
    IP_PROTO + IPPROTO_SCTP: sctp.sctp,
}


class PacketDecoder:
    """Decodes capture records to TransportPackets, reassembling IP fragments.

    ``decode`` returns a TransportPacket, or None when the record holds nothing
    to pass on (non-IP, another IP protocol, a fragment held for reassembly),
    and raises TruncatedPacket / DecodeError for short or malformed packets.

    ``stats`` counts: packets, udp, tcp, non_ip, other_proto, unknown_linktype,
    esp, truncated, malformed, ip_length_zero (offload-captured packets),
    fragments, reassembled, fragments_duplicate, fragments_timed_out,
    fragments_overflow, fragments_malformed; sctp and hep (packets: a fate each, like
    udp and tcp). Kinds seen, not fates: gtpu, vxlan, geneve, erspan_i, erspan_ii,
    erspan_iii, mpls_pw, mpls_pw_control_word; skipped: gtpu_signalling, gtpu_not_gtpu,
    geneve_not_geneve, hep_not_hep, hep_not_sip, udp_tunnels_too_deep; SCTP chunks:
    sctp_data_chunks, sctp_idata_chunks, sctp_other_chunks, sctp_chunks_cut,
    sctp_chunks_malformed, and its reassembly's (siptrace.decode.sctp).
    """

    def __init__(self, fragment_timeout_ns: int = 30_000_000_000,
                 max_fragment_sets: int = 4096, max_fragment_bytes: int = 16 << 20,
                 max_sctp_sets: int = 1024, max_sctp_bytes: int = 4 << 20,
                 udp_tunnels: dict | None = None):
        self._stats: Counter = Counter()
        self._fragments = FragmentReassembler(fragment_timeout_ns, max_fragment_sets,
                                              max_fragment_bytes, self._stats)
        self._sctp = SctpReassembler(max_sctp_sets, max_sctp_bytes, self._stats)
        # destination port -> layer; a HEP collector on another port adds it here
        self.udp_tunnels = dict(tunnels.UDP_TUNNELS if udp_tunnels is None else udp_tunnels)
        self._v4_names: dict[bytes, tuple[str, str]] = {}  # see ip.address_pair
        self._v6_names: dict[bytes, tuple[str, str]] = {}
        # The per-packet counts are plain ints (cheaper than a Counter update).
        self._packets = self._udp = self._tcp = 0
        # Per-packet scratch the layers fill in (see siptrace.decode.ip).
        self._ts = 0
        self._family = 0
        self._src = ""
        self._dst = ""

    def decode(self, ts_ns: int, linktype: int, data: bytes) -> TransportPacket | None:
        """One capture record; see the class docstring for the outcomes."""
        self._packets += 1
        if self._fragments.sets:
            self._fragments.expire(ts_ns)
        shift = _FAST_LINKS.get(linktype)
        if shift is not None and len(data) >= shift + 38:
            # Fast path for the common case; anything unusual goes to the layers.
            ethertype, vihl, total, frag, proto = _LINK_IPV4.unpack_from(data, shift)
            if ethertype == link.ETH_VLAN and shift == 0:  # one 802.1Q tag
                shift = 4
                ethertype, vihl, total, frag, proto = _LINK_IPV4.unpack_from(data, shift)
            l3 = shift + 14
            if (ethertype == ip.ETH_IPV4 and vihl == 0x45 and not frag & _IPV4_FRAGMENTED
                    and l3 + total <= len(data)):
                pkt = self._ipv4_fast(ts_ns, data, l3, total, proto)
                if pkt is not None:
                    return pkt
        link_layer = link.LINK_LAYERS.get(linktype)
        if link_layer is None:
            self._stats["unknown_linktype"] += 1
            return None
        self._ts = ts_ns
        try:
            key, off = link_layer(data)
        except (StructError, IndexError):
            self._stats["truncated"] += 1
            raise TruncatedPacket(f"packet of {len(data)} bytes ends inside a header") from None
        return self._walk(key, data, off, len(data))

    def _walk(self, key: int, data: bytes, off: int, end: int):
        """The layers from ``key`` at ``off`` on; counts the packet's fate."""
        stats = self._stats
        try:
            for _ in range(MAX_LAYERS):
                layer = LAYERS.get(key)
                if layer is None:
                    stats["other_proto" if key >= IP_PROTO else "non_ip"] += 1
                    return None
                step = layer(self, data, off, end)
                if step.__class__ is not tuple:
                    if step is None:
                        pass
                    elif step.proto == UDP:
                        self._udp += 1
                    elif step.proto == TCP:
                        self._tcp += 1
                    return step  # CarriedMessages: counted by their layer (sctp, hep)
                key, data, off, end = step
            raise DecodeError(f"more than {MAX_LAYERS} nested layers")
        except (StructError, IndexError):
            stats["truncated"] += 1
            raise TruncatedPacket(f"packet of {len(data)} bytes ends inside a header") from None
        except TruncatedPacket:
            stats["truncated"] += 1
            raise
        except DecodeError:
            stats["malformed"] += 1
            raise

    def _ipv4_fast(self, ts_ns: int, data: bytes, l3: int, total: int,
                   proto: int) -> TransportPacket | None:
        """UDP or TCP in an IPv4 header of 20 bytes at ``l3`` (unfragmented, length
        checked), exactly as the layers would decode it; None: let the layers do it."""
        l4 = l3 + 20
        if proto == 17:
            if total < 28:
                return None
            sport, dport, length = UDP_HEADER.unpack_from(data, l4)
            if not 8 <= length <= total - 20:
                return None
            raw = data[l3 + 12:l4]
            src, dst = self._v4_names.get(raw) or ip.address_pair(self._v4_names, raw,
                                                                   ip.ipv4_text)
            self._udp += 1
            return TransportPacket(ts_ns, 17, 4, src, sport, dst, dport, data[l4 + 8:l4 + length])
        if proto == 6:
            if total < 40:
                return None
            sport, dport, seq, offset_flags = TCP_HEADER.unpack_from(data, l4)
            header_len = (offset_flags >> 12) << 2
            if not 20 <= header_len <= total - 20:
                return None
            raw = data[l3 + 12:l4]
            src, dst = self._v4_names.get(raw) or ip.address_pair(self._v4_names, raw,
                                                                   ip.ipv4_text)
            self._tcp += 1
            return TransportPacket(ts_ns, 6, 4, src, sport, dst, dport,
                                   data[l4 + header_len:l3 + total], seq, offset_flags & 0xFF)
        return None

    def decapsulate(self, pkt: TransportPacket) -> tuple | None:
        """A UDP datagram whose payload is not SIP: when its destination port is a UDP
        tunnel's (``udp_tunnels``) and the payload that tunnel's, the packet inside,
        decoded as ``decode`` would, as a tuple of 0 or 1 TransportPacket or
        CarriedMessages; tunnels in tunnels are opened too. None: not a tunnel, the
        datagram stays what it is. The datagram's fate becomes the inner packet's
        (udp, tcp, fragment held, cut short...). Never raises: a bad inner packet is
        counted (truncated, malformed)."""
        ports = self.udp_tunnels
        layer = ports.get(pkt.dport)
        if layer is None:
            return None
        self._ts = pkt.ts_ns
        self._family, self._src, self._dst = pkt.family, pkt.src, pkt.dst
        first = pkt
        for _ in range(MAX_UDP_TUNNELS):
            data = pkt.payload
            try:
                step = layer(self, data, 0, len(data))
            except (StructError, IndexError, TruncatedPacket):
                self._udp -= 1  # the datagram's fate: cut short inside the tunnel header
                self._stats["truncated"] += 1
                return ()
            except DecodeError:
                self._udp -= 1
                self._stats["malformed"] += 1
                return ()
            if step is tunnels.NOT_TUNNEL:
                return None if pkt is first else (pkt,)
            self._udp -= 1  # the datagram's fate is what the tunnel holds
            if step.__class__ is not tuple:
                return (step,)  # HEP's CarriedMessages
            try:
                inner = self._walk(*step)
            except DecodeError:  # counted by _walk
                return ()
            if inner is None:
                return ()
            if inner.proto != UDP:
                return (inner,)
            layer = ports.get(inner.dport)
            if layer is None:
                return (inner,)
            pkt = inner
        self._stats["udp_tunnels_too_deep"] += 1
        return (pkt,)

    def decode_hep(self, ts_ns: int, data: bytes) -> CarriedMessages | None:
        """A HEP packet received by a HEP listener (``hep_listen``), not captured: its SIP
        message, or None. Counted apart from captured packets (hep_received,
        hep_received_not_sip, hep_received_not_hep, hep_received_malformed), so it is
        no packet's fate. ``ts_ns`` (receive time) dates HEPv1, which carries none."""
        self._ts = ts_ns
        stats = self._stats
        try:
            found = hep.read_hep(self, data, 0, len(data))
        except (StructError, IndexError, DecodeError):
            stats["hep_received_malformed"] += 1
            return None
        if found is tunnels.NOT_TUNNEL:
            stats["hep_received_not_hep"] += 1
            return None
        if found is None:
            stats["hep_received_not_sip"] += 1
            return None
        stats["hep_received"] += 1
        return found

    def _carried(self, transport: str, sport: int, dport: int,
                 messages: list[bytes]) -> CarriedMessages:
        """The packet's message-oriented payloads (SCTP user messages), with its
        addresses and time."""
        head = (self._ts, transport, self._family, self._src, sport, self._dst, dport)
        return CarriedMessages([head + (raw,) for raw in messages])

    def _carried_one(self, ts_ns: int, transport: str, family: int, src: str, sport: int,
                     dst: str, dport: int, raw: bytes) -> CarriedMessages:
        """One message with addresses and time of its own (HEP)."""
        return CarriedMessages([(ts_ns, transport, family, src, sport, dst, dport, raw)])

    def expire(self, now_ns: int | None = None) -> int:
        """Time out incomplete fragment sets (all of them when now_ns is None), SCTP's
        held user-message fragments too."""
        if self._sctp.sets:
            self._sctp.expire(now_ns)
        return self._fragments.expire(now_ns)

    @property
    def stats(self) -> Counter:
        """All counts, the per-packet ones brought up to date."""
        stats = self._stats
        stats["packets"] = self._packets
        stats["udp"] = self._udp
        stats["tcp"] = self._tcp
        return stats

    @property
    def pending_fragment_sets(self) -> int:
        return len(self._fragments.sets)
