"""A stored sip_trace row read back, with its addresses split. No I/O.

Addresses are stored as ``proto:ip:port`` (the module's fromip/toip). siptrace writes
IPv6 in brackets (``udp:[2001:db8::1]:5060``); Kamailio's own module writes it bare
(``udp:2001:db8::1:5060``): both are read, the port being what follows the last colon.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from siptrace.direction import normalize_ip


class Address(NamedTuple):
    """One side of a stored message: transport ('udp', 'tcp', 'ws', 'tls', 'sctp'), IP, port."""

    transport: str
    ip: str
    port: int

    @property
    def family(self) -> int:
        return 6 if ":" in self.ip else 4

    def __str__(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}"


UNKNOWN_ADDRESS = Address("", "", 0)


def parse_address(text: str) -> Address:
    """``proto:ip:port`` -> Address; UNKNOWN_ADDRESS for anything else (never raises)."""
    proto, sep, rest = text.strip().partition(":")
    if not sep:
        return UNKNOWN_ADDRESS
    host, sep, port_text = rest.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        host, port_text = rest, "0"  # no port: the whole rest is the address
    ip = normalize_ip(host)
    if ip is None:
        return UNKNOWN_ADDRESS
    return Address(proto.lower(), ip, int(port_text))


@dataclass(slots=True)
class StoredMessage:
    """One message as stored: the table's columns, ``msg`` back to its wire bytes.

    ``totag`` is filled from Kamailio 3.x+ tables (their ``totag`` column), '' elsewhere.
    """

    id: int
    date: datetime  # as stored: naive, UTC for rows siptrace wrote
    callid: str
    method: str
    status: str
    fromip: str
    toip: str
    fromtag: str
    direction: str
    traced_user: str
    msg: bytes
    totag: str = ""

    @property
    def source(self) -> Address:
        return parse_address(self.fromip)

    @property
    def destination(self) -> Address:
        return parse_address(self.toip)

    @property
    def is_request(self) -> bool:
        return not self.status

    @property
    def identity(self) -> tuple:
        """Equal for the copies of one message stored once per traced_user value."""
        return (self.date, self.fromip, self.toip, self.msg)

    @property
    def label(self) -> str:
        """What a ladder arrow says: the method, or the status code and reason phrase."""
        if self.is_request:
            return self.method
        first = self.msg.split(b"\n", 1)[0].rstrip(b"\r")
        reason = first[12:].decode("utf-8", "replace").strip() if first[:4] == b"SIP/" else ""
        return f"{self.status} {reason}".rstrip()


def is_copy(traced_user: str, identity, seen) -> bool:
    """Whether a row is a copy of a message already ``seen``, stored again for a traced
    user (the module stores a message once, then once more per traced_user value).
    Rows with no traced_user are never copies: two of them are a retransmission."""
    return bool(traced_user) and identity in seen


def unique_messages(messages) -> list[StoredMessage]:
    """Messages in order, without the copies stored for traced users (``is_copy``)."""
    seen: set = set()
    out = []
    for m in messages:
        if not is_copy(m.traced_user, m.identity, seen):
            out.append(m)
        seen.add(m.identity)
    return out
