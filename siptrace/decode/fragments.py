"""IPv4 (RFC 791) and IPv6 (RFC 8200 section 4.5) fragment reassembly, bounded.

Fragments are kept per set (IPv4: source, destination, protocol, identification;
IPv6: source, destination, identification) until the set covers the whole
datagram, then the datagram's payload is handed back once. Overlaps are
resolved "first data wins": bytes already received are never replaced by a
later fragment (RFC 5722 would drop such IPv6 sets; we keep them, as Wireshark
shows them). A fragment that adds nothing is counted as a duplicate.

Incomplete sets time out ``timeout_ns`` after their first fragment, measured in
capture time, and are counted, never emitted. The number of sets and the bytes
held are bounded; the oldest set is evicted first, and counted.
"""

from collections import Counter

from siptrace.errors import DecodeError

MAX_DATAGRAM_PAYLOAD = 65535  # the 16-bit length fields bound any reassembled payload
# 64 KiB in fragments of the smallest IPv4 MTU (68, RFC 791) is about 1400 pieces;
# more than this many in one set is hostile, and would make merging slow.
MAX_PIECES_PER_SET = 2048


class _FragmentSet:
    __slots__ = ("first_ts", "proto", "pieces", "covered", "total", "held")

    def __init__(self, first_ts: int):
        self.first_ts = first_ts
        self.proto = -1  # known once the offset-0 fragment is in
        self.pieces: list[tuple[int, bytes]] = []  # (offset, bytes), arrival order
        self.covered: list[list[int]] = []  # merged [start, end) ranges, sorted
        self.total = -1  # payload length, known once the last fragment is in
        self.held = 0


class FragmentReassembler:
    """Holds fragment sets; ``add`` returns ``(protocol, payload)`` when one completes.

    Counts in ``stats``: fragments, reassembled, fragments_duplicate,
    fragments_timed_out and fragments_overflow (sets), fragments_malformed.
    """

    def __init__(self, timeout_ns: int, max_sets: int, max_bytes: int, stats: Counter):
        self.timeout_ns = timeout_ns
        self.max_sets = max_sets
        self.max_bytes = max_bytes
        self.stats = stats
        self.sets: dict[tuple, _FragmentSet] = {}  # insertion order = age
        self.held = 0

    def add(self, ts_ns: int, key: tuple, offset: int, more: int, payload: bytes,
            proto: int) -> tuple[int, bytes] | None:
        """One fragment: its payload's offset in the datagram, the "more" flag."""
        stats = self.stats
        stats["fragments"] += 1
        stop = offset + len(payload)
        if stop > MAX_DATAGRAM_PAYLOAD:
            stats["fragments_malformed"] += 1
            raise DecodeError(f"IP fragment ends at byte {stop}, past 64 KiB")
        sets = self.sets
        fragments = sets.get(key)
        if fragments is None:
            if len(sets) >= self.max_sets:
                self._evict_oldest()
            fragments = sets[key] = _FragmentSet(ts_ns)
        if not more:
            if fragments.total < 0 and not (fragments.covered
                                             and fragments.covered[-1][1] > stop):
                fragments.total = stop
            elif stop != fragments.total:
                stats["fragments_malformed"] += 1
                raise DecodeError(f"IP last fragment ends at byte {stop}, "
                                  f"other fragments of its set disagree")
        elif 0 <= fragments.total < stop:
            stats["fragments_malformed"] += 1
            raise DecodeError(f"IP fragment ends at byte {stop}, past the last fragment")
        if offset == 0:
            fragments.proto = proto
        if not _cover(fragments.covered, offset, stop):
            stats["fragments_duplicate"] += 1
        else:
            if len(fragments.pieces) >= MAX_PIECES_PER_SET:
                del sets[key]
                self.held -= fragments.held
                stats["fragments_malformed"] += 1
                raise DecodeError(f"more than {MAX_PIECES_PER_SET} fragments in one datagram")
            fragments.pieces.append((offset, payload))
            fragments.held += len(payload)
            self.held += len(payload)
            while self.held > self.max_bytes and sets:
                self._evict_oldest()
        covered = fragments.covered
        if (len(covered) == 1 and covered[0][0] == 0 and covered[0][1] == fragments.total
                and fragments.proto >= 0 and key in sets):
            del sets[key]
            self.held -= fragments.held
            stats["reassembled"] += 1
            return fragments.proto, _assemble(fragments)
        return None

    def expire(self, now_ns: int | None = None) -> int:
        """Drop sets older than the timeout (all of them when now_ns is None)."""
        sets = self.sets
        dropped = 0
        while sets:
            key = next(iter(sets))
            fragments = sets[key]
            if now_ns is not None and now_ns - fragments.first_ts <= self.timeout_ns:
                break
            del sets[key]
            self.held -= fragments.held
            dropped += 1
        if dropped:
            self.stats["fragments_timed_out"] += dropped
        return dropped

    def _evict_oldest(self) -> None:
        fragments = self.sets.pop(next(iter(self.sets)))
        self.held -= fragments.held
        self.stats["fragments_overflow"] += 1


def _cover(covered: list[list[int]], start: int, stop: int) -> bool:
    """Merge [start, stop) into the sorted ranges; False when nothing new was covered."""
    if stop <= start:
        return False
    merged_start, merged_stop = start, stop
    keep_before, keep_after = [], []
    new_bytes = stop - start
    for lo, hi in covered:
        if hi < start:
            keep_before.append([lo, hi])
        elif lo > stop:
            keep_after.append([lo, hi])
        else:  # overlaps or touches
            new_bytes -= max(0, min(hi, stop) - max(lo, start))
            merged_start = min(merged_start, lo)
            merged_stop = max(merged_stop, hi)
    if new_bytes <= 0:
        return False
    covered[:] = keep_before + [[merged_start, merged_stop]] + keep_after
    return True


def _assemble(fragments: _FragmentSet) -> bytes:
    """Lay the pieces out latest first, so the first data received wins."""
    buf = bytearray(fragments.total)
    total = fragments.total
    for offset, piece in reversed(fragments.pieces):
        buf[offset:offset + len(piece)] = piece[:total - offset]
    return bytes(buf)
