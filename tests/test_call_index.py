"""The call index on each real backend: kept by the writer, searched without reading msg."""

from datetime import timedelta

import pytest

from callfactory import ANSWERED, T0, call_rows, stored, twelve_calls
from siptrace.errors import StorageError
from siptrace.store import TraceStore, purge
from siptrace.store.reader import TraceReader
from siptrace.view.search import parse_filter
from siptrace.view.summary import summarize
from storefixtures import any_db  # noqa: F401  (fixture)

FAILED = [("INVITE", ">", 0), (180, "<", 0.2), (486, "<", 4), ("ACK", ">", 4)]
CANCELLED = [("INVITE", ">", 0), (180, "<", 0.2), ("CANCEL", ">", 9),
             (200, "<", 9, {"cseq_method": "CANCEL"}), (487, "<", 9), ("ACK", ">", 9)]


def traffic():
    """Twelve calls: parties, numbers, outcomes, addresses and times all different."""
    rows = twelve_calls([ANSWERED, FAILED, CANCELLED])
    rows.sort(key=lambda r: r.date)
    return rows


FILTERS = [
    {}, {"to_user": "00493012305"}, {"to_user": "0049301230"}, {"from_user": "ALICE"},
    {"user": "alice"}, {"user": "user 1"}, {"from_user": "carol_"}, {"from_user": "dave%"},
    {"from_user": "l_x"}, {"callid": "call-1*"}, {"callid": "call-?@pbx0"}, {"callid": "call-3@pbx1"},
    {"ip": "10.0.1.1"}, {"ip": "192.0.2.9"}, {"ip": "10.0.9.9"}, {"method": "cancel"},
    {"method": "REGISTER"}, {"status": "4xx"}, {"status": "486"}, {"status": "2xx"},
    {"status": "487"}, {"since": "2024-05-01 13:00"}, {"until": "2024-05-01 12:20"},
    {"since": "2024-05-01 12:30", "until": "2024-05-01 13:10", "status": "2xx"},
    {"limit": 3}, {"to_user": "nobody"},
]


@pytest.fixture
def indexed(any_db):
    store = TraceStore(any_db.url)
    rows = traffic()
    for start in range(0, len(rows), 7):  # several batches: the fold goes on across them
        store.insert(rows[start:start + 7])
    store.close()
    return any_db


@pytest.mark.parametrize("options", FILTERS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "all")
def test_a_search_finds_exactly_the_calls_the_filter_matches(indexed, options):
    expected = summarize(stored(traffic())).values()
    filt = parse_filter(**options)
    wanted = sorted((c for c in expected if filt.matches(c)),
                    key=lambda c: (c.first_date, c.callid), reverse=True)[:filt.limit]
    with TraceReader(indexed.url) as reader:
        found = reader.search(filt)
    assert [c.callid for c in found] == [c.callid for c in wanted]
    assert [c.as_dict() for c in found] == [c.as_dict() for c in wanted]


def test_the_index_folds_on_across_restarts_and_cache_misses(any_db):
    rows = traffic()
    for row in rows:  # one row per batch, each through a new writer with an empty cache
        store = TraceStore(any_db.url)
        store.insert([row])
        store.close()
    with TraceReader(any_db.url) as reader:
        found = {c.callid: c.as_dict() for c in reader.search(parse_filter(limit=100))}
    assert found == {k: c.as_dict() for k, c in summarize(stored(rows)).items()}


def test_copies_stored_for_traced_users_count_once(any_db):
    rows = call_rows("c@h", ANSWERED)
    with_users = []
    for row in rows:
        with_users += [row, row._replace(traced_user="sip:alice@example.com"),
                       row._replace(traced_user="sip:bob@example.com")]
    with TraceStore(any_db.url) as store:
        store.insert(with_users)
    with TraceReader(any_db.url) as reader:
        (call,) = reader.search(parse_filter())
        assert call.msg_count == len(rows)
        assert len(reader.messages(["c@h"])) == len(rows)


def test_call_ids_differing_in_case_are_different_calls(any_db):
    with TraceStore(any_db.url) as store:
        store.insert(call_rows("abc@h", FAILED) + call_rows("ABC@h", ANSWERED, start=T0 + timedelta(1)))
    with TraceReader(any_db.url) as reader:
        calls = {c.callid: c.state for c in reader.search(parse_filter())}
        assert calls == {"abc@h": "busy", "ABC@h": "completed"}
        assert {m.callid for m in reader.messages(["abc@h"])} == {"abc@h"}


def test_related_legs_are_found_both_ways_and_through_session_id(any_db):
    sid = "ab30317f1a784dc48ff824d0d3715d86"
    rows = (call_rows("a-leg@sbc", ANSWERED, headers=[f"Session-ID: {sid}"])
            + call_rows("b-leg@sbc", ANSWERED, start=T0 + timedelta(seconds=1),
                        headers=["X-CID: a-leg@sbc"])
            + call_rows("c-leg@sbc", ANSWERED, start=T0 + timedelta(seconds=2),
                        headers=[f"Session-ID: {sid};remote=" + "1" * 32])
            + call_rows("other@sbc", ANSWERED, start=T0 + timedelta(seconds=3)))
    with TraceStore(any_db.url) as store:
        store.insert(rows)
    with TraceReader(any_db.url) as reader:
        assert reader.related("b-leg@sbc") == ["b-leg@sbc", "a-leg@sbc", "c-leg@sbc"]
        assert reader.related("a-leg@sbc") == ["a-leg@sbc", "b-leg@sbc", "c-leg@sbc"]
        assert reader.related("other@sbc") == ["other@sbc"]


def test_purge_removes_the_calls_of_the_rows_it_deletes(indexed):
    with TraceStore(indexed.url) as store:
        result = purge(store, timedelta(hours=1), now=T0 + timedelta(hours=2, minutes=30))
    assert result.rows_deleted > 0
    with TraceReader(indexed.url) as reader:
        left = reader.search(parse_filter(limit=100))
        assert left and all(c.last_date >= result.cutoff for c in left)
        assert {c.callid for c in left} == {m.callid for m in reader.rows(limit=1000)}


def test_a_broken_index_costs_the_index_not_the_rows(any_db):
    store = TraceStore(any_db.url)
    store.insert(call_rows("first@h", ANSWERED))
    conn = any_db.connect()
    try:
        conn.cursor().execute("DROP TABLE sip_trace_calls")
        if any_db.dialect == "sqlite":
            conn.commit()
    finally:
        conn.close()
    store.insert(call_rows("second@h", ANSWERED))
    store.close()
    assert store.stats["index_errors"] == 1 and "call index" in store.last_index_error
    assert any_db.query("SELECT COUNT(*) FROM sip_trace")[0][0] == 2 * len(ANSWERED)
    with TraceReader(any_db.url) as reader:
        with pytest.raises(StorageError, match="siptrace index"):
            reader.search(parse_filter())


def test_no_index_kept_when_switched_off(any_db):
    with TraceStore(any_db.url, call_index=False) as store:
        store.insert(call_rows("c@h", ANSWERED))
    with TraceReader(any_db.url) as reader:
        with pytest.raises(StorageError, match="no call index"):
            reader.search(parse_filter())
        assert reader.related("c@h") == ["c@h"]
        assert reader.call("c@h").state == "completed"
