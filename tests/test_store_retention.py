"""Retention: durations, bounded purges on each backend."""

from datetime import datetime, timedelta, timezone

import pytest

from siptrace.errors import ConfigError
from siptrace.store import TraceStore, parse_duration, purge, purge_url
from storefixtures import any_db, make_rows  # noqa: F401  (fixtures)

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
        assert result.rows_deleted == 3 * 250 and result.cutoff == NOW - timedelta(days=7)
        assert store.count() == 7 * 250
        assert purge(store, timedelta(days=7), batch=100, now=NOW).rows_deleted == 0
    left = {r[0].rsplit("-", 1)[0] for r in any_db.query("SELECT callid FROM sip_trace")}
    assert left == {f"day{d}" for d in range(7)}


def test_purge_url_is_what_the_cli_calls(tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    utc_now = datetime.now(timezone.utc).replace(tzinfo=None)
    with TraceStore(url) as store:
        store.insert(make_rows(5, "old", start=datetime(2001, 1, 1)) + make_rows(5, "new", start=utc_now))
    result = purge_url(url, "sip_trace", "30d")
    assert result.rows_deleted == 5
    assert abs(result.cutoff - (utc_now - timedelta(days=30))) < timedelta(minutes=5)


def test_purge_url_counts_from_the_given_now(any_db):
    with TraceStore(any_db.url) as store:
        store.insert(daily_rows(4, 10))
    result = purge_url(any_db.url, "sip_trace", "2d", batch=3, now=NOW)
    assert result.cutoff == NOW - timedelta(days=2) and result.rows_deleted == 2 * 10
    left = {r[0].rsplit("-", 1)[0] for r in any_db.query("SELECT callid FROM sip_trace")}
    assert left == {"day0", "day1"}
