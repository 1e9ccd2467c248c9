"""pcap and pcapng files, streamed: records ``(ts_ns, linktype, data)``.

Files are read in large chunks; a record is sliced out of the chunk, never read
on its own. Errors, each one line naming the file:

- CaptureFormatError, before any record: missing file, directory, not a capture,
  damaged file header;
- TruncatedCapture, after every record before the problem: the file ends inside
  a record, or a record/block header is damaged (a length or a time no capture
  can have), so nothing after it can be trusted.
"""

import os
from collections.abc import Iterator
from struct import Struct, unpack_from

from siptrace.errors import CaptureFormatError, TruncatedCapture

CHUNK_SIZE = 1 << 20
MAX_CAPLEN = 262144  # libpcap's and Wireshark's largest snapshot length
MAX_BLOCK_LEN = 16 << 20  # a pcapng block larger than this is damaged
# pcap's 32-bit seconds end in 2106; a pcapng time outside [1970, 2106) is damaged
# (it would not fit a datetime column or a HEP header either).
MAX_TIMESTAMP_NS = (1 << 32) * 1_000_000_000

# pcap (draft-ietf-opsawg-pcap): magic as the file's first 4 bytes ->
# (byte order, nanoseconds per fraction unit, record header length)
PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000, 16),  # microseconds, little-endian
    b"\xa1\xb2\xc3\xd4": (">", 1000, 16),  # microseconds, big-endian
    b"\x4d\x3c\xb2\xa1": ("<", 1, 16),  # nanoseconds, little-endian
    b"\xa1\xb2\x3c\x4d": (">", 1, 16),  # nanoseconds, big-endian
    b"\x34\xcd\xb2\xa1": ("<", 1000, 24),  # Kuznetzov's patched libpcap
    b"\xa1\xb2\xcd\x34": (">", 1000, 24),
}
PCAP_HEADER_LEN = 24
PCAP_MAJOR_VERSION = 2
LINKTYPE_MASK = 0xFFFF  # the upper bits carry FCS information

# pcapng (draft-ietf-opsawg-pcapng): block types
SHB = 0x0A0D0D0A  # section header; the same in both byte orders
IDB = 0x00000001  # interface description
OPB = 0x00000002  # obsolete packet block
SPB = 0x00000003  # simple packet block
EPB = 0x00000006  # enhanced packet block
SHB_BYTE_ORDER = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}
PCAPNG_MAJOR_VERSION = 1
OPT_END = 0
IF_TSRESOL = 9  # interface option: timestamp resolution
IF_TSOFFSET = 14  # interface option: seconds added to every timestamp
DEFAULT_TSRESOL = 6  # microseconds

COMPRESSED_MAGICS = {b"\x1f\x8b": "gzip", b"\x28\xb5": "zstd", b"\xfd\x37": "xz",
                     b"BZ": "bzip2"}


class CaptureFile:
    """One capture file: iterate for records; ``size`` and ``position`` in bytes.

    The header is checked when the object is made. ``position`` (bytes consumed)
    is updated a chunk at a time, for a progress bar. ``records`` counts what was
    read, ``snap_truncated`` the records captured shorter than they were on the
    wire (snap length), ``skipped_blocks`` the pcapng blocks that hold no packet.
    """

    def __init__(self, path, chunk_size: int = CHUNK_SIZE):
        self.path = path
        self.name = os.fspath(path)
        self.chunk_size = chunk_size
        self.records = 0
        self.snap_truncated = 0
        self.skipped_blocks = 0
        self.position = 0
        with _open(self.name) as f:
            self.size = os.fstat(f.fileno()).st_size
            head = f.read(PCAP_HEADER_LEN)
        self._header = head
        magic = head[:4]
        if magic in PCAP_MAGICS:
            self.format = "pcap"
            self._check_pcap_header(head)
        elif magic == SHB.to_bytes(4, "big"):
            self.format = "pcapng"
            self._check_pcapng_header(head)
        else:
            raise CaptureFormatError(f"{self.name}: {_not_a_capture(head)}")

    def __iter__(self) -> Iterator[tuple[int, int, bytes]]:
        records = self._pcap_records if self.format == "pcap" else self._pcapng_records
        return records()

    def _check_pcap_header(self, head: bytes) -> None:
        if len(head) < PCAP_HEADER_LEN:
            raise CaptureFormatError(f"{self.name}: damaged pcap header "
                                     f"(file ends after {len(head)} bytes)")
        order, _, _ = PCAP_MAGICS[head[:4]]
        major, minor, _, _, _, network = Struct(order + "HHiIII").unpack_from(head, 4)
        if major != PCAP_MAJOR_VERSION:
            raise CaptureFormatError(f"{self.name}: damaged pcap header "
                                     f"(version {major}.{minor})")
        self.linktypes = [network & LINKTYPE_MASK]

    def _check_pcapng_header(self, head: bytes) -> None:
        if len(head) < PCAP_HEADER_LEN:
            raise CaptureFormatError(f"{self.name}: damaged pcapng header "
                                     f"(file ends after {len(head)} bytes)")
        order = SHB_BYTE_ORDER.get(head[8:12])
        if order is None:
            raise CaptureFormatError(f"{self.name}: damaged pcapng header "
                                     f"(byte-order magic 0x{head[8:12].hex()})")
        length, _, major, minor = Struct(order + "4xII HH").unpack_from(head, 0)
        if major != PCAPNG_MAJOR_VERSION or length < 28 or length % 4 or length > MAX_BLOCK_LEN:
            raise CaptureFormatError(f"{self.name}: damaged pcapng header "
                                     f"(version {major}.{minor}, block length {length})")
        self.linktypes = []

    def _damaged(self, offset: int, what: str, count: int) -> TruncatedCapture:
        self.records = count
        return TruncatedCapture(f"{self.name}: damaged {what} at byte {offset}; "
                                f"{count} records read, the rest skipped")

    def _bad_time(self, offset: int, ts_ns: int, count: int) -> TruncatedCapture:
        return self._damaged(offset, f"packet block (time {ts_ns // 1_000_000_000} s "
                                     f"outside 1970-2106)", count)

    def _truncated(self, offset: int, count: int) -> TruncatedCapture:
        self.records = count
        return TruncatedCapture(f"{self.name}: truncated record at byte {offset}; "
                                f"{count} records read")

    def _pcap_records(self) -> Iterator[tuple[int, int, bytes]]:
        order, frac_ns, header_len = PCAP_MAGICS[self._header[:4]]
        unpack = Struct(order + "IIII").unpack_from
        linktype = self.linktypes[0]
        chunk_size = self.chunk_size
        count = 0
        with _open(self.name) as f:
            f.seek(PCAP_HEADER_LEN)
            base = PCAP_HEADER_LEN  # file offset of buf[0]
            buf = b""
            pos = n = 0
            while True:
                if pos + header_len > n:
                    buf, base, pos, n = _refill(f, buf, base, pos, header_len, chunk_size)
                    self.position, self.records = base, count
                    if pos + header_len > n:
                        if pos < n:
                            raise self._truncated(base + pos, count)
                        break
                sec, frac, caplen, origlen = unpack(buf, pos)
                if caplen > MAX_CAPLEN:
                    raise self._damaged(base + pos, f"record header (captured length {caplen})",
                                        count)
                start = pos + header_len
                stop = start + caplen
                if stop > n:
                    buf, base, pos, n = _refill(f, buf, base, pos, stop - pos, chunk_size)
                    self.position, self.records = base, count
                    start = pos + header_len
                    stop = start + caplen
                    if stop > n:
                        raise self._truncated(base + pos, count)
                if caplen < origlen:
                    self.snap_truncated += 1
                count += 1
                yield sec * 1_000_000_000 + frac * frac_ns, linktype, buf[start:stop]
                pos = stop
        self.position, self.records = self.size, count

    def _pcapng_records(self) -> Iterator[tuple[int, int, bytes]]:
        chunk_size = self.chunk_size
        order = "<"
        # Readers in the section's byte order, set again by each section header.
        block_head = Struct("<II").unpack_from  # block type, block length
        packet_head = Struct("<IIIII").unpack_from  # interface, time high/low, lengths
        packet_block = Struct("<IIIIIII").unpack_from  # both of the above at once
        u32 = Struct("<I").unpack_from
        interfaces: list[tuple] = []  # per interface: see _interface
        n_interfaces = 0
        last_ts = 0
        count = 0
        self.linktypes = []
        with _open(self.name) as f:
            base = 0
            buf = b""
            pos = n = 0
            while True:
                if pos + 32 <= n:  # fast path: a well-formed EPB held whole in the buffer
                    btype, blen, iface, ts_high, ts_low, caplen, origlen = packet_block(buf, pos)
                    if (btype == EPB and caplen <= blen - 32 and pos + blen <= n
                            and not blen & 3 and iface < n_interfaces and caplen <= MAX_CAPLEN
                            and u32(buf, pos + blen - 4)[0] == blen):
                        linktype, mul, div, offset, _ = interfaces[iface]
                        last_ts = ((ts_high << 32) | ts_low) * mul // div + offset
                        if not 0 <= last_ts < MAX_TIMESTAMP_NS:
                            raise self._bad_time(base + pos, last_ts, count)
                        if caplen < origlen:
                            self.snap_truncated += 1
                        count += 1
                        yield last_ts, linktype, buf[pos + 28:pos + 28 + caplen]
                        pos += blen
                        continue
                if pos + 12 > n:
                    buf, base, pos, n = _refill(f, buf, base, pos, 12, chunk_size)
                    self.position, self.records = base, count
                    if pos + 12 > n:
                        if pos < n:
                            raise self._truncated(base + pos, count)
                        break
                btype, blen = block_head(buf, pos)
                if btype == SHB:  # a new section, maybe in the other byte order
                    order = SHB_BYTE_ORDER.get(buf[pos + 8:pos + 12])
                    if order is None:
                        raise self._damaged(base + pos, "section header (byte-order magic)", count)
                    block_head = Struct(order + "II").unpack_from
                    packet_head = Struct(order + "IIIII").unpack_from
                    packet_block = Struct(order + "IIIIIII").unpack_from
                    u32 = Struct(order + "I").unpack_from
                    btype, blen = block_head(buf, pos)
                    interfaces = []
                    n_interfaces = 0
                    if blen < 28:
                        raise self._damaged(base + pos, f"section header (block length {blen})",
                                            count)
                if blen < 12 or blen % 4 or blen > MAX_BLOCK_LEN:
                    raise self._damaged(base + pos, f"block header (block length {blen})", count)
                if pos + blen > n:
                    buf, base, pos, n = _refill(f, buf, base, pos, blen, chunk_size)
                    self.position, self.records = base, count
                    if pos + blen > n:
                        raise self._truncated(base + pos, count)
                if u32(buf, pos + blen - 4)[0] != blen:
                    raise self._damaged(base + pos, f"block (trailing length differs from {blen})",
                                        count)
                if btype == EPB or btype == OPB:
                    if blen < 32:
                        raise self._damaged(base + pos, f"packet block (block length {blen})",
                                            count)
                    iface, ts_high, ts_low, caplen, origlen = packet_head(buf, pos + 8)
                    if btype == OPB:  # 16-bit interface id, then a drop count
                        iface = unpack_from(order + "H", buf, pos + 8)[0]
                    if caplen > blen - 32 or caplen > MAX_CAPLEN or iface >= len(interfaces):
                        raise self._damaged(base + pos, f"packet block (interface {iface}, "
                                                        f"captured length {caplen})", count)
                    linktype, mul, div, offset, _ = interfaces[iface]
                    last_ts = ((ts_high << 32) | ts_low) * mul // div + offset
                    if not 0 <= last_ts < MAX_TIMESTAMP_NS:
                        raise self._bad_time(base + pos, last_ts, count)
                    start = pos + 28
                    if caplen < origlen:
                        self.snap_truncated += 1
                    count += 1
                    yield last_ts, linktype, buf[start:start + caplen]
                elif btype == SPB:
                    if not interfaces or blen < 16:
                        raise self._damaged(base + pos, "simple packet block", count)
                    linktype, _, _, _, snaplen = interfaces[0]
                    origlen = u32(buf, pos + 8)[0]
                    caplen = min(origlen, blen - 16, snaplen or origlen)
                    if caplen < origlen:
                        self.snap_truncated += 1
                    count += 1
                    yield last_ts, linktype, buf[pos + 12:pos + 12 + caplen]
                elif btype == IDB:
                    interface = _interface(buf, pos, blen, order)
                    if interface is None:
                        raise self._damaged(base + pos, "interface description block", count)
                    interfaces.append(interface)
                    n_interfaces += 1
                    self.linktypes.append(interface[0])
                elif btype != SHB:
                    self.skipped_blocks += 1
                pos += blen
        self.position, self.records = self.size, count


def open_capture(path) -> Iterator[tuple[int, int, bytes]]:
    """Records ``(ts_ns, linktype, data)`` of a pcap or pcapng file, streamed.

    Raises CaptureFormatError at once for a file that cannot be read as a
    capture; TruncatedCapture after the last good record of a damaged one.
    """
    return iter(CaptureFile(path))


def _open(name: str):
    try:
        return open(name, "rb")
    except FileNotFoundError:
        raise CaptureFormatError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise CaptureFormatError(f"{name}: is a directory, not a capture file") from None
    except OSError as exc:
        raise CaptureFormatError(f"{name}: cannot open ({exc.strerror})") from None


def _refill(f, buf: bytes, base: int, pos: int, need: int, chunk_size: int):
    """Keep buf[pos:], read until at least ``need`` bytes from pos are held (or EOF)."""
    rest = buf[pos:]
    base += pos
    parts = [rest]
    held = len(rest)
    while held < need:
        try:
            more = f.read(max(chunk_size, need - held))
        except OSError as exc:
            raise CaptureFormatError(f"{f.name}: read error at byte {base + held} "
                                     f"({exc.strerror})") from None
        if not more:
            break
        parts.append(more)
        held += len(more)
    buf = b"".join(parts)
    return buf, base, 0, len(buf)


def _interface(buf: bytes, pos: int, blen: int, order: str) -> tuple | None:
    """An IDB's (linktype, mul, div, offset_ns, snaplen): ts_ns = ts * mul // div + offset_ns."""
    if blen < 20:
        return None
    linktype, snaplen = unpack_from(order + "HxxI", buf, pos + 8)
    resolution = DEFAULT_TSRESOL
    offset_s = 0
    opt = pos + 16
    stop = pos + blen - 4
    while opt + 4 <= stop:
        code, length = unpack_from(order + "HH", buf, opt)
        value = opt + 4
        if code == OPT_END or value + length > stop:
            break
        if code == IF_TSRESOL and length >= 1:
            resolution = buf[value]
        elif code == IF_TSOFFSET and length >= 8:
            offset_s = unpack_from(order + "q", buf, value)[0]
        opt = value + ((length + 3) & ~3)
    if resolution & 0x80:  # negative power of two
        mul, div = 1_000_000_000, 1 << (resolution & 0x7F)
    elif resolution <= 9:  # negative power of ten
        mul, div = 10 ** (9 - resolution), 1
    else:
        mul, div = 1, 10 ** (resolution - 9)
    return linktype, mul, div, offset_s * 1_000_000_000, snaplen


def _not_a_capture(head: bytes) -> str:
    if not head:
        return "empty file, not a capture"
    kind = COMPRESSED_MAGICS.get(head[:2])
    if kind:
        return f"{kind}-compressed file; decompress it first"
    return f"not a pcap or pcapng file (starts with 0x{head[:4].hex()})"
