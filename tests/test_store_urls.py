"""db_url parsing, redaction, and passwords kept out of errors and stats."""

import pytest

from siptrace.errors import ConfigError, StorageError
from siptrace.store import BatchWriter, TraceStore, parse_db_url, redact_url
from siptrace.redact import scrub


@pytest.mark.parametrize("url,dialect,database,host,port", [
    ("sqlite:///siptrace.db", "sqlite", "siptrace.db", None, None),
    ("sqlite:////var/lib/siptrace/t.db", "sqlite", "/var/lib/siptrace/t.db", None, None),
    ("mysql://user:passwd@db.example/dbname", "mysql", "dbname", "db.example", 3306),
    ("mysql://user:passwd@10.0.0.5:3307/traces", "mysql", "traces", "10.0.0.5", 3307),
    ("postgres://u:p@127.0.0.1/t", "postgresql", "t", "127.0.0.1", 5432),
    ("postgresql://u@[::1]:6543/t", "postgresql", "t", "::1", 6543),
])
def test_accepted_forms(url, dialect, database, host, port):
    parsed = parse_db_url(url)
    assert (parsed.dialect, parsed.database, parsed.host, parsed.port) == (dialect, database, host, port)


def test_percent_encoded_password_is_decoded_and_never_in_repr():
    parsed = parse_db_url("mysql://bob:p%40ss%2Fw@h/db")
    assert parsed.password == "p@ss/w" and parsed.user == "bob"
    assert "p@ss" not in repr(parsed) and "p%40ss" not in parsed.redacted


@pytest.mark.parametrize("url", ["oracle://u:pw@h/db", "mysql://u:pw@h/", "sqlite://host/x.db",
                                 "mysql://u:pw@h:99999/db", "postgresql:///db"])
def test_bad_urls_are_config_errors_without_the_password(url):
    with pytest.raises(ConfigError) as err:
        parse_db_url(url)
    assert ":pw@" not in str(err.value)


def test_redact_and_scrub():
    assert redact_url("mysql://user:passwd@host/dbname") == "mysql://user:***@host/dbname"
    assert redact_url("sqlite:///x.db") == "sqlite:///x.db"
    assert scrub("dsn host=h password=hunter2 user=u") == "dsn host=h password=*** user=u"
    assert "hunter2" not in scrub("failed: hunter2 rejected", "hunter2")


@pytest.mark.parametrize("url", ["postgresql://u:s3cr3t-pw@127.0.0.1:1/db",
                                 "mysql://u:s3cr3t-pw@127.0.0.1:1/db"])
def test_unreachable_server_error_and_stats_hide_the_password(url, tmp_path):
    store = TraceStore(url)
    with pytest.raises(StorageError) as err:
        store.connect()
    assert "s3cr3t" not in str(err.value) and "***" in str(err.value)
    assert err.value.__cause__ is None and err.value.original is not None
    writer = BatchWriter(TraceStore(url), spool=tmp_path / "spool")
    from storefixtures import make_rows
    writer.put(make_rows(3))
    writer.close()
    assert writer.stats["spool_depth"] == 3
    assert "s3cr3t" not in repr(writer.stats) and writer.stats["errors"] >= 1


def test_mysql_sql_mode_is_not_a_url_option():
    with pytest.raises(ConfigError) as err:
        TraceStore("mysql://u:s3cr3t-pw@127.0.0.1/db?sql_mode=NO_BACKSLASH_ESCAPES")
    assert "sql_mode" in str(err.value) and "s3cr3t" not in str(err.value)


@pytest.mark.parametrize("password", ["pa ss", "pa/ss", "pa#ss", "pa?ss", "pa@ss", "pa%ss",
                                      "pa[ss"])
def test_unencoded_reserved_characters_are_refused_without_the_password(password):
    with pytest.raises(ConfigError) as err:
        TraceStore(f"mysql://u:{password}@127.0.0.1/db")
    assert str(err.value) == ("db_url mysql://u:***@127.0.0.1/db has a character in its user "
                              "or password that must be percent-encoded (/ %2F, ? %3F, # %23, "
                              "@ %40, space %20, % %25)")


def test_the_same_password_percent_encoded_is_accepted():
    parsed = parse_db_url("mysql://u:pa%20s%2Fs%23x%3Fy%40z%25@127.0.0.1/db")
    assert parsed.password == "pa s/s#x?y@z%" and parsed.database == "db"
