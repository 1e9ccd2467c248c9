"""replay_files: the plain Tracer's direct row path stores what the general path stores.

replay_files keeps two paths (the reason is beside them): rows made in its loop for a
plain Tracer, and rows made through ``on_packet`` for any other tracer. For any
captures, in any order, any proxy addresses, any batch size, with a mirror or without,
both must put the same rows in the same batches, mirror the same messages and count
the same.
"""

from dataclasses import asdict
import functools
from pathlib import Path
import struct
import tempfile
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PCAPS, real_pcaps
from siptrace import replay as replay_module
from siptrace.capture.files import CaptureFile
from siptrace.direction import ProxyAddresses
from siptrace.errors import SiptraceError, TruncatedCapture
from siptrace.extract import SipExtractor
from siptrace.replay import Tracer, replay_files

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
CAPTURES = sorted(p for p in PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng")) + real_pcaps()


class Recorder:
    """A row sink and a mirror that keep what they are given."""

    def __init__(self):
        self.batches = []
        self.sent = []

    def put(self, rows):
        self.batches.append(list(rows))

    def send(self, wire):
        self.sent.append(wire)


class GeneralTracer(Tracer):
    """The same decisions as Tracer, taken through on_packet (the general path)."""


def replay(paths, tracer, rows_per_put=replay_module.ROWS_PER_PUT, mirrored=True):
    """What one replay hands over: the summary (but its time), batches, mirrored messages."""
    sink, mirror = Recorder(), Recorder() if mirrored else None
    with mock.patch.object(replay_module, "ROWS_PER_PUT", rows_per_put):
        try:
            summary = replay_files(paths, tracer=tracer, row_sink=sink, mirror=mirror)
        except SiptraceError as exc:
            return type(exc), str(exc), sink.batches
    counts = asdict(summary)
    del counts["elapsed"]
    return counts, sink.batches, mirror.sent if mirrored else None


def assert_same(paths, proxy, **kw):
    direct = replay(paths, Tracer(proxy), **kw)
    assert direct == replay(paths, GeneralTracer(proxy), **kw)
    return direct


@functools.cache
def endpoints() -> list[str]:
    """Addresses of the captures' SIP messages, as --proxy takes them (IP and IP:PORT)."""
    seen = set()
    for path in CAPTURES:
        extractor = SipExtractor()
        try:
            for record in CaptureFile(path):
                for wire in extractor.feed(*record):
                    for ip, port in ((wire.src, wire.sport), (wire.dst, wire.dport)):
                        seen.add(ip)
                        seen.add(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")
        except (TruncatedCapture, SiptraceError):
            pass
    return sorted(seen)


def proxies():
    return st.lists(st.sampled_from(endpoints()), max_size=3).map(ProxyAddresses.parse)


@SETTINGS
@given(st.lists(st.sampled_from(CAPTURES), min_size=1, max_size=4), st.data(),
       st.integers(1, 300), st.booleans())
def test_the_direct_path_stores_what_the_general_path_stores(paths, data, batch, mirrored):
    proxy = data.draw(proxies())
    assert_same(paths, proxy, rows_per_put=batch, mirrored=mirrored)


# Generated captures: SIP datagrams of every kind the parser tolerates, between a few
# addresses (some of them the proxy's), in a pcap.
ADDRESSES = [(b"\x0a\0\0\1", 5060), (b"\x0a\0\0\1", 5080), (b"\x0a\0\0\2", 5060),
             (b"\xc0\xa8\1\1", 5062)]
SIP_LINES = [b"INVITE sip:b@h SIP/2.0", b"SIP/2.0 200 OK", b"SIP/2.0 180", b"BYE sip:x SIP/2.0",
             b"Via: SIP/2.0/UDP h;branch=z9hG4bK1", b"f: <sip:a@b>;tag=t", b"To: <sip:b@h>;tag=2",
             b"Call-ID: c1@h", b"i: c2", b"CSeq: 7 INVITE", b"CSeq: x", b"l: 0", b" folded",
             b"nocolon", b"Call-ID"]


@st.composite
def sip_datagram(draw) -> tuple[int, bytes]:
    lines = draw(st.lists(st.sampled_from(SIP_LINES), min_size=1, max_size=7))
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    payload = eol.join(lines) + eol + draw(st.sampled_from([eol, b""])) + draw(
        st.binary(max_size=10))
    (src, sport), (dst, dport) = draw(st.permutations(ADDRESSES))[:2]
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src, dst)
    return draw(st.integers(0, 2**32 * 10**9 - 1)), bytes(12) + b"\x08\x00" + ip + udp


def pcap(records) -> bytes:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for ts_ns, frame in records:
        seconds, ns = divmod(ts_ns, 10**9)
        out.append(struct.pack("<IIII", seconds, ns // 1000, len(frame), len(frame)) + frame)
    return b"".join(out)


@SETTINGS
@given(st.lists(sip_datagram(), min_size=1, max_size=30), st.integers(1, 10), st.booleans(),
       st.lists(st.sampled_from(["10.0.0.1", "10.0.0.1:5060", "10.0.0.2:5060",
                                 "192.168.1.1:5062"]), max_size=2))
def test_the_paths_agree_on_generated_messages(records, batch, mirrored, proxy):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "generated.pcap"
        path.write_bytes(pcap(records))
        assert_same([path], ProxyAddresses.parse(proxy), rows_per_put=batch, mirrored=mirrored)


def test_every_capture_replays_the_same_both_ways():
    proxy = ProxyAddresses.parse(["127.0.0.1:5060"])
    for path in CAPTURES:
        assert_same([path], proxy)
    counts, batches, sent = assert_same(
        [PCAPS / "kamailio-udp.pcap", PCAPS / "kamailio-tcp.pcap", PCAPS / "frag-ipv6.pcap"],
        proxy)
    rows = [row for batch in batches for row in batch]
    assert len(rows) == len(sent) == counts["traced_messages"] == counts["rows"] == 65 + 65 + 7
    assert {row.direction for row in rows} >= {"in", "out"}
