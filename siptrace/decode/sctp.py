"""SCTP (RFC 9260) as a carrier of SIP (RFC 4168): user messages out of DATA and I-DATA
chunks, fragmented ones reassembled. No I/O.

Every chunk of a packet is walked; DATA (RFC 9260 section 3.3.1) and I-DATA (RFC 8260
section 2.1) give user data, every other chunk type is skipped and counted. A user
message in one chunk (B and E flags both set) is handed on as it is; the fragments of
a longer one are held per association direction and stream (DATA: consecutive TSNs from
the B fragment to the E fragment; I-DATA: one message id, fragment sequence numbers
from 0) until the message is whole. Held fragments are bounded in bytes and in sets;
the oldest set is dropped first, and counted. The checksum is not verified (Wireshark
does not by default either); user messages are handed on whatever their port or
payload protocol identifier: the SIP check is by content, as for UDP.
"""

from collections import Counter
from struct import Struct

from siptrace.errors import DecodeError

SCTP_COMMON_HEADER_LEN = 12  # ports, verification tag, checksum
CHUNK_DATA = 0
CHUNK_IDATA = 64  # RFC 8260
DATA_HEADER_LEN = 16  # type, flags, length, TSN, stream id, SSN, PPID
IDATA_HEADER_LEN = 20  # type, flags, length, TSN, stream id, reserved, MID, PPID/FSN
FLAG_BEGIN = 0x02  # B: first fragment of a user message
FLAG_END = 0x01  # E: last fragment
TSN_MODULUS = 1 << 32
MAX_CHUNKS_PER_PACKET = 1024  # a 64 KiB packet of empty chunks holds 4096; more is hostile

_COMMON = Struct("!HHI4x")  # source port, destination port, verification tag
_CHUNK = Struct("!BBH")  # type, flags, length
_DATA = Struct("!IH")  # TSN, stream id (SSN and PPID are not needed)
_IDATA = Struct("!IH2xII")  # TSN, stream id, message id, PPID (B set) or FSN


class _Pieces:
    __slots__ = ("first_ts", "pieces", "held")

    def __init__(self, first_ts: int):
        self.first_ts = first_ts
        self.pieces: dict[int, tuple[int, bytes]] = {}  # sequence number -> (flags, data)
        self.held = 0


class SctpReassembler:
    """Fragmented user messages, per (association direction, stream[, message id]).

    ``add`` returns the whole message when a fragment completes one, else None.
    Counts in ``stats``: sctp_fragments, sctp_reassembled, sctp_fragments_duplicate,
    sctp_fragments_dropped (fragments of sets evicted for the bounds or timed out),
    sctp_sets_evicted, sctp_sets_timed_out (incomplete ``timeout_ns`` after their first
    fragment, in capture time, or at the end of input).
    """

    def __init__(self, max_sets: int, max_bytes: int, stats: Counter,
                 timeout_ns: int = 30_000_000_000):
        self.max_sets = max_sets
        self.max_bytes = max_bytes
        self.timeout_ns = timeout_ns
        self.stats = stats
        self.sets: dict[tuple, _Pieces] = {}  # insertion order = age
        self.held = 0

    def expire(self, now_ns: int | None) -> None:
        """Drops the sets older than the timeout (all of them when now_ns is None)."""
        sets = self.sets
        while sets:
            key = next(iter(sets))
            entry = sets[key]
            if now_ns is not None and now_ns - entry.first_ts <= self.timeout_ns:
                return
            del sets[key]
            self.held -= entry.held
            self.stats["sctp_sets_timed_out"] += 1
            self.stats["sctp_fragments_dropped"] += len(entry.pieces)

    def add(self, ts_ns: int, key: tuple, seq: int, flags: int, data: bytes,
            modulus: int) -> bytes | None:
        stats = self.stats
        stats["sctp_fragments"] += 1
        if len(data) > self.max_bytes:
            stats["sctp_fragments_dropped"] += 1
            return None
        if self.sets:
            self.expire(ts_ns)
        entry = self.sets.get(key)
        if entry is None:
            entry = self.sets[key] = _Pieces(ts_ns)
        if seq in entry.pieces:
            stats["sctp_fragments_duplicate"] += 1
            return None
        entry.pieces[seq] = (flags, data)
        entry.held += len(data)
        self.held += len(data)
        whole = self._complete(entry, seq, modulus)
        if whole is None:
            self._bound(key)
            return None
        stats["sctp_reassembled"] += 1
        if not entry.pieces:
            del self.sets[key]
        return whole

    def _complete(self, entry: _Pieces, seq: int, modulus: int) -> bytes | None:
        """The message ``seq`` belongs to when all its fragments are in (removing them)."""
        pieces = entry.pieces
        first = seq
        for _ in range(len(pieces)):
            if pieces[first][0] & FLAG_BEGIN:
                break
            before = (first - 1) % modulus
            if before not in pieces or pieces[before][0] & FLAG_END:
                return None
            first = before
        else:
            return None
        last = seq
        for _ in range(len(pieces)):
            if pieces[last][0] & FLAG_END:
                break
            after = (last + 1) % modulus
            if after not in pieces or pieces[after][0] & FLAG_BEGIN:
                return None
            last = after
        else:
            return None
        parts, at = [], first
        while True:
            flags, data = pieces.pop(at)
            parts.append(data)
            if at == last:
                break
            at = (at + 1) % modulus
        size = sum(map(len, parts))
        entry.held -= size
        self.held -= size
        return b"".join(parts)

    def _bound(self, newest: tuple) -> None:
        """Evicts the oldest sets while over a bound (never the one just added to)."""
        sets, stats = self.sets, self.stats
        while (len(sets) > self.max_sets or self.held > self.max_bytes) and len(sets) > 1:
            key = next(iter(sets))
            if key == newest:
                sets[key] = sets.pop(key)  # to the young end
                continue
            entry = sets.pop(key)
            self.held -= entry.held
            stats["sctp_sets_evicted"] += 1
            stats["sctp_fragments_dropped"] += len(entry.pieces)
        if self.held > self.max_bytes:  # the newest set alone is over the bound
            entry = sets.pop(newest)
            self.held -= entry.held
            stats["sctp_sets_evicted"] += 1
            stats["sctp_fragments_dropped"] += len(entry.pieces)


def sctp(dec, data: bytes, off: int, end: int):
    """SCTP common header and chunks; the user messages the packet completes, as
    CarriedMessages (transport "sctp"), or None when it completes none."""
    sport, dport, vtag = _COMMON.unpack_from(data, off)
    stats = dec._stats
    reassembler = dec._sctp
    pos = off + SCTP_COMMON_HEADER_LEN
    if pos > end:
        raise DecodeError(f"SCTP header, {end - off} bytes")
    direction = (dec._src, sport, dec._dst, dport, vtag)
    messages = []
    chunks = 0
    while pos + 4 <= end:
        ctype, flags, length = _CHUNK.unpack_from(data, pos)
        chunks += 1
        if length < 4 or chunks > MAX_CHUNKS_PER_PACKET:
            stats["sctp_chunks_malformed"] += 1
            break
        stop = pos + length
        if stop > end:
            stats["sctp_chunks_cut"] += 1
            break
        if ctype == CHUNK_DATA and length >= DATA_HEADER_LEN:
            stats["sctp_data_chunks"] += 1
            tsn, stream = _DATA.unpack_from(data, pos + 4)
            user = data[pos + DATA_HEADER_LEN:stop]
            if flags & (FLAG_BEGIN | FLAG_END) == FLAG_BEGIN | FLAG_END:
                messages.append(user)
            else:
                whole = reassembler.add(dec._ts, direction + (stream,), tsn, flags, user,
                                        TSN_MODULUS)
                if whole is not None:
                    messages.append(whole)
        elif ctype == CHUNK_IDATA and length >= IDATA_HEADER_LEN:
            stats["sctp_idata_chunks"] += 1
            _, stream, mid, ppid_fsn = _IDATA.unpack_from(data, pos + 4)
            user = data[pos + IDATA_HEADER_LEN:stop]
            if flags & (FLAG_BEGIN | FLAG_END) == FLAG_BEGIN | FLAG_END:
                messages.append(user)
            else:
                fsn = 0 if flags & FLAG_BEGIN else ppid_fsn
                # unordered (U) and ordered messages number their ids apart
                whole = reassembler.add(dec._ts, direction + (stream, flags & 0x04, mid), fsn,
                                        flags, user, TSN_MODULUS)
                if whole is not None:
                    messages.append(whole)
        else:
            stats["sctp_other_chunks"] += 1
        pos = stop + (-length & 3)  # chunks are padded to 4 bytes
    stats["sctp"] += 1
    if not messages:
        return None
    return dec._carried("sctp", sport, dport, messages)
