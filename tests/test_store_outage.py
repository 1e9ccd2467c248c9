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
    """Puts rows at a steady pace (about 20,000 rows/s) like a capture loop would."""

    def __init__(self, writer, rows):
        super().__init__(daemon=True)
        self.writer, self.rows = writer, rows

    def run(self):
        for i in range(0, len(self.rows), CHUNK):
            self.writer.put(self.rows[i:i + CHUNK])
            time.sleep(CHUNK / 20_000)


def wait_drained(writer, timeout=60.0):
    deadline = time.monotonic() + timeout
    while writer.stats["spool_depth"] or writer.stats["pending"]:
        assert time.monotonic() < deadline, writer.stats
        time.sleep(0.1)


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
        feeder = Feeder(writer, phases[0])
        feeder.start()
        time.sleep(0.3)
        try:
            stop_server(dialect)
            time.sleep(0.5)
        finally:
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
