"""The durable spool: format, bounds, crash recovery, and no row stored twice."""

import subprocess
import sys
from datetime import datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from siptrace.rows import TraceRow
from siptrace.store import BatchWriter, Spool, TraceStore, inspect_spool
from siptrace.store.spool import decode_batch, encode_batch
from storefixtures import any_db, make_rows  # noqa: F401  (fixtures)

DEAD_PG = "postgresql://postgres:pw@127.0.0.1:1/nowhere"  # nothing listens on port 1

texts = st.text(max_size=40)
rows_strategy = st.lists(st.builds(
    TraceRow, st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1)).map(str),
    texts, texts, st.binary(max_size=300), texts, texts, texts, texts, texts, texts), max_size=20)


@given(rows_strategy)
@settings(max_examples=200)
def test_batch_encoding_round_trips(rows):
    assert decode_batch(encode_batch(rows)) == (rows, None)


def test_the_spool_format_needs_no_database_layer():
    code = ("import sys; from siptrace.store.spool import Spool, decode_batch, encode_batch; "
            "from siptrace.store import Marker; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('peewee', 'psycopg', 'pymysql', 'sqlite3') or m == 'siptrace.store.tracestore'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_fifo_across_reopen_and_ack(tmp_path):
    batches = [make_rows(10, f"b{k}") for k in range(5)]
    spool = Spool(tmp_path, segment_bytes=6000)
    for b in batches:
        assert spool.append(b)
    spool.close()
    assert inspect_spool(tmp_path)["rows"] == 50 and inspect_spool(tmp_path)["segments"] > 1
    spool = Spool(tmp_path, segment_bytes=6000)
    assert (spool.rows, spool.records) == (50, 5)
    for k in range(2):
        assert spool.peek().rows == batches[k]
        spool.ack()
    spool.close()
    spool = Spool(tmp_path)
    assert [spool.peek().rows] == [batches[2]] and spool.rows == 30
    spool.ack(), spool.peek(), spool.ack(), spool.peek(), spool.ack()
    assert spool.peek() is None and spool.rows == 0 and spool.bytes == 0
    spool.close()
    assert not list(tmp_path.glob("*.seg"))


def test_torn_tail_is_cut_and_later_appends_survive(tmp_path):
    spool = Spool(tmp_path)
    spool.append(make_rows(3, "a"))
    spool.append(make_rows(3, "b"))
    spool.close()
    seg = next(tmp_path.glob("*.seg"))
    seg.write_bytes(seg.read_bytes()[:-10])  # a crash in the middle of the second record
    spool = Spool(tmp_path)
    assert spool.records == 1
    spool.append(make_rows(2, "c"))
    assert spool.peek().rows == make_rows(3, "a")
    spool.ack()
    assert spool.peek().rows == make_rows(2, "c")
    spool.close()


def test_size_cap(tmp_path):
    spool = Spool(tmp_path, max_bytes=5000)
    assert spool.append(make_rows(5))
    assert not spool.append(make_rows(50))
    assert spool.rows == 5
    spool.close()


def test_rows_spooled_while_unreachable_drain_after_a_restart(any_db, tmp_path):
    rows = make_rows(5000, "r")
    first = BatchWriter(TraceStore(DEAD_PG), max_rows=1000, max_delay=0.05, spool=tmp_path / "spool")
    for i in range(0, 5000, 100):
        first.put(rows[i:i + 100])
    first.close()
    assert first.stats["spool_depth"] == 5000 and first.stats["rows_written"] == 0
    assert inspect_spool(tmp_path / "spool")["rows"] == 5000
    second = BatchWriter(TraceStore(any_db.url), max_delay=0.05, spool=tmp_path / "spool")
    second.put(make_rows(10, "after"))
    second.close()
    assert second.stats["rows_written"] == 5010 and second.stats["spool_depth"] == 0
    stored = [r[0] for r in any_db.query("SELECT callid FROM sip_trace ORDER BY id")]
    assert stored == [r.callid for r in rows] + [f"after-{i}" for i in range(10)]


def test_a_batch_whose_commit_landed_is_not_sent_twice(any_db, tmp_path):
    rows = make_rows(400, "d")
    with TraceStore(any_db.url) as store:
        marker = store.insert(rows[:100])  # committed, but the writer never heard back
    spool = Spool(tmp_path)
    spool.append(rows[:100], marker)  # spooled as in doubt, with the batch's marker
    spool.append(rows[100:200])
    spool.close()
    writer = BatchWriter(TraceStore(any_db.url), spool=tmp_path)
    writer.close()
    assert writer.counts["already_stored"] == 100 and writer.stats["rows_written"] == 100
    # A crash after COMMIT while draining: only the state file knows the in-flight batch.
    spool = Spool(tmp_path)
    spool.append(rows[200:300])
    with TraceStore(any_db.url) as store:
        store.insert(spool.peek().rows, before_commit=spool.set_inflight)
    spool.close()  # ...and the process died before ack()
    writer = BatchWriter(TraceStore(any_db.url), spool=tmp_path)
    writer.put(rows[300:])
    writer.close()
    assert writer.counts["already_stored"] == 100 and writer.stats["rows_written"] == 100
    stored = [r[0] for r in any_db.query("SELECT callid FROM sip_trace ORDER BY id")]
    assert stored == [r.callid for r in rows]
