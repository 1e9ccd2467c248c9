"""Mirror destinations: parsing ``sip:host[:port]`` and ``hep:host[:port]`` lists.

``sip:`` is the module's duplicate_uri: the raw message as one UDP datagram (always
UDP, port 5060 by default, RFC 3261 section 19.1.2). ``hep:`` sends HEPv3 over UDP to a
capture server (Homer, heplify-server), port 9060 by default, the port Homer listens
on. Hosts are resolved once, at start: a name that does not resolve is a ConfigError.
"""

import socket
from dataclasses import dataclass
from typing import Iterable

from siptrace.errors import ConfigError

DEFAULT_PORT = {"sip": 5060, "hep": 9060}
CONFIG_KEY = "duplicate_uri"


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


def _split_host_port(rest: str, item: str) -> tuple[str, str | None]:
    """'host', 'host:port', '[v6]' or '[v6]:port' -> (host, port text or None)."""
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise ConfigError(f"{CONFIG_KEY}: unclosed '[' in {item!r}")
        host, tail = rest[1:end], rest[end + 1:]
        if tail and not tail.startswith(":"):
            raise ConfigError(f"{CONFIG_KEY}: unexpected {tail!r} after ']' in {item!r}")
        return host, (tail[1:] if tail else None)
    if rest.count(":") > 1:
        raise ConfigError(
            f"{CONFIG_KEY}: write the IPv6 address of {item!r} in brackets, "
            f"e.g. sip:[::1]:5060")
    host, colon, port = rest.partition(":")
    return host, (port if colon else None)


def parse_destination(item: str) -> tuple[str, str, int]:
    """'sip:host[:port]' or 'hep:host[:port]' -> (kind, host, port); no resolution.

    A SIP URI's user part and parameters (``sip:user@host:5060;transport=udp``) are
    accepted and ignored: copies always go over UDP, as the module documents.
    """
    scheme, colon, rest = item.partition(":")
    kind = scheme.strip().lower()
    if not colon or kind not in DEFAULT_PORT:
        raise ConfigError(
            f"{CONFIG_KEY}: {item!r} is not sip:host[:port] or hep:host[:port]")
    if kind == "sip":
        rest = rest.partition(";")[0].rpartition("@")[2]
    host, port_text = _split_host_port(rest.strip(), item)
    if not host:
        raise ConfigError(f"{CONFIG_KEY}: no host in {item!r}")
    if port_text is None:
        return kind, host, DEFAULT_PORT[kind]
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{CONFIG_KEY}: bad port {port_text!r} in {item!r}")
    return kind, host, int(port_text)


def resolve(kind: str, host: str, port: int) -> Destination:
    """Resolves host to one UDP address (the resolver's first answer)."""
    label = f"[{host}]" if ":" in host else host
    name = f"{kind}:{label}:{port}"
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


def capture_exclusion(addresses: Iterable[tuple[str, int]]) -> str:
    """A BPF expression matching no UDP packet sent to any of ``addresses``.

    For the live capture filter (no loops: siptrace must not trace its own copies),
    e.g. ``not (udp and dst host 127.0.0.1 and dst port 9060)``. Non-first IP
    fragments carry no port, so a large copy's later fragments still pass a BPF port
    test: the capture side must also drop reassembled datagrams to these addresses.
    Returns '' for no addresses.
    """
    terms = [f"(udp and dst host {ip} and dst port {port})" for ip, port in addresses]
    return f"not ({' or '.join(terms)})" if terms else ""
