"""Builds, once, the benchmark capture: real calls SIPp -> Kamailio -> SIPp on loopback.

    python -m bench.build_capture            # ~/.cache/siptrace-bench/sip-250k.pcap
    python -m bench.build_capture --force --rate 400 --min-messages 250000

Most calls run over UDP, a twentieth over TCP (one connection per call), each recorded by
tcpdump (-s 0, large -B buffer) and joined into one pcap, kept outside git. A cached file
is reused when a quick scan finds enough SIP messages in it. Run as root (tcpdump on lo),
with ports 5060, 5070 and 5080 free. Every step is bounded in time.
"""

import argparse
from collections import Counter
from dataclasses import dataclass
import math
import os
from pathlib import Path
import re
import shutil
import struct
import sys
import tempfile
import time

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pcaps.lab import LabError, LabPorts, SipLab  # noqa: E402

DEFAULT_PATH = Path.home() / ".cache" / "siptrace-bench" / "sip-250k.pcap"
MIN_MESSAGES = 250_000
MESSAGES_PER_CALL = 13  # INVITE, Kamailio's 100, INVITE, 2x180, 2x200, 2xACK, 2xBYE, 2x200
CALL_MARGIN = 1.01  # a few more calls than the bare minimum
TCP_SHARE = 20  # one call in TCP_SHARE goes over TCP
DEFAULT_RATE = 800  # calls/s: no retransmissions on 2 cores (3000 gave some, 1500 none)
TCPDUMP_BUFFER_KIB = 131072  # -B: 128 MB of kernel buffer, no drops during bursts
KAMAILIO_SHM_MB = 256
DEADLINE_SLACK_S = 60

# Classic pcap (draft-ietf-opsawg-pcap) and the layers tcpdump writes for lo.
PCAP_HEADER = struct.Struct("<IHHiIII")
PCAP_MAGICS = {0xA1B2C3D4: "<", 0xD4C3B2A1: ">", 0xA1B23C4D: "<", 0x4D3CB2A1: ">"}
RECORD_HEADER_LEN = 16
LINKTYPE_ETHERNET = 1
ETHERTYPE_IPV4, ETHERTYPE_IPV6 = 0x0800, 0x86DD
IPPROTO_TCP, IPPROTO_UDP = 6, 17
TCP_FIN_RST = 0x05
TCP_SYN = 0x02
SIP_VERSION = b"SIP/2.0"
CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)", re.I | re.M)
MAX_STREAM_BUFFER = 1 << 20  # bytes held per TCP direction while counting
MAX_STREAMS = 10_000


def is_sip_start(payload: bytes) -> bool:
    """A SIP status line, or a request line ending in SIP/2.0 (RFC 3261 section 7.1)."""
    if payload.startswith(SIP_VERSION + b" "):
        return True
    end = payload.find(b"\r\n", 0, 1024)
    return end > 0 and payload[end - 8:end] == b" " + SIP_VERSION


def _frame_stream(buffer: bytearray) -> int:
    """Removes the complete SIP messages at the head of a TCP stream; returns how many."""
    found = 0
    while True:
        stripped = len(buffer) - len(buffer.lstrip(b"\r\n"))
        del buffer[:stripped]
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return found
        match = CONTENT_LENGTH.search(buffer, 0, head_end + 2)
        size = head_end + 4 + (int(match.group(1)) if match else 0)
        if len(buffer) < size:
            return found
        found += is_sip_start(bytes(buffer[:1024]))
        del buffer[:size]


def count_sip_messages(path: Path) -> Counter:
    """Quick census of a tcpdump capture of loopback SIP: packets, sip_udp, sip_tcp.

    TCP is followed by sequence number: retransmitted bytes are skipped; a gap (never
    seen on loopback) drops what was buffered and is counted.
    """
    counts: Counter = Counter()
    streams: dict[bytes, TcpStream] = {}
    with open(path, "rb") as f:
        header = f.read(PCAP_HEADER.size)
        if len(header) < PCAP_HEADER.size or \
                struct.unpack_from("<I", header)[0] not in PCAP_MAGICS:
            raise LabError(f"{path}: not a classic pcap file")
        order = PCAP_MAGICS[struct.unpack_from("<I", header)[0]]
        if struct.unpack_from(order + "I", header, 20)[0] != LINKTYPE_ETHERNET:
            raise LabError(f"{path}: expected Ethernet link type (tcpdump on lo)")
        record = struct.Struct(order + "IIII")
        while True:
            rec = f.read(RECORD_HEADER_LEN)
            if len(rec) < RECORD_HEADER_LEN:
                break
            caplen = record.unpack(rec)[2]
            frame = f.read(caplen)
            if len(frame) < caplen:
                counts["truncated"] += 1
                break
            counts["packets"] += 1
            _count_frame(frame, counts, streams)
    return counts


@dataclass
class TcpStream:
    next_seq: int
    buffer: bytearray


def _seq_diff(a: int, b: int) -> int:
    """a - b in 32-bit sequence space (RFC 793 modular arithmetic)."""
    return (a - b + (1 << 31)) % (1 << 32) - (1 << 31)


def _count_frame(frame: bytes, counts: Counter, streams: dict[bytes, TcpStream]) -> None:
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype == ETHERTYPE_IPV4:
        ihl = (frame[14] & 0x0F) * 4
        proto = frame[23]
        if struct.unpack_from("!H", frame, 20)[0] & 0x3FFF:
            counts["fragments"] += 1
            return
        l4, addresses = 14 + ihl, frame[26:34]
    elif ethertype == ETHERTYPE_IPV6:
        proto, l4, addresses = frame[20], 54, frame[22:54]
    else:
        counts["other"] += 1
        return
    if proto == IPPROTO_UDP:
        if is_sip_start(frame[l4 + 8:l4 + 8 + 1024]):
            counts["sip_udp"] += 1
        else:
            counts["other"] += 1
    elif proto == IPPROTO_TCP:
        _count_segment(frame, l4, addresses + frame[l4:l4 + 4], counts, streams)
    else:
        counts["other"] += 1


def _count_segment(frame: bytes, l4: int, key: bytes, counts: Counter,
                   streams: dict[bytes, TcpStream]) -> None:
    seq = struct.unpack_from("!I", frame, l4 + 4)[0]
    flags = frame[l4 + 13]
    payload = frame[l4 + (frame[l4 + 12] >> 4) * 4:]
    stream = streams.get(key)
    if flags & TCP_SYN:
        if len(streams) < MAX_STREAMS:
            streams[key] = TcpStream((seq + 1) & 0xFFFFFFFF, bytearray())
        return
    if payload:
        if stream is None:
            if len(streams) >= MAX_STREAMS:
                return
            stream = streams[key] = TcpStream(seq, bytearray())
        ahead = _seq_diff(seq, stream.next_seq)
        start = seq if ahead > 0 else stream.next_seq
        if ahead > 0:
            counts["tcp_gaps"] += 1
            stream.buffer.clear()
        elif ahead < 0:
            payload = payload[-ahead:]
            counts["tcp_retransmitted_segments"] += not payload
        if payload:
            stream.buffer += payload
            stream.next_seq = (start + len(payload)) & 0xFFFFFFFF
            counts["sip_tcp"] += _frame_stream(stream.buffer)
            if len(stream.buffer) > MAX_STREAM_BUFFER:
                stream.buffer.clear()
                counts["tcp_overflow"] += 1
    if flags & TCP_FIN_RST:
        streams.pop(key, None)


def sip_total(counts: Counter) -> int:
    return counts["sip_udp"] + counts["sip_tcp"]


def concatenate_pcaps(parts: list[Path], out: Path) -> None:
    """Joins captures of the same link type, snap length and byte order (tcpdump's)."""
    with open(out, "wb") as dst:
        first_header = None
        for part in parts:
            with open(part, "rb") as src:
                header = src.read(PCAP_HEADER.size)
                if first_header is None:
                    first_header = header
                    dst.write(header)
                elif header != first_header:
                    raise LabError(f"{part}: pcap header differs from {parts[0]}")
                shutil.copyfileobj(src, dst, 1 << 20)


@dataclass(frozen=True)
class BuildReport:
    path: Path
    messages: int
    calls: int
    failed_calls: int
    retransmissions: int
    dropped: int
    seconds: float


def record(pcap: Path, transport: str, calls: int, rate: float, workdir: Path):
    """Runs `calls` calls of one transport into `pcap`: (UacResult, uas retrans, capture)."""
    timeout = calls / rate * 1.5 + DEADLINE_SLACK_S
    with SipLab(pcap, transport, workdir, LabPorts(), buffer_kib=TCPDUMP_BUFFER_KIB,
                shm_mb=KAMAILIO_SHM_MB) as lab:
        result = lab.run_calls(calls, rate, pause_ms=0, timeout_s=timeout)
    return result, lab.uas_retransmissions, lab.capture


def build_capture(path: Path, min_messages: int = MIN_MESSAGES,
                  rate: float = DEFAULT_RATE) -> BuildReport:
    """Records enough calls for `min_messages` and writes them to `path`."""
    calls = math.ceil(min_messages / MESSAGES_PER_CALL * CALL_MARGIN)
    tcp_calls = calls // TCP_SHARE
    plan = [("udp", calls - tcp_calls), ("tcp", tcp_calls)]
    started = time.monotonic()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="siptrace-bench-", dir=path.parent) as tmp:
        work = Path(tmp)
        parts, ok, failed, retrans, dropped = [], 0, 0, 0, 0
        for transport, n in plan:
            if not n:
                continue
            part = work / f"{transport}.pcap"
            print(f"recording {n} calls over {transport.upper()} at {rate:g} calls/s ...",
                  flush=True)
            result, uas_retrans, capture = record(part, transport, n, rate, work / transport)
            parts.append(part)
            ok += result.successful
            failed += result.failed
            retrans += result.retransmissions + uas_retrans
            dropped += capture.dropped
        joined = work / path.name
        concatenate_pcaps(parts, joined)
        counts = count_sip_messages(joined)
        if sip_total(counts) < min_messages:
            raise LabError(f"only {sip_total(counts)} SIP messages recorded "
                           f"(wanted {min_messages}): {dict(counts)}")
        os.replace(joined, path)
    return BuildReport(path, sip_total(counts), ok, failed, retrans, dropped,
                       time.monotonic() - started)


def ensure_bench_capture(path: Path | str | None = None, min_messages: int = MIN_MESSAGES,
                         *, rate: float = DEFAULT_RATE) -> Path:
    """The benchmark capture, built if absent or short of `min_messages` SIP messages."""
    path = Path(path) if path is not None else DEFAULT_PATH
    if path.exists():
        counts = count_sip_messages(path)
        if sip_total(counts) >= min_messages:
            print(f"bench capture: {path} ({sip_total(counts)} SIP messages, cached)")
            return path
        print(f"bench capture: {path} holds {sip_total(counts)} SIP messages, rebuilding")
    report = build_capture(path, min_messages, rate)
    print_report(report)
    return path


def print_report(report: BuildReport) -> None:
    size_mb = report.path.stat().st_size / 1e6
    extra = report.messages - report.calls * MESSAGES_PER_CALL
    print(f"bench capture: {report.path}: {report.messages} SIP messages "
          f"({extra:+d} against {MESSAGES_PER_CALL} a call), "
          f"{report.calls} calls ({report.failed_calls} failed), "
          f"{report.retransmissions} retransmissions reported by SIPp, "
          f"{report.dropped} packets dropped by the kernel, "
          f"{size_mb:.1f} MB, built in {report.seconds:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--min-messages", type=int, default=MIN_MESSAGES)
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="calls per second")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    try:
        if args.force:
            print_report(build_capture(args.path, args.min_messages, args.rate))
        else:
            ensure_bench_capture(args.path, args.min_messages, rate=args.rate)
    except LabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
