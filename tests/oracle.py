"""Wireshark's SIP dissector (tshark, through pyshark) as the independent decoding oracle.

One tshark run per capture, PDML output (pyshark's default; faster here than its EK mode),
display filter ``sip`` so only the frames carrying SIP are parsed in Python. Set-up:

- IPv4/IPv6 defragmentation and TCP reassembly, out-of-order segments included;
- the SIP heuristic dissectors on UDP and TCP, tried before the port-based dissectors, so
  SIP is found by content on any port (5090, 52380, 1032, 6060...) without per-file
  decode-as; the WebSocket heuristic on TCP, though SIP over
  WebSocket on 8080 is found already through the HTTP Upgrade (8080 is an HTTP port);
- SDP left on (it is what Wireshark shows; it only decodes message bodies).

Per SIP message: the innermost IP addresses (the last ip/ipv6 layer: IP-in-IP repeats
them), the transport port, the transport (``ws`` when the frame has a websocket layer),
Call-ID, CSeq, method or status, From tag. Frames with an icmp/icmpv6 layer carry SIP
quoted inside an ICMP error: never sent as SIP, they are counted apart, not returned.
"""

import asyncio
import functools
from dataclasses import dataclass, field
from pathlib import Path
import shutil

import pyshark
from pyshark.capture.capture import TSharkCrashException
from pyshark.tshark.tshark import get_tshark_version

TSHARK_PREFS = {
    "ip.defragment": "TRUE",
    "ipv6.defragment": "TRUE",
    "tcp.desegment_tcp_streams": "TRUE",
    "tcp.reassemble_out_of_order": "TRUE",
    # Heuristics before port dissectors: SIP on TCP 6060 is otherwise taken for X11
    # (6000-6063). Same results on every real-pcaps file either way.
    "tcp.try_heuristic_first": "TRUE",
    "udp.try_heuristic_first": "TRUE",
}
# Heuristic dissector short names, as `tshark --enable-heuristic` takes them
# (the tables are listed by `tshark -G heuristic-decodes`).
TSHARK_HEURISTICS = ("sip_udp", "sip_tcp", "websocket_tcp")
# The heuristics find SIP on every port used; GTP-U, VXLAN, Geneve, ERSPAN and SIP over
# SCTP 5060 are dissected by default. Only the Ethernet pseudowires of
# mpls-pw-ethernet.pcap need telling (Wireshark cannot know a PW label's payload):
# label 2001 with the control word, 2002 without (pcaps/make_fixtures.py counts the same).
TSHARK_DECODE_AS: dict[str, str] = {"mpls.label==2001": "pwethcw",
                                    "mpls.label==2002": "pwethnocw"}

TSHARK_EXIT_TIMEOUT = 60.0  # seconds tshark gets to exit after its last packet
TSHARK_TRUNCATED = "cut short in the middle of a packet"  # tshark's message, exit status 2
HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
ICMP_LAYERS = frozenset({"icmp", "icmpv6"})
IP_LAYERS = {"ip": 4, "ipv6": 6}
TRANSPORT_LAYERS = ("udp", "tcp", "sctp")
# Wireshark's text escapes (epan/strutil.c format_text) in a field's `show`.
SHOW_ESCAPES = {"\\": "\\", "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
                "t": "\t", "v": "\v", '"': '"', "'": "'"}


@dataclass(frozen=True, slots=True)
class OracleMessage:
    """One SIP message as Wireshark decoded it; ``frame`` is the frame that completes it."""

    frame: int
    ts_ns: int | None  # None for a pcapng Simple Packet Block (it has no timestamp)
    transport: str  # "udp", "tcp" or "ws"
    family: int  # 4 or 6
    src: str
    sport: int
    dst: str
    dport: int
    call_id: str
    cseq_num: int | None
    cseq_method: str
    method: str | None  # request method, None for a reply
    status: int | None  # reply status code, None for a request
    from_tag: str


@dataclass(slots=True)
class OracleCensus:
    """All Wireshark found in one capture: the SIP messages and what was left out."""

    messages: list[OracleMessage] = field(default_factory=list)
    icmp_quoted: int = 0  # SIP messages quoted inside ICMP errors (left out)
    without_start_line: list[int] = field(default_factory=list)  # frames: continuation data
    tshark_warning: str | None = None  # e.g. the capture ends inside a packet

    @property
    def dissected(self) -> int:
        """Every SIP message Wireshark shows, quoted ones included (README's sip_msgs)."""
        return len(self.messages) + self.icmp_quoted


class _FileCapture(pyshark.FileCapture):
    """pyshark's FileCapture, letting tshark exit by itself at end of file.

    pyshark kills tshark at end of file. When tshark has just exited, the kill's
    ``Popen.send_signal`` reaps it first, asyncio's child watcher then reports status
    255 and pyshark raises TSharkCrashException at random. Waiting for the exit closes
    that race and keeps tshark's real exit status.
    """

    tshark_warning: str | None = None

    def _get_tshark_version(self):
        return _tshark_version()  # pyshark asks `tshark -v` once per capture otherwise

    async def _cleanup_subprocess(self, process):
        if self._eof_reached and process.returncode is None:
            await asyncio.wait_for(process.wait(), TSHARK_EXIT_TIMEOUT)
        if process.returncode and TSHARK_TRUNCATED in (self._last_error_line or ""):
            self.tshark_warning = self._last_error_line  # it read every complete packet
            return
        await super()._cleanup_subprocess(process)


@functools.cache
def _tshark_version():
    return get_tshark_version()


def tshark_available() -> bool:
    return shutil.which("tshark") is not None


def wireshark_sip_messages(path: str | Path) -> list[OracleMessage]:
    """The SIP messages Wireshark's dissector finds in a capture, in frame order."""
    return wireshark_sip_census(path).messages


def wireshark_sip_census(path: str | Path) -> OracleCensus:
    """Runs tshark once over ``path``; raises TSharkCrashException when tshark fails.

    Safe to call from several threads at once: each call owns its event loop.
    """
    census = OracleCensus()
    loop = asyncio.new_event_loop()
    capture = _FileCapture(
        str(path), keep_packets=False, display_filter="sip", eventloop=loop,
        override_prefs=TSHARK_PREFS, decode_as=TSHARK_DECODE_AS or None,
        custom_parameters=[arg for name in TSHARK_HEURISTICS
                           for arg in ("--enable-heuristic", name)])
    try:
        for packet in capture:
            _add_packet(census, packet)
    finally:
        try:
            capture.close()
        finally:
            loop.close()
    census.tshark_warning = capture.tshark_warning
    return census


def _add_packet(census: OracleCensus, packet) -> None:
    names = [layer.layer_name for layer in packet.layers]
    sip_layers = packet.get_multiple_layers("sip")
    if ICMP_LAYERS.intersection(names):
        census.icmp_quoted += len(sip_layers)
        return
    ip_index = max(i for i, name in enumerate(names) if name in IP_LAYERS)
    ip_layer = packet.layers[ip_index]
    family = IP_LAYERS[ip_layer.layer_name]
    transport_layer = next(layer for layer in packet.layers[ip_index + 1:]
                           if layer.layer_name in TRANSPORT_LAYERS)
    transport = "ws" if "websocket" in names else transport_layer.layer_name
    frame = int(packet.number)
    epoch = packet.frame_info.get_field("frame.time_epoch")
    ts_ns = _epoch_ns(epoch) if epoch is not None else None  # pcapng SPB: no time
    for sip in sip_layers:
        method = _text(sip, "sip.Method")
        status = _number(sip, "sip.Status-Code")
        if method is None and status is None:
            census.without_start_line.append(frame)
            continue
        census.messages.append(OracleMessage(
            frame=frame, ts_ns=ts_ns, transport=transport, family=family,
            src=_show(ip_layer, "src"), sport=int(_show(transport_layer, "srcport")),
            dst=_show(ip_layer, "dst"), dport=int(_show(transport_layer, "dstport")),
            call_id=_header_value(sip, "sip.Call-ID") or "",
            cseq_num=_number(sip, "sip.CSeq.seq"),
            cseq_method=_text(sip, "sip.CSeq.method") or "",
            method=method,
            status=status,
            from_tag=_text(sip, "sip.from.tag") or "",
        ))


def _epoch_ns(epoch: str) -> int:
    """'1234567890.123456789' -> integer nanoseconds, without float rounding."""
    seconds, _, fraction = str(epoch).partition(".")
    return int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])


def _show(layer, short_name: str) -> str:
    """A protocol layer's own field (``ip.src``, ``udp.srcport``...) as Wireshark shows it."""
    return layer.get_field(f"{layer.layer_name}.{short_name}").main_field.show


def _number(layer, name: str) -> int | None:
    """An integer field's first occurrence in the layer (its decimal ``show``)."""
    found = layer.get_field(name)
    return None if found is None else int(found.main_field.show)


def _text(layer, name: str) -> str | None:
    """A text field's first occurrence in the layer, from its exact bytes (PDML ``value``)
    decoded as UTF-8 with U+FFFD for undecodable bytes, as Wireshark shows text."""
    found = layer.get_field(name)
    if found is None:
        return None
    first = found.main_field
    if first.raw_value:
        return bytes.fromhex(first.raw_value).decode("utf-8", "replace")
    return _unescape_show(first.show)


def _header_value(layer, name: str) -> str | None:
    """A whole-header field (its PDML ``value`` is the full ``Name: value CRLF`` line)."""
    found = layer.get_field(name)
    if found is None:
        return None
    first = found.main_field
    if not first.raw_value:
        return _unescape_show(first.show)
    line = bytes.fromhex(first.raw_value)
    _, colon, value = line.partition(b":")
    if not colon:
        return _unescape_show(first.show)
    return value.strip(b" \t\r\n").decode("utf-8", "replace")


def _unescape_show(show: str) -> str:
    """Undoes Wireshark's display escaping (\\xNN, \\r, \\\\ ...) in a ``show`` string."""
    if "\\" not in show:
        return show
    out, i = [], 0
    while i < len(show):
        char = show[i]
        if char == "\\" and i + 1 < len(show):
            nxt = show[i + 1]
            hex_digits = show[i + 2:i + 4]
            if nxt == "x" and len(hex_digits) == 2 and HEX_DIGITS.issuperset(hex_digits):
                out.append(chr(int(hex_digits, 16)))
                i += 4
                continue
            if nxt in SHOW_ESCAPES:
                out.append(SHOW_ESCAPES[nxt])
                i += 2
                continue
        out.append(char)
        i += 1
    return "".join(out)


__all__ = ["OracleCensus", "OracleMessage", "TSharkCrashException", "tshark_available",
           "wireshark_sip_census", "wireshark_sip_messages"]
