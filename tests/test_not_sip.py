"""What a capture holds instead of SIP: the replay summary and `status` say so.

A capture of only RTP says "RTP N datagrams"; one of only TLS says that SIP may be in
it, encrypted, and cannot be read, instead of "0 SIP messages" alone. The guesses
(decode/payloads.py) agree with Wireshark's dissectors on the third-party captures.
"""

import subprocess

import pytest
from scapy.all import IP, TCP, UDP, Ether, Raw, wrpcap

from conftest import REAL_PCAPS, require_tool
from kamailio_lab import SIPTRACE
from siptrace.capture.files import CaptureFile
from siptrace.decode.payloads import payload_kind
from siptrace.extract import SipExtractor

A, B = "192.0.2.1", "192.0.2.2"
MACS = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")  # scapy would ARP for them
RTP_HEADER = bytes([0x80, 0x00]) + (1234).to_bytes(2, "big") + bytes(8)  # PCMU, seq 1234
TLS_CLIENT_HELLO = bytes([22, 3, 1, 0, 4, 1, 0, 0, 0])  # a handshake record, TLS 1.0 framing
TLS_SERVER_HELLO = bytes([22, 3, 3, 0, 4, 2, 0, 0, 0])


def replay(capture, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([*SIPTRACE, "replay", str(capture), "--db-url",
                           f"sqlite:///{tmp_path / 'trace.db'}"],
                          capture_output=True, text=True, timeout=120)


def test_a_capture_of_only_rtp_says_so(tmp_path):
    frames = [Ether(**MACS) / IP(src=A, dst=B) / UDP(sport=40000, dport=40002)
              / Raw(RTP_HEADER + bytes(160)) for _ in range(30)]
    wrpcap(str(tmp_path / "rtp.pcap"), frames)
    proc = replay(tmp_path / "rtp.pcap", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "not SIP:             RTP 30 datagrams" in proc.stdout
    assert "warning: no SIP found" in proc.stderr
    assert "encrypted" not in proc.stderr


def test_a_capture_of_only_tls_says_sip_may_be_in_it_encrypted(tmp_path):
    c, s = dict(src=A, dst=B), dict(src=B, dst=A)
    frames = [Ether(**MACS) / IP(**c) / TCP(sport=40000, dport=5061, flags="S", seq=100),
              Ether(**MACS) / IP(**s) / TCP(sport=5061, dport=40000, flags="SA", seq=500, ack=101),
              Ether(**MACS) / IP(**c) / TCP(sport=40000, dport=5061, flags="A", seq=101, ack=501),
              Ether(**MACS) / IP(**c) / TCP(sport=40000, dport=5061, flags="PA", seq=101, ack=501)
              / Raw(TLS_CLIENT_HELLO),
              Ether(**MACS) / IP(**s) / TCP(sport=5061, dport=40000, flags="PA", seq=501, ack=110)
              / Raw(TLS_SERVER_HELLO)]
    wrpcap(str(tmp_path / "tls.pcap"), frames)
    proc = replay(tmp_path / "tls.pcap", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "not SIP:             TLS 2 one-way TCP streams" in proc.stdout
    assert "warning: no SIP found; TLS may carry SIP, encrypted: it cannot be read" \
        in proc.stderr


def test_sip_with_media_says_what_the_media_is_and_warns_of_nothing(tmp_path):
    invite = (b"INVITE sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1"
              b"\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>\r\n"
              b"Call-ID: media@example.com\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    frames = [Ether(**MACS) / IP(src=A, dst=B) / UDP(sport=5060, dport=5060) / Raw(invite)]
    frames += [Ether(**MACS) / IP(src=A, dst=B) / UDP(sport=40000, dport=40002)
               / Raw(RTP_HEADER + bytes(160)) for _ in range(5)]
    wrpcap(str(tmp_path / "call.pcap"), frames)
    proc = replay(tmp_path / "call.pcap", tmp_path)
    assert "not SIP:             RTP 5 datagrams" in proc.stdout
    assert "SIP messages:        1" in proc.stdout
    assert "no SIP found" not in proc.stderr


@pytest.mark.parametrize("data, ports, kind", [
    (RTP_HEADER + bytes(20), (40000, 40002), "rtp"),
    (bytes([0x81, 200]) + bytes(26), (40001, 40003), "rtcp"),  # a sender report
    (RTP_HEADER + bytes(20), (137, 137), "netbios"),  # a NetBIOS id that looks like RTP
    (bytes([0x80, 0xC8]) + bytes(30), (2722, 53), "dns"),  # a DNS query that looks like RTCP
    (bytes([0, 1, 0, 0]) + b"\x21\x12\xa4\x42" + bytes(12), (40000, 3478), "stun"),
    (TLS_CLIENT_HELLO, (0, 0), "tls"),
    (bytes([22, 0xFE, 0xFD]) + bytes(10), (40000, 40002), "dtls"),
    (b"hello", (40000, 40002), "other"),
])
def test_payload_kinds(data, ports, kind):
    assert payload_kind(data, *ports) == kind


# Third-party captures on which the guesses must give Wireshark's counts exactly (its
# RTP and RTCP heuristics on). Others differ for reasons a guess without SDP cannot
# know: T.38 on ports that SDP negotiated (heplify's FAX capture, counted as RTP here).
AGREE_WITH_WIRESHARK = ["irontec_sngrep__tests_aaa.pcap",
                        "sipcapture_heplify__sip_ipv4_tcp.pcap"]


@pytest.mark.parametrize("name", AGREE_WITH_WIRESHARK)
def test_kinds_agree_with_wiresharks_dissectors(name, real_pcaps_dir):
    tshark = require_tool("tshark")
    capture = real_pcaps_dir / name
    extractor = SipExtractor()
    for record in CaptureFile(capture):
        extractor.feed(*record)
    extractor.finish()
    ours = {k: v for k, v in extractor.not_sip()["udp"].items() if k in ("rtp", "rtcp", "dns")}
    theirs = {}
    for kind in ("rtp", "rtcp", "dns"):
        out = subprocess.run([tshark, "-n", "-r", str(capture), "-o", "rtp.heuristic_rtp:TRUE",
                              "-o", "rtcp.heuristic_rtcp:TRUE",
                              "-Y", f"udp && {kind} && !sip && !icmp"],
                             capture_output=True, text=True, check=True).stdout
        if out.splitlines():
            theirs[kind] = len(out.splitlines())
    assert ours == theirs and ours, (REAL_PCAPS, name)
