"""What a UDP payload or a TCP stream that is not SIP most likely carries. No I/O.

Only to tell an operator what a capture holds instead of SIP: "RTP 1,200 datagrams"
or "TLS 3 streams (encrypted: the SIP inside cannot be read)" rather than "0 SIP
messages" alone. A guess, as Wireshark's heuristics make it: LAN services by their
well-known ports first (their payloads can look like anything), then the first bytes:
RFC 5389 STUN (its magic cookie), TLS and DTLS record headers (RFC 8446 section 5.1,
RFC 6347 section 4.1), RTP version 2 between unprivileged ports (RFC 3550) with RFC
5761's RTCP packet types.
"""

KINDS = {"rtp": "RTP", "rtcp": "RTCP", "tls": "TLS", "dtls": "DTLS", "stun": "STUN",
         "dns": "DNS", "netbios": "NetBIOS", "dhcp": "DHCP", "ntp": "NTP", "other": "other"}
_PORTS = {53: "dns", 5353: "dns", 5355: "dns", 137: "netbios", 138: "netbios",
          67: "dhcp", 68: "dhcp", 546: "dhcp", 547: "dhcp", 123: "ntp"}
ENCRYPTED = ("tls", "dtls")  # SIP may be inside, unreadable without the keys

_STUN_COOKIE = b"\x21\x12\xa4\x42"
_TLS_RECORDS = range(20, 24)  # change_cipher_spec, alert, handshake, application_data
_DTLS_VERSIONS = (0xFF, 0xFD, 0xFC)  # 1.0, 1.2, 1.3 (second byte after 0xFE)
_RTCP_TYPES = range(192, 224)  # RFC 5761 section 4: RTP payload types kept for RTCP


def payload_kind(data: bytes, sport: int = 0, dport: int = 0) -> str:
    """One of KINDS for the first bytes of a datagram or of a stream (its ports
    when known: 0 for a stream)."""
    kind = _PORTS.get(sport) or _PORTS.get(dport)
    if kind:
        return kind
    n = len(data)
    if n >= 20 and data[0] < 0x40 and data[4:8] == _STUN_COOKIE:
        return "stun"
    if n >= 5 and data[0] in _TLS_RECORDS and data[1] == 3 and data[2] <= 4:
        return "tls"
    if n >= 13 and 20 <= data[0] <= 25 and data[1] == 0xFE and data[2] in _DTLS_VERSIONS:
        return "dtls"
    if n >= 8 and data[0] >> 6 == 2 and not (0 < sport < 1024 or 0 < dport < 1024):
        if data[1] in _RTCP_TYPES:
            return "rtcp"
        if n >= 12:
            return "rtp"
    return "other"
