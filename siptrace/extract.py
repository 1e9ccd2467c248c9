"""Capture records in, SIP messages with their wire addresses out. No I/O.

The one place where the decoding layers meet: link/IP/UDP/TCP decoding, the
content-based SIP check, TCP and WebSocket framing, and SIP parsing.
"""

from collections import Counter
from dataclasses import dataclass

from siptrace.decode.layers import PacketDecoder
from siptrace.decode.packet import TCP, UDP
from siptrace.errors import DecodeError, SipParseError
from siptrace.sip.detect import TOKEN_TABLE
from siptrace.sip.message import SipMessage
from siptrace.sip.parser import parse_message
from siptrace.sip.streams import TcpMessageAssembler


@dataclass(slots=True)
class WireMessage:
    """A SIP message as seen on the wire: capture time, addresses, parsed message."""

    ts_ns: int
    transport: str  # "udp", "tcp" or "ws"
    family: int  # 4 or 6
    src: str
    sport: int
    dst: str
    dport: int
    sip: SipMessage


class SipExtractor:
    """Feeds capture records through the decoders; returns the SIP messages found.

    ``stats`` counts: sip_messages, non_sip (UDP payloads that are not SIP),
    malformed_sip (framed from a SIP stream, rejected), sip_defects (stored, with
    what the parser tolerated: no Call-ID, a bad CSeq...); the decoders count the
    rest, packets and malformed or truncated ones included (``packet_stats``,
    ``stream_stats``). ``malformed_samples`` keeps the last few problems, for the
    summary.
    """

    MALFORMED_SAMPLES = 5

    def __init__(self, decoder: PacketDecoder | None = None,
                 streams: TcpMessageAssembler | None = None):
        self.decoder = decoder or PacketDecoder()
        self.streams = streams or TcpMessageAssembler()
        self._stats: Counter = Counter()
        # The per-packet counts are plain ints (cheaper than a Counter update).
        self._sip_messages = self._non_sip = 0
        self.malformed_samples: list[str] = []

    @property
    def stats(self) -> Counter:
        """The counts (see the class docstring), the per-packet ones brought up to date."""
        stats = self._stats
        stats["sip_messages"] = self._sip_messages
        stats["non_sip"] = self._non_sip
        return stats

    @property
    def packet_stats(self) -> Counter:
        return self.decoder.stats

    @property
    def stream_stats(self) -> Counter:
        return self.streams.stats

    def feed(self, ts_ns: int, linktype: int, data: bytes) -> list[WireMessage]:
        """Decode one capture record; the SIP messages it completes, in order."""
        try:
            pkt = self.decoder.decode(ts_ns, linktype, data)
        except DecodeError:  # counted by the decoder: truncated or malformed
            return []
        if pkt is None:
            return []
        if pkt.proto == UDP:
            # SIP by content: only a SIP start line parses (looks_like_sip's test, done
            # once); most non-SIP payloads (RTP, STUN, TLS) fail on their first byte.
            payload = pkt.payload
            if not payload or not TOKEN_TABLE[payload[0]]:
                self._non_sip += 1
                return []
            try:
                message = parse_message(payload)
            except SipParseError:
                self._non_sip += 1
                return []
            self._sip_messages += 1
            if message.defects:
                self._defective(message)
            return [WireMessage(pkt.ts_ns, "udp", pkt.family, pkt.src, pkt.sport,
                                pkt.dst, pkt.dport, message)]
        if pkt.proto == TCP:
            streams = self.streams
            out = self._wire_messages(pkt.src, pkt.sport, pkt.dst, pkt.dport,
                                      streams.feed(pkt))
            other = streams.take_other()
            if other:
                out += self._other_streams(other)
            return out
        return []

    def finish(self) -> list[WireMessage]:
        """End of input: what the stream framers can still complete.

        Fragment sets still incomplete are counted as timed out.
        """
        self.decoder.expire()
        return self._other_streams(self.streams.finish())

    def _other_streams(self, framed) -> list[WireMessage]:
        out = []
        for ts_ns, transport, raw, (src, sport, dst, dport) in framed:
            out += self._wire_messages(src, sport, dst, dport, [(ts_ns, transport, raw)])
        return out

    def _wire_messages(self, src, sport, dst, dport, framed) -> list[WireMessage]:
        out = []
        family = 6 if ":" in src else 4
        for ts_ns, transport, raw in framed:
            message = self._parse(raw)
            if message is None:
                continue
            self._sip_messages += 1
            if message.defects:
                self._defective(message)
            out.append(WireMessage(ts_ns, transport, family, src, sport, dst, dport, message))
        return out

    def _parse(self, raw: bytes) -> SipMessage | None:
        try:
            return parse_message(raw)
        except SipParseError as exc:
            self._stats["malformed_sip"] += 1
            self._sample(str(exc))
            return None

    def _defective(self, message: SipMessage) -> None:
        self._stats["sip_defects"] += 1
        self._sample(f"{', '.join(message.defects)} (Call-ID {message.call_id!r}, stored)")

    def _sample(self, problem: str) -> None:
        samples = self.malformed_samples
        samples.append(problem)
        del samples[:-self.MALFORMED_SAMPLES]
