"""IPv4 and IPv6 layers: header checks, extension headers, printable addresses.

Every layer function in siptrace.decode has the signature
``layer(dec, data, off, end)``: ``data[off:end]`` is this layer's bytes, ``dec``
the PacketDecoder whose per-packet scratch (``_ts``, ``_family``, ``_src``,
``_dst``) the IP layers fill in. A layer returns ``(next_key, data, off, end)``
to go on, or a final TransportPacket / None. ``next_key`` is an EtherType, or
``IP_PROTO + n`` for IP protocol number n, so one table dispatches both.
"""

from ipaddress import IPv6Address
from struct import Struct

from siptrace.errors import DecodeError, TruncatedPacket

IP_PROTO = 0x10000  # layer key offset for IP protocol numbers (EtherTypes are 16-bit)

# EtherTypes (IEEE 802 numbers registry)
ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD

# IP protocol numbers (IANA "Assigned Internet Protocol Numbers")
IPPROTO_HOPOPTS = 0  # RFC 8200 section 4.3
IPPROTO_IPIP = 4  # RFC 2003
IPPROTO_IPV6 = 41  # RFC 2473
IPPROTO_ROUTING = 43  # RFC 8200 section 4.4
IPPROTO_FRAGMENT = 44  # RFC 8200 section 4.5
IPPROTO_GRE = 47  # RFC 2784
IPPROTO_ESP = 50  # RFC 4303
IPPROTO_AH = 51  # RFC 4302
IPPROTO_NONE = 59  # RFC 8200 section 4.7
IPPROTO_DSTOPTS = 60  # RFC 8200 section 4.6

IPV4_MORE_FRAGMENTS = 0x2000  # RFC 791: flags/fragment offset word
IPV4_OFFSET_MASK = 0x1FFF
IPV6_HEADER_LEN = 40  # RFC 8200 section 3
# Extension headers with the common (next header, length in 8-octet units) layout.
IPV6_OPTION_HEADERS = frozenset((IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS))
MAX_IPV6_EXTENSION_HEADERS = 32  # more than any real packet carries

ADDRESS_CACHE_SIZE = 4096  # the same few address pairs recur; cleared when full

_IPV4_FIELDS = Struct("!BxHxxHxB")  # version/IHL, total length, flags/offset, protocol
_IPV4_IDENT = Struct("!H")
_IPV6_FIELDS = Struct("!BxxxHB")  # version nibble, payload length, next header
_NEXT_AND_LEN = Struct("!BB")
_IPV6_FRAGMENT = Struct("!BxHI")  # next header, offset/flags, identification


def ipv4_text(raw: bytes) -> str:
    """Dotted quad of a 4-byte address."""
    return "%d.%d.%d.%d" % (raw[0], raw[1], raw[2], raw[3])


def ipv6_text(raw: bytes) -> str:
    """RFC 5952 text of a 16-byte address, as the ipaddress module prints it."""
    return str(IPv6Address(raw))


def address_pair(cache: dict, raw: bytes, convert) -> tuple[str, str]:
    """(source, destination) text of the raw source+destination bytes, cached.

    Callers try ``cache.get(raw)`` first; this fills a miss. The cache is
    bounded: cleared when full.
    """
    if len(cache) >= ADDRESS_CACHE_SIZE:
        cache.clear()
    half = len(raw) >> 1
    names = cache[raw] = (convert(raw[:half]), convert(raw[half:]))
    return names


def _addresses(dec, family: int, raw: bytes) -> tuple[str, str]:
    """The packet's source and destination as text (cached per address pair), noted on
    the decoder with the IP version."""
    names, to_text = (dec._v4_names, ipv4_text) if family == 4 else (dec._v6_names, ipv6_text)
    src, dst = names.get(raw) or address_pair(names, raw, to_text)
    dec._family, dec._src, dec._dst = family, src, dst
    return src, dst


def ipv4(dec, data: bytes, off: int, end: int):
    """IPv4 (RFC 791). Options skipped, checksum not verified, padding stripped."""
    vihl, total, frag, proto = _IPV4_FIELDS.unpack_from(data, off)
    if vihl >> 4 != 4:
        raise DecodeError(f"IPv4 header with version {vihl >> 4}")
    ihl = (vihl & 15) << 2
    if total == 0:  # segmentation offload on the capturing host: length unset
        total = end - off
        dec._stats["ip_length_zero"] += 1
    if total < ihl or ihl < 20:
        raise DecodeError(f"IPv4 header length {ihl}, total length {total}")
    if off + total > end:
        raise TruncatedPacket(f"IPv4 total length {total}, {end - off} bytes captured")
    end = off + total
    src, dst = _addresses(dec, 4, data[off + 12:off + 20])
    off += ihl
    if frag & (IPV4_MORE_FRAGMENTS | IPV4_OFFSET_MASK):
        ident = _IPV4_IDENT.unpack_from(data, off - ihl + 4)[0]
        done = dec._fragments.add(dec._ts, (4, src, dst, proto, ident),
                                  (frag & IPV4_OFFSET_MASK) << 3,
                                  frag & IPV4_MORE_FRAGMENTS, data[off:end], proto)
        if done is None:
            return None
        proto, data = done
        off, end = 0, len(data)
    return IP_PROTO + proto, data, off, end


def ipv6(dec, data: bytes, off: int, end: int):
    """IPv6 (RFC 8200) with its extension headers, up to the upper-layer header."""
    version, plen, nh = _IPV6_FIELDS.unpack_from(data, off)
    if version >> 4 != 6:
        raise DecodeError(f"IPv6 header with version {version >> 4}")
    start = off + IPV6_HEADER_LEN
    if start > end:
        raise TruncatedPacket(f"IPv6 header, {end - off} bytes captured")
    if plen:  # 0: jumbogram or segmentation offload; take what was captured
        if start + plen > end:
            raise TruncatedPacket(f"IPv6 payload length {plen}, {end - start} bytes captured")
        end = start + plen
    src, dst = _addresses(dec, 6, data[off + 8:off + 40])
    off = start
    for _ in range(MAX_IPV6_EXTENSION_HEADERS):
        if nh in IPV6_OPTION_HEADERS:
            nh, units = _NEXT_AND_LEN.unpack_from(data, off)
            off += (units + 1) << 3
        elif nh == IPPROTO_FRAGMENT:
            nh, frag, ident = _IPV6_FRAGMENT.unpack_from(data, off)
            off += 8
            if frag & 0xFFF9:  # offset or M flag set: not an atomic fragment (RFC 6946)
                if off > end:
                    raise TruncatedPacket("IPv6 fragment header past the payload")
                done = dec._fragments.add(dec._ts, (6, src, dst, ident), frag & 0xFFF8,
                                          frag & 1, data[off:end], nh)
                if done is None:
                    return None
                nh, data = done
                off, end = 0, len(data)
        else:
            if off > end:
                raise TruncatedPacket("IPv6 extension headers past the payload")
            return IP_PROTO + nh, data, off, end
    raise DecodeError(f"more than {MAX_IPV6_EXTENSION_HEADERS} IPv6 extension headers")


def authentication_header(dec, data: bytes, off: int, end: int):
    """IPsec AH (RFC 4302), in IPv4 or IPv6: skipped, the payload is in clear."""
    nh, units = _NEXT_AND_LEN.unpack_from(data, off)
    off += (units + 2) << 2
    if off > end:
        raise TruncatedPacket("IPsec AH past the payload")
    return IP_PROTO + nh, data, off, end


def encrypted(dec, data: bytes, off: int, end: int):
    """IPsec ESP (RFC 4303): encrypted, nothing to decode; counted."""
    dec._stats["esp"] += 1
    return None
