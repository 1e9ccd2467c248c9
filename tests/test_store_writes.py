"""TraceStore inserts and the BatchWriter on each real backend; three writer processes at once."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from siptrace.errors import StorageError
from siptrace.store import BatchWriter, Spool, TraceStore
from siptrace.store.process import ProcessWriter
from storefixtures import any_db, make_rows, server_db  # noqa: F401  (fixtures)

TESTS = Path(__file__).resolve().parent


def callids(db, table="sip_trace"):
    quote = "`" if db.dialect == "mysql" else '"'
    return [r[0] for r in db.query(f"SELECT callid FROM {quote}{table}{quote} ORDER BY id")]


def test_insert_returns_a_marker_that_says_the_batch_landed(any_db):
    rows = make_rows(2500, "m")
    with TraceStore(any_db.url) as store:
        first = store.insert(rows[:1000])
        store.insert(rows[1000:])
        assert store.landed(first)
        assert not store.landed(first._replace(id=first.id + 10_000))
        assert not store.landed(first._replace(callid="someone-else"))
    assert callids(any_db) == [r.callid for r in rows]
    stored = any_db.query("SELECT date, msg, fromip, toip, fromtag, direction, method, status "
                          "FROM sip_trace WHERE callid = 'm-7'")[0]
    assert str(stored[0]).startswith("2024-05-01 12:00:00.000007")
    assert stored[1].encode() == rows[7].msg and stored[2:] == ("udp:10.0.0.1:5060", "udp:10.0.0.2:5060",
                                                                  "tag7", "in", "INVITE", "")


def test_batch_writer_stores_every_row_once_in_order(any_db, tmp_path):
    rows = make_rows(12_345, "w")
    writer = BatchWriter(TraceStore(any_db.url), max_rows=1000, max_delay=0.05, spool=tmp_path / "spool")
    for i in range(0, len(rows), 37):
        writer.put(rows[i:i + 37])
    assert writer.flush(timeout=60)
    writer.close()
    stats = writer.stats
    assert stats["rows_written"] == len(rows) and stats["dropped"] == 0 and stats["errors"] == 0
    assert stats["pending"] == 0 and stats["spool_depth"] == 0
    assert callids(any_db) == [r.callid for r in rows]


def test_a_batch_that_reaches_max_bytes_is_written_without_waiting_for_max_delay(tmp_path):
    """The byte limit ends a batch as the row limit does: the writer is woken at once."""
    url = f"sqlite:///{tmp_path / 'bytes.db'}"
    rows = make_rows(300, "b")
    writer = BatchWriter(TraceStore(url), max_rows=100_000, max_delay=3600,
                         max_bytes=sum(len(r.msg) for r in rows[:100]))
    try:
        writer.put(rows)
        deadline = time.monotonic() + 60
        while writer.stats["rows_written"] < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert writer.stats["rows_written"] >= 100, writer.stats
    finally:
        writer.close()


def test_process_writer_stores_every_row_once_in_order(any_db):
    rows = make_rows(2500, "pw")
    writer = ProcessWriter(any_db.url, "sip_trace")
    for i in range(0, len(rows), 300):
        writer.put(rows[i:i + 300])
    writer.close(timeout=60)
    assert writer.stats["rows_written"] == 2500
    assert callids(any_db) == [r.callid for r in rows]


@pytest.mark.parametrize("db_url, table, reason", [
    ("bogus://x", "sip_trace", "unknown scheme 'bogus'"),
    ("sqlite:///t.db", "a`b", "'a`b'"),  # the wording is config.py's table-name rule
    ("postgres://postgres:s3cret@127.0.0.1:1/none?connect_timeout=1", "sip_trace", "connect"),
])
def test_process_writer_reports_bad_settings_and_a_dead_database_as_one_line(
        db_url, table, reason, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    writer = ProcessWriter(db_url, table)
    with pytest.raises(StorageError) as caught:
        writer.put(make_rows(3, "x"))
        writer.close(timeout=60)
    message = str(caught.value)
    assert reason in message and "\n" not in message and "s3cret" not in message
    assert "Traceback" not in capfd.readouterr().err  # the child printed nothing either


def test_full_queue_overflows_to_the_spool_and_full_spool_drops(tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    rows = make_rows(3000, "o")
    spool = Spool(tmp_path / "spool", max_bytes=200_000)
    writer = BatchWriter(TraceStore(url), max_rows=100, max_delay=5, queue_rows=100, spool=spool)
    writer._cond.acquire()  # hold the writer thread out so the queue stays full
    try:
        for i in range(0, 3000, 50):
            writer.put(rows[i:i + 50])
    finally:
        writer._cond.release()
    writer.close()
    s = writer.stats
    assert s["spooled"] > 0 and s["dropped"] > 0
    assert s["rows_written"] + s["dropped"] == 3000 and s["spool_depth"] == 0
    with TraceStore(url) as store:
        assert store.count() == s["rows_written"]


WRITER_PROCESS = """
import sys
sys.path.insert(0, {tests!r})
from storefixtures import make_rows
from siptrace.store import BatchWriter, TraceStore
url, prefix, spool = sys.argv[1:4]
writer = BatchWriter(TraceStore(url, "shared"), max_rows=500, max_delay=0.05, spool=spool)
rows = make_rows(6000, prefix)
for i in range(0, len(rows), 25):
    writer.put(rows[i:i + 25])
writer.close()
s = writer.stats
assert s["rows_written"] == 6000 and s["dropped"] == 0, s
"""


def test_three_writer_processes_one_table(server_db, tmp_path):
    code = WRITER_PROCESS.format(tests=str(TESTS))
    procs = [subprocess.Popen([sys.executable, "-c", code, server_db.url, f"p{k}", str(tmp_path / f"s{k}")],
                              stderr=subprocess.PIPE, text=True) for k in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
    stored = callids(server_db, "shared")
    assert len(stored) == 18_000 and len(set(stored)) == 18_000
    for k in range(3):  # each process's rows in its own order
        mine = [c for c in stored if c.startswith(f"p{k}-")]
        assert mine == [f"p{k}-{i}" for i in range(6000)]
