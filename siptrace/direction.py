"""The proxy's own addresses, and the direction of a wire message relative to it. No I/O.

``--proxy`` values are ``IP``, ``IP:PORT`` or ``[IPv6]:PORT``; an IP without a port
means every port of that address. A message is ``in`` when its destination is the
proxy, ``out`` when its source is, ``''`` when neither. A message from the proxy to
itself (a spiral, or a loop through another of its sockets) is ``in``: the
destination is checked first, as the proxy is the one that receives it last.

Addresses as people write them are read here, for every setting that takes one
(``proxy``, ``web_listen``, ``duplicate_uri``'s hosts, the capture filter):
``split_host_port``, ``parse_port`` and ``normalize_ip``.
"""

from ipaddress import ip_address

from siptrace.errors import ConfigError

PROXY_FORMS = "IP, IP:PORT or [IPv6]:PORT"


def normalize_ip(text: str) -> str | None:
    """An IP address in the decoders' printable form (RFC 5952 for IPv6), or None.

    Brackets around an IPv6 address and an IPv6 zone (``%eth0``) are taken off: the
    one place where an address someone typed becomes the form packets carry.
    """
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.partition("%")[0]  # an IPv6 zone is not part of the wire address
    try:
        return ip_address(text).compressed
    except ValueError:
        return None


def split_host_port(text: str) -> tuple[str, str | None, bool]:
    """``host``, ``host:port``, ``[IPv6]`` or ``[IPv6]:port`` -> (host, port text or
    None, bracketed); ValueError saying what is wrong (``unclosed '['``...).

    The host comes without brackets and is not checked (an IP, or a name for the
    caller to resolve). Unbracketed text with more than one colon is a bare IPv6
    address without a port: whether to take it is the caller's rule.
    """
    text = text.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError("has an unclosed '['")
        host, tail = text[1:close], text[close + 1:]
        if tail and not tail.startswith(":"):
            raise ValueError(f"has {tail!r} after ']'")
        return host, (tail[1:] if tail else None), True
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        return host, port_text, False
    return text, None, False


def parse_port(text: str) -> int | None:
    """A port number 1..65535 written in decimal digits, or None."""
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        return None
    port = int(text)
    return port if 0 < port < 65536 else None


def parse_endpoint(text: str) -> tuple[str, int | None] | None:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT`` -> (ip, port or None); None when malformed.

    A bare IPv6 address (no brackets) is taken as an address without a port.
    """
    try:
        host, port_text, bracketed = split_host_port(text)
    except ValueError:
        return None
    ip = normalize_ip(host)
    if ip is None or bracketed and ":" not in ip:  # brackets go around IPv6 only
        return None
    if port_text is None:
        return ip, None
    port = parse_port(port_text)
    return (ip, port) if port is not None else None


def format_endpoint(ip: str, port: int) -> str:
    """(ip, port) -> ``IP:PORT`` or ``[IPv6]:PORT``."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


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
        return sorted(self.hosts) + sorted(format_endpoint(ip, port)
                                           for ip, port in self.endpoints)

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
