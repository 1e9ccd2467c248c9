"""What the packet decoders produce: one transport-layer packet, IP layers peeled off."""

from dataclasses import dataclass

UDP = 17  # IANA protocol numbers
TCP = 6

# TCP flag bits (RFC 9293, section 3.1)
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10


@dataclass(slots=True)
class TransportPacket:
    """A UDP datagram or TCP segment with the innermost IP addresses.

    Addresses are printable strings: dotted quad for IPv4, RFC 5952 compressed
    form for IPv6 (no brackets). ``seq`` and ``flags`` are 0 for UDP.
    """

    ts_ns: int
    proto: int  # UDP or TCP
    family: int  # 4 or 6
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes
    seq: int = 0
    flags: int = 0


CARRIED = 0  # CarriedMessages.proto: neither UDP nor TCP


@dataclass(slots=True)
class CarriedMessages:
    """Whole messages a packet delivered through a message-oriented carrier: SCTP user
    messages (RFC 4168) or HEP payloads. Each is ``(ts_ns, transport, family, src,
    sport, dst, dport, raw)``: HEP carries its own time, addresses and transport."""

    messages: list[tuple[int, str, int, str, int, str, int, bytes]]
    proto: int = CARRIED
