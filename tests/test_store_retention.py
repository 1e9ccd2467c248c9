"""Retention: durations, bounded purges on each backend, daily partitions on PostgreSQL."""

from datetime import datetime, timedelta

import pytest

from siptrace.errors import ConfigError
from siptrace.store import TraceStore, parse_duration, purge, purge_url
from siptrace.store.retention import _partitions, ensure_partitions
from storefixtures import ScratchDatabase, any_db, make_rows  # noqa: F401  (fixtures)

NOW = datetime(2024, 5, 10, 12, 0, 0)


@pytest.mark.parametrize("text,expected", [("7d", timedelta(days=7)), ("12h", timedelta(hours=12)),
                                           ("30m", timedelta(minutes=30)), ("1w", timedelta(weeks=1)),
                                           ("1d12h", timedelta(hours=36)), ("45s", timedelta(seconds=45))])
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "7x", "-1d", "0d", "7 d", "1.5h"])
def test_bad_durations(text):
    with pytest.raises(ConfigError):
        parse_duration(text)


def daily_rows(days: int, per_day: int):
    """per_day rows at noon of each of the ``days`` days before NOW."""
    rows = []
    for d in range(days):
        rows += make_rows(per_day, f"day{d}", start=NOW - timedelta(days=d, hours=1))
    return rows


def test_purge_in_bounded_batches(any_db):
    rows = daily_rows(10, 250)
    with TraceStore(any_db.url) as store:
        store.insert(rows)
        result = purge(store, timedelta(days=7), batch=100, now=NOW)
        assert result.rows_deleted == 3 * 250 and result.partitions_dropped == 0
        assert store.count() == 7 * 250
        assert purge(store, timedelta(days=7), batch=100, now=NOW).rows_deleted == 0
    left = {r[0].rsplit("-", 1)[0] for r in any_db.query("SELECT callid FROM sip_trace")}
    assert left == {f"day{d}" for d in range(7)}


def test_purge_url_is_what_the_cli_calls(tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    with TraceStore(url) as store:
        store.insert(make_rows(5, "old", start=datetime(2001, 1, 1)) + make_rows(5, "new", start=datetime.utcnow()))
    result = purge_url(url, "sip_trace", "30d")
    assert result.rows_deleted == 5


def test_partitioned_table_drops_whole_days(tmp_path):
    db = ScratchDatabase("postgresql", tmp_path)
    try:
        store = TraceStore(db.url, "ptrace", partitioned=True, partitions_ahead=2)
        store.connect()
        ensure_partitions(store, now=NOW - timedelta(days=9), days_ahead=12)
        old = make_rows(20, "ancient", start=datetime(2010, 1, 1))  # lands in the default partition
        store.insert(daily_rows(10, 100) + old)
        assert db.query("SELECT COUNT(*) FROM ptrace_default")[0][0] == 20
        assert db.query("SELECT COUNT(*) FROM ptrace_p20240508")[0][0] == 100
        result = purge(store, timedelta(days=7), batch=7, now=NOW)
        assert result.partitions_dropped >= 2 and result.rows_deleted == 20 + 100
        assert store.count() == 7 * 100
        assert not any(name.endswith("20240502") for name in _partitions(store))
        # A day created later takes its rows over from the default partition.
        store.insert(make_rows(3, "future", start=NOW + timedelta(days=30)))
        assert ensure_partitions(store, now=NOW + timedelta(days=30), days_ahead=0) >= 1
        assert db.query("SELECT COUNT(*) FROM ptrace_p20240609")[0][0] == 3
        assert db.query("SELECT COUNT(*) FROM ptrace_default")[0][0] == 0
        store.close()
    finally:
        db.drop()
