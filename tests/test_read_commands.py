"""The read commands as an operator runs them: calls, flow, export, show, index."""

import csv
import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest

from callfactory import ANSWERED, T0, call_rows, stored
from conftest import PCAPS
from siptrace.store import TraceStore
from siptrace.view.summary import summarize
from siptrace.view.tables import calls_table

BUSY = [("INVITE", ">", 0), (180, "<", 0.2), (486, "<", 4), ("ACK", ">", 4)]


def siptrace(*args, cwd, env=None, check=True):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SIPTRACE_")}
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "siptrace", *map(str, args)], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def calls_db(tmp_path):
    """A SQLite file with an answered call, a busy one, and two linked B2BUA legs."""
    db = tmp_path / "traces.db"
    rows = (call_rows("ok-1@pbx", ANSWERED)
            + call_rows("busy-1@pbx", BUSY, start=T0 + timedelta(minutes=5), callee="0049301234",
                        caller="bob", caller_name="Bob")
            + call_rows("a-leg@sbc", ANSWERED, start=T0 + timedelta(minutes=9),
                        a="udp:10.0.0.1:5060", b="udp:10.0.0.5:5060")
            + call_rows("b-leg@sbc", ANSWERED, start=T0 + timedelta(minutes=9, seconds=0.05),
                        a="udp:10.0.0.5:5060", b="udp:10.0.0.9:5060", headers=["X-CID: a-leg@sbc"]))
    with TraceStore(f"sqlite:///{db}") as store:
        store.insert(rows)
    return db


def test_every_command_reads_the_database_from_the_config_file_and_the_environment(tmp_path):
    db = tmp_path / "configured.db"
    config = tmp_path / "siptrace.ini"
    config.write_text(f"[siptrace]\ndb_url = sqlite:///{db}\ntable = strace\n")
    work = tmp_path / "work"
    work.mkdir()
    siptrace("replay", PCAPS / "kamailio-udp.pcap", "--config", config, "--no-progress", cwd=work)
    via_file = ["--config", config]
    via_env = {"SIPTRACE_CONFIG": str(config)}
    assert "5-28455@127.0.0.1" in siptrace("show", *via_file, cwd=work).stdout
    assert "5-28455@127.0.0.1" in siptrace("show", cwd=work, env=via_env).stdout
    env_url = {"SIPTRACE_DB_URL": f"sqlite:///{db}", "SIPTRACE_TABLE": "strace"}
    listed = siptrace("calls", "--json", cwd=work, env=env_url).stdout
    assert len(json.loads(listed)) == 5
    assert "INVITE" in siptrace("flow", "1-28455@127.0.0.1", *via_file, cwd=work).stdout
    siptrace("export", "1-28455@127.0.0.1", "-o", tmp_path / "c.pcap", *via_file, cwd=work)
    assert (tmp_path / "c.pcap").stat().st_size > 1000
    assert "indexed 0 rows" in siptrace("index", *via_file, cwd=work).stdout
    assert "deleted 0 rows" in siptrace("purge", "--older-than", "52w", cwd=work, env=via_env).stdout
    assert os.listdir(work) == []  # nothing read or created ./siptrace.db


@pytest.mark.parametrize("command", [["show"], ["calls"], ["flow", "x@h"],
                                     ["export", "x@h", "-o", "out.pcap"], ["index"], ["web"]])
def test_a_read_command_on_a_missing_file_says_so_and_creates_nothing(tmp_path, command):
    missing_db = tmp_path / "nothing.db"
    proc = siptrace(*command, "--db-url", f"sqlite:///{missing_db}", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "no such database file" in proc.stderr and "Traceback" not in proc.stderr
    assert not missing_db.exists() and not (tmp_path / "out.pcap").exists()


def test_calls_lists_newest_first_and_filters(calls_db):
    url = ["--db-url", f"sqlite:///{calls_db}"]
    out = siptrace("calls", *url, cwd=calls_db.parent).stdout.splitlines()
    assert out[0].split()[:4] == ["START", "(UTC)", "FROM", "TO"]
    assert [line.split()[-1] for line in out[1:]] == ["b-leg@sbc", "a-leg@sbc", "busy-1@pbx",
                                                      "ok-1@pbx"]
    busy = siptrace("calls", *url, "--status", "4xx", cwd=calls_db.parent).stdout
    assert "busy-1@pbx" in busy and "486 Busy Here" in busy and "busy" in busy.split()
    assert len(busy.splitlines()) == 2
    by_number = siptrace("calls", *url, "--to", "9301234", "--from", "bob", "--csv",
                         cwd=calls_db.parent).stdout
    (record,) = list(csv.DictReader(by_number.splitlines()))
    assert (record["callid"], record["state"], record["from_name"]) == ("busy-1@pbx", "busy", "Bob")
    none = siptrace("calls", *url, "--ip", "203.0.113.1", cwd=calls_db.parent)
    assert none.stdout == "" and "no calls match" in none.stderr
    bad = siptrace("calls", *url, "--status", "4x", cwd=calls_db.parent, check=False)
    assert bad.returncode == 1 and "status" in bad.stderr and "Traceback" not in bad.stderr


def test_the_calls_table_fits_80_columns_however_long_the_names():
    rows = call_rows("a-very-long-call-id-0123456789abcdef@host.example.com", ANSWERED,
                     caller="someone.with.a.long.name", caller_name="Display Name That Is Long",
                     callee="+4930123456789012345")
    table = calls_table(list(summarize(stored(rows)).values()), width=80)
    assert all(len(line) <= 80 for line in table.splitlines())
    assert "…" in table and "completed" in table and "200 OK" in table


def test_flow_shows_the_ladder_and_the_related_leg(calls_db, tmp_path):
    url = ["--db-url", f"sqlite:///{calls_db}"]
    alone = siptrace("flow", "b-leg@sbc", *url, cwd=tmp_path).stdout
    assert "10.0.0.1:5060" not in alone and "10.0.0.9:5060" in alone
    both = siptrace("flow", "b-leg@sbc", "--related", *url, cwd=tmp_path).stdout
    assert "a-leg@sbc" in both and "10.0.0.1:5060" in both and "10.0.0.9:5060" in both
    assert both.count("INVITE") >= 2 and "\x1b[" not in both  # no colour into a pipe
    by_glob = siptrace("flow", "busy-*", *url, "--full", cwd=tmp_path).stdout
    assert "486 Busy Here" in by_glob and "CSeq: 1 INVITE" in by_glob
    siptrace("flow", "a-leg@sbc", "--related", "--svg", tmp_path / "f.svg", "--html",
             tmp_path / "f.html", *url, cwd=tmp_path)
    assert (tmp_path / "f.svg").read_text().startswith("<svg")
    assert "b-leg@sbc" in (tmp_path / "f.html").read_text()


def test_flow_of_an_unknown_call_is_one_line(calls_db, tmp_path):
    proc = siptrace("flow", "nope@h", "--db-url", f"sqlite:///{calls_db}", cwd=tmp_path,
                    check=False)
    assert proc.returncode == 1 and "no messages for nope@h" in proc.stderr


def test_export_by_search_writes_the_matching_calls(calls_db, tmp_path):
    out = tmp_path / "failed.pcapng"
    proc = siptrace("export", "--status", "4xx", "-o", out, "--format", "pcapng",
                    "--db-url", f"sqlite:///{calls_db}", cwd=tmp_path)
    assert "exported 4 messages of 1 calls" in proc.stderr
    assert out.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"  # pcapng section header block


def test_show_as_json_with_the_messages(calls_db, tmp_path):
    out = siptrace("show", "--db-url", f"sqlite:///{calls_db}", "--callid", "busy-1@pbx",
                   "--json", "--full", cwd=tmp_path).stdout
    rows = json.loads(out)
    assert [r["status"] or r["method"] for r in rows] == ["ACK", "486", "180", "INVITE"]
    assert rows[-1]["msg"].startswith("INVITE sip:0049301234@example.net SIP/2.0\r\n")
