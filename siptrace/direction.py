"""The proxy's own addresses, and the direction of a wire message relative to it. No I/O.

``--proxy`` values are ``IP``, ``IP:PORT`` or ``[IPv6]:PORT``; an IP without a port
means every port of that address. A message is ``in`` when its destination is the
proxy, ``out`` when its source is, ``''`` when neither. A message from the proxy to
itself (a spiral, or a loop through another of its sockets) is ``in``: the
destination is checked first, as the proxy is the one that receives it last.
"""

from ipaddress import ip_address

from siptrace.errors import ConfigError

PROXY_FORMS = "IP, IP:PORT or [IPv6]:PORT"


def normalize_ip(text: str) -> str | None:
    """An IP address in the decoders' printable form (RFC 5952 for IPv6), or None."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.partition("%")[0]  # an IPv6 zone is not part of the wire address
    try:
        return ip_address(text).compressed
    except ValueError:
        return None


def parse_endpoint(text: str) -> tuple[str, int | None] | None:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT`` -> (ip, port or None); None when malformed.

    A bare IPv6 address (no brackets) is taken as an address without a port.
    """
    text = text.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return None
        ip = normalize_ip(text[1:close])
        rest = text[close + 1:]
        if ip is None or ":" not in ip:
            return None
        if not rest:
            return ip, None
        if not rest.startswith(":"):
            return None
        port = _port(rest[1:])
        return (ip, port) if port is not None else None
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        ip = normalize_ip(host)
        port = _port(port_text)
        if ip is None or port is None or ":" in ip:
            return None
        return ip, port
    ip = normalize_ip(text)
    return (ip, None) if ip is not None else None


def _port(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        return None
    port = int(text)
    return port if 0 < port < 65536 else None


class ProxyAddresses:
    """The proxy's SIP addresses: exact (ip, port) endpoints and whole hosts.

    Lookups are set membership tests, cheap enough for every packet of a replay.
    An empty ProxyAddresses (no ``--proxy``) gives direction ``''`` to everything.
    """

    __slots__ = ("endpoints", "hosts")

    def __init__(self, endpoints=(), hosts=()):
        self.endpoints: frozenset[tuple[str, int]] = frozenset(endpoints)
        self.hosts: frozenset[str] = frozenset(hosts)

    @classmethod
    def parse(cls, values, key: str = "proxy") -> "ProxyAddresses":
        """Parse ``--proxy`` values (each may hold several, comma or space separated).

        Raises ConfigError naming the key and the bad value.
        """
        endpoints, hosts = set(), set()
        for value in values:
            for item in value.replace(",", " ").split():
                parsed = parse_endpoint(item)
                if parsed is None:
                    raise ConfigError(f"{key}: {item!r} is not {PROXY_FORMS}")
                ip, port = parsed
                if port is None:
                    hosts.add(ip)
                else:
                    endpoints.add((ip, port))
        return cls(endpoints, hosts)

    def __bool__(self) -> bool:
        return bool(self.endpoints or self.hosts)

    def __eq__(self, other) -> bool:
        return (isinstance(other, ProxyAddresses) and self.endpoints == other.endpoints
                and self.hosts == other.hosts)

    def __hash__(self) -> int:
        return hash((self.endpoints, self.hosts))

    def __repr__(self) -> str:
        return f"ProxyAddresses({', '.join(self.as_strings())})"

    def as_strings(self) -> list[str]:
        """The addresses in ``--proxy`` syntax, sorted (for status and messages)."""
        out = sorted(self.hosts)
        out += sorted(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
                      for ip, port in self.endpoints)
        return out

    def is_proxy(self, ip: str, port: int) -> bool:
        return ip in self.hosts or (ip, port) in self.endpoints

    def received(self, wire) -> bool:
        """The message's destination is the proxy."""
        return wire.dst in self.hosts or (wire.dst, wire.dport) in self.endpoints

    def sent(self, wire) -> bool:
        """The message's source is the proxy."""
        return wire.src in self.hosts or (wire.src, wire.sport) in self.endpoints

    def direction(self, wire) -> str:
        """``in``, ``out`` or ``''`` for a WireMessage (``in`` wins when both match)."""
        dst = wire.dst
        if dst in self.hosts or (dst, wire.dport) in self.endpoints:
            return "in"
        src = wire.src
        if src in self.hosts or (src, wire.sport) in self.endpoints:
            return "out"
        return ""
