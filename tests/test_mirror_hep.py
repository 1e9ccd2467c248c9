"""HEPv3 encoding: hand-built bytes, then two independent decoders on loopback.

sngrep's HEP listener writes what it decoded as a pcap, read back with tshark. sngrep
1.6 writes every HEP message as Ethernet/IPv4/UDP: a TCP-carried message comes back as
UDP with the same ports, and an IPv6 message with 0.0.0.0 addresses. So the addresses of
IPv6 messages and the transport are checked with a second decoder, Kamailio's
sipcapture module, which stores every decoded field (db_flatstore: one line per message).
"""

import struct
from dataclasses import replace
from pathlib import Path

import pytest

from siptrace.mirror import Mirror, encode_hep3
from siptrace.mirror.hep import MAX_HEP3_LENGTH
from mirror_support import (KAMAILIO_PROTO, KamailioSipcapture, SngrepHep, real_wires,
                            sample_sip, sipcapture_fields, tshark_frames, unescape_flatstore,
                            wire)

# Whole messages per datagram/segment: IPv6 over UDP, IPv4 over TCP, IPv4 over UDP.
REAL_CAPTURES = ["sipcapture_heplify__sip_ipv6.pcap", "sipcapture_heplify__sip_ipv4_tcp.pcap",
                 "aboutsip_pkts__cancel.pcap"]


def chunks(packet: bytes) -> list[tuple[int, int, bytes]]:
    """An independent HEPv3 walk: (vendor, type, data) of each chunk, in order."""
    assert packet[:4] == b"HEP3"
    assert struct.unpack("!H", packet[4:6])[0] == len(packet)
    found, pos = [], 6
    while pos < len(packet):
        vendor, type_id, length = struct.unpack_from("!HHH", packet, pos)
        assert length >= 6 and pos + length <= len(packet)
        found.append((vendor, type_id, packet[pos + 6:pos + length]))
        pos += length
    return found


def all_wires() -> list:
    wires = [w for name in REAL_CAPTURES for w in real_wires(name)]
    assert {(w.family, w.transport) for w in wires} >= {(6, "udp"), (4, "tcp"), (4, "udp")}
    return wires


# -- the encoder ------------------------------------------------------------------


def test_ipv4_udp_message_with_auth_key_matches_hand_built_bytes():
    raw = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: xy\r\n\r\n"
    message = wire(raw, ts_ns=1_700_000_000_654_321_999, src="10.1.2.3", sport=5060,
                   dst="10.9.8.7", dport=5080)
    expected = b"".join([
        b"HEP3", bytes.fromhex("009f"),  # total length 159
        bytes.fromhex("0000 0001 0007 02"),  # IP family: IPv4
        bytes.fromhex("0000 0002 0007 11"),  # IP protocol: UDP
        bytes.fromhex("0000 0007 0008 13c4"),  # source port 5060
        bytes.fromhex("0000 0008 0008 13d8"),  # destination port 5080
        bytes.fromhex("0000 0009 000a 6553f100"),  # seconds 1700000000
        bytes.fromhex("0000 000a 000a 0009fbf1"),  # microseconds 654321 (ns dropped)
        bytes.fromhex("0000 000b 0007 01"),  # protocol type SIP
        bytes.fromhex("0000 000c 000a 00000007"),  # capture id 7
        bytes.fromhex("0000 0003 000a 0a010203"),  # IPv4 source
        bytes.fromhex("0000 0004 000a 0a090807"),  # IPv4 destination
        bytes.fromhex("0000 000e 000c") + b"sesame",  # auth key
        bytes.fromhex("0000 000f 002e") + raw,  # payload, 40 bytes
        bytes.fromhex("0000 0011 0008") + b"xy",  # correlation id = Call-ID
    ])
    assert encode_hep3(message, capture_id=7, auth_key="sesame") == expected


def test_ipv6_tcp_message_chunks():
    raw = sample_sip(1, "v6tcp")
    message = wire(raw, transport="tcp", family=6, src="2001:db8::1", sport=40000,
                   dst="2001:db8::2", dport=5061, ts_ns=1_600_000_000_000_001_000)
    found = chunks(encode_hep3(message, capture_id=0xFFFFFFFF))
    assert [t for _, t, _ in found] == [1, 2, 7, 8, 9, 10, 11, 12, 5, 6, 15, 17]
    assert all(vendor == 0 for vendor, _, _ in found)
    data = {t: d for _, t, d in found}
    assert data[1] == b"\x0a" and data[2] == b"\x06"
    assert data[5] == bytes.fromhex("20010db8000000000000000000000001")
    assert data[6] == bytes.fromhex("20010db8000000000000000000000002")
    assert data[7] == (40000).to_bytes(2, "big") and data[8] == (5061).to_bytes(2, "big")
    assert data[9] == (1_600_000_000).to_bytes(4, "big") and data[10] == (1).to_bytes(4, "big")
    assert data[12] == b"\xff\xff\xff\xff"
    assert data[15] == raw and data[17] == b"v6tcp-1"


def test_websocket_is_sent_as_tcp_and_empty_call_id_has_no_correlation_chunk():
    message = wire(b"OPTIONS sip:a@b SIP/2.0\r\n\r\n", transport="ws")
    found = chunks(encode_hep3(message))
    assert {t: d for _, t, d in found}[2] == b"\x06"
    assert 17 not in [t for _, t, _ in found] and 14 not in [t for _, t, _ in found]
    assert {t: d for _, t, d in found}[12] == (1).to_bytes(4, "big")  # Kamailio's default


@pytest.mark.parametrize("change", [
    {"family": 5}, {"transport": "quic"}, {"src": "2001:db8::1"}, {"dst": "not-an-ip"},
    {"sport": 70000}, {"ts_ns": -1},
])
def test_messages_hep_cannot_carry_raise_value_error(change):
    message = wire(sample_sip(1))
    for key, value in change.items():
        setattr(message, key, value)
    with pytest.raises(ValueError):
        encode_hep3(message)


def test_packet_past_the_length_field_raises_value_error():
    head = b"OPTIONS sip:a@b SIP/2.0\r\n\r\n"
    limit = MAX_HEP3_LENGTH - len(encode_hep3(wire(head)))
    assert len(encode_hep3(wire(head + b"x" * limit))) == MAX_HEP3_LENGTH
    with pytest.raises(ValueError, match="65535"):
        encode_hep3(wire(head + b"x" * (limit + 1)))


# -- sngrep as the decoder --------------------------------------------------------


def mirror_through_sngrep(tmp_path: Path, rounds: list, password=None, expect=None):
    """Sends each round's messages with its auth key (a Mirror each, in turn) to one
    sngrep; waits until it wrote ``expect`` frames (default: all); its frames."""
    sngrep = SngrepHep(tmp_path, password)
    try:
        for auth_key, wires in rounds:
            with Mirror(f"hep:127.0.0.1:{sngrep.port}", hep_auth_key=auth_key) as mirror:
                for message in wires:
                    mirror.send(message)
            assert mirror.stats()[f"hep:127.0.0.1:{sngrep.port}"] == {
                "sent": len(wires), "failed": 0, "dropped": 0}
        sngrep.wait_for(sum(len(w) for _, w in rounds) if expect is None else expect)
    finally:
        pcap = sngrep.stop()
    return tshark_frames(pcap)


def test_sngrep_decodes_real_messages(tmp_path):
    wires = all_wires()
    frames = mirror_through_sngrep(tmp_path, [(None, wires)])
    assert len(frames) == len(wires)
    for message, frame in zip(wires, frames):
        assert frame["frame.time_epoch"].startswith(
            f"{message.ts_ns // 10**9}.{message.ts_ns // 1000 % 10**6:06d}")
        # sngrep writes every HEP message as UDP, TCP-carried ones included.
        assert (int(frame["udp.srcport"]), int(frame["udp.dstport"])) == (
            message.sport, message.dport)
        if message.family == 4:
            assert (frame["ip.src"], frame["ip.dst"]) == (message.src, message.dst)
        else:  # sngrep writes an IPv4 header, without the addresses (checked below)
            assert (frame["ip.src"], frame["ip.dst"]) == ("0.0.0.0", "0.0.0.0")
        assert frame["sip.Call-ID"] == message.sip.call_id
        assert frame["payload"] == message.sip.raw


def test_sngrep_with_a_password_takes_only_the_right_auth_key(tmp_path):
    rounds = [(key, [wire(sample_sip(n, f"key-{key}")) for n in range(3)])
              for key in ("wrong-key", None, "s3cret")]
    frames = mirror_through_sngrep(tmp_path, rounds, password="s3cret", expect=3)
    assert [f["sip.Call-ID"] for f in frames] == [f"key-s3cret-{n}" for n in range(3)]
    assert [f["payload"] for f in frames] == [w.sip.raw for w in rounds[2][1]]


def test_sngrep_without_a_password_ignores_the_auth_key(tmp_path):
    wires = [wire(sample_sip(n, "any-key")) for n in range(2)]
    frames = mirror_through_sngrep(tmp_path, [("some-key", wires)])
    assert [f["payload"] for f in frames] == [w.sip.raw for w in wires]


# -- Kamailio's sipcapture as the decoder ------------------------------------------

def test_kamailio_sipcapture_decodes_every_field(tmp_path):
    # Kamailio's SIP parser rejects the IPv6 capture's messages (unbracketed IPv6 in
    # their Via headers), so real messages of the IPv4 captures are also sent as IPv6.
    ipv4 = [w for name in REAL_CAPTURES[1:] for w in real_wires(name)]
    as_ipv6 = [replace(w, family=6, src=f"2001:db8::{n + 1:x}", dst=f"fd00::{n + 100:x}",
                       transport=("udp", "tcp", "ws")[n % 3]) for n, w in enumerate(ipv4)]
    wires = ipv4 + as_ipv6
    with KamailioSipcapture(tmp_path) as kamailio:
        with Mirror(f"hep:127.0.0.1:{kamailio.port}", hep_capture_id=2345) as mirror:
            for message in wires:
                mirror.send(message)
        kamailio.wait_for(len(wires))
    lines = kamailio.lines()
    assert len(lines) == len(wires)
    for message, line in zip(wires, lines):
        field = sipcapture_fields(line)
        assert unescape_flatstore(field["msg"]) == message.sip.raw
        call_id = message.sip.call_id.encode()
        assert field["callid"] == field["correlation_id"] == call_id
        assert int(field["micro_ts"]) == message.ts_ns // 1000
        assert int(field["date"]) == message.ts_ns // 10**9
        assert (field["source_ip"].decode(), int(field["source_port"])) == (
            message.src, message.sport)
        assert (field["destination_ip"].decode(), int(field["destination_port"])) == (
            message.dst, message.dport)
        assert field["proto"] == KAMAILIO_PROTO[message.transport]
        assert field["family"] == {4: b"2", 6: b"10"}[message.family]
        assert field["node"].endswith(b":2345")
