"""Regenerates the fixture captures in pcaps/ and the counts table in pcaps/README.md.

    .venv/bin/python pcaps/make_fixtures.py              # crafted files; lab ones if missing
    .venv/bin/python pcaps/make_fixtures.py --recapture  # also re-record the Kamailio calls

Idempotent: crafted files are byte-identical on every run (rewritten only if different);
the real Kamailio captures are recorded only when absent or with --recapture (run as root:
tcpdump on lo, Kamailio and SIPp on ports 5060/5070/5080). Then tshark counts the SIP in
every file and the table between the markers in README.md is rewritten.
"""

import argparse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
import shutil
import subprocess
import sys
import tempfile
from typing import Callable

PCAPS = Path(__file__).resolve().parent
sys.path[:0] = [str(PCAPS), str(PCAPS.parent)]

from capfile import write_if_changed  # noqa: E402
import crafted  # noqa: E402
import crafted_tcp  # noqa: E402
import crafted_tunnels  # noqa: E402
from lab import LabError, LabPorts, SipLab  # noqa: E402

README = PCAPS / "README.md"
TABLE_BEGIN = "<!-- fixtures:begin (written by make_fixtures.py) -->"
TABLE_END = "<!-- fixtures:end -->"
LAB_CALLS = 5
LAB_RATE = 5  # calls per second
LAB_PAUSE_MS = 100  # between ACK and BYE
LAB_TIMEOUT_S = 30
LAB_MESSAGES_PER_CALL = 13  # INVITE, 100 (Kamailio's), INVITE, 2x180, 2x200, 2xACK, 2xBYE, 2x200
LAB_FIXTURES = {
    "kamailio-udp.pcap": ("udp", f"{LAB_CALLS} real calls over UDP: SIPp uac (127.0.0.1:5070) "
                          "-> Kamailio (tm, record_route; 127.0.0.1:5060) -> SIPp uas "
                          "(127.0.0.1:5080); 13 messages a call, Kamailio's 100 Trying "
                          "included"),
    "kamailio-tcp.pcap": ("tcp", f"{LAB_CALLS} real calls over TCP, same path; the uac "
                          "opens one connection per call (-t tn), Kamailio keeps one to "
                          "the uas"),
}
LAB_HOW = "SIPp -> Kamailio -> SIPp, tcpdump -i lo -s 0"
CRAFTED_HOW = "scapy, fixed bytes"


@dataclass(frozen=True)
class Fixture:
    """A crafted capture: its file name, what README says it holds, its builder."""

    name: str
    holds: str
    build: Callable[[], bytes]


C, T, N = crafted, crafted_tcp, crafted_tunnels
CRAFTED = [
    Fixture("frag-ipv4.pcap", "INVITE (3.4 KB SDP with ICE candidates) in 3 IPv4 "
            "fragments arriving 3,1,2; a second INVITE whose last fragment never arrives",
            C.build_frag_ipv4),
    Fixture("frag-ipv6.pcap", "INVITE in 3 IPv6 fragments (fragment extension header) "
            "arriving 2,3,1", C.build_frag_ipv6),
    Fixture("vlan-dot1q.pcap", "802.1Q VLAN 100, priority 5", C.build_vlan),
    Fixture("vlan-qinq.pcap", "QinQ: 802.1ad S-tag 300 over 802.1Q C-tag 100",
            C.build_qinq),
    Fixture("linux-sll2.pcap", "Linux cooked v2 (LINKTYPE 276), SIP on UDP 5080, "
            "packet types outgoing/host", C.build_sll2),
    Fixture("linux-sll.pcap", "Linux cooked v1 (LINKTYPE 113), IPv6", C.build_sll),
    Fixture("two-interfaces.pcapng", "pcapng, interface 0 Ethernet (microseconds), "
            "interface 1 raw IP (DLT 101, if_tsresol nanoseconds); two calls interleaved, "
            "EPBs plus one SPB (the first call's 180: no timestamp), an EPB comment",
            C.build_pcapng_two_interfaces),
    Fixture("nanosecond.pcap", "pcap with nanosecond timestamps (magic a1b23c4d); the 180 "
            "and 200 are 250 ns apart", C.build_nanosecond),
    Fixture("big-endian.pcap", "pcap written big-endian (header and records)",
            C.build_big_endian),
    Fixture("raw-ipv4-dlt228.pcap", "LINKTYPE_IPV4 (228), SIP on UDP 5062",
            C.build_raw_ipv4),
    Fixture("raw-ipv6-dlt229.pcap", "LINKTYPE_IPV6 (229)", C.build_raw_ipv6),
    Fixture("null-loopback.pcap", "BSD loopback/null (DLT 0): 4 IPv4 frames (AF 2) and "
            "4 IPv6 frames (AF 24) of two calls' first messages", C.build_null_loopback),
    Fixture("pppoe.pcap", "PPPoE session (0x8864) carrying PPP/IPv4", C.build_pppoe),
    Fixture("gre-ip.pcap", "GRE (IPv4 outer 203.0.113.x) carrying IPv4/UDP",
            C.build_gre_ip),
    Fixture("gre-ethernet.pcap", "GRE transparent Ethernet bridging (0x6558) carrying "
            "Ethernet/IPv4/UDP", C.build_gre_ethernet),
    Fixture("ipip.pcap", "IPv4-in-IPv4 (protocol 4), SIP on UDP 5090", C.build_ipip),
    Fixture("ipv6-in-ipv4.pcap", "IPv6-in-IPv4 (protocol 41, 6in4)",
            C.build_ipv6_in_ipv4),
    Fixture("ipv6-ext-headers.pcap", "IPv6 hop-by-hop and destination options headers "
            "before UDP", C.build_ipv6_ext_headers),
    Fixture("udp-noise-6060.pcap", "call on UDP 6060 amid 4 RTP packets, a STUN binding "
            "request and CRLF keep-alive datagrams (non-SIP, to be skipped)",
            C.build_udp_noise),
    Fixture("tcp-multi-in-segment.pcap", "TCP on port 5080: 100+180+200 in one segment, "
            "ACK+BYE in another", T.build_tcp_multi_in_segment),
    Fixture("tcp-split-message.pcap", "TCP: INVITE over 6 segments (cut in the start "
            "line, a header, the blank line, the body) with pure ACKs between; the 200 over "
            "2 segments", T.build_tcp_split_message),
    Fixture("tcp-out-of-order.pcap", "TCP: INVITE's 4 segments arrive 1,3,2,4 with 3 "
            "retransmitted; the 180's 2 segments arrive reversed", T.build_tcp_out_of_order),
    Fixture("tcp-keepalive-compact.pcap", "TCP over IPv6, compact header names (l: i: f: "
            "t: v: m: c:), RFC 5626 CRLF keep-alives: alone, and a pong after a message",
            T.build_tcp_keepalive_compact),
    Fixture("gtpu-ipv6.pcap", "VoLTE: SIP over IPv6/UDP in GTPv1-U (S1-U, outer IPv4), "
            "sequence numbers on every packet, a PDU session container extension header "
            "on every other one, a GTP echo request/response (skipped)", N.build_gtpu_ipv6),
    Fixture("gtpu-ipv6-fragments.pcap", "GTP-U carrying IPv6 fragments: the INVITE (3.4 KB "
            "SDP) in 3 fragments arriving 2,3,1, the 200 OK in 2, one per G-PDU",
            N.build_gtpu_ipv6_fragments),
    Fixture("vxlan.pcap", "VXLAN (UDP 4789, VNI 5001) carrying Ethernet/802.1Q/IPv4/UDP",
            N.build_vxlan),
    Fixture("geneve.pcap", "Geneve (UDP 6081, VNI 7): Ethernet with an 8-byte option; two "
            "packets with IPv4 directly (protocol type 0x0800)", N.build_geneve),
    Fixture("erspan-i.pcap", "ERSPAN type I: GRE 0x88BE without sequence number",
            N.build_erspan_i),
    Fixture("erspan-ii.pcap", "ERSPAN type II: GRE 0x88BE with sequence numbers, 8-byte "
            "header", N.build_erspan_ii),
    Fixture("erspan-iii.pcap", "ERSPAN type III (GRE 0x22EB): 12-byte header, every other "
            "packet with the 8-byte platform-specific subheader", N.build_erspan_iii),
    Fixture("mpls-pw-ethernet.pcap", "MPLS Ethernet pseudowires, two labels: a call with "
            "the control word (PW label 2001), a call without (2002)", N.build_mpls_pw),
    Fixture("sctp.pcap", "SIP over SCTP (RFC 4168), port 5060: association set-up, the "
            "INVITE in 3 DATA fragments over 2 packets, two DATA chunks and a SACK in one "
            "packet, SACK-only packets, the 200 OK as 2 I-DATA fragments, BYE on stream 1",
            N.build_sctp),
    Fixture("hep3.pcap", "HEPv3 on UDP 9060 (siptrace's encoder, auth key): a call over "
            "UDP/IPv4 and one over TCP/IPv6, message times 1.5 s before the capture's; an "
            "RTCP report in HEP (skipped). Counts: what was encoded (Wireshark 4.0 has no "
            "HEP dissector)",
            N.build_hep3),
    Fixture("hep2.pcap", "HEPv2 on UDP 9060 (Kamailio's layout): the same two calls. Counts: "
            "what was encoded", N.build_hep2),
]

# Captures Wireshark 4.0 cannot dissect (it has no HEP dissector): their README counts
# are what the builder encoded, (frames, messages); tests/test_fidelity.py checks them
# against the builder's records, not tshark.
WITHOUT_WIRESHARK_DISSECTOR = {
    "hep3.pcap": (len(crafted_tunnels.hep_records(29)), len(crafted_tunnels.hep_records(29))),
    "hep2.pcap": (len(crafted_tunnels.hep_records(30)), len(crafted_tunnels.hep_records(30))),
}
# Pseudowire labels of mpls-pw-ethernet.pcap, as Wireshark needs them told (tests/oracle.py
# has the same): 2001 with the control word, 2002 without.
TSHARK_DECODE_AS = {"mpls.label==2001": "pwethcw", "mpls.label==2002": "pwethnocw"}

# The counting command (tests/test_fixtures.py runs the same one).
TSHARK_COUNT = ["-o", "ip.defragment:TRUE", "-o", "ipv6.defragment:TRUE",
                "-o", "tcp.desegment_tcp_streams:TRUE",
                "-o", "tcp.reassemble_out_of_order:TRUE",
                *(arg for field, proto in TSHARK_DECODE_AS.items()
                  for arg in ("-d", f"{field},{proto}")),
                "--enable-heuristic", "sip_udp", "--enable-heuristic", "sip_tcp",
                "-Y", "sip", "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,",
                "-e", "frame.number", "-e", "sip.Method", "-e", "sip.Status-Code"]


def tshark_sip_counts(path: Path) -> tuple[int, int]:
    """(frames with SIP, SIP messages) as tshark counts them."""
    out = subprocess.run(["tshark", "-n", "-r", str(path), *TSHARK_COUNT],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    frames = messages = 0
    for line in out.splitlines():
        _, _, rest = line.partition("\t")
        frames += 1
        messages += sum(1 for value in rest.replace("\t", ",").split(",") if value)
    return frames, messages


def capture_info(path: Path) -> tuple[str, int]:
    """(link type, packet count) from capinfos."""
    out = subprocess.run(["capinfos", "-T", "-r", "-E", "-c", str(path)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    _, encap, packets = out.strip().split("\t")
    return encap, int(packets)


def write_crafted() -> None:
    for fixture in CRAFTED:
        changed = write_if_changed(PCAPS / fixture.name, fixture.build())
        print(f"{'wrote' if changed else 'unchanged'} {fixture.name}")


def record_lab(name: str, transport: str) -> None:
    """Records LAB_CALLS calls into pcaps/NAME; fails unless every call succeeded."""
    with tempfile.TemporaryDirectory(prefix="siptrace-lab-") as tmp:
        work = Path(tmp)
        pcap = work / name
        with SipLab(pcap, transport, work, LabPorts(), buffer_kib=4096) as lab:
            result = lab.run_calls(LAB_CALLS, LAB_RATE, LAB_PAUSE_MS, LAB_TIMEOUT_S)
        _, messages = tshark_sip_counts(pcap)
        if (result.successful != LAB_CALLS or lab.capture.dropped
                or messages != LAB_CALLS * LAB_MESSAGES_PER_CALL):
            raise LabError(f"{name}: {result}, {lab.capture}, {messages} SIP messages")
        shutil.copyfile(pcap, PCAPS / name)
        print(f"recorded {name}: {result.successful} calls, {messages} SIP messages, "
              f"{result.retransmissions} retransmissions, {lab.capture.captured} packets")


def table_rows() -> list[str]:
    """One README row per fixture file, counted now."""
    described = {name: (holds, LAB_HOW) for name, (_, holds) in LAB_FIXTURES.items()}
    described.update({f.name: (f.holds, CRAFTED_HOW) for f in CRAFTED})
    files = sorted(p for p in PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng"))
    unknown = [p.name for p in files if p.name not in described]
    if unknown:
        raise SystemExit(f"undescribed capture(s) in pcaps/: {', '.join(unknown)}")
    with ThreadPoolExecutor(max_workers=2) as pool:
        counts = list(pool.map(tshark_sip_counts, files))
        infos = list(pool.map(capture_info, files))
    counts = [WITHOUT_WIRESHARK_DISSECTOR.get(path.name, found)
              for path, found in zip(files, counts)]
    rows = ["| file | link type | packets | SIP frames | SIP messages | what it holds | made by |",
            "|---|---|---|---|---|---|---|"]
    for path, (frames, messages), (encap, packets) in zip(files, counts, infos):
        holds, how = described[path.name]
        rows.append(f"| {path.name} | {encap} | {packets} | {frames} | {messages} "
                    f"| {holds} | {how} |")
    return rows


def update_readme(rows: list[str]) -> None:
    text = README.read_text()
    head, begin, rest = text.partition(TABLE_BEGIN)
    _, end, tail = rest.partition(TABLE_END)
    if not begin or not end:
        raise SystemExit(f"{README}: table markers missing")
    README.write_text(head + begin + "\n" + "\n".join(rows) + "\n" + end + tail)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recapture", action="store_true",
                        help="re-record the Kamailio captures even if present")
    parser.add_argument("--no-lab", action="store_true",
                        help="never run Kamailio/SIPp (crafted files and counts only)")
    args = parser.parse_args()
    write_crafted()
    for name, (transport, _) in LAB_FIXTURES.items():
        if args.no_lab or ((PCAPS / name).exists() and not args.recapture):
            continue
        try:
            record_lab(name, transport)
        except LabError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    if shutil.which("tshark") is None or shutil.which("capinfos") is None:
        print("error: tshark/capinfos missing: README counts not updated", file=sys.stderr)
        return 1
    rows = table_rows()
    update_readme(rows)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
