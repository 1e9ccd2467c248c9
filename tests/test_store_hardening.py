"""Storage that never stops for good (issue 10, items 1-5), on the real servers.

Rows the database refuses forever are set aside and the rest stored; a store process
that dies is started again; the spool of another siptrace is not taken; SQLite
reopens after "attempt to write a readonly database"; the spool drains as soon as the
server takes connections again; errors have a time and clear on success.

No shared server is stopped here: an outage is a TCP relay in front of the real
PostgreSQL that drops every connection, then forwards again.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import missing
from siptrace.errors import StorageError
from siptrace.store import BatchWriter, Spool, TraceStore
from siptrace.store.process import LiveWriter, ProcessWriter
from storefixtures import PG, ScratchDatabase, any_db, make_rows  # noqa: F401

SIPTRACE = [sys.executable, "-m", "siptrace"]


def until(condition, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def callids(db) -> list[str]:
    return [r[0] for r in db.query("SELECT callid FROM sip_trace ORDER BY id")]


def refuse_x(db) -> None:
    """A rule a DBA adds: no Call-ID starting with x."""
    if db.dialect == "sqlite":
        db.query("CREATE TRIGGER no_x BEFORE INSERT ON sip_trace WHEN NEW.callid LIKE 'x%' "
                 "BEGIN SELECT RAISE(ABORT, 'no x'); END")
    else:
        db.query("ALTER TABLE sip_trace ADD CONSTRAINT no_x CHECK (callid NOT LIKE 'x%%')")


def allow_x(db) -> None:
    db.query("DROP TRIGGER no_x" if db.dialect == "sqlite" else
             "ALTER TABLE sip_trace DROP CONSTRAINT no_x")


def test_refused_rows_are_set_aside_listed_replayed_and_the_rest_stored(any_db, tmp_path,
                                                                         caplog):
    with TraceStore(any_db.url):
        pass  # the table
    refuse_x(any_db)
    rows = make_rows(3000, "ok")
    bad = {7, 1500, 2999}
    for i in bad:
        rows[i] = rows[i]._replace(callid=f"x-{i}")
    spool = tmp_path / "spool"
    writer = LiveWriter(any_db.url, "sip_trace", spool_dir=str(spool))
    for i in range(0, len(rows), 250):
        writer.put(rows[i:i + 250])
    writer.put(make_rows(10, "later"))
    until(lambda: writer.stats["rows_written"] == 3007, f"stored: {writer.stats}")
    stats = writer.stats
    assert (stats["rejected"], stats["set_aside"], stats["spool_depth"]) == (3, 3, 0), stats
    assert "no_x" in stats["last_rejected"] or "no x" in stats["last_rejected"], stats
    writer.close()
    expected = [r.callid for i, r in enumerate(rows) if i not in bad]
    assert callids(any_db) == expected + [f"later-{i}" for i in range(10)]
    refusals = [r.message for r in caplog.records if "refused" in r.message]
    assert refusals and all("\n" not in m for m in refusals), refusals

    env = {**os.environ, "SIPTRACE_DB_URL": any_db.url, "SIPTRACE_SPOOL_DIR": str(spool)}
    listed = subprocess.run(SIPTRACE + ["deadletter", "list"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[4] for line in listed.stdout.splitlines()] == \
        ["x-7", "x-1500", "x-2999"], listed.stdout
    allow_x(any_db)
    replayed = subprocess.run(SIPTRACE + ["deadletter", "replay"], capture_output=True,
                              text=True, env=env, timeout=60)
    assert replayed.returncode == 0 and "rows stored: 3 of 3" in replayed.stdout, replayed
    assert sorted(callids(any_db)) == sorted(expected + [f"later-{i}" for i in range(10)]
                                             + ["x-7", "x-1500", "x-2999"])
    again = subprocess.run(SIPTRACE + ["deadletter", "list"], capture_output=True, text=True,
                           env=env, timeout=60)
    assert again.returncode == 0 and again.stdout == "", again


def test_replay_stores_the_rest_and_reports_refused_rows(any_db):
    with TraceStore(any_db.url):
        pass
    refuse_x(any_db)
    rows = make_rows(2000, "r")
    rows[100] = rows[100]._replace(callid="x-100")
    writer = ProcessWriter(any_db.url, "sip_trace")
    for i in range(0, len(rows), 500):
        writer.put(rows[i:i + 500])
    with pytest.raises(StorageError) as caught:
        writer.close(timeout=120)
    assert "refused 1 rows" in str(caught.value) and "x-100" in str(caught.value)
    assert callids(any_db) == [r.callid for i, r in enumerate(rows) if i != 100]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGBUS])
def test_a_store_process_that_dies_is_started_again(tmp_path, sig, caplog):
    url = f"sqlite:///{tmp_path / 't.db'}"
    writer = LiveWriter(url, "sip_trace", spool_dir=str(tmp_path / "spool"))
    first = make_rows(5000, "a")
    writer.put(first)
    until(lambda: writer.stats["rows_written"] == 5000, "first rows stored")
    os.kill(writer._worker.process.pid, sig)
    until(lambda: writer.stats.get("store_restarts") == 1, f"restarted: {writer.stats}")
    writer.put(make_rows(5000, "b"))
    until(lambda: writer.stats["rows_written"] == 10_000, f"stored after: {writer.stats}")
    writer.close()
    stats = writer.stats
    assert stats["lost"] == 0 and stats["dropped"] == 0, stats
    assert sig.name in stats["store_last_exit"], stats
    assert any("starting it again" in r.message for r in caplog.records)
    with TraceStore(url) as store:
        assert store.count() == 10_000


def test_rows_in_flight_when_the_store_process_dies_are_stored_or_counted(tmp_path):
    url = f"sqlite:///{tmp_path / 't.db'}"
    writer = LiveWriter(url, "sip_trace", spool_dir=str(tmp_path / "spool"))
    rows = make_rows(60_000, "f")
    for i in range(0, len(rows), 1000):
        writer.put(rows[i:i + 1000])
        if i == 20_000:
            os.kill(writer._worker.process.pid, signal.SIGKILL)
    until(lambda: writer.stats.get("store_restarts") == 1, "restarted")
    writer.close()
    stats = writer.stats
    with TraceStore(url) as store:
        count = store.count()
    assert count == stats["rows_written"], stats
    # every row is stored or counted; "lost" may count rows stored just before the kill
    assert count + stats["lost"] + stats["dropped"] >= len(rows), stats


def test_a_spool_in_use_by_a_running_siptrace_is_one_line_at_start(tmp_path):
    spool = Spool(tmp_path / "spool")  # held by this process, whose parent lives
    try:
        with pytest.raises(StorageError) as caught:
            LiveWriter(f"sqlite:///{tmp_path / 't.db'}", "sip_trace",
                       spool_dir=str(tmp_path / "spool"))
        assert "in use by another siptrace" in str(caught.value)
    finally:
        spool.close()


ORPHAN = """
import sys, time
from siptrace.store import Spool
spool = Spool(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
spool.close()
"""


def test_a_spool_held_by_an_orphaned_store_process_is_waited_for(tmp_path, caplog):
    """A holder whose parent is gone (as a store process still draining after its
    siptrace was killed) is waited for: the writer starts once it lets go."""
    spool = tmp_path / "spool"
    # A parent starts the holder, waits until it holds the lock, and exits.
    parent = ("import subprocess, sys\n"
              "p = subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2], '5'],"
              " stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)\n"
              "print(p.stdout.readline().strip(), flush=True)\n")
    out = subprocess.run([sys.executable, "-c", parent, ORPHAN, str(spool)],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "locked", out
    writer = LiveWriter(f"sqlite:///{tmp_path / 't.db'}", "sip_trace", spool_dir=str(spool))
    assert any("waiting" in r.message for r in caplog.records)
    writer.put(make_rows(10, "w"))
    until(lambda: writer.stats["rows_written"] == 10, f"stored: {writer.stats}")
    writer.close()


@pytest.fixture
def immutable(tmp_path):
    if os.geteuid() != 0 or not shutil.which("chattr"):
        missing("chattr +i needs root and e2fsprogs")
    made = []

    def make(path, on=True):
        subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)
        made.append(path)
    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)])


def test_sqlite_reopens_after_attempt_to_write_a_readonly_database(tmp_path, immutable):
    db = tmp_path / "t.db"
    url = f"sqlite:///{db}"
    with TraceStore(url) as store:
        store.insert(make_rows(1, "first"))
        immutable(f"{db}-wal")  # kept at close, and opened read-only from now on
    writer = BatchWriter(TraceStore(url), max_delay=0.05, spool=tmp_path / "spool")
    writer.put(make_rows(100, "ro"))
    until(lambda: writer.stats["spool_depth"] == 100, f"spooled: {writer.stats}")
    assert "readonly" in writer.stats["last_error"], writer.stats
    immutable(f"{db}-wal", on=False)  # the cause is gone
    until(lambda: writer.stats["rows_written"] == 100, f"drained: {writer.stats}", 60)
    writer.close()
    with TraceStore(url) as store:
        assert store.count() == 101


class Relay:
    """A TCP relay to the real PostgreSQL: ``down`` drops every connection at once
    (the server refusing them), ``up`` forwards. ``attempts`` holds the times of the
    connections it dropped."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.forwarding = False
        self.attempts: list[float] = []
        self.forwarded: list[float] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if not self.forwarding:
                self.attempts.append(time.monotonic())
                conn.close()
                continue
            self.forwarded.append(time.monotonic())
            server = socket.create_connection((PG["host"], PG["port"]))
            for a, b in ((conn, server), (server, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.closed = True
        self.listener.close()


def test_the_spool_drains_within_a_second_of_the_server_taking_connections(tmp_path):
    db = ScratchDatabase("postgresql", tmp_path)
    relay = Relay()
    try:
        relay.forwarding = True
        url = f"postgresql://postgres@127.0.0.1:{relay.port}/{db.name}?connect_timeout=2"
        spool = tmp_path / "spool"
        with TraceStore(url):
            pass  # the table
        relay.forwarding = False
        relay.forwarded.clear()
        writer = LiveWriter(url, "sip_trace", spool_dir=str(spool))
        writer.put(make_rows(2000, "s"))
        until(lambda: writer.stats["spool_depth"] == 2000, f"spooled: {writer.stats}")
        failing = writer.stats
        # Long enough for a backoff to have grown (0.25 s doubling: 6.4 s or more by now)
        time.sleep(8)
        seen = len(relay.attempts)
        until(lambda: len(relay.attempts) > seen, "a connection attempt", 30)
        relay.forwarding = True  # just after an attempt: the worst moment
        opened = time.monotonic()
        until(lambda: db.query("SELECT id FROM sip_trace LIMIT 1"), "drain started", 30)
        waited = time.monotonic() - opened
        print(f"spool started draining {waited:.2f} s after the server took connections "
              f"(connected after {relay.forwarded[0] - opened:.2f} s)")
        until(lambda: writer.stats["spool_depth"] == 0, "drained")
        stats = writer.stats
        assert waited < 3.0, stats  # within 1 s, with room for a loaded machine
        assert failing["last_error"] and failing.get("last_error_at"), failing  # a time
        assert not stats["last_error"] and not stats["last_error_at"], stats  # cleared
        assert "connect" in stats["last_incident"] and stats["last_incident_at"], stats
        writer.close()
        assert len(db.query("SELECT id FROM sip_trace")) == 2000
    finally:
        relay.close()
        db.drop()


def test_spool_depth_is_right_before_the_store_process_reports(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.append(make_rows(1234, "d"))
    spool.close()
    writer = LiveWriter("postgresql://postgres@127.0.0.1:1/none?connect_timeout=1",
                        "sip_trace", spool_dir=str(tmp_path / "spool"))
    try:
        assert writer.stats["spool_depth"] == 1234  # at once, before any report
    finally:
        writer.close(timeout=10)
