"""Link layers and the EtherType-level layers between them and IP.

A link-layer function takes a capture record's bytes and returns
``(layer_key, offset)``: the EtherType of what follows (raw IP and loopback
families are mapped to the IPv4/IPv6 EtherTypes) and where it starts. The
EtherType-level layers (VLAN tags, PPPoE, PPP, MPLS, Ethernet inside a tunnel)
have the common layer signature described in siptrace.decode.ip.
"""

from struct import Struct

from siptrace.decode.ip import ETH_IPV4, ETH_IPV6
from siptrace.errors import DecodeError

# LINKTYPE_* values (tcpdump.org link-layer header types registry)
LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in the writer's byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9  # RFC 1661, optionally with RFC 1662 address/control bytes
LINKTYPE_RAW_BSD = 12  # DLT_RAW as most BSDs number it
LINKTYPE_RAW_OPENBSD = 14  # DLT_RAW on OpenBSD
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108  # OpenBSD loopback: address family in network byte order
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

# EtherTypes (IEEE 802 numbers registry) of the layers handled here
ETH_VLAN = 0x8100  # IEEE 802.1Q
ETH_QINQ = 0x88A8  # IEEE 802.1ad service tag
ETH_QINQ_OLD = 0x9100  # pre-standard QinQ
ETH_PPPOE_SESSION = 0x8864  # RFC 2516
ETH_PPP = 0x880B  # PPP in enhanced GRE (RFC 2637); also PPP link type
ETH_MPLS = 0x8847  # RFC 3032
ETH_MPLS_MULTICAST = 0x8848
ETH_BRIDGED = 0x6558  # transparent Ethernet bridging: Ethernet inside GRE
NOT_IP = -1  # layer key that no table holds: counted as non-IP

ETHERNET_HEADER_LEN = 14
SLL_HEADER_LEN = 16
SLL2_HEADER_LEN = 20
PPPOE_HEADER_LEN = 6

# PPP protocol numbers (RFC 1332 IPv4, RFC 5072 IPv6, RFC 3032 MPLS)
PPP_TO_ETHERTYPE = {0x0021: ETH_IPV4, 0x0057: ETH_IPV6, 0x0281: ETH_MPLS}

# BSD AF_INET is 2 everywhere; AF_INET6 is 24 (NetBSD, OpenBSD, BSD/OS),
# 28 (FreeBSD, DragonFly) or 30 (macOS, iOS).
BSD_FAMILY_TO_ETHERTYPE = {2: ETH_IPV4, 24: ETH_IPV6, 28: ETH_IPV6, 30: ETH_IPV6}

MPLS_BOTTOM_OF_STACK = 0x100
IP_VERSION_TO_ETHERTYPE = {4: ETH_IPV4, 6: ETH_IPV6}

_U16 = Struct("!H")
_U32 = Struct("!I")
_U32_LE = Struct("<I")
_PPPOE = Struct("!BxxxHH")  # version/type, length, PPP protocol


def ethernet(data: bytes) -> tuple[int, int]:
    """Ethernet II; an 802.3 length field (< 0x0600) maps to no layer."""
    return _U16.unpack_from(data, 12)[0], ETHERNET_HEADER_LEN


def linux_sll(data: bytes) -> tuple[int, int]:
    """Linux cooked capture v1: the protocol field is an EtherType."""
    return _U16.unpack_from(data, 14)[0], SLL_HEADER_LEN


def linux_sll2(data: bytes) -> tuple[int, int]:
    """Linux cooked capture v2: the protocol field comes first."""
    return _U16.unpack_from(data, 0)[0], SLL2_HEADER_LEN


def raw_ip(data: bytes) -> tuple[int, int]:
    """No link header: the IP version nibble says which IP."""
    return IP_VERSION_TO_ETHERTYPE.get(data[0] >> 4, NOT_IP), 0


def raw_ipv4(data: bytes) -> tuple[int, int]:
    return ETH_IPV4, 0


def raw_ipv6(data: bytes) -> tuple[int, int]:
    return ETH_IPV6, 0


def bsd_null(data: bytes) -> tuple[int, int]:
    """BSD loopback: the family in the writer's byte order; a family fits 16 bits."""
    family = _U32_LE.unpack_from(data, 0)[0]
    if family > 0xFFFF:
        family = _U32.unpack_from(data, 0)[0]
    return BSD_FAMILY_TO_ETHERTYPE.get(family, NOT_IP), 4


def openbsd_loop(data: bytes) -> tuple[int, int]:
    """OpenBSD loopback: the family in network byte order."""
    return BSD_FAMILY_TO_ETHERTYPE.get(_U32.unpack_from(data, 0)[0], NOT_IP), 4


def ppp_link(data: bytes) -> tuple[int, int]:
    """PPP link type: the same framing as PPP inside enhanced GRE."""
    return ETH_PPP, 0


LINK_LAYERS = {
    LINKTYPE_NULL: bsd_null,
    LINKTYPE_ETHERNET: ethernet,
    LINKTYPE_PPP: ppp_link,
    LINKTYPE_RAW_BSD: raw_ip,
    LINKTYPE_RAW_OPENBSD: raw_ip,
    LINKTYPE_RAW: raw_ip,
    LINKTYPE_LOOP: openbsd_loop,
    LINKTYPE_LINUX_SLL: linux_sll,
    LINKTYPE_IPV4: raw_ipv4,
    LINKTYPE_IPV6: raw_ipv6,
    LINKTYPE_LINUX_SLL2: linux_sll2,
}


def vlan_tag(dec, data: bytes, off: int, end: int):
    """One 802.1Q / 802.1ad tag; stacked tags (QinQ) come back here."""
    return _U16.unpack_from(data, off + 2)[0], data, off + 4, end


def bridged_ethernet(dec, data: bytes, off: int, end: int):
    """An Ethernet frame inside a tunnel (GRE 0x6558, ERSPAN)."""
    return _U16.unpack_from(data, off + 12)[0], data, off + ETHERNET_HEADER_LEN, end


def pppoe_session(dec, data: bytes, off: int, end: int):
    """PPPoE session stage (RFC 2516): 6-byte header, then the PPP protocol."""
    version_type, length, protocol = _PPPOE.unpack_from(data, off)
    if version_type != 0x11:
        raise DecodeError(f"PPPoE version/type 0x{version_type:02x}")
    if off + PPPOE_HEADER_LEN + length < end:  # strip Ethernet padding
        end = off + PPPOE_HEADER_LEN + length
    return PPP_TO_ETHERTYPE.get(protocol, NOT_IP), data, off + PPPOE_HEADER_LEN + 2, end


def ppp(dec, data: bytes, off: int, end: int):
    """PPP (RFC 1661): optional ff 03 address/control, 1- or 2-byte protocol."""
    if data[off] == 0xFF and data[off + 1] == 0x03:
        off += 2
    protocol = data[off]
    if protocol & 1:  # protocol field compression (RFC 1661 section 6.5)
        off += 1
    else:
        protocol = _U16.unpack_from(data, off)[0]
        off += 2
    return PPP_TO_ETHERTYPE.get(protocol, NOT_IP), data, off, end


def mpls(dec, data: bytes, off: int, end: int):
    """MPLS label stack (RFC 3032). Under the bottom label: IP by its version nibble
    (4, 6), else an Ethernet pseudowire (RFC 4448) with a control word (first nibble 0,
    RFC 4385) or without one, as Wireshark's "CW heuristic" tells them apart: the one
    whose EtherType is one this decoder knows."""
    unpack = _U32.unpack_from
    while off < end:
        entry = unpack(data, off)[0]
        off += 4
        if entry & MPLS_BOTTOM_OF_STACK:
            nibble = data[off] >> 4
            if nibble == 4 or nibble == 6:
                return IP_VERSION_TO_ETHERTYPE[nibble], data, off, end
            if nibble == 0 and _ethernet_follows(data, off + 4, end):
                dec._stats["mpls_pw_control_word"] += 1
                return ETH_BRIDGED, data, off + 4, end
            if _ethernet_follows(data, off, end):
                dec._stats["mpls_pw"] += 1
                return ETH_BRIDGED, data, off, end
            return NOT_IP, data, off, end
    raise DecodeError("MPLS label stack without a bottom label")


# EtherTypes that make bytes after an MPLS label look like an Ethernet frame.
PSEUDOWIRE_ETHERTYPES = frozenset((ETH_IPV4, ETH_IPV6, ETH_VLAN, ETH_QINQ, ETH_QINQ_OLD,
                                   ETH_PPPOE_SESSION, ETH_MPLS, ETH_MPLS_MULTICAST,
                                   0x0806))  # ARP


def _ethernet_follows(data: bytes, off: int, end: int) -> bool:
    return (off + ETHERNET_HEADER_LEN <= end
            and _U16.unpack_from(data, off + 12)[0] in PSEUDOWIRE_ETHERTYPES)
