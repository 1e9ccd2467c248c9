"""What a replay says it did: every packet's fate, warnings, and exit statuses a script
can trust (0 read whole, 2 something could not be read, 1 no capture at all or an error,
130 Ctrl-C).

Damaged captures are made here from the real fixtures (cut, corrupted, joined); Ctrl-C
is a real SIGINT to a real `siptrace replay` process group, as a terminal sends it.
"""

import os
import re
import signal
import sqlite3
import struct
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import PCAPS, REAL_PCAPS, missing, real_pcaps
from kamailio_lab import SIPTRACE
from siptrace.capture.files import CaptureFile
from siptrace.direction import ProxyAddresses
from siptrace.extract import FATES, TCP_LOSSES
from siptrace.replay import Tracer, replay_files

OWN_CAPTURES = sorted(p for p in PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng"))
UDP = PCAPS / "kamailio-udp.pcap"  # 65 SIP messages, one a packet
TCP = PCAPS / "kamailio-tcp.pcap"  # 65 SIP messages in 155 segments


class Rows:
    """A row sink that keeps the rows."""

    def __init__(self):
        self.rows = []

    def put(self, rows):
        self.rows += rows


def replay(*paths, stop=None):
    sink = Rows()
    summary = replay_files(list(paths), tracer=Tracer(ProxyAddresses.parse([])), row_sink=sink,
                           stop=stop)
    return summary, sink.rows


def pcap(records, linktype: int = 1) -> bytes:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype)]
    for ts_ns, data in records:
        sec, ns = divmod(ts_ns, 1_000_000_000)
        out.append(struct.pack("<IIII", sec, ns // 1000, len(data), len(data)) + data)
    return b"".join(out)


def run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(SIPTRACE + [str(a) for a in args], capture_output=True, text=True,
                          timeout=300, **kw)


def count_rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM sip_trace").fetchone()[0]


def summary_value(out: str, label: str) -> int:
    return int(re.search(rf"^{re.escape(label)}:\s+(\d+)", out, re.M).group(1))


# -- item 9: every packet's fate ------------------------------------------------------

def assert_fates_add_up(summary) -> None:
    assert list(summary.fates) == list(FATES)
    assert sum(summary.fates.values()) == summary.packets
    assert set(summary.tcp_losses) <= set(TCP_LOSSES)


@pytest.mark.parametrize("path", OWN_CAPTURES, ids=lambda p: p.name)
def test_the_fates_add_up_to_the_packets_read(path):
    summary, _ = replay(path)
    assert summary.packets == sum(1 for _ in CaptureFile(path))
    assert_fates_add_up(summary)


def test_the_fates_add_up_on_the_third_party_captures(real_pcaps_dir):
    for path in real_pcaps():
        summary, _ = replay(path)
        assert summary.packets == sum(1 for _ in CaptureFile(path)), path.name
        assert sum(summary.fates.values()) == summary.packets, (path.name, summary.fates)


def test_the_fates_of_a_mixed_capture():
    """UDP SIP, TCP, non-SIP UDP, ICMP, ARP, IP fragments: each counted where it went."""
    if not REAL_PCAPS.is_dir():
        missing(f"{REAL_PCAPS} is absent")
    summary, rows = replay(REAL_PCAPS / "irontec_sngrep__tests_aaa.pcap",
                           REAL_PCAPS / "CESNET_ipfixprobe__tests_functional_inputs_sip.pcap",
                           PCAPS / "frag-ipv4.pcap")
    fates = summary.fates
    assert fates["sip_udp"] == 81 + 40 + 7 and fates["ip_fragments"] == 4
    assert fates["non_ip"] == 44 and fates["other_ip_protocol"] == 7
    assert fates["udp_not_sip"] == 509 + 3 and fates["tcp_segments"] == 57
    assert summary.tcp_losses == {"non_sip_streams": 2, "non_sip_bytes": 814}
    assert_fates_add_up(summary)
    assert len(rows) == summary.sip_messages


@settings(max_examples=80, deadline=None)
@given(st.sampled_from([UDP, TCP] + [PCAPS / name for name in (
           "frag-ipv4.pcap", "frag-ipv6.pcap", "gre-ip.pcap", "pppoe.pcap",
           "tcp-out-of-order.pcap")]),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=40),
       st.lists(st.integers(0, 2000), max_size=5))
def test_the_fates_add_up_on_damaged_packets(path, flips, cuts):
    """Packets with bytes overwritten and cut short: malformed, cut short, not IP...
    each still has exactly one fate."""
    records = [(ts, bytearray(data)) for ts, _, data in CaptureFile(path)]
    for i, (pos, value) in enumerate(flips):
        data = records[i % len(records)][1]
        data[pos % len(data)] = value
    for i, size in enumerate(cuts):
        ts, data = records[(i * 7) % len(records)]
        del data[size % max(1, len(data)):]
    damaged = Path(os.environ.get("TMPDIR", "/tmp")) / f"siptrace-fates-{os.getpid()}.pcap"
    damaged.write_bytes(pcap([(ts, bytes(d)) for ts, d in records]))
    try:
        summary, _ = replay(damaged)
    finally:
        damaged.unlink()
    assert summary.packets == len(records)
    assert_fates_add_up(summary)


def test_an_unknown_link_type_is_counted_said_and_exits_2(tmp_path):
    records = [(ts, data) for ts, _, data in CaptureFile(PCAPS / "vlan-dot1q.pcap")]
    capture = tmp_path / "usb.pcap"
    capture.write_bytes(pcap(records, linktype=189))  # LINKTYPE_USB_LINUX
    proc = run("replay", capture, "--db-url", f"sqlite:///{tmp_path / 't.db'}")
    assert proc.returncode == 2, proc.stderr
    assert f"warning: {capture}: 7 packets of link type 189, which siptrace does not decode, " \
           "skipped" in proc.stderr
    assert "  unknown link type: 7\n" in proc.stdout
    assert summary_value(proc.stdout, "packets read") == 7
    assert "Traceback" not in proc.stderr


def test_the_summary_lists_every_fate_and_what_tcp_lost(tmp_path):
    proc = run("replay", PCAPS / "udp-noise-6060.pcap", PCAPS / "tcp-out-of-order.pcap",
               "--db-url", f"sqlite:///{tmp_path / 't.db'}")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert summary_value(out, "packets read") == 14 + 18
    assert "  SIP over UDP:      7\n  TCP segments:      18\n  UDP, not SIP:      7\n" in out
    assert "TCP, not stored:     retransmissions dropped 1\n" in out


def test_a_huge_content_length_is_said_not_swallowed(tmp_path):
    """A 60 MB Content-Length in a TCP stream: the message is over the size bound,
    and the summary says so (the issue: it silently swallowed its stream)."""
    records, changed = [], False
    for ts, _, data in CaptureFile(TCP):
        if not changed and b"Content-Length:   129" in data:  # the same length: seq holds
            data, changed = data.replace(b"Content-Length:   129", b"l:60000000" + b" " * 11), True
        records.append((ts, data))
    capture = tmp_path / "huge.pcap"
    capture.write_bytes(pcap(records))
    proc = run("replay", capture, "--db-url", f"sqlite:///{tmp_path / 't.db'}")
    assert changed and proc.returncode == 0, proc.stderr
    assert re.search(r"^TCP, not stored: .*\boversize messages 1\b", proc.stdout, re.M), proc.stdout


# Counters of the TCP side that count what was done, not what was lost.
TCP_COUNTS = {"streams", "streams_midway", "streams_ended", "streams_idle", "out_of_order",
              "overlaps_trimmed", "gaps", "messages", "keepalives", "resyncs",
              "bad_content_length", "ws_streams", "ws_frames", "ws_control_frames",
              "ws_messages"}


def test_every_tcp_counter_is_a_count_or_a_loss_the_summary_shows():
    """A counter added to the TCP side is either listed here as a plain count or is
    a loss in TCP_LOSSES, which the summary and `status` show."""
    package = PCAPS.parent / "siptrace"
    sources = [package / "decode" / "tcp.py", *sorted((package / "sip").glob("*.py"))]
    keys = {key for path in sources
            for key in re.findall(r'stats\["([a-z_]+)"\]', path.read_text())}
    assert keys - TCP_COUNTS - set(TCP_LOSSES) == set()
    assert not TCP_COUNTS & set(TCP_LOSSES)


# -- item 10: exit statuses, files that cannot be read ----------------------------------

def damaged_files(tmp_path) -> dict[str, Path]:
    data = UDP.read_bytes()
    files = {"not a capture": b"GET / HTTP/1.1\r\n\r\n", "cut": data[:-100],
             "damaged record": data[:32] + b"\xff\xff\xff\x7f" + data[36:],  # 1st caplen
             "empty": b""}
    out = {}
    for name, content in files.items():
        path = tmp_path / (name.replace(" ", "-") + ".pcap")
        path.write_bytes(content)
        out[name] = path
    return out


@pytest.mark.parametrize("bad", ["not a capture", "cut", "damaged record", "empty"])
@pytest.mark.parametrize("bad_first", [False, True])
def test_a_bad_file_among_good_ones_is_reported_and_the_rest_stored(tmp_path, bad, bad_first):
    """Before: the good files' rows not yet handed over were lost (1,000 of 1,300, or
    none when the bad file came first), and the exit status did not say."""
    bad_path = damaged_files(tmp_path)[bad]
    files = [bad_path, UDP, TCP] if bad_first else [UDP, TCP, bad_path]
    db = tmp_path / "t.db"
    proc = run("replay", *files, "--db-url", f"sqlite:///{db}")
    assert proc.returncode == 2, proc.stderr
    good = 65 + 65
    read_of_bad = {"not a capture": 0, "empty": 0, "cut": 64, "damaged record": 0}[bad]
    assert count_rows(db) == summary_value(proc.stdout, "rows stored") == good + read_of_bad
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(bad_path) in warnings[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_many_rows_of_a_good_file_are_all_stored_before_a_bad_one(tmp_path):
    """More rows than one batch (ROWS_PER_PUT), as in the issue's 1,300 rows."""
    records = [(ts + i * 1000, data) for i in range(20) for ts, _, data in CaptureFile(UDP)]
    big = tmp_path / "big.pcap"
    big.write_bytes(pcap(records))
    db = tmp_path / "t.db"
    proc = run("replay", big, damaged_files(tmp_path)["not a capture"],
               "--db-url", f"sqlite:///{db}")
    assert proc.returncode == 2 and count_rows(db) == 1300


def test_exit_statuses(tmp_path):
    bad = damaged_files(tmp_path)
    db = f"sqlite:///{tmp_path / 't.db'}"
    assert run("replay", UDP, TCP, "--db-url", db).returncode == 0
    assert run("replay", bad["cut"], "--db-url", db).returncode == 2
    only_bad = run("replay", bad["not a capture"], bad["empty"], "--db-url", db)
    assert only_bad.returncode == 1 and only_bad.stderr.count("\n") == 1
    assert str(bad["not a capture"]) in only_bad.stderr and str(bad["empty"]) in only_bad.stderr


def test_the_exit_statuses_are_documented():
    help_text = run("replay", "--help", env={**os.environ, "COLUMNS": "200"}).stdout
    for status in ("0", "1", "2", "130"):
        assert re.search(rf"^\s*{status}\s+\w", help_text, re.M), status
    readme = (PCAPS.parent / "README.md").read_text()
    assert "Exit status, for scripts: **0**" in readme and "**130** interrupted" in readme


# -- Ctrl-C -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def long_capture(tmp_path_factory) -> Path:
    """kamailio-udp.pcap 1,500 times over: 97,500 messages, a few seconds of replay."""
    records = list(CaptureFile(UDP))
    step = records[-1][0] - records[0][0] + 1_000_000
    path = tmp_path_factory.mktemp("long") / "long.pcap"
    path.write_bytes(pcap((ts + i * step, data) for i in range(1500) for ts, _, data in records))
    return path


def test_stop_ends_the_replay_keeping_what_was_decoded(long_capture):
    from siptrace.replay import CHECK_EVERY

    asked = []
    summary, rows = replay(long_capture, UDP, stop=lambda: asked.append(1) or len(asked) > 1)
    assert summary.files == 1 and summary.packets == CHECK_EVERY
    assert len(rows) == summary.sip_messages == summary.traced_messages == CHECK_EVERY
    assert_fates_add_up(summary)


def interrupt(capture: Path, db: Path, when, times: int = 1):
    """Start a replay in its own process group, wait for ``when()``, send SIGINT to the
    group ``times`` times (as a terminal's Ctrl-C does), and wait for the end."""
    proc = subprocess.Popen(SIPTRACE + ["replay", str(capture), "--db-url", f"sqlite:///{db}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not when() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        for _ in range(times):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out, err


def stored_so_far(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as conn:
            return conn.execute("SELECT COUNT(*) FROM sip_trace").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.parametrize("moment", ["at once", "store started", "rows stored"])
def test_ctrl_c_stores_what_was_decoded_and_exits_130(tmp_path, long_capture, moment):
    db = tmp_path / "t.db"
    when = {"at once": lambda: True, "store started": db.exists,
            "rows stored": lambda: stored_so_far(db) > 0}[moment]
    status, out, err = interrupt(long_capture, db, when)
    assert "Traceback" not in err + out
    if status == -signal.SIGINT:  # before the interpreter ran any code: the shell says 130
        assert moment == "at once" and not out and not err
    else:
        assert status == 130, err
    if "rows stored:" in out:  # the replay had begun: its summary, and every row decoded
        assert "warning: interrupted (SIGINT)" in err
        assert count_rows(db) == summary_value(out, "rows stored") \
            == summary_value(out, "messages traced") == summary_value(out, "SIP messages")
        assert summary_value(out, "packets read") < 97_500
    if moment == "rows stored":
        assert 0 < count_rows(db) < 97_500


def test_ctrl_c_twice_stops_at_once_without_a_traceback(tmp_path, long_capture):
    db = tmp_path / "t.db"
    status, out, err = interrupt(long_capture, db, lambda: stored_so_far(db) > 0, times=2)
    assert status == 130 and "Traceback" not in err + out
    assert count_rows(db) < 97_500


# -- purge: ages beyond any date --------------------------------------------------------

@pytest.mark.parametrize("age", ["2000000d", "999999999w", "199999999999999d"])
def test_purge_with_an_age_beyond_any_date_is_one_line(tmp_path, age):
    proc = run("purge", "--older-than", age, "--db-url", f"sqlite:///{tmp_path / 't.db'}")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"siptrace: duration '{age}'") and "Traceback" not in proc.stderr
