"""The siptrace command as an operator runs it: rows, summary, and one-line errors."""

import sqlite3
import struct
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from conftest import PCAPS, REAL_PCAPS, missing

from siptrace.capture.files import CaptureFile


def siptrace(*args, check=False):
    proc = subprocess.run([sys.executable, "-m", "siptrace", *map(str, args)],
                          capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def rows(db, where="1=1"):
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(f"SELECT * FROM sip_trace WHERE {where} ORDER BY id")]


def test_every_command_has_help_with_an_example():
    commands = ["replay", "show", "calls", "flow", "export", "index", "web", "purge", "run",
                "on", "off", "status", "deadletter"]
    top = siptrace("--help", check=True).stdout
    assert "Example" in top
    for command in commands:
        assert command in top, command
        assert "Example" in siptrace(command, "--help", check=True).stdout, command


def test_replay_stores_every_message_with_the_module_columns(tmp_path):
    db = tmp_path / "t.db"
    out = siptrace("replay", PCAPS / "kamailio-udp.pcap", "--db-url", f"sqlite:///{db}",
                   "--proxy", "127.0.0.1:5060", check=True).stdout
    stored = rows(db)
    assert len(stored) == 65
    assert "SIP messages:        65" in out and "rows stored:         65" in out

    invite = stored[0]
    assert (invite["method"], invite["status"], invite["direction"]) == ("INVITE", "", "in")
    assert invite["fromip"].startswith("udp:127.0.0.1:") and invite["toip"] == "udp:127.0.0.1:5060"
    assert invite["traced_user"] == ""
    assert invite["msg"].startswith("INVITE sip:") and invite["msg"].endswith("\r\n")
    trying = stored[1]  # Kamailio's own 100 Trying, sent back to the UAC
    assert (trying["method"], trying["status"], trying["direction"]) == ("INVITE", "100", "out")
    assert trying["callid"] == invite["callid"] and trying["fromtag"] == invite["fromtag"]
    assert {r["direction"] for r in stored} == {"in", "out"}


def test_date_is_the_capture_time_with_microseconds(tmp_path):
    db = tmp_path / "t.db"
    siptrace("replay", PCAPS / "kamailio-udp.pcap", "--db-url", f"sqlite:///{db}", check=True)
    first_ts_ns = next(iter(CaptureFile(PCAPS / "kamailio-udp.pcap")))[0]
    expected = datetime.fromtimestamp(first_ts_ns // 1000 / 1e6, timezone.utc).replace(tzinfo=None)
    assert rows(db)[0]["date"] == str(expected)
    assert "." in rows(db)[0]["date"]  # microseconds kept


def test_ipv6_addresses_are_bracketed(tmp_path):
    db = tmp_path / "t.db"
    siptrace("replay", PCAPS / "frag-ipv6.pcap", "--db-url", f"sqlite:///{db}", check=True)
    stored = rows(db)
    assert stored and all(r["fromip"].startswith("udp:[") and "]:" in r["fromip"] for r in stored)


def test_tcp_messages_are_tcp_in_fromip_and_toip(tmp_path):
    db = tmp_path / "t.db"
    siptrace("replay", PCAPS / "kamailio-tcp.pcap", "--db-url", f"sqlite:///{db}",
             "--proxy", "127.0.0.1:5060", check=True)
    stored = rows(db)
    assert len(stored) == 65
    assert all(r["fromip"].startswith("tcp:") and r["toip"].startswith("tcp:") for r in stored)


def test_the_table_parameter_names_the_table(tmp_path):
    db = tmp_path / "t.db"
    siptrace("replay", PCAPS / "vlan-dot1q.pcap", "--db-url", f"sqlite:///{db}",
             "--table", "strace", check=True)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM strace").fetchone()[0] == 7


def test_show_prints_the_newest_rows_under_a_header(tmp_path):
    db = tmp_path / "t.db"
    siptrace("replay", PCAPS / "kamailio-udp.pcap", "--db-url", f"sqlite:///{db}", check=True)
    out = siptrace("show", "--db-url", f"sqlite:///{db}", "--limit", "3", check=True).stdout
    header, *lines = out.splitlines()
    assert header.split() == ["DATE", "(UTC)", "DIR", "FROM", "TO", "MESSAGE", "CALL-ID"]
    newest = rows(db)[-3:][::-1]
    assert len(lines) == 3
    for line, row in zip(lines, newest):
        assert line.startswith(row["date"]) and row["callid"] in line


def test_a_file_that_is_not_a_capture_is_one_line_and_exit_1(tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("GET / HTTP/1.1\r\n\r\n")
    proc = siptrace("replay", bogus, "--db-url", f"sqlite:///{tmp_path / 't.db'}")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert str(bogus) in proc.stderr and "not a pcap or pcapng file" in proc.stderr


def test_a_damaged_header_is_one_line_and_exit_1(tmp_path):
    damaged = tmp_path / "damaged.pcap"
    data = bytearray((PCAPS / "kamailio-udp.pcap").read_bytes())
    data[4:6] = b"\x09\x00"  # major version 9
    damaged.write_bytes(bytes(data))
    proc = siptrace("replay", damaged, "--db-url", f"sqlite:///{tmp_path / 't.db'}")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert str(damaged) in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_a_missing_file_or_a_directory_is_a_clear_error(tmp_path, what):
    path = tmp_path / "nothing.pcap" if what == "missing" else tmp_path
    proc = siptrace("replay", path, "--db-url", f"sqlite:///{tmp_path / 't.db'}")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert ("no such file" if what == "missing" else "is a directory") in proc.stderr


def test_a_truncated_last_record_keeps_everything_before_it_and_warns(tmp_path):
    cut = tmp_path / "cut.pcap"
    data = (PCAPS / "kamailio-udp.pcap").read_bytes()
    cut.write_bytes(data[:-100])  # inside the last record
    db = tmp_path / "t.db"
    proc = siptrace("replay", cut, "--db-url", f"sqlite:///{db}")
    assert proc.returncode == 2  # not everything could be read
    assert "warning:" in proc.stderr and "truncated" in proc.stderr
    assert len(rows(db)) == 64


def test_summary_counts_packets_and_malformed_ones_once(tmp_path):
    records = list(CaptureFile(PCAPS / "kamailio-udp.pcap"))
    ts, linktype, frame = records[0]
    assert linktype == 1 and frame[14] == 0x45  # Ethernet, IPv4 without options
    cut = bytearray(frame)
    struct.pack_into("!H", cut, 16, len(frame) - 14 + 100)  # IPv4 total length past the end
    bad = bytearray(frame)
    bad[14] = 0x55  # IP version 5
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)]
    for ts_ns, _, data in [*records, (ts, 1, bytes(cut)), (ts, 1, bytes(bad))]:
        sec, ns = divmod(ts_ns, 1_000_000_000)
        out.append(struct.pack("<IIII", sec, ns // 1000, len(data), len(data)) + data)
    capture = tmp_path / "bad.pcap"
    capture.write_bytes(b"".join(out))
    db = tmp_path / "t.db"
    out = siptrace("replay", capture, "--db-url", f"sqlite:///{db}", check=True).stdout
    assert f"packets read:        {len(records) + 2}\n" in out
    assert f"  SIP over UDP:      {len(records)}\n  cut short:         1\n" \
           "  malformed:         1\n" in out
    assert f"SIP messages:        {len(records)}\n" in out
    assert "SIP malformed:       0 (rejected 0, stored with defects 0)" in out


def test_a_dead_database_is_one_line_without_the_password(tmp_path):
    proc = siptrace("replay", PCAPS / "kamailio-udp.pcap",
                    "--db-url", "postgresql://trace:s3cret@127.0.0.1:9/traces")
    assert proc.returncode == 1
    assert "s3cret" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().startswith("siptrace:") and "Traceback" not in proc.stderr


def test_a_bad_proxy_address_names_the_parameter(tmp_path):
    proc = siptrace("replay", PCAPS / "kamailio-udp.pcap", "--proxy", "not-an-ip:x",
                    "--db-url", f"sqlite:///{tmp_path / 't.db'}")
    assert proc.returncode == 1 and "proxy:" in proc.stderr


def test_real_captures_replay_with_a_summary(tmp_path):
    if not REAL_PCAPS.is_dir():
        missing(f"{REAL_PCAPS} is absent")
    capture = REAL_PCAPS / "irontec_sngrep__tests_aaa.pcap"
    out = siptrace("replay", capture, "--db-url", f"sqlite:///{tmp_path / 't.db'}",
                   check=True).stdout
    assert "SIP messages:        81" in out
    assert "  UDP, not SIP:      509\n" in out and "messages/s:" in out
