"""Fidelity: the SIP messages siptrace decodes from a capture are the ones Wireshark finds.

For every capture in pcaps/ and in the third-party folder ../shared/real-pcaps/, the
messages from ``open_capture`` + ``SipExtractor`` equal those of Wireshark's dissector
(tests/oracle.py): same count, and per message the same transport, source and destination
address and port, Call-ID, CSeq, method or status and From tag. SIP quoted inside ICMP
errors is left out on Wireshark's side (it never was SIP on the wire). Each message must
also come from the frame Wireshark shows it in, dated by that frame (the date column). The
oracle's own set-up is checked against the counts the real-pcaps README lists.

HEP captures are the exception: Wireshark 4.0 has no HEP dissector, so they are checked
against what their builder encoded (the messages, addresses, transport and HEP's time).
"""

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
import functools
import os
from pathlib import Path
import sys
from typing import NamedTuple

import pytest

from conftest import PCAPS, REAL_PCAPS, missing, real_pcaps, require_tool
from oracle import OracleMessage, TSharkCrashException, wireshark_sip_census
from siptrace.capture.files import open_capture
from siptrace.errors import CaptureFormatError, TruncatedCapture
from siptrace.extract import SipExtractor, WireMessage

sys.path[:0] = [str(PCAPS)]
import crafted_tunnels  # noqa: E402
from make_fixtures import WITHOUT_WIRESHARK_DISSECTOR  # noqa: E402

CAPTURE_SUFFIXES = (".pcap", ".pcapng")
ORACLE_THREADS = min(4, os.cpu_count() or 2)  # tshark runs; PDML parsing holds the GIL
README_COUNT_COLUMN = "sip msgs"
MAX_REPORTED = 30  # differences listed per capture
# Several messages completed by one packet get distinct timestamps a microsecond apart
# (kept by the sip_trace date column); a packet with a thousand messages is not real.
MAX_SAME_PACKET_NUDGE_NS = 1_000_000


def project_captures() -> list[Path]:
    if not PCAPS.is_dir():
        return []
    return sorted(p for p in PCAPS.iterdir() if p.suffix in CAPTURE_SUFFIXES)


def capture_params() -> list:
    params = [pytest.param(p, id=f"pcaps/{p.name}") for p in project_captures()
              if p.name not in WITHOUT_WIRESHARK_DISSECTOR]  # see test_hep_captures_...
    params += [pytest.param(p, id=f"real-pcaps/{p.name}") for p in real_pcaps()]
    if not REAL_PCAPS.is_dir():
        params.append(pytest.param(None, id="real-pcaps-absent"))
    return params


class Compared(NamedTuple):
    """The fields compared for one SIP message."""

    transport: str
    src: str
    sport: int
    dst: str
    dport: int
    call_id: str
    cseq_num: int | None
    cseq_method: str
    method: str | None
    status: int | None
    from_tag: str


PAIRING_FIELDS = ("src", "sport", "dst", "dport", "call_id", "cseq_num", "cseq_method",
                  "method", "status")


class Seen(NamedTuple):
    """A compared message and where it was found: frame number (None: at end of file)."""

    frame: int | None
    ts_ns: int | None
    fields: Compared


def ours_compared(wire: WireMessage, frame: int | None) -> Seen:
    sip = wire.sip
    return Seen(frame, wire.ts_ns, Compared(
        wire.transport, wire.src, wire.sport, wire.dst, wire.dport, sip.call_id,
        sip.cseq_num, sip.cseq_method, sip.method, sip.status, sip.from_tag))


def oracle_compared(msg: OracleMessage) -> Seen:
    return Seen(msg.frame, msg.ts_ns, Compared(
        msg.transport, msg.src, msg.sport, msg.dst, msg.dport, msg.call_id,
        msg.cseq_num, msg.cseq_method, msg.method, msg.status, msg.from_tag))


@functools.lru_cache(maxsize=None)
def siptrace_messages(path: Path) -> tuple[Seen, ...]:
    """What siptrace stores from ``path``: every record fed, then finish()."""
    extractor = SipExtractor()
    seen = []
    try:
        for frame, (ts_ns, linktype, data) in enumerate(open_capture(path), 1):
            seen += [ours_compared(w, frame) for w in extractor.feed(ts_ns, linktype, data)]
    except TruncatedCapture:
        pass  # what came before is kept; tshark too reads up to the cut
    seen += [ours_compared(w, None) for w in extractor.finish()]
    return tuple(seen)


def describe(seen: Seen) -> str:
    f = seen.fields
    what = f.method if f.status is None else str(f.status)
    where = f"frame {seen.frame}" if seen.frame is not None else "end of file"
    return (f"[{where}] {f.transport} {f.src}:{f.sport} -> {f.dst}:{f.dport} {what} "
            f"CSeq {f.cseq_num} {f.cseq_method} Call-ID {f.call_id!r} from-tag {f.from_tag!r}")


def field_differences(ours: Compared, theirs: Compared) -> str:
    return ", ".join(f"{name}: siptrace {a!r} vs Wireshark {b!r}"
                     for name, a, b in zip(Compared._fields, ours, theirs) if a != b)


def difference_report(ours: list[Seen], theirs: list[Seen]) -> list[str]:
    """Readable differences. Messages pair by addresses, Call-ID, CSeq and method/status (a
    multiset: retransmissions pair one for one), then by frame; each pair's differing
    fields are listed, then what has no counterpart on the other side."""
    def pairing_key(seen: Seen):
        return tuple(getattr(seen.fields, name) for name in PAIRING_FIELDS)

    def differing(a: Seen, b: Seen) -> int:
        return sum(x != y for x, y in zip(a.fields, b.fields))

    waiting: dict[tuple, list[Seen]] = {}
    for seen in theirs:
        waiting.setdefault(pairing_key(seen), []).append(seen)
    pairs, unpaired_ours = [], []
    for seen in ours:
        candidates = waiting.get(pairing_key(seen))
        if not candidates:
            unpaired_ours.append(seen)
            continue
        match = min(candidates, key=lambda c: (differing(seen, c), c.frame != seen.frame))
        candidates.remove(match)
        pairs.append((seen, match))
    unpaired_theirs = sorted((s for group in waiting.values() for s in group),
                             key=lambda s: s.frame)
    missing_lines = []
    for seen in unpaired_theirs:
        same_frame = [o for o in unpaired_ours if o.frame == seen.frame]
        if same_frame:
            match = min(same_frame, key=lambda o: differing(o, seen))
            unpaired_ours.remove(match)
            pairs.append((match, seen))
        else:
            missing_lines.append(f"Wireshark {describe(seen)}\n    not found by siptrace")
    lines = [f"Wireshark {describe(t)}\n    differs: {field_differences(o.fields, t.fields)}"
             for o, t in sorted(pairs, key=lambda pair: pair[1].frame) if o.fields != t.fields]
    lines += missing_lines
    lines += [f"siptrace {describe(o)}\n    not found by Wireshark" for o in
              sorted(unpaired_ours, key=lambda o: (o.frame is None, o.frame or 0))]
    return lines


class OracleRuns(dict):
    """path -> Future of the capture's Wireshark census; started on first request."""

    def __init__(self, pool: ThreadPoolExecutor):
        super().__init__()
        self.pool = pool

    def __missing__(self, path: Path):
        future = self[path] = self.pool.submit(wireshark_sip_census, path)
        return future


@pytest.fixture(scope="module")
def oracle_runs(request):
    """Starts tshark at once on every capture the selected tests need, a few in parallel."""
    require_tool("tshark")
    with ThreadPoolExecutor(ORACLE_THREADS, thread_name_prefix="tshark") as pool:
        runs = OracleRuns(pool)
        for item in request.session.items:
            params = getattr(getattr(item, "callspec", None), "params", {})
            if item.module is request.module and params.get("path") is not None:
                runs[params["path"]]  # starts it
        yield runs


def readme_counts() -> dict[str, int]:
    """file -> SIP messages, from the table in real-pcaps/README.md."""
    counts, column = {}, None
    for line in (REAL_PCAPS / "README.md").read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if column is None:
            lowered = [cell.lower() for cell in cells]
            if README_COUNT_COLUMN in lowered:
                column = lowered.index(README_COUNT_COLUMN)
            continue
        if cells[column].isdigit():
            counts[cells[0]] = int(cells[column])
    return counts


@pytest.mark.parametrize("path", capture_params())
def test_messages_equal_wiresharks(path, oracle_runs):
    if path is None:
        missing(f"{REAL_PCAPS} is absent: the third-party captures are not beside the checkout")
    try:
        ours = siptrace_messages(path)
    except CaptureFormatError:
        # Not a capture at all: Wireshark must refuse it too.
        with pytest.raises(TSharkCrashException):
            oracle_runs[path].result()
        return  # not a capture, refused by both siptrace and tshark: they agree
    census = oracle_runs[path].result()
    theirs = [oracle_compared(m) for m in census.messages]
    if Counter(s.fields for s in ours) == Counter(s.fields for s in theirs):
        return
    report = difference_report(ours, theirs)
    shown = "\n".join(report[:MAX_REPORTED])
    more = f"\n... and {len(report) - MAX_REPORTED} more" if len(report) > MAX_REPORTED else ""
    pytest.fail(f"{path.name}: siptrace found {len(ours)} SIP messages, Wireshark "
                f"{len(theirs)} (+{census.icmp_quoted} quoted in ICMP errors, left out)\n"
                f"{shown}{more}", pytrace=False)


@pytest.mark.parametrize("path", capture_params())
def test_messages_dated_by_the_packet_that_completes_them(path, oracle_runs):
    """The date column: each message (paired with Wireshark's by its compared fields, in
    order) comes from the frame Wireshark shows it in, at that frame's capture time
    (plus the small nudge that orders several messages of one packet)."""
    if path is None:
        missing(f"{REAL_PCAPS} is absent: the third-party captures are not beside the checkout")
    try:
        ours = siptrace_messages(path)
    except CaptureFormatError:
        return  # not a capture: test_messages_equal_wiresharks checks tshark agrees
    waiting: dict[Compared, list[Seen]] = {}
    for seen in map(oracle_compared, oracle_runs[path].result().messages):
        waiting.setdefault(seen.fields, []).append(seen)
    wrong = []
    for seen in ours:
        if not waiting.get(seen.fields):
            continue  # a content difference: test_messages_equal_wiresharks reports it
        theirs = waiting[seen.fields].pop(0)
        if seen.frame != theirs.frame:
            wrong.append(f"siptrace {describe(seen)}\n    Wireshark shows it in frame "
                         f"{theirs.frame}")
        elif theirs.ts_ns is not None and not (
                0 <= seen.ts_ns - theirs.ts_ns < MAX_SAME_PACKET_NUDGE_NS):
            wrong.append(f"siptrace {describe(seen)}\n    dated {seen.ts_ns} ns, the frame's "
                         f"capture time is {theirs.ts_ns} ns")
    if wrong:
        pytest.fail(f"{path.name}:\n" + "\n".join(wrong[:MAX_REPORTED]), pytrace=False)


def test_project_has_fixture_captures():
    assert project_captures(), f"no *.pcap / *.pcapng in {PCAPS}"


def test_readme_lists_every_third_party_capture(real_pcaps_dir):
    listed = set(readme_counts())
    present = {p.name for p in real_pcaps()}
    assert listed == present, (f"in README only: {sorted(listed - present)}; "
                               f"in the folder only: {sorted(present - listed)}")


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in real_pcaps()])
def test_oracle_setup_reaches_readme_counts(path, oracle_runs):
    """Checks the oracle itself: Wireshark, set up as tests/oracle.py does, finds the
    README's count (which includes SIP quoted in ICMP errors)."""
    census = oracle_runs[path].result()
    assert census.dissected == readme_counts()[path.name], (
        f"{path.name}: tshark set up as tests/oracle.py finds {len(census.messages)} SIP "
        f"messages + {census.icmp_quoted} quoted in ICMP; the README says "
        f"{readme_counts()[path.name]}")
    assert not census.without_start_line, f"SIP layers with no start line in frames " \
                                          f"{census.without_start_line}"


def test_difference_report_names_the_field_and_the_missing_message():
    """The comparison itself: a wrong field and a missing message are both reported."""
    invite = Compared("udp", "10.0.0.1", 5060, "10.0.0.2", 5060, "abc@h", 1, "INVITE",
                      "INVITE", None, "t1")
    ringing = invite._replace(src="10.0.0.2", dst="10.0.0.1", method=None, status=180)
    theirs = [Seen(1, 10, invite), Seen(2, 20, ringing), Seen(3, 30, invite)]
    ours = [Seen(1, 10, invite._replace(from_tag="t2")), Seen(2, 20, ringing)]
    report = difference_report(ours, theirs)
    assert len(report) == 2, report
    assert "from_tag: siptrace 't2' vs Wireshark 't1'" in report[0]
    assert report[1].startswith("Wireshark [frame 3]") and "not found by siptrace" in report[1]
    wrong_call_id = [Seen(1, 10, invite), Seen(2, 20, ringing._replace(call_id="x"))]
    report = difference_report(wrong_call_id, theirs[:2])
    assert report == [f"Wireshark {describe(theirs[1])}\n    differs: "
                      "call_id: siptrace 'x' vs Wireshark 'abc@h'"]
    assert difference_report(theirs, theirs) == []


# -- HEP: no Wireshark dissector; the oracle is what the fixture's builder encoded ----------

HEP_FIXTURES = {"hep3.pcap": 29, "hep2.pcap": 30}  # file -> its builder's hour


def test_every_capture_without_a_wireshark_dissector_has_a_check_here():
    assert set(WITHOUT_WIRESHARK_DISSECTOR) == set(HEP_FIXTURES)


@pytest.mark.parametrize("name", sorted(HEP_FIXTURES))
def test_hep_captures_give_the_messages_encoded(name):
    """Each HEP packet gives the message it carries, byte for byte, with the addresses,
    ports and transport inside HEP and HEP's time (microseconds: HEP has no finer),
    from the frame that carries it; the RTCP report HEPv3 also carries gives nothing."""
    extractor = SipExtractor()
    found = []
    for frame, (ts_ns, linktype, data) in enumerate(open_capture(PCAPS / name), 1):
        found += [(frame, w) for w in extractor.feed(ts_ns, linktype, data)]
    found += [(None, w) for w in extractor.finish()]
    records = crafted_tunnels.hep_records(HEP_FIXTURES[name])
    assert len(found) == len(records) == 14
    for i, ((frame, wire), record) in enumerate(zip(found, records)):
        capture_ts, transport, family, src, sport, dst, dport, raw, msg_ts = record
        assert frame == i + 1
        assert (wire.transport, wire.family, wire.src, wire.sport, wire.dst, wire.dport) == (
            transport, family, src, sport, dst, dport)
        assert wire.sip.raw == raw
        assert wire.ts_ns == msg_ts // 1000 * 1000 != capture_ts
    assert extractor.fates()["hep"] == 14
