"""Capture file reading: pcap/pcapng variants, checked against tshark; bad files."""

import struct
import subprocess
from pathlib import Path

import pytest

from conftest import REAL_PCAPS, real_pcaps, require_tool
from siptrace.capture.files import CaptureFile, open_capture
from siptrace.errors import CaptureFormatError, TruncatedCapture

SHB, IDB, SPB, EPB = 0x0A0D0D0A, 1, 3, 6


def sip_frame(i: int) -> bytes:
    """An Ethernet/IPv4/UDP frame carrying a small SIP OPTIONS, distinct per i."""
    body = (f"OPTIONS sip:{i}@example.org SIP/2.0\r\nCall-ID: c{i}\r\n"
            f"Content-Length: 0\r\n\r\n").encode()
    udp = struct.pack("!HHHH", 5060, 5060 + i % 3, 8 + len(body), 0) + body
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0,
                     bytes([192, 0, 2, 1 + i % 200]), bytes([198, 51, 100, 7])) + udp
    return b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00" + ip


def pcap_bytes(records, order="<", nano=False, linktype=1) -> bytes:
    """A pcap file; records are (ts_ns, data) or (ts_ns, data, original_length)."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)]
    for ts_ns, data, *orig in records:
        sec, frac = divmod(ts_ns, 1_000_000_000)
        out.append(struct.pack(order + "IIII", sec, frac if nano else frac // 1000, len(data),
                               orig[0] if orig else len(data)) + data)
    return b"".join(out)


def ng_block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = len(body) + 12
    return struct.pack(order + "II", btype, length) + body + struct.pack(order + "I", length)


def ng_section(order: str) -> bytes:
    return ng_block(order, SHB, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def ng_interface(order: str, linktype: int, tsresol: int | None = None, snaplen: int = 0,
                 tsoffset: int | None = None) -> bytes:
    options = b""
    if tsresol is not None:
        options += struct.pack(order + "HHB3x", 9, 1, tsresol)
    if tsoffset is not None:
        options += struct.pack(order + "HHq", 14, 8, tsoffset)
    if options:
        options += struct.pack(order + "HH", 0, 0)
    return ng_block(order, IDB, struct.pack(order + "HHI", linktype, 0, snaplen) + options)


def ng_packet(order: str, iface: int, ts_units: int, data: bytes,
              orig: int | None = None) -> bytes:
    return ng_block(order, EPB, struct.pack(order + "IIIII", iface, ts_units >> 32,
                                            ts_units & 0xFFFFFFFF, len(data),
                                            len(data) if orig is None else orig) + data)


def ng_simple(order: str, data: bytes, orig: int | None = None) -> bytes:
    return ng_block(order, SPB, struct.pack(order + "I", len(data) if orig is None else orig)
                    + data)


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def tshark_frames(path: Path) -> list[tuple[str, int]]:
    """(capture time as tshark prints it, captured length) per frame."""
    out = subprocess.run([require_tool("tshark"), "-n", "-r", str(path), "-T", "fields",
                          "-e", "frame.time_epoch", "-e", "frame.cap_len"],
                         capture_output=True, text=True, check=True).stdout
    return [(t, int(n)) for t, n in (line.split("\t") for line in out.splitlines())]


def epoch_text(ts_ns: int) -> str:
    return f"{ts_ns // 1_000_000_000}.{ts_ns % 1_000_000_000:09d}"


RECORDS = [(1_700_000_000_123_456_789 + i * 1_000_001_001, sip_frame(i)) for i in range(5)]


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_byte_orders_and_resolutions_match_tshark(tmp_path, order, nano):
    path = write(tmp_path, "x.pcap", pcap_bytes(RECORDS, order, nano))
    records = list(open_capture(path))
    expected_ts = [ts if nano else ts // 1000 * 1000 for ts, _ in RECORDS]
    assert records == [(ts, 1, data) for ts, (_, data) in zip(expected_ts, RECORDS)]
    assert tshark_frames(path) == [(epoch_text(ts), len(d)) for ts, _, d in records]


def test_pcap_written_by_scapy(tmp_path):
    from scapy.all import Ether, wrpcap

    packets = [Ether(sip_frame(i)) for i in range(3)]
    for i, p in enumerate(packets):
        p.time = 1_600_000_000 + i + 0.25
    wrpcap(str(tmp_path / "s.pcap"), packets)
    records = list(open_capture(tmp_path / "s.pcap"))
    assert [(ts, lt, d) for ts, lt, d in records] == [
        ((1_600_000_000 + i) * 1_000_000_000 + 250_000_000, 1, sip_frame(i)) for i in range(3)]


def test_pcapng_interfaces_resolutions_sections_and_simple_blocks(tmp_path):
    raw_ip = sip_frame(9)[14:]
    content = b"".join([
        ng_section("<"),
        ng_interface("<", 1),  # default resolution: microseconds
        ng_interface("<", 101, tsresol=9),  # nanoseconds, raw IP
        ng_interface("<", 1, tsresol=0x80 | 10, tsoffset=100),  # 2^-10 s, +100 s
        ng_block("<", 4, b"\x00" * 8),  # name resolution block: skipped
        ng_packet("<", 0, 1_700_000_000_000_001, sip_frame(0)),
        ng_packet("<", 1, 1_700_000_001_123_456_789, raw_ip),
        ng_packet("<", 2, 1_700_000_002 * 1024 + 512, sip_frame(2)),
        ng_simple("<", sip_frame(3)),  # interface 0, time of the last packet
        ng_section(">"),  # a second section, big-endian, interfaces start again
        ng_interface(">", 101, tsresol=3),
        ng_packet(">", 0, 1_700_000_003_250, raw_ip, orig=len(raw_ip) + 10),
    ])
    path = write(tmp_path, "multi.pcapng", content)
    capture = CaptureFile(path)
    records = list(capture)
    assert records == [
        (1_700_000_000_000_001_000, 1, sip_frame(0)),
        (1_700_000_001_123_456_789, 101, raw_ip),
        (1_700_000_102_500_000_000, 1, sip_frame(2)),
        (1_700_000_102_500_000_000, 1, sip_frame(3)),
        (1_700_000_003_250_000_000, 101, raw_ip),
    ]
    assert capture.linktypes == [1, 101, 1, 101]
    assert capture.snap_truncated == 1
    assert capture.skipped_blocks == 1
    assert capture.records == 5 and capture.position == capture.size == len(content)
    # tshark reads the same file the same way (time and captured length per frame);
    # it leaves the simple packet block (no timestamp of its own) without a time.
    expected = [(epoch_text(ts), len(d)) for ts, _, d in records]
    expected[3] = ("", expected[3][1])
    assert tshark_frames(path) == expected


def test_simple_packet_block_cut_to_snap_length(tmp_path):
    frame = sip_frame(1)
    content = (ng_section(">") + ng_interface(">", 1, snaplen=40)
               + ng_simple(">", frame[:40], orig=len(frame)))
    capture = CaptureFile(write(tmp_path, "spb.pcapng", content))
    assert list(capture) == [(0, 1, frame[:40])]
    assert capture.snap_truncated == 1


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_records_across_chunk_boundaries(tmp_path, fmt):
    frames = [(1_000_000_000 * i, sip_frame(i)) for i in range(40)]
    if fmt == "pcap":
        content = pcap_bytes(frames)
    else:
        content = ng_section("<") + ng_interface("<", 1, tsresol=9) + b"".join(
            ng_packet("<", 0, ts, d) for ts, d in frames)
    path = write(tmp_path, "c." + fmt, content)
    whole = list(open_capture(path))
    assert len(whole) == 40
    for chunk in (1, 7, 64, 333):
        capture = CaptureFile(path, chunk_size=chunk)
        positions = []
        records = []
        for record in capture:
            records.append(record)
            positions.append(capture.position)
        assert records == whole
        assert positions == sorted(positions) and positions[-1] < capture.size
        assert capture.position == capture.size


def test_snap_length_truncated_records_are_counted(tmp_path):
    frame = sip_frame(0)
    capture = CaptureFile(write(tmp_path, "s.pcap", pcap_bytes(
        [(0, frame[:50], len(frame)), (1000, frame)])))
    assert [d for _, _, d in capture] == [frame[:50], frame]
    assert capture.snap_truncated == 1


def test_truncated_last_record_yields_the_others_first(tmp_path):
    content = pcap_bytes(RECORDS[:3])
    cut = len(content) - 10
    path = write(tmp_path, "t.pcap", content[:cut])
    got = []
    with pytest.raises(TruncatedCapture) as info:
        for record in open_capture(path):
            got.append(record)
    assert len(got) == 2
    third = len(pcap_bytes(RECORDS[:2]))
    assert str(info.value) == f"{path}: truncated record at byte {third}; 2 records read"


def test_file_ending_inside_a_record_header(tmp_path):
    content = pcap_bytes(RECORDS[:2])
    path = write(tmp_path, "h.pcap", content + b"\x01\x02\x03")
    records = []
    with pytest.raises(TruncatedCapture, match=f"truncated record at byte {len(content)}; 2 "):
        records.extend(open_capture(path))
    assert len(records) == 2


def test_damaged_record_length_in_the_middle(tmp_path):
    content = bytearray(pcap_bytes(RECORDS))
    second = len(pcap_bytes(RECORDS[:1]))
    struct.pack_into("<I", content, second + 8, 0x7FFFFFFF)  # captured length
    path = write(tmp_path, "d.pcap", bytes(content))
    records = []
    with pytest.raises(TruncatedCapture) as info:
        records.extend(open_capture(path))
    assert records == [(RECORDS[0][0] // 1000 * 1000, 1, RECORDS[0][1])]
    assert str(info.value) == (f"{path}: damaged record header (captured length 2147483647) "
                               f"at byte {second}; 1 records read, the rest skipped")


@pytest.mark.parametrize("damage", ["length", "trailer", "interface", "truncated"])
def test_damaged_pcapng_blocks(tmp_path, damage):
    good = ng_section("<") + ng_interface("<", 1) + ng_packet("<", 0, 5, sip_frame(0))
    bad = bytearray(ng_packet("<", 0, 6, sip_frame(1)))
    if damage == "length":
        struct.pack_into("<I", bad, 4, 13)
    elif damage == "trailer":
        struct.pack_into("<I", bad, len(bad) - 4, 8)
    elif damage == "interface":
        struct.pack_into("<I", bad, 8, 3)
    else:  # the file ends inside the block
        bad = bad[:-1]
    tail = b"" if damage == "truncated" else ng_packet("<", 0, 7, sip_frame(2))
    path = write(tmp_path, "b.pcapng", good + bytes(bad) + tail)
    records = []
    with pytest.raises(TruncatedCapture) as info:
        records.extend(open_capture(path))
    assert records == [(5000, 1, sip_frame(0))]
    word = "truncated record" if damage == "truncated" else "damaged"
    assert str(info.value).startswith(f"{path}: {word}")
    assert f"at byte {len(good)}; 1 records read" in str(info.value)


@pytest.mark.parametrize("content, message", [
    (b"HTTP/1.1 200 OK\r\n\r\n", "not a pcap or pcapng file (starts with 0x48545450)"),
    (b"", "empty file, not a capture"),
    (b"\x1f\x8b\x08\x00" + bytes(30), "gzip-compressed file; decompress it first"),
    (b"\xd4\xc3\xb2\xa1\x02\x00", "damaged pcap header (file ends after 6 bytes)"),
    (struct.pack("<IHHiIII", 0xA1B2C3D4, 7, 1, 0, 0, 65535, 1),
     "damaged pcap header (version 7.1)"),
    (ng_section("<")[:8] + b"\x00\x00\x00\x00" + bytes(16),
     "damaged pcapng header (byte-order magic 0x00000000)"),
])
def test_not_a_capture_is_one_line_before_any_record(tmp_path, content, message):
    path = write(tmp_path, "x.txt", content)
    with pytest.raises(CaptureFormatError) as info:
        open_capture(path)
    assert str(info.value) == f"{path}: {message}"


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CaptureFormatError, match="nope.pcap: no such file$"):
        open_capture(tmp_path / "nope.pcap")
    with pytest.raises(CaptureFormatError, match="is a directory, not a capture file$"):
        open_capture(tmp_path)


def test_header_only_file_has_no_records(tmp_path):
    assert list(open_capture(write(tmp_path, "e.pcap", pcap_bytes([])))) == []
    assert list(open_capture(write(tmp_path, "e.pcapng", ng_section(">")))) == []


def test_every_real_capture_reads_like_tshark(real_pcaps_dir):
    paths = real_pcaps()
    assert len(paths) >= 20
    for path in paths:
        capture = CaptureFile(path)
        records = list(capture)
        assert capture.position == capture.size
        assert tshark_frames(path) == [(epoch_text(ts), len(d)) for ts, _, d in records], path


def test_pcapng_twin_holds_the_same_records(real_pcaps_dir):
    pcap = list(open_capture(REAL_PCAPS / "MichalCab_ISA__sip.pcap"))
    pcapng = list(open_capture(REAL_PCAPS / "MichalCab_ISA__sip.pcap.pcapng"))
    assert len(pcap) == 175 and pcapng == pcap


@pytest.mark.parametrize("tsresol, tsoffset, ts_units", [
    (0, None, 1 << 40),  # seconds: far past 2106 (no datetime holds year 36812)
    (6, -2_000_000_000, 1_700_000_000_000_000),  # before 1970
])
@pytest.mark.parametrize("chunk_size", [1 << 20, 64])  # block whole in the buffer, or not
def test_pcapng_time_out_of_range_is_damage(tmp_path, tsresol, tsoffset, ts_units, chunk_size):
    good = (ng_section("<") + ng_interface("<", 1)
            + ng_packet("<", 0, 5, sip_frame(0)) + ng_interface("<", 1, tsresol, 0, tsoffset))
    path = write(tmp_path, "t.pcapng", good + ng_packet("<", 1, ts_units, sip_frame(1))
                 + ng_packet("<", 0, 7, sip_frame(2)))
    records = []
    with pytest.raises(TruncatedCapture) as info:
        records.extend(CaptureFile(path, chunk_size))
    assert records == [(5000, 1, sip_frame(0))]
    assert str(info.value).startswith(f"{path}: damaged packet block (time ")
    assert f"outside 1970-2106) at byte {len(good)}; 1 records read" in str(info.value)
