"""HEP (Homer Encapsulation Protocol) versions 1, 2 and 3 carrying SIP, as a Homer
collector receives them: the message inside, with the addresses, ports, transport and
capture time HEP carries, is what is handed on. No I/O.

HEPv3: HEP3 Network Protocol Specification rev. 37 (the format siptrace.mirror.hep
writes): ``HEP3``, a uint16 total length, then chunks (vendor id, type id, length
including these 6 bytes, data) in any order; chunks of other vendors are skipped, a
gzip/zlib compressed payload (type 0x10) is inflated, bounded. HEPv1/v2: the packed C
structures of Kamailio's and OpenSIPS' sipcapture (``hep_hdr``: version, header length,
family, protocol, ports in network order; the addresses; v2 adds ``hep_timehdr``,
seconds and microseconds in little-endian as those modules write them, a uint16 capture
id and the struct's 2 bytes of padding), then the payload.

A datagram that is not HEP, or HEP carrying something else than SIP (RTCP, logs...),
is left as a UDP datagram that is not SIP (``NOT_TUNNEL``), counted.
"""

import zlib
from struct import Struct

from siptrace.decode import ip
from siptrace.errors import DecodeError, TruncatedPacket

HEP_PORT = 9060  # the port Homer and heplify use by default
HEP3_ID = b"HEP3"
HEP_FAMILY = {2: 4, 10: 6}  # AF_INET, AF_INET6 (Linux/BSD values the spec uses)
TRANSPORT = {17: "udp", 6: "tcp", 132: "sctp"}  # IANA numbers; TLS and WS ride as TCP
PROTO_TYPE_SIP = 1
MAX_INFLATED = 65535  # a compressed payload inflates to at most one HEP packet's worth

CHUNK_IP_FAMILY = 0x0001
CHUNK_IP_PROTOCOL = 0x0002
CHUNK_IPV4_SRC, CHUNK_IPV4_DST = 0x0003, 0x0004
CHUNK_IPV6_SRC, CHUNK_IPV6_DST = 0x0005, 0x0006
CHUNK_SRC_PORT, CHUNK_DST_PORT = 0x0007, 0x0008
CHUNK_TS_SEC, CHUNK_TS_USEC = 0x0009, 0x000A
CHUNK_PROTO_TYPE = 0x000B
CHUNK_PAYLOAD = 0x000F
CHUNK_COMPRESSED_PAYLOAD = 0x0010

HEP2_HEADER_LEN = {4: 16, 6: 40}  # hep_hdr + hep_iphdr / hep_ip6hdr
HEP2_TIME_LEN = 12  # sizeof(struct hep_timehdr): tv_sec, tv_usec, captid, 2 bytes padding

_HEP3_HEAD = Struct("!4sH")
_CHUNK = Struct("!HHH")
_U8 = Struct("!B")
_U16 = Struct("!H")
_U32 = Struct("!I")
_HEP2 = Struct("!BBBBHH")
_HEP2_TIME = Struct("<II")

NOT_TUNNEL = "not a tunnel"  # a UDP tunnel layer's answer: leave the datagram as it is


def hep(dec, data: bytes, off: int, end: int):
    """One HEP packet in a UDP datagram to a HEP port: CarriedMessages with its SIP
    message, or NOT_TUNNEL (not HEP, or HEP not carrying SIP), counted."""
    found = read_hep(dec, data, off, end)
    if found is NOT_TUNNEL:
        dec._stats["hep_not_hep"] += 1
    elif found is None:
        dec._stats["hep_not_sip"] += 1
        return NOT_TUNNEL
    else:
        dec._stats["hep"] += 1
    return found


def read_hep(dec, data: bytes, off: int, end: int):
    """CarriedMessages with the SIP message of the HEP packet at ``off``, None for HEP
    carrying something else, NOT_TUNNEL when it is not HEP; counts nothing. Raises
    DecodeError/TruncatedPacket (or struct.error/IndexError: cut short) for bad HEP."""
    if data[off:off + 4] == HEP3_ID:
        return _hep3(dec, data, off, end)
    if end - off >= 16 and data[off] in (1, 2):
        return _hep2(dec, data, off, end)
    return NOT_TUNNEL


def _hep3(dec, data: bytes, off: int, end: int):
    total = _HEP3_HEAD.unpack_from(data, off)[1]
    if total < 6:
        raise DecodeError(f"HEP3 length {total}")
    if off + total > end:
        raise TruncatedPacket(f"HEP3 length {total}, {end - off} bytes")
    end = off + total
    pos = off + 6
    chunks: dict[int, tuple[int, int]] = {}
    while pos < end:
        vendor, ctype, length = _CHUNK.unpack_from(data, pos)
        if length < 6 or pos + length > end:
            raise DecodeError(f"HEP3 chunk 0x{ctype:04x} of length {length}")
        if vendor == 0:
            chunks[ctype] = (pos + 6, pos + length)
        pos += length

    def value(ctype: int, unpack) -> int | None:
        where = chunks.get(ctype)
        if where is None:
            return None
        start, stop = where
        if stop - start != unpack.size:
            raise DecodeError(f"HEP3 chunk 0x{ctype:04x} of {stop - start} bytes")
        return unpack.unpack_from(data, start)[0]

    proto_type = value(CHUNK_PROTO_TYPE, _U8)
    if proto_type is not None and proto_type != PROTO_TYPE_SIP:
        return None
    family = HEP_FAMILY.get(value(CHUNK_IP_FAMILY, _U8))
    if family is None:
        raise DecodeError("HEP3 without an IPv4/IPv6 family")
    src_type, dst_type, size = ((CHUNK_IPV4_SRC, CHUNK_IPV4_DST, 4) if family == 4
                                else (CHUNK_IPV6_SRC, CHUNK_IPV6_DST, 16))
    src, dst = chunks.get(src_type), chunks.get(dst_type)
    if src is None or dst is None or src[1] - src[0] != size or dst[1] - dst[0] != size:
        raise DecodeError("HEP3 without the addresses of its family")
    raw_addresses = data[src[0]:src[1]] + data[dst[0]:dst[1]]
    sport, dport = value(CHUNK_SRC_PORT, _U16), value(CHUNK_DST_PORT, _U16)
    transport = TRANSPORT.get(value(CHUNK_IP_PROTOCOL, _U8))
    if sport is None or dport is None or transport is None:
        raise DecodeError("HEP3 without ports or a UDP/TCP/SCTP protocol")
    seconds, micros = value(CHUNK_TS_SEC, _U32), value(CHUNK_TS_USEC, _U32)
    ts_ns = dec._ts if seconds is None else seconds * 1_000_000_000 + (micros or 0) * 1000
    if CHUNK_PAYLOAD in chunks:
        start, stop = chunks[CHUNK_PAYLOAD]
        payload = data[start:stop]
    elif CHUNK_COMPRESSED_PAYLOAD in chunks:
        start, stop = chunks[CHUNK_COMPRESSED_PAYLOAD]
        payload = _inflate(data[start:stop])
    else:
        return None
    return _message(dec, ts_ns, transport, family, raw_addresses, sport, dport, payload)


def _hep2(dec, data: bytes, off: int, end: int):
    version, length, af, proto, sport, dport = _HEP2.unpack_from(data, off)
    family = HEP_FAMILY.get(af)
    if family is None or length != HEP2_HEADER_LEN[family]:
        return NOT_TUNNEL
    transport = TRANSPORT.get(proto)
    if transport is None:
        raise DecodeError(f"HEPv{version} protocol {proto}")
    size = 4 if family == 4 else 16
    raw_addresses = data[off + 8:off + 8 + 2 * size]
    pos = off + length
    ts_ns = dec._ts
    if version == 2:
        seconds, micros = _HEP2_TIME.unpack_from(data, pos)
        ts_ns = seconds * 1_000_000_000 + micros * 1000
        pos += HEP2_TIME_LEN
    if pos > end:
        raise TruncatedPacket(f"HEPv{version} header, {end - off} bytes")
    return _message(dec, ts_ns, transport, family, raw_addresses, sport, dport,
                    data[pos:end])


def _inflate(compressed: bytes) -> bytes:
    inflater = zlib.decompressobj(wbits=47)  # gzip or zlib header, detected
    try:
        payload = inflater.decompress(compressed, MAX_INFLATED)
    except zlib.error as exc:
        raise DecodeError(f"HEP3 compressed payload: {exc}") from None
    if inflater.unconsumed_tail:
        raise DecodeError(f"HEP3 compressed payload inflates past {MAX_INFLATED} bytes")
    return payload


def _message(dec, ts_ns, transport, family, raw_addresses, sport, dport, payload):
    names, to_text = ((dec._v4_names, ip.ipv4_text) if family == 4
                      else (dec._v6_names, ip.ipv6_text))
    src, dst = names.get(raw_addresses) or ip.address_pair(names, raw_addresses, to_text)
    return dec._carried_one(ts_ns, transport, family, src, sport, dst, dport, payload)
