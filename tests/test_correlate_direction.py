"""The proxy's addresses and the direction of a message relative to them."""

from dataclasses import dataclass

import pytest

from siptrace.direction import ProxyAddresses, parse_endpoint
from siptrace.errors import ConfigError


@dataclass
class Hop:  # the address part of a WireMessage
    src: str
    sport: int
    dst: str
    dport: int


@pytest.mark.parametrize("text, parsed", [
    ("10.0.0.1:5060", ("10.0.0.1", 5060)),
    ("10.0.0.2", ("10.0.0.2", None)),
    ("[::1]:5060", ("::1", 5060)),
    ("[2001:DB8:0:0::1]:5080", ("2001:db8::1", 5080)),
    ("[::1]", ("::1", None)),
    ("2001:db8::1", ("2001:db8::1", None)),
    (" 10.0.0.1:5060 ", ("10.0.0.1", 5060)),
])
def test_endpoint_forms(text, parsed):
    assert parse_endpoint(text) == parsed


@pytest.mark.parametrize("bad", ["proxy.example.com", "10.0.0.1:0", "10.0.0.1:65536",
                                 "10.0.0.1:http", "[::1]5060", "[10.0.0.1]:5060",
                                 "[::1", "10.0.0.256", ""])
def test_bad_endpoints(bad):
    assert parse_endpoint(bad) is None


def test_parse_error_names_the_key_and_value():
    with pytest.raises(ConfigError) as info:
        ProxyAddresses.parse(["10.0.0.1:5060", "proxy.example.com"])
    assert str(info.value) == \
        "proxy: 'proxy.example.com' is not IP, IP:PORT or [IPv6]:PORT"


def test_several_values_in_one_argument():
    proxy = ProxyAddresses.parse(["10.0.0.1:5060, [::1]:5060 10.0.0.2"])
    assert proxy.endpoints == {("10.0.0.1", 5060), ("::1", 5060)}
    assert proxy.hosts == {"10.0.0.2"}
    assert proxy.as_strings() == ["10.0.0.2", "10.0.0.1:5060", "[::1]:5060"]


PROXY = ProxyAddresses.parse(["10.0.0.1:5060", "[::1]:5060", "10.0.0.2"])


@pytest.mark.parametrize("hop, direction", [
    (Hop("10.0.0.10", 5060, "10.0.0.1", 5060), "in"),
    (Hop("10.0.0.1", 5060, "10.0.0.20", 5070), "out"),
    (Hop("10.0.0.10", 5060, "10.0.0.1", 5080), ""),  # another port of that address
    (Hop("10.0.0.10", 5060, "10.0.0.2", 7000), "in"),  # any port of a whole host
    (Hop("10.0.0.2", 40000, "10.0.0.20", 5070), "out"),
    (Hop("::2", 5060, "::1", 5060), "in"),
    (Hop("10.0.0.10", 5060, "10.0.0.20", 5070), ""),
    (Hop("10.0.0.1", 5060, "10.0.0.1", 5060), "in"),  # to itself: it receives it
])
def test_direction(hop, direction):
    assert PROXY.direction(hop) == direction
    assert PROXY.received(hop) == (direction == "in")
    assert PROXY.sent(hop) == (direction == "out" or hop.src == hop.dst)


def test_no_proxy_addresses_give_no_direction():
    empty = ProxyAddresses.parse([])
    assert not empty and empty.direction(Hop("10.0.0.1", 5060, "10.0.0.2", 5060)) == ""
