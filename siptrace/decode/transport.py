"""UDP and TCP: the layers that end a decode with a TransportPacket."""

from struct import Struct

from siptrace.decode.packet import TCP, UDP, TransportPacket
from siptrace.errors import DecodeError

UDP_HEADER_LEN = 8  # RFC 768
TCP_MIN_HEADER_LEN = 20  # RFC 9293 section 3.1

UDP_HEADER = Struct("!HHH")  # source port, destination port, length
TCP_HEADER = Struct("!HHI4xH")  # ports, sequence number, data offset/flags


def udp(dec, data: bytes, off: int, end: int) -> TransportPacket:
    """UDP (RFC 768); the payload is bounded by the UDP length, not the IP one."""
    sport, dport, length = UDP_HEADER.unpack_from(data, off)
    stop = off + length
    if length < UDP_HEADER_LEN or stop > end:
        if length == 0 and dec._family == 6:  # RFC 2675 jumbogram: length in IPv6
            stop = end
        else:
            raise DecodeError(f"UDP length {length}, {end - off} bytes in the IP payload")
    return TransportPacket(dec._ts, UDP, dec._family, dec._src, sport, dec._dst, dport,
                           data[off + UDP_HEADER_LEN:stop])


def tcp(dec, data: bytes, off: int, end: int) -> TransportPacket:
    """TCP (RFC 9293): ports, sequence number, flags and the segment's data."""
    sport, dport, seq, offset_flags = TCP_HEADER.unpack_from(data, off)
    header_len = (offset_flags >> 12) << 2
    if header_len < TCP_MIN_HEADER_LEN or off + header_len > end:
        raise DecodeError(f"TCP header length {header_len}, {end - off} bytes in the IP payload")
    return TransportPacket(dec._ts, TCP, dec._family, dec._src, sport, dec._dst, dport,
                           data[off + header_len:end], seq, offset_flags & 0xFF)
