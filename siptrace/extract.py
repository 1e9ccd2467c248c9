"""Capture records in, SIP messages with their wire addresses out. No I/O.

The one place where the decoding layers meet: link/IP/UDP/TCP decoding, the
content-based SIP check, TCP and WebSocket framing, and SIP parsing.
"""

from collections import Counter
from dataclasses import dataclass

from siptrace.decode.layers import PacketDecoder
from siptrace.decode.payloads import payload_kind
from siptrace.decode.packet import TCP, UDP, CarriedMessages
from siptrace.errors import DecodeError, SipParseError
from siptrace.sip.detect import TOKEN_TABLE
from siptrace.sip.message import SipMessage
from siptrace.sip.parser import parse_message
from siptrace.sip.streams import TcpMessageAssembler


# What becomes of a packet (SipExtractor.fates), with the summary's words for it.
FATES = {
    "sip_udp": "SIP over UDP",
    "tcp_segments": "TCP segments",  # their bytes: messages, or TCP_LOSSES
    "udp_not_sip": "UDP, not SIP",
    "sctp": "SCTP",  # their user messages: SIP or not (stats: non_sip_carried)
    "hep": "HEP carrying SIP",
    "ip_fragments": "IP fragments",  # held until their datagram is whole
    "unknown_linktype": "unknown link type",
    "non_ip": "not IP",
    "other_ip_protocol": "other IP protocols",
    "encrypted": "IPsec ESP",
    "cut_short": "cut short",
    "malformed": "malformed",
}
# Encapsulations seen and what was skipped in them (decoder and extractor counters; the
# summary lists the nonzero ones): packets, chunks or messages, as each label says.
ENCAPSULATIONS = {
    "gtpu": "GTP-U packets",
    "gtpu_signalling": "GTP-U signalling (skipped)",
    "vxlan": "VXLAN packets",
    "geneve": "Geneve packets",
    "erspan_i": "ERSPAN I packets",
    "erspan_ii": "ERSPAN II packets",
    "erspan_iii": "ERSPAN III packets",
    "mpls_pw": "MPLS pseudowire packets",
    "mpls_pw_control_word": "MPLS pseudowire packets with a control word",
    "sctp_data_chunks": "SCTP DATA chunks",
    "sctp_idata_chunks": "SCTP I-DATA chunks",
    "sctp_other_chunks": "other SCTP chunks (skipped)",
    "sctp_reassembled": "SCTP messages reassembled",
    "sctp_fragments_dropped": "SCTP fragments dropped (bounds)",
    "sctp_chunks_cut": "SCTP chunks cut short",
    "non_sip_carried": "SCTP/HEP messages not SIP",
    "hep_not_sip": "HEP not carrying SIP (skipped)",
    "hep_not_hep": "not HEP on the HEP port",
    "udp_tunnels_too_deep": "UDP tunnels nested too deep",
}
# What the TCP side did not turn into SIP messages, by reason (SipExtractor.tcp_losses;
# decode/tcp.py and sip/ count them): segments, bytes, messages, streams.
TCP_LOSSES = {
    "retransmitted": "retransmissions dropped",
    "held_overflow": "out-of-order segments dropped",
    "gap_bytes": "bytes never captured",
    "bytes_skipped": "bytes skipped",
    "overflow": "oversize messages",
    "buffer_cuts": "streams cut at the buffer bound",
    "buffer_cut_bytes": "bytes cut",
    "incomplete_messages": "incomplete messages",
    "non_sip_streams": "non-SIP streams",
    "non_sip_bytes": "non-SIP bytes",
    "ws_bad_frames": "bad WebSocket frames",
    "ws_overflow": "oversize WebSocket messages",
    "ws_non_sip": "non-SIP WebSocket messages",
    "streams_evicted": "streams evicted",
    "pending_dropped": "messages over the queue bound",
}


@dataclass(slots=True)
class WireMessage:
    """A SIP message as seen on the wire: capture time, addresses, parsed message."""

    ts_ns: int
    transport: str  # "udp", "tcp", "ws" or "sctp"
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
        self._udp_kinds: Counter = Counter()  # UDP payloads not SIP (non_sip), by kind
        # The per-packet counts are plain ints (cheaper than a Counter update).
        self._sip_messages = 0
        self.malformed_samples: list[str] = []

    @property
    def stats(self) -> Counter:
        """The counts (see the class docstring), the per-packet ones brought up to date."""
        stats = self._stats
        stats["sip_messages"] = self._sip_messages
        stats["non_sip"] = self._udp_kinds.total()
        return stats

    def fates(self) -> dict[str, int]:
        """What became of every packet, one fate each: the values add up to the
        packets decoded. A TCP segment's bytes go on to the framers (``tcp_losses``);
        an IP fragment is held until its datagram is whole, then that datagram is
        the fate of the packet that completed it. Derived from the counters at the
        time of asking: nothing is counted twice per packet."""
        p = self.decoder.stats
        non_sip = self._udp_kinds.total()
        return dict(zip(FATES, (
            p["udp"] - non_sip, p["tcp"], non_sip, p["sctp"], p["hep"],
            p["fragments"] - p["reassembled"] - p["fragments_malformed"],
            p["unknown_linktype"], p["non_ip"], p["other_proto"], p["esp"], p["truncated"],
            p["malformed"])))

    def tcp_losses(self) -> dict[str, int]:
        """The TCP side's losses by reason (TCP_LOSSES), the nonzero ones."""
        stats = self.streams.stats
        return {key: stats[key] for key in TCP_LOSSES if stats[key]}

    def not_sip(self) -> dict[str, dict[str, int]]:
        """What the UDP datagrams and TCP streams that are not SIP seem to carry
        (decode/payloads.py): {"udp": {kind: datagrams}, "tcp": {kind: directions}}."""
        return {"udp": dict(self._udp_kinds.most_common()),
                "tcp": dict(self.streams.not_sip_kinds.most_common())}

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
                return self._not_sip(pkt)
            try:
                message = parse_message(payload)
            except SipParseError:
                return self._not_sip(pkt)
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
        return self._carried(pkt)

    def feed_hep(self, ts_ns: int, data: bytes) -> list[WireMessage]:
        """One HEP packet received by a HEP listener (not captured): the SIP message it
        carries, with HEP's addresses, transport and time (decoder.decode_hep)."""
        found = self.decoder.decode_hep(ts_ns, data)
        return self._carried(found) if found is not None else []

    def _not_sip(self, pkt) -> list[WireMessage]:
        """A UDP datagram that is not SIP: what it carries when it is a tunnel the
        decoder opens (GTP-U, VXLAN, Geneve, HEP), else counted. Only non-SIP
        datagrams pay for the tunnel check."""
        inner = self.decoder.decapsulate(pkt)
        if inner is None:
            self._udp_kinds[payload_kind(pkt.payload, pkt.sport, pkt.dport)] += 1
            return []
        out = []
        for found in inner:
            if found.proto == UDP:
                message = self._datagram(found.payload)
                if message is not None:
                    out.append(WireMessage(found.ts_ns, "udp", found.family, found.src,
                                           found.sport, found.dst, found.dport, message))
            elif found.proto == TCP:
                out += self._wire_messages(found.src, found.sport, found.dst, found.dport,
                                           self.streams.feed(found))
                other = self.streams.take_other()
                if other:
                    out += self._other_streams(other)
            else:
                out += self._carried(found)
        return out

    def _datagram(self, payload: bytes) -> SipMessage | None:
        """A UDP payload inside a tunnel: its SIP message, or None (counted as not SIP)."""
        if payload and TOKEN_TABLE[payload[0]]:
            try:
                message = parse_message(payload)
            except SipParseError:
                message = None
            if message is not None:
                self._sip_messages += 1
                if message.defects:
                    self._defective(message)
                return message
        self._udp_kinds[payload_kind(payload)] += 1
        return None

    def _carried(self, pkt: CarriedMessages) -> list[WireMessage]:
        """Whole messages of SCTP or HEP, each with its own time, addresses, transport;
        those that are not SIP are counted (non_sip_carried)."""
        out = []
        for ts_ns, transport, family, src, sport, dst, dport, raw in pkt.messages:
            if not raw or not TOKEN_TABLE[raw[0]]:
                self._stats["non_sip_carried"] += 1
                continue
            try:
                message = parse_message(raw)
            except SipParseError:
                self._stats["non_sip_carried"] += 1
                continue
            out.append(self._found(message, ts_ns, transport, family, src, sport, dst, dport))
        return out

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
            out.append(self._found(message, ts_ns, transport, family, src, sport, dst, dport))
        return out

    def _found(self, message: SipMessage, *where) -> WireMessage:
        """A SIP message found (counted, its defects too) at ``where``: ts_ns, transport,
        family, src, sport, dst, dport."""
        self._sip_messages += 1
        if message.defects:
            self._defective(message)
        return WireMessage(*where, message)

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
