"""Parsing and resolving duplicate_uri lists: sip:host[:port] and hep:host[:port]."""

import socket
import subprocess

import pytest

from siptrace.errors import ConfigError
from siptrace.mirror import capture_exclusion, parse_destinations
from siptrace.mirror.destinations import parse_destination
from test_mirror_support import REAL_PCAPS, missing, require_tool


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
    ("hep:127.0.0.1:0", "bad port '0'"),
    ("hep:127.0.0.1:65536", "bad port '65536'"),
    ("sip:10.0.0.1:50x", "bad port '50x'"),
    ("sip:::1:5060", "in brackets"),
    ("sip:[::1:5060", "unclosed '['"),
    ("sip:[::1]5060", "after ']'"),
])
def test_malformed_items_are_one_line_config_errors(item, says):
    with pytest.raises(ConfigError) as caught:
        parse_destinations(item)
    message = str(caught.value)
    assert says in message and message.startswith("duplicate_uri: ") and "\n" not in message


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


def test_capture_exclusion_is_a_valid_bpf_that_drops_only_mirror_copies(tmp_path):
    """tcpdump compiles the filter and applies it to a real capture plus copies."""
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
    mixed = tmp_path / "mixed.pcap"
    wrpcap(str(mixed), packets + copies)
    expression = capture_exclusion([("127.0.0.1", 9060), ("::1", 5070)])
    kept = subprocess.run(["tcpdump", "-nr", str(mixed), expression],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(kept) == len(packets)
    assert capture_exclusion([]) == ""
