"""HEPv3 encoding: one wire message in, one HEP packet out. No I/O.

Format: HEP3 Network Protocol Specification rev. 37 (sipcapture/HEP). A packet is the
ASCII id ``HEP3``, a uint16 total length, then chunks of (uint16 vendor id, uint16
type id, uint16 length including these 6 bytes, data), all in network byte order.

Chunk order: the fixed-size chunks in the order of the ``hep_generic`` header that
captagent and Kamailio write (family, protocol, ports, time, protocol type, capture
id), then the addresses, the auth key, the payload, and the correlation id last.
Decoders that walk chunks by type accept any order; those that read the fixed part
positionally and take the chunk after the auth key as the payload (sngrep before
1.4.7) read this one too.
"""

import struct
from socket import AF_INET, AF_INET6, inet_pton

HEP3_ID = b"HEP3"
VENDOR_GENERIC = 0x0000
MAX_HEP3_LENGTH = 0xFFFF  # the uint16 total length field

# Chunk type ids (HEP3 spec rev. 37, "generic chunk types").
CHUNK_IP_FAMILY = 0x0001  # uint8
CHUNK_IP_PROTOCOL = 0x0002  # uint8
CHUNK_IPV4_SRC = 0x0003  # 4 bytes
CHUNK_IPV4_DST = 0x0004
CHUNK_IPV6_SRC = 0x0005  # 16 bytes
CHUNK_IPV6_DST = 0x0006
CHUNK_SRC_PORT = 0x0007  # uint16
CHUNK_DST_PORT = 0x0008
CHUNK_TS_SEC = 0x0009  # uint32, seconds since the epoch
CHUNK_TS_USEC = 0x000A  # uint32, microseconds within the second
CHUNK_PROTO_TYPE = 0x000B  # uint8
CHUNK_CAPTURE_ID = 0x000C  # uint32
CHUNK_AUTH_KEY = 0x000E  # bytes
CHUNK_PAYLOAD = 0x000F  # bytes
CHUNK_CORRELATION_ID = 0x0011  # bytes

HEP_FAMILY = {4: 2, 6: 10}  # the BSD/Linux AF_INET/AF_INET6 values the spec uses
SOCKET_FAMILY = {4: AF_INET, 6: AF_INET6}
IP_PROTOCOL = {"udp": 17, "tcp": 6, "ws": 6, "sctp": 132}  # IANA numbers; WebSocket rides on TCP
PROTO_TYPE_SIP = 1
DEFAULT_CAPTURE_ID = 1  # Kamailio siptrace's hep_capture_id default

CHUNK_HEADER = struct.Struct("!HHH")


def _chunk_header(type_id: int, data_len: int) -> bytes:
    return CHUNK_HEADER.pack(VENDOR_GENERIC, type_id, CHUNK_HEADER.size + data_len)


def _fixed_part(address_len: int, src_type: int, dst_type: int):
    """The Struct and constant chunk headers of everything up to the addresses."""
    fields = "!4sH 6sB 6sB 6sH 6sH 6sI 6sI 6sB 6sI 6s%ds 6s%ds" % (address_len, address_len)
    heads = (
        _chunk_header(CHUNK_IP_FAMILY, 1), _chunk_header(CHUNK_IP_PROTOCOL, 1),
        _chunk_header(CHUNK_SRC_PORT, 2), _chunk_header(CHUNK_DST_PORT, 2),
        _chunk_header(CHUNK_TS_SEC, 4), _chunk_header(CHUNK_TS_USEC, 4),
        _chunk_header(CHUNK_PROTO_TYPE, 1), _chunk_header(CHUNK_CAPTURE_ID, 4),
        _chunk_header(src_type, address_len), _chunk_header(dst_type, address_len),
    )
    return struct.Struct(fields), heads


FIXED = {
    4: _fixed_part(4, CHUNK_IPV4_SRC, CHUNK_IPV4_DST),
    6: _fixed_part(16, CHUNK_IPV6_SRC, CHUNK_IPV6_DST),
}


def auth_key_chunk(auth_key: bytes | str | None) -> bytes:
    """The auth key chunk (empty when there is no key); str keys are sent as UTF-8."""
    if not auth_key:
        return b""
    if isinstance(auth_key, str):
        auth_key = auth_key.encode("utf-8")
    return _chunk_header(CHUNK_AUTH_KEY, len(auth_key)) + auth_key


def encode_hep3(wire, capture_id: int = DEFAULT_CAPTURE_ID,
                auth_key: bytes | str | None = None) -> bytes:
    """One HEPv3 packet for a wire message (``extract.WireMessage`` or alike).

    Carries family, IP protocol (TCP for "tcp" and "ws", SCTP for "sctp"), addresses, ports, the
    capture time (seconds, microseconds), protocol type SIP, ``capture_id``, the
    optional ``auth_key``, the exact message bytes, and the Call-ID as correlation id
    (omitted when empty). Raises ValueError for a message HEP cannot carry: unknown
    family or transport, an address that is not a literal of its family, a port or
    capture id out of range, or a packet past the 65535-byte length field.
    """
    sip = wire.sip
    return encode_fields(wire.ts_ns, wire.transport, wire.family, wire.src, wire.sport,
                         wire.dst, wire.dport, sip.raw, sip.call_id,
                         capture_id, auth_key_chunk(auth_key))


def encode_fields(ts_ns: int, transport: str, family: int, src: str, sport: int, dst: str,
                  dport: int, raw: bytes, call_id: str, capture_id: int,
                  auth_chunk: bytes) -> bytes:
    """encode_hep3 on the wire message's fields, with the auth key chunk built once."""
    fixed = FIXED.get(family)
    ip_protocol = IP_PROTOCOL.get(transport)
    if fixed is None or ip_protocol is None:
        raise ValueError(f"HEP cannot carry family {family!r} transport {transport!r}")
    layout, heads = fixed
    correlation = call_id.encode("utf-8", "surrogateescape") if call_id else b""
    total = (layout.size + len(auth_chunk) + CHUNK_HEADER.size + len(raw)
             + (CHUNK_HEADER.size + len(correlation) if correlation else 0))
    if total > MAX_HEP3_LENGTH:
        raise ValueError(f"HEP packet of {total} bytes exceeds the {MAX_HEP3_LENGTH}-byte limit")
    seconds, micros = divmod(ts_ns // 1000, 1_000_000)
    try:
        af = SOCKET_FAMILY[family]
        head = layout.pack(
            HEP3_ID, total,
            heads[0], HEP_FAMILY[family], heads[1], ip_protocol,
            heads[2], sport, heads[3], dport,
            heads[4], seconds, heads[5], micros,
            heads[6], PROTO_TYPE_SIP, heads[7], capture_id,
            heads[8], inet_pton(af, src), heads[9], inet_pton(af, dst),
        )
    except (OSError, TypeError, struct.error) as exc:
        raise ValueError(f"HEP cannot carry this message: {exc}") from None
    payload_head = _chunk_header(CHUNK_PAYLOAD, len(raw))
    if correlation:
        return b"".join((head, auth_chunk, payload_head, raw,
                         _chunk_header(CHUNK_CORRELATION_ID, len(correlation)), correlation))
    return b"".join((head, auth_chunk, payload_head, raw))
