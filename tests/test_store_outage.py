"""Database outages under load: rows spool, drain in order, none lost, none twice.

These tests stop and restart the shared PostgreSQL and MariaDB servers (marked
``outage``: never run them in parallel with other database tests). Servers are always
restarted in a ``finally`` block and waited for.
"""

import threading
import time

import pytest

from siptrace.store import BatchWriter, TraceStore
from storefixtures import (ScratchDatabase, can_control_servers, make_rows, start_server,
                           stop_server, _unavailable)

pytestmark = pytest.mark.outage
ROWS_PER_PHASE = 20_000
CHUNK = 50


class Feeder(threading.Thread):
    """Puts rows at a steady pace (about 20,000 rows/s) like a capture loop would.

    With ``hold_at``, it stops after that many rows (``held`` is set) until ``go``
    is set, so that a test can act between the two halves whatever the machine's speed.
    """

    def __init__(self, writer, rows, hold_at=None):
        super().__init__(daemon=True)
        self.writer, self.rows, self.hold_at = writer, rows, hold_at
        self.held, self.go = threading.Event(), threading.Event()

    def run(self):
        for i in range(0, len(self.rows), CHUNK):
            if i == self.hold_at:
                self.held.set()
                assert self.go.wait(120), "the test never let the feeder go on"
            self.writer.put(self.rows[i:i + CHUNK])
            time.sleep(CHUNK / 20_000)


def wait_for(condition, writer, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, writer.stats
        time.sleep(0.05)


def wait_drained(writer, timeout=60.0):
    wait_for(lambda: not (writer.stats["spool_depth"] or writer.stats["pending"]), writer,
             timeout)


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_server_stopped_under_load_and_writer_restarted_with_a_full_spool(dialect, tmp_path):
    if not can_control_servers():
        _unavailable("stopping the database servers needs root, pg_ctlcluster and mariadbd")
    db = ScratchDatabase(dialect, tmp_path)
    spool_dir = tmp_path / "spool"
    phases = [make_rows(ROWS_PER_PHASE, f"ph{k}") for k in range(3)]
    try:
        # Phase 0: the server goes away mid-run and comes back while the writer runs.
        writer = BatchWriter(TraceStore(db.url), max_rows=1000, max_delay=0.05,
                             spool=spool_dir, retry_max=0.5)
        feeder = Feeder(writer, phases[0], hold_at=ROWS_PER_PHASE // 2)
        feeder.start()
        assert feeder.held.wait(60)
        try:
            stop_server(dialect)
            feeder.go.set()  # the second half arrives while the server is down
            wait_for(lambda: writer.stats["errors"] >= 1, writer)
        finally:
            feeder.go.set()
            start_server(dialect)
        feeder.join()
        wait_drained(writer)
        assert writer.stats["errors"] >= 1 and writer.stats["spooled"] > 0
        # Phase 1: down again; siptrace stops with rows still spooled.
        try:
            stop_server(dialect)
            feeder = Feeder(writer, phases[1])
            feeder.start()
            feeder.join()
            writer.close()
            assert writer.stats["spool_depth"] > 0
        finally:
            start_server(dialect)
        # Phase 2: a new siptrace drains the spool first, then carries on.
        writer = BatchWriter(TraceStore(db.url), max_rows=1000, max_delay=0.05, spool=spool_dir)
        feeder = Feeder(writer, phases[2])
        feeder.start()
        feeder.join()
        writer.close()
        assert writer.stats["dropped"] == 0 and writer.stats["spool_depth"] == 0
        stored = [r[0] for r in db.query("SELECT callid FROM sip_trace ORDER BY id")]
        expected = [r.callid for phase in phases for r in phase]
        assert len(stored) == len(expected) and len(set(stored)) == len(stored)
        assert stored == expected  # and in order
    finally:
        start_server(dialect)
        db.drop()
