"""Mirror destinations: parsing ``sip:host[:port]`` and ``hep:host[:port]`` lists.

``sip:`` is the module's duplicate_uri: the raw message as one UDP datagram (always
UDP, port 5060 by default, RFC 3261 section 19.1.2). ``hep:`` sends HEPv3 over UDP to a
capture server (Homer, heplify-server), port 9060 by default, the port Homer listens
on. Hosts are resolved once, at start: a name that does not resolve is a ConfigError.
"""

import socket
from dataclasses import dataclass
from typing import Iterable

from siptrace.direction import format_endpoint, parse_port, split_host_port
from siptrace.errors import ConfigError

DEFAULT_PORT = {"sip": 5060, "hep": 9060}
CONFIG_KEY = "duplicate_uri"
FORMS = "sip:host[:port] or hep:host[:port]"


@dataclass(frozen=True, slots=True)
class Destination:
    """One resolved mirror destination.

    ``name`` is the destination as configured, normalised to ``kind:host:port``
    (IPv6 literals in brackets): it keys the per-destination counters.
    """

    kind: str  # "sip" or "hep"
    host: str  # as configured, without brackets
    port: int
    family: int  # socket.AF_INET or socket.AF_INET6
    ip: str  # the resolved address
    name: str
    sockaddr: tuple  # what connect() takes (IPv6: with flow info and scope id)


def split_destination(item: str) -> tuple[str, str, int]:
    """'sip:host[:port]' or 'hep:host[:port]' -> (kind, host, port); ValueError with
    what is wrong, worded to follow the item (``has no host``...). No resolution.

    A SIP URI's user part and parameters (``sip:user@host:5060;transport=udp``) are
    accepted and ignored: copies always go over UDP, as the module documents. An
    IPv6 address goes in brackets, as in a SIP URI (RFC 3261 section 25.1).
    """
    scheme, colon, rest = item.strip().partition(":")
    kind = scheme.strip().lower()
    if not colon or kind not in DEFAULT_PORT:
        raise ValueError(f"is not {FORMS}")
    if kind == "sip":
        rest = rest.partition(";")[0].rpartition("@")[2]
    host, port_text, bracketed = split_host_port(rest)
    if ":" in host and not bracketed:
        raise ValueError("has an IPv6 address not in brackets (e.g. sip:[::1]:5060)")
    if not host:
        raise ValueError("has no host")
    if port_text is None:
        return kind, host, DEFAULT_PORT[kind]
    port = parse_port(port_text)
    if port is None:
        raise ValueError(f"has a bad port {port_text!r}")
    return kind, host, port


def parse_destination(item: str) -> tuple[str, str, int]:
    """``split_destination``, with ConfigError naming the key and the item."""
    try:
        return split_destination(item)
    except ValueError as exc:
        raise ConfigError(f"{CONFIG_KEY}: {item.strip()!r} {exc}") from None


def resolve(kind: str, host: str, port: int) -> Destination:
    """Resolves host to one UDP address (the resolver's first answer)."""
    name = f"{kind}:{format_endpoint(host, port)}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise ConfigError(f"{CONFIG_KEY}: cannot resolve host {host!r} of {name}: {reason}") \
            from None
    for family, _type, _proto, _canon, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            return Destination(kind, host, port, family, sockaddr[0], name, sockaddr)
    raise ConfigError(f"{CONFIG_KEY}: host {host!r} of {name} has no IPv4 or IPv6 address")


def parse_destinations(spec: str | Iterable[str]) -> list[Destination]:
    """A comma-separated list (or a list of such strings), any mix of sip: and hep:.

    Each host is resolved now. Raises ConfigError, one line naming the bad item,
    for a malformed item, a host that does not resolve, or one listed twice.
    """
    items = spec.split(",") if isinstance(spec, str) else \
        [part for entry in spec for part in entry.split(",")]
    destinations: list[Destination] = []
    seen: set[str] = set()
    for raw_item in items:
        item = raw_item.strip()
        if not item:
            raise ConfigError(f"{CONFIG_KEY}: empty item in {','.join(items)!r}")
        destination = resolve(*parse_destination(item))
        if destination.name in seen:
            raise ConfigError(f"{CONFIG_KEY}: {destination.name} is listed twice")
        seen.add(destination.name)
        destinations.append(destination)
    return destinations

