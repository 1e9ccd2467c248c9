"""Parsing and resolving duplicate_uri lists: sip:host[:port] and hep:host[:port]."""

import socket
import subprocess

import pytest

from siptrace.capture.live import build_filter
from siptrace.config import load_settings
from siptrace.errors import ConfigError
from siptrace.mirror import parse_destinations
from siptrace.mirror.destinations import parse_destination
from mirror_support import REAL_PCAPS, missing, require_tool


@pytest.mark.parametrize("item, expected", [
    ("sip:10.1.1.1:5888", ("sip", "10.1.1.1", 5888)),  # the module guide's example
    ("sip:10.1.1.1", ("sip", "10.1.1.1", 5060)),
    ("SIP:user@10.1.1.1:5070;transport=udp", ("sip", "10.1.1.1", 5070)),
    ("sip:[::1]:5070", ("sip", "::1", 5070)),
    ("sip:[2001:db8::5]", ("sip", "2001:db8::5", 5060)),
    ("hep:127.0.0.1:9061", ("hep", "127.0.0.1", 9061)),
    ("hep:homer.example.com", ("hep", "homer.example.com", 9060)),
    ("hep:[::1]:9060", ("hep", "::1", 9060)),
    (" sip:10.1.1.1 ", ("sip", "10.1.1.1", 5060)),
])
def test_parse_destination(item, expected):
    assert parse_destination(item.strip()) == expected


@pytest.mark.parametrize("item, says", [
    ("udp:10.0.0.1:5060", "is not sip:host[:port] or hep:host[:port]"),
    ("10.0.0.1:5060", "is not sip:host[:port]"),
    ("sips:10.0.0.1", "is not sip:host[:port]"),
    ("sip:", "no host"),
    ("sip::5060", "no host"),
    ("hep:127.0.0.1:0", "has a bad port '0'"),
    ("hep:127.0.0.1:65536", "has a bad port '65536'"),
    ("sip:10.0.0.1:50x", "has a bad port '50x'"),
    ("sip:::1:5060", "in brackets"),
    ("sip:[::1:5060", "unclosed '['"),
    ("sip:[::1]5060", "after ']'"),
])
def test_malformed_items_are_one_line_config_errors(item, says):
    with pytest.raises(ConfigError) as caught:
        parse_destinations(item)
    message = str(caught.value)
    assert says in message and message.startswith("duplicate_uri: ") and "\n" not in message


@pytest.mark.parametrize("item", ["udp:10.0.0.1:5060", "sip:", "hep:127.0.0.1:0",
                                  "sip:::1:5060", "sip:[::1:5060", "sip:[::1]5060"])
def test_the_settings_refuse_what_the_mirror_refuses_in_the_same_words(item):
    with pytest.raises(ConfigError) as mirror:
        parse_destinations(item)
    with pytest.raises(ConfigError) as settings:
        load_settings(None, env={}, cli_overrides={"duplicate_uri": item})
    assert str(settings.value) == f"{mirror.value} (from --duplicate-uri)"


def test_a_mixed_list_resolves_in_order():
    found = parse_destinations("sip:127.0.0.1:5070, hep:[::1]:9061,sip:[::1],hep:127.0.0.2")
    assert [(d.kind, d.ip, d.port, d.family) for d in found] == [
        ("sip", "127.0.0.1", 5070, socket.AF_INET), ("hep", "::1", 9061, socket.AF_INET6),
        ("sip", "::1", 5060, socket.AF_INET6), ("hep", "127.0.0.2", 9060, socket.AF_INET)]
    assert [d.name for d in found] == [
        "sip:127.0.0.1:5070", "hep:[::1]:9061", "sip:[::1]:5060", "hep:127.0.0.2:9060"]
    assert parse_destinations(["sip:127.0.0.1:5070", "hep:[::1]:9061"]) == found[:2]


def test_a_host_name_is_resolved_at_start():
    (found,) = parse_destinations("sip:localhost:5099")
    assert found.ip in ("127.0.0.1", "::1") and found.name == "sip:localhost:5099"


def test_a_host_that_does_not_resolve_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as caught:
        parse_destinations("sip:127.0.0.1:5070,hep:no-such-host.invalid:9060")
    message = str(caught.value)
    assert message.startswith("duplicate_uri: cannot resolve host 'no-such-host.invalid'")
    assert "hep:no-such-host.invalid:9060" in message and "\n" not in message


@pytest.mark.parametrize("spec, says", [
    ("sip:127.0.0.1,sip:127.0.0.1:5060", "sip:127.0.0.1:5060 is listed twice"),
    ("sip:127.0.0.1,,hep:127.0.0.1", "empty item"),
    ("sip:127.0.0.1,", "empty item"),
])
def test_list_errors(spec, says):
    with pytest.raises(ConfigError, match=says):
        parse_destinations(spec)


def test_the_capture_filter_keeps_out_only_the_mirror_copies(tmp_path):
    """The live filter's exclusion of the mirror targets, as `siptrace run` builds it
    (build_filter(exclude=Mirror.mirror_addresses())): tcpdump applies it to a real
    capture plus copies sent to two destinations, IPv4 and IPv6."""
    require_tool("tcpdump")
    capture = REAL_PCAPS / "aboutsip_pkts__cancel.pcap"
    if not capture.is_file():
        missing(f"{capture} is absent")
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.utils import rdpcap, wrpcap

    packets = list(rdpcap(str(capture)))
    copies = [Ether() / IP(src="127.0.0.1", dst="127.0.0.1") / UDP(sport=40000, dport=9060),
              Ether() / IPv6(src="::1", dst="::1") / UDP(sport=40000, dport=5070)]
    near = [Ether() / IP(src="127.0.0.1", dst="127.0.0.1") / UDP(sport=40000, dport=9061)]
    mixed = tmp_path / "mixed.pcap"
    wrpcap(str(mixed), packets + copies + near)
    targets = [(d.ip, d.port) for d in parse_destinations("hep:127.0.0.1:9060,sip:[::1]:5070")]
    expression = build_filter(exclude=targets)
    kept = subprocess.run(["tcpdump", "-nr", str(mixed), expression],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(kept) == len(packets) + len(near)
    assert "9061" in kept[-1]
