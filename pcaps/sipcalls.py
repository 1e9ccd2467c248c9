"""Realistic SIP dialogs as bytes, for the crafted fixtures (RFC 3261 basic call flow).

Everything derives from the Call-ID, so the same arguments always give the same bytes.
"""

from dataclasses import dataclass
import hashlib

CRLF = "\r\n"
MAGIC_COOKIE = "z9hG4bK"  # RFC 3261 section 8.1.1.7: branch parameters start with it
USER_AGENT = "siptrace-fixtures/1.0"
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS"
# RFC 3261 section 7.3.3: compact header names.
COMPACT = {"Via": "v", "From": "f", "To": "t", "Call-ID": "i", "Contact": "m",
           "Content-Length": "l", "Content-Type": "c"}


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int

    @property
    def family(self) -> int:
        return 6 if ":" in self.ip else 4

    @property
    def hostport(self) -> str:
        host = f"[{self.ip}]" if self.family == 6 else self.ip
        return f"{host}:{self.port}"


def token(call_id: str, what: str, length: int = 10) -> str:
    """A fixed pseudo-random token (tag, branch) derived from the Call-ID."""
    return hashlib.sha256(f"{call_id}/{what}".encode()).hexdigest()[:length]


def sdp(owner: str, ep: Endpoint, rtp_port: int, ice_candidates: int = 0) -> str:
    """An audio offer/answer; ICE candidates make it as large as real WebRTC offers."""
    ipv = "IP6" if ep.family == 6 else "IP4"
    lines = ["v=0", f"o={owner} 2890844526 2890844527 IN {ipv} {ep.ip}", "s=-",
             f"c=IN {ipv} {ep.ip}", "t=0 0", f"m=audio {rtp_port} RTP/AVP 0 8 101",
             "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
             "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=ptime:20"]
    for n in range(ice_candidates):
        port = 50000 + 2 * n
        lines.append(f"a=candidate:{842163049 + n} 1 udp {2122260223 - n} "
                     f"{ep.ip} {port} typ host generation 0 network-id {n % 4 + 1}")
    lines.append("a=sendrecv")
    return CRLF.join(lines) + CRLF


def _message(start_line: str, headers: list[tuple[str, str]], body: str = "",
             compact: bool = False) -> bytes:
    """Start line, headers, Content-Length and body; compact names when asked."""
    encoded = body.encode()
    all_headers = headers + [("Content-Length", str(len(encoded)))]
    text = start_line + CRLF + "".join(
        f"{COMPACT.get(name, name) if compact else name}: {value}{CRLF}"
        for name, value in all_headers)
    return text.encode() + CRLF.encode() + encoded


def basic_call(call_id: str, caller: Endpoint, callee: Endpoint, transport: str = "UDP",
               *, ice_candidates: int = 0, compact: bool = False
               ) -> list[tuple[bool, bytes]]:
    """INVITE/100/180/200/ACK/BYE/200 between two endpoints.

    Returns ``(sent_by_caller, raw)`` in wire order. The callee's address doubles as
    a proxy-less UAS; the Request-URI names it.
    """
    from_tag, to_tag = token(call_id, "from-tag"), token(call_id, "to-tag")
    a_uri, b_uri = f"sip:alice@{caller.hostport}", f"sip:bob@{callee.hostport}"
    from_hdr = f'"Alice" <sip:alice@example.com>;tag={from_tag}'
    to_plain = "<sip:bob@example.com>"
    to_tagged = f"{to_plain};tag={to_tag}"

    def via(method: str) -> str:
        branch = MAGIC_COOKIE + token(call_id, f"branch-{method}", 16)
        return f"SIP/2.0/{transport} {caller.hostport};branch={branch};rport"

    def request(method: str, cseq: int, to: str, body: str = "", extra=()) -> bytes:
        headers = [("Via", via(method)), ("Max-Forwards", "70"), ("From", from_hdr),
                   ("To", to), ("Call-ID", call_id), ("CSeq", f"{cseq} {method}"),
                   ("Contact", f"<{a_uri};transport={transport.lower()}>"),
                   ("User-Agent", USER_AGENT), *extra]
        return _message(f"{method} {b_uri} SIP/2.0", headers, body, compact)

    def reply(status: str, cseq: int, method: str, to: str, body: str = "",
              extra=()) -> bytes:
        headers = [("Via", via(method) + f";received={caller.ip}"), ("From", from_hdr),
                   ("To", to), ("Call-ID", call_id), ("CSeq", f"{cseq} {method}"), *extra]
        return _message(f"SIP/2.0 {status}", headers, body, compact)

    contact_b = ("Contact", f"<{b_uri};transport={transport.lower()}>")
    offer = sdp("alice", caller, 49170, ice_candidates)
    answer = sdp("bob", callee, 3456)
    sdp_type = ("Content-Type", "application/sdp")
    return [
        (True, request("INVITE", 1, to_plain, offer,
                       [("Allow", ALLOW), ("Subject", "fixture call"), sdp_type])),
        (False, reply("100 Trying", 1, "INVITE", to_plain)),
        (False, reply("180 Ringing", 1, "INVITE", to_tagged, extra=[contact_b])),
        (False, reply("200 OK", 1, "INVITE", to_tagged, answer,
                      [contact_b, ("Allow", ALLOW), sdp_type])),
        (True, request("ACK", 1, to_tagged)),
        (True, request("BYE", 2, to_tagged)),
        (False, reply("200 OK", 2, "BYE", to_tagged)),
    ]
