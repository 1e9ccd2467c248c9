"""Tunnels: GRE (IP protocol 47) and the mirroring sessions carried in it (ERSPAN
types I, II, III); over UDP, GTPv1-U, VXLAN and Geneve (HEP is in siptrace.decode.hep).

IP-in-IP needs no function of its own: IP protocols 4 and 41 dispatch straight
to the IPv4 and IPv6 layers. Layer signature: see siptrace.decode.ip. A UDP tunnel
layer may also answer NOT_TUNNEL: the datagram is not what its port suggests.
"""

from struct import Struct

from siptrace.decode.hep import HEP_PORT, NOT_TUNNEL, hep
from siptrace.decode.link import (ETH_BRIDGED, ETH_PPP, ETHERNET_HEADER_LEN,
                                  IP_VERSION_TO_ETHERTYPE, NOT_IP)
from siptrace.errors import DecodeError, TruncatedPacket

# GRE flag bits (RFC 1701 section 2.1; K and S as in RFC 2890; A from RFC 2637)
GRE_CHECKSUM = 0x8000
GRE_ROUTING = 0x4000
GRE_KEY = 0x2000
GRE_SEQUENCE = 0x1000
GRE_ACK = 0x0080  # enhanced GRE (version 1, PPTP) only
GRE_VERSION_MASK = 0x0007
GRE_ENHANCED = 1

# ERSPAN (draft-foschiano-erspan): port mirroring over GRE
GRE_ERSPAN_II = 0x88BE  # type I when GRE has no sequence number, else type II
GRE_ERSPAN_III = 0x22EB
ERSPAN_II_HEADER_LEN = 8
ERSPAN_III_HEADER_LEN = 12
ERSPAN_III_SUBHEADER_LEN = 8  # present when the O bit (last bit of the header) is set

_GRE_HEADER = Struct("!HH")  # flags/version, protocol type
_SOURCE_ROUTE_ENTRY = Struct("!HxB")  # address family, (offset), length
_U16 = Struct("!H")


def gre(dec, data: bytes, off: int, end: int):
    """GRE versions 0 (RFC 2784/2890, legacy RFC 1701 routing) and 1 (PPTP)."""
    flags, protocol = _GRE_HEADER.unpack_from(data, off)
    off += 4
    version = flags & GRE_VERSION_MASK
    if version == 0:
        if flags & (GRE_CHECKSUM | GRE_ROUTING):
            off += 4  # checksum and offset
        if flags & GRE_KEY:
            off += 4
        if flags & GRE_SEQUENCE:
            off += 4
        if flags & GRE_ROUTING:
            off = _skip_source_routes(data, off, end)
    elif version == GRE_ENHANCED and protocol == ETH_PPP:
        off += 4  # key: payload length and call id
        if flags & GRE_SEQUENCE:
            off += 4
        if flags & GRE_ACK:
            off += 4
    else:
        raise DecodeError(f"GRE version {version}, protocol 0x{protocol:04x}")
    if protocol == GRE_ERSPAN_II:
        if flags & GRE_SEQUENCE:
            off += ERSPAN_II_HEADER_LEN
            dec._stats["erspan_ii"] += 1
        else:
            dec._stats["erspan_i"] += 1
        protocol = ETH_BRIDGED
    elif protocol == GRE_ERSPAN_III:
        if _U16.unpack_from(data, off + 10)[0] & 1:
            off += ERSPAN_III_SUBHEADER_LEN
        off += ERSPAN_III_HEADER_LEN
        dec._stats["erspan_iii"] += 1
        protocol = ETH_BRIDGED
    if off > end:
        raise TruncatedPacket("GRE header past the IP payload")
    return protocol, data, off, end


def _skip_source_routes(data: bytes, off: int, end: int) -> int:
    """RFC 1701 source route entries, up to the null entry that ends the list."""
    while off < end:
        family, length = _SOURCE_ROUTE_ENTRY.unpack_from(data, off)
        off += 4 + length
        if family == 0 and length == 0:
            return off
    raise TruncatedPacket("GRE source route list past the IP payload")


# -- tunnels over UDP: opened only for datagrams that are not SIP (PacketDecoder.decapsulate)

GTPU_PORT = 2152  # 3GPP TS 29.281 section 4.4.2
VXLAN_PORT = 4789  # RFC 7348
GENEVE_PORT = 6081  # RFC 8926

GTP_VERSION_1_PT = 0x30  # version 1 (top 3 bits), protocol type GTP (not GTP')
GTP_OPTIONAL_FIELDS = 0x07  # E, S, PN: sequence number, N-PDU number, next extension
GTP_G_PDU = 255  # a user packet (T-PDU); echo, error indication, end marker are not
GTP_HEADER_LEN = 8
MAX_GTP_EXTENSIONS = 16
VXLAN_HEADER_LEN = 8
GENEVE_HEADER_LEN = 8

_GTP = Struct("!BBH")  # flags, message type, length (after the first 8 bytes)
_GENEVE = Struct("!BxH")  # version / option length, protocol type


def gtp_u(dec, data: bytes, off: int, end: int):
    """GTPv1-U (3GPP TS 29.281): a G-PDU's user packet, IPv4 or IPv6 by its version.

    Sequence number, N-PDU number and extension headers (PDU session container, UDP
    port...) are skipped. Signalling messages (echo, error indication, end marker) and
    GTP' are not a tunnel: left as UDP datagrams, counted."""
    flags, message_type, length = _GTP.unpack_from(data, off)
    if flags & 0xF0 != GTP_VERSION_1_PT or message_type != GTP_G_PDU:
        dec._stats["gtpu_signalling" if flags & 0xF0 == GTP_VERSION_1_PT
                   else "gtpu_not_gtpu"] += 1
        return NOT_TUNNEL
    stop = off + GTP_HEADER_LEN + length
    if stop > end:
        raise TruncatedPacket(f"GTP-U length {length}, {end - off - GTP_HEADER_LEN} bytes")
    end = stop
    off += GTP_HEADER_LEN
    if flags & GTP_OPTIONAL_FIELDS:
        next_type = data[off + 3]
        off += 4
        for _ in range(MAX_GTP_EXTENSIONS):
            if not next_type:
                break
            units = data[off]  # length in 4-byte units, this length and next type included
            if not units:
                raise DecodeError("GTP-U extension header of length 0")
            off += units << 2
            next_type = data[off - 1]
        else:
            raise DecodeError(f"more than {MAX_GTP_EXTENSIONS} GTP-U extension headers")
    if off >= end:
        raise TruncatedPacket("GTP-U headers past the G-PDU")
    dec._stats["gtpu"] += 1
    return IP_VERSION_TO_ETHERTYPE.get(data[off] >> 4, NOT_IP), data, off, end


def vxlan(dec, data: bytes, off: int, end: int):
    """VXLAN (RFC 7348): 8 bytes (flags, VNI), then an Ethernet frame."""
    if off + VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN > end:
        raise TruncatedPacket(f"VXLAN, {end - off} bytes")
    dec._stats["vxlan"] += 1
    return ETH_BRIDGED, data, off + VXLAN_HEADER_LEN, end


def geneve(dec, data: bytes, off: int, end: int):
    """Geneve (RFC 8926): options skipped, then what the protocol type says
    (Ethernet 0x6558, IPv4, IPv6...)."""
    ver_optlen, protocol = _GENEVE.unpack_from(data, off)
    if ver_optlen >> 6:
        dec._stats["geneve_not_geneve"] += 1
        return NOT_TUNNEL
    off += GENEVE_HEADER_LEN + ((ver_optlen & 0x3F) << 2)
    if off > end:
        raise TruncatedPacket("Geneve options past the datagram")
    dec._stats["geneve"] += 1
    return protocol, data, off, end


UDP_TUNNELS = {GTPU_PORT: gtp_u, VXLAN_PORT: vxlan, GENEVE_PORT: geneve, HEP_PORT: hep}
