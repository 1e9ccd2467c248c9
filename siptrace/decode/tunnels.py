"""GRE (IP protocol 47) and the mirroring tunnels carried in it (ERSPAN).

IP-in-IP needs no function of its own: IP protocols 4 and 41 dispatch straight
to the IPv4 and IPv6 layers. Layer signature: see siptrace.decode.ip.
"""

from struct import Struct

from siptrace.decode.link import ETH_BRIDGED, ETH_PPP
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
        protocol = ETH_BRIDGED
    elif protocol == GRE_ERSPAN_III:
        if _U16.unpack_from(data, off + 10)[0] & 1:
            off += ERSPAN_III_SUBHEADER_LEN
        off += ERSPAN_III_HEADER_LEN
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
