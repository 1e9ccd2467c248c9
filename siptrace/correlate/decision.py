"""The proxy's decisions: one JSON object per datagram (docs/decisions.md). No I/O.

``parse_decision(datagram)`` returns a Decision or raises DecodeError with a short
reason. Field names are fixed so that proxy scripts can be written against them;
unknown fields are ignored. Whatever is accepted can be written back as strict JSON
(RFC 8259: no NaN or Infinity, no lone surrogates) and holds about as many bytes as
its datagram: the AVPs are kept as one compact JSON text, not thousands of objects.
"""

import json
import math
from dataclasses import dataclass

from siptrace.direction import normalize_ip, parse_port
from siptrace.errors import DecodeError

MAX_DECISION_BYTES = 65536  # larger datagrams are refused (docs/decisions.md)
MAX_CSEQ = 2**31 - 1  # RFC 3261 section 8.1.1.5: the sequence number is below 2**31
MIN_INT, MAX_INT = -(2**63), 2**64 - 1  # flags and integer AVPs: what a proxy can hold
MAX_TS_S = 10**11  # epoch seconds past this are garbage, not a date
DECISION_OVERHEAD = 400  # bytes of a Decision besides its strings (objects, headers)
REQUEST = "request"
REPLY = "reply"
KINDS = (REQUEST, REPLY)


@dataclass(frozen=True, slots=True)
class Decision:
    """What the proxy decided for one message it received.

    ``branch`` is the top Via branch of the message as the proxy received it;
    ``status`` is None for requests; ``avps`` is the JSON text of an object mapping
    an AVP id (decimal string) to its values (strings) in the order the proxy listed
    them: ``avp_values`` reads it; ``src_addr`` is the normalized (ip, port) of
    ``src`` when given.
    """

    callid: str
    cseq_num: int
    cseq_method: str
    branch: str
    kind: str
    status: int | None
    flags: int
    trace: bool
    avps: str = "{}"
    src: str | None = None
    ts: float | None = None
    src_addr: tuple[str, int] | None = None

    @property
    def is_request(self) -> bool:
        return self.kind == REQUEST

    @property
    def cseq(self) -> str:
        return f"{self.cseq_num} {self.cseq_method}"

    def has_flag(self, bit: int) -> bool:
        return (self.flags >> bit) & 1 == 1

    @property
    def size(self) -> int:
        """About the memory it holds, in bytes (what byte bounds count)."""
        return (DECISION_OVERHEAD + len(self.callid) + len(self.branch) + len(self.avps)
                + len(self.src or ""))

    def avp_values(self, avp_id: int | str) -> tuple[str, ...]:
        key = str(avp_id)
        if key.isdigit() and f'"{key}":' not in self.avps:  # absent: no need to parse
            return ()
        return tuple(json.loads(self.avps).get(key, ()))

    def to_object(self) -> dict:
        """The decision as the JSON object of the protocol (unknown fields dropped)."""
        obj = {"callid": self.callid, "cseq": self.cseq, "branch": self.branch,
               "kind": self.kind, "flags": self.flags, "avps": json.loads(self.avps),
               "trace": self.trace}
        if self.status is not None:
            obj["status"] = self.status
        if self.src is not None:
            obj["src"] = self.src
        if self.ts is not None:
            obj["ts"] = self.ts
        return obj


def parse_decision(datagram: bytes) -> Decision:
    """Decode one datagram; DecodeError (short reason) when it is not a decision."""
    if len(datagram) > MAX_DECISION_BYTES:
        raise DecodeError("datagram over 64 KB")
    try:
        obj = json.loads(datagram, parse_constant=refuse_constant)
    except (ValueError, RecursionError):
        raise DecodeError("not JSON") from None
    return decision_from_object(obj)


def refuse_constant(name: str):
    """For ``json.loads(parse_constant=)``: NaN, Infinity and -Infinity are
    JavaScript's, not JSON's (RFC 8259 section 6)."""
    raise ValueError(name)


def decision_from_object(obj) -> Decision:
    """Validate a decoded JSON value; DecodeError naming the first bad field."""
    if not isinstance(obj, dict):
        raise DecodeError("not a JSON object")
    callid = _text(_required(obj, "callid", str), "callid")
    if not callid:
        raise DecodeError("callid: empty")
    cseq_num, cseq_method = _cseq(_required(obj, "cseq", str))
    branch = _text(_required(obj, "branch", str), "branch")
    kind = _required(obj, "kind", str)
    if kind not in KINDS:
        raise DecodeError("kind: not 'request' or 'reply'")
    status = None
    if kind == REPLY:
        status = _required(obj, "status", int)
        if not 100 <= status <= 699:
            raise DecodeError("status: not a SIP status code")
    flags = _required(obj, "flags", int)
    if not MIN_INT <= flags <= MAX_INT:
        raise DecodeError("flags: out of range")
    avps = _avps(_required(obj, "avps", dict))
    trace = _required(obj, "trace", bool)
    src = obj.get("src")
    src_addr = None
    if src is not None:
        if not isinstance(src, str):
            raise DecodeError("src: not a string")
        src_addr = _src_addr(_text(src, "src"))
    ts = obj.get("ts")
    if ts is not None:
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            raise DecodeError("ts: not a number")
        if not (0 <= ts < MAX_TS_S and math.isfinite(ts)):
            raise DecodeError("ts: out of range")
    return Decision(callid, cseq_num, cseq_method, branch, kind, status, flags, trace,
                    avps, src, ts, src_addr)


def _required(obj: dict, name: str, kind: type):
    try:
        value = obj[name]
    except KeyError:
        raise DecodeError(f"missing field {name}") from None
    # bool is an int subclass: true is not a flag mask, 1 is not true.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DecodeError(f"{name}: not {_TYPE_NAMES[kind]}")
    return value


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", dict: "an object"}


def _cseq(text: str) -> tuple[int, str]:
    parts = text.split()
    if len(parts) != 2:
        raise DecodeError("cseq: not 'NUMBER METHOD'")
    num, method = parts
    if not (num.isascii() and num.isdigit()) or len(num) > 10 or int(num) > MAX_CSEQ:
        raise DecodeError("cseq: bad number")
    if not method.isascii():
        raise DecodeError("cseq: bad method")
    return int(num), method


def _text(value: str, name: str) -> str:
    """A string that UTF-8 can carry: a lone surrogate (JSON's "\\ud800") is refused."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise DecodeError(f"{name}: a lone surrogate") from None
    return value


def _avps(raw: dict) -> str:
    """The AVPs checked, as compact JSON text (integer values as their decimal text)."""
    if not raw:
        return "{}"
    avps = {}
    for avp_id, values in raw.items():
        _text(avp_id, "avps")
        if not isinstance(values, list):
            raise DecodeError("avps: values must be lists")
        avps[avp_id] = [_avp_value(value) for value in values]
    return json.dumps(avps, ensure_ascii=False, separators=(",", ":"))


def _avp_value(value) -> str:
    if isinstance(value, str):
        return _text(value, "avps")
    if isinstance(value, int) and not isinstance(value, bool):
        if not MIN_INT <= value <= MAX_INT:
            raise DecodeError("avps: integer out of range")
        return str(value)  # integer AVPs: their decimal text
    raise DecodeError("avps: values must be strings")


def _src_addr(src: str) -> tuple[str, int]:
    """``proto:ip:port``; the port follows the last colon, so IPv6 may be bracketed or not."""
    proto, sep, rest = src.partition(":")
    host, sep2, port_text = rest.rpartition(":")
    ip = normalize_ip(host) if sep and sep2 else None
    port = parse_port(port_text)
    if ip is None or port is None:
        raise DecodeError("src: not 'proto:ip:port'")
    return ip, port
