"""Byte-exact writers for classic pcap and pcapng, so crafted fixtures are deterministic.

Written by hand rather than through scapy's writers: the fixtures need nanosecond and
big-endian pcap headers, several pcapng interfaces of different link types, a Simple
Packet Block and per-interface timestamp resolution, all with fixed bytes on every run.
"""

from pathlib import Path
import struct

# Classic pcap (draft-ietf-opsawg-pcap): magic for microsecond / nanosecond timestamps.
PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAP_VERSION = (2, 4)
SNAPLEN = 262144

# pcapng (draft-ietf-opsawg-pcapng) block types and options.
BLOCK_SHB = 0x0A0D0D0A
BLOCK_IDB = 0x00000001
BLOCK_SPB = 0x00000003
BLOCK_EPB = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
OPT_ENDOFOPT = 0
OPT_COMMENT = 1
OPT_SHB_USERAPPL = 4
OPT_IF_NAME = 2
OPT_IF_TSRESOL = 9


def write_if_changed(path: Path, data: bytes) -> bool:
    """Writes ``data`` unless the file already holds exactly it; True when written."""
    if path.exists() and path.read_bytes() == data:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return True


def pcap_bytes(linktype: int, records, *, nanosecond: bool = False,
               big_endian: bool = False, snaplen: int = SNAPLEN) -> bytes:
    """A whole classic pcap file; ``records`` are ``(ts_ns, frame_bytes)``."""
    order = ">" if big_endian else "<"
    magic = PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US
    out = [struct.pack(order + "IHHiIII", magic, *PCAP_VERSION, 0, 0, snaplen, linktype)]
    record_header = struct.Struct(order + "IIII")
    for ts_ns, frame in records:
        seconds, rest = divmod(ts_ns, 1_000_000_000)
        fraction = rest if nanosecond else rest // 1000
        captured = frame[:snaplen]
        out.append(record_header.pack(seconds, fraction, len(captured), len(frame)))
        out.append(captured)
    return b"".join(out)


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _options(options: list[tuple[int, bytes]]) -> bytes:
    if not options:
        return b""
    body = b"".join(struct.pack("<HH", code, len(value)) + _pad4(value)
                    for code, value in options)
    return body + struct.pack("<HH", OPT_ENDOFOPT, 0)


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


class PcapngBuilder:
    """Builds a little-endian pcapng section block by block."""

    def __init__(self, application: str = "siptrace pcaps/make_fixtures.py"):
        shb = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)
        self._blocks = [_block(BLOCK_SHB, shb + _options(
            [(OPT_SHB_USERAPPL, application.encode())]))]
        self._tsresol: list[int] = []

    def interface(self, linktype: int, name: str, *, tsresol_exp: int = 6,
                  snaplen: int = 0) -> int:
        """Adds an Interface Description Block; returns its interface id.

        ``tsresol_exp`` is the power of ten of the timestamp unit (6 = microseconds).
        """
        options = [(OPT_IF_NAME, name.encode())]
        if tsresol_exp != 6:
            options.append((OPT_IF_TSRESOL, bytes([tsresol_exp])))
        body = struct.pack("<HHI", linktype, 0, snaplen) + _options(options)
        self._blocks.append(_block(BLOCK_IDB, body))
        self._tsresol.append(tsresol_exp)
        return len(self._tsresol) - 1

    def enhanced_packet(self, interface_id: int, ts_ns: int, frame: bytes,
                        comment: str | None = None) -> None:
        """Adds an EPB; the timestamp is converted to that interface's unit."""
        units = ts_ns // 10 ** (9 - self._tsresol[interface_id])
        body = struct.pack("<IIIII", interface_id, units >> 32, units & 0xFFFFFFFF,
                           len(frame), len(frame)) + _pad4(frame)
        if comment:
            body += _options([(OPT_COMMENT, comment.encode())])
        self._blocks.append(_block(BLOCK_EPB, body))

    def simple_packet(self, frame: bytes) -> None:
        """Adds an SPB: interface 0, no timestamp (readers place it after the last one)."""
        self._blocks.append(_block(BLOCK_SPB, struct.pack("<I", len(frame)) + _pad4(frame)))

    def to_bytes(self) -> bytes:
        return b"".join(self._blocks)
