"""The views' reads on ClickHouse: the same answers as from SQLite for the same rows.

Every row here has a time of its own: ClickHouse keeps no order among messages of one
microsecond (ids are random within their second), SQLite keeps the order of insertion.
"""

import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from callfactory import ANSWERED, T0, call_rows, twelve_calls
from siptrace.errors import StorageError
from siptrace.store.clickhouse.connection import client_for, connect, server_version
from siptrace.store.clickhouse.reader import ClickHouseReader
from siptrace.store.clickhouse.schema import table_ddl
from siptrace.store.clickhouse.writer import ClickHouseStore
from siptrace.store.reader import TraceReader
from siptrace.store.text import clean_text, text_to_msg
from siptrace.store.tracestore import TraceStore
from siptrace.store.urls import parse_db_url
from siptrace.view.search import parse_filter
from siptrace.web.app import create_app
from test_web import ThreadServer, call_links, get

FAILED = [("INVITE", ">", 0), (180, "<", 0.2), (486, "<", 4), ("ACK", ">", 4.001)]
CANCELLED = [("INVITE", ">", 0), (180, "<", 0.2), ("CANCEL", ">", 9),
             (200, "<", 9.001, {"cseq_method": "CANCEL"}), (487, "<", 9.002), ("ACK", ">", 9.003)]
SESSION = "ab30317f1a784dc48ff824d0d3715d86"
BAD_CALLID = "caf\udcff-\udce9@h"  # as the parser holds a Call-ID that is not UTF-8
BAD_BYTES = b"caf\xff-\xe9@h"


def non_utf8_call(start: datetime) -> list:
    rows = call_rows("PLACEHOLDER@h", ANSWERED, start=start)
    return [r._replace(callid=BAD_CALLID, fromtag="t\udcfe",
                       msg=r.msg.replace(b"PLACEHOLDER@h", BAD_BYTES)) for r in rows]


def traffic() -> list:
    """Twelve calls of different parties, outcomes, addresses and times; a registration;
    a user in percent-encoding; IPv6; three B2BUA legs and a call that is not one;
    a Call-ID that is not UTF-8."""
    rows = twelve_calls([ANSWERED, FAILED, CANCELLED])  # this module's: no two messages at one instant
    rows += call_rows("plus@pbx", FAILED, start=T0 + timedelta(hours=1, seconds=7),
                      caller="%2B4930555", caller_name="Plus")
    rows += call_rows("v6@pbx", ANSWERED, start=T0 + timedelta(hours=2, seconds=3),
                      a="tcp:[2001:db8::1]:5060", b="tcp:[2001:db8::2]:5060")
    legs = T0 + timedelta(hours=4)
    rows += (call_rows("a-leg@sbc", ANSWERED, start=legs, headers=[f"Session-ID: {SESSION}"])
             + call_rows("b-leg@sbc", ANSWERED, start=legs + timedelta(seconds=1.001),
                         headers=["X-CID: a-leg@sbc"])
             + call_rows("c-leg@sbc", ANSWERED, start=legs + timedelta(seconds=2.002),
                         headers=[f"Session-ID: {SESSION};remote=" + "1" * 32])
             + call_rows("other@sbc", ANSWERED, start=legs + timedelta(seconds=3.003)))
    rows += non_utf8_call(T0 + timedelta(hours=5))
    rows.sort(key=lambda r: r.date)
    return rows


FILTERS = [
    {}, {"limit": 1}, {"limit": 3}, {"to_user": "00493012305"}, {"to_user": "0049301230"},
    {"from_user": "ALICE"}, {"user": "alice"}, {"user": "user 1"}, {"from_user": "carol_"},
    {"from_user": "dave%"}, {"from_user": "l_x"}, {"user": "+4930555"}, {"to_user": "nobody"},
    {"callid": "call-1*"}, {"callid": "call-?@pbx0"}, {"callid": "call-3@pbx1"},
    {"callid": "caf*"}, {"callid": "*%*"}, {"ip": "10.0.1.1"}, {"ip": "192.0.2.9"},
    {"ip": "2001:DB8::1"}, {"ip": "10.0.9.9"}, {"method": "cancel"}, {"method": "REGISTER"},
    {"status": "4xx"}, {"status": "486"}, {"status": "2xx"}, {"status": "487"},
    {"since": "2024-05-01 13:00"}, {"until": "2024-05-01 12:20"},
    {"since": "2024-05-01 12:30", "until": "2024-05-01 13:10", "status": "2xx"},
    {"since": "2024-05-01 16:00", "callid": "*-leg@sbc", "limit": 2},
]


def plain(messages) -> list[tuple]:
    """Messages without their ids (each backend makes its own)."""
    return [(m.date, m.callid, m.method, m.status, m.fromip, m.toip, m.fromtag, m.direction,
             m.traced_user, m.msg, m.totag) for m in messages]


def store_both(rows, sqlite_url: str, clickhouse_url: str) -> None:
    with TraceStore(sqlite_url) as store:
        store.insert(rows)
    with ClickHouseStore(clickhouse_url) as store:
        for start in range(0, len(rows), 50):
            store.insert(rows[start:start + 50])


@pytest.fixture
def stored_urls(clickhouse_cluster, clickhouse_db, tmp_path):
    """traffic() in SQLite (the reference) and in a ClickHouse table: their URLs."""
    urls = f"sqlite:///{tmp_path / 'ref.db'}", clickhouse_cluster.url(clickhouse_db)
    store_both(traffic(), *urls)
    return urls


def test_rows_messages_and_calls_are_the_same_as_from_sqlite(stored_urls):
    sqlite_url, clickhouse_url = stored_urls
    callids = [clean_text(r.callid) for r in traffic()]
    with TraceReader(sqlite_url) as ref, ClickHouseReader(clickhouse_url) as reader:
        assert reader.flavour == "clickhouse" and reader.index_lag() == 0
        for options in ({}, {"limit": 7}, {"limit": 1000}, {"limit": 1000, "newest_first": False},
                        {"callid": "b-leg@sbc"}, {"callid": "b-leg@sbc", "limit": 2},
                        {"callid": "nope@h"}):
            assert plain(reader.rows(**options)) == plain(ref.rows(**options)), options
        assert plain(reader.messages(callids)) == plain(ref.messages(callids))
        assert plain(reader.messages(["call-2@pbx0", "nope@h"])) == plain(
            ref.messages(["call-2@pbx0", "nope@h"]))
        for callid in dict.fromkeys(callids):
            assert reader.call(callid).as_dict() == ref.call(callid).as_dict()
        assert reader.call("nope@h") is None
        newest = reader.rows(limit=20)
        assert [reader.message(m.id) for m in newest] == newest
        assert reader.message(newest[0].id ^ 1) is None and reader.message(-1) is None


@pytest.mark.parametrize("options", FILTERS,
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "all")
def test_a_search_finds_what_sqlite_finds(stored_urls, options):
    sqlite_url, clickhouse_url = stored_urls
    filt = parse_filter(**options)
    with TraceReader(sqlite_url) as ref, ClickHouseReader(clickhouse_url) as reader:
        wanted = [c.as_dict() for c in ref.search(filt)]
        assert [c.as_dict() for c in reader.search(filt)] == wanted


def test_related_legs_are_the_same_as_from_sqlite(stored_urls):
    sqlite_url, clickhouse_url = stored_urls
    with TraceReader(sqlite_url) as ref, ClickHouseReader(clickhouse_url) as reader:
        for callid in ("a-leg@sbc", "b-leg@sbc", "c-leg@sbc", "other@sbc", "call-1@pbx1"):
            assert reader.related(callid) == ref.related(callid), callid
        assert reader.related("b-leg@sbc") == ["b-leg@sbc", "a-leg@sbc", "c-leg@sbc"]


def test_a_call_id_that_is_not_utf8_keeps_its_bytes(stored_urls, clickhouse_cluster, clickhouse_db):
    sqlite_url, clickhouse_url = stored_urls
    client = clickhouse_cluster.servers[0].client(clickhouse_db)
    assert client.execute("SELECT DISTINCT callid, fromtag FROM sip_trace WHERE callid LIKE 'caf%'",
                          settings={"strings_as_bytes": True}) == [(BAD_BYTES, b"t\xfe")]
    with TraceReader(sqlite_url) as ref, ClickHouseReader(clickhouse_url) as reader:
        (call,) = reader.search(parse_filter(callid="caf*"))
        assert text_to_msg(call.callid) == BAD_BYTES  # in the SQL backends' stored form
        assert call.as_dict() == ref.call(call.callid).as_dict()
        for as_typed in (call.callid, BAD_CALLID):  # stored form, or surrogates from argv
            assert plain(reader.rows(callid=as_typed)) == plain(ref.rows(callid=call.callid))
            assert plain(reader.messages([as_typed])) == plain(ref.messages([call.callid]))
        assert {m.fromtag for m in reader.messages([call.callid])} == {
            m.fromtag for m in ref.messages([call.callid])}


def test_since_and_until_select_the_calls_with_a_message_in_between(clickhouse_cluster,
                                                                    clickhouse_db, tmp_path):
    """Documented difference: TraceReader also finds a call spanning the window."""
    urls = f"sqlite:///{tmp_path / 'ref.db'}", clickhouse_cluster.url(clickhouse_db)
    long_call = [("INVITE", ">", 0), (200, "<", 1), ("ACK", ">", 1.001), ("BYE", ">", 7200),
                 (200, "<", 7200.001, {"cseq": 2, "cseq_method": "BYE"})]
    store_both(call_rows("long@pbx", long_call) + call_rows(
        "short@pbx", ANSWERED, start=T0 + timedelta(hours=1)), *urls)
    filt = parse_filter(since="2024-05-01 12:50", until="2024-05-01 13:30")
    with TraceReader(urls[0]) as ref, ClickHouseReader(urls[1]) as reader:
        assert [c.callid for c in ref.search(filt)] == ["short@pbx", "long@pbx"]
        assert [c.callid for c in reader.search(filt)] == ["short@pbx"]
        # Reaching past the window for the other filters: the BYE is 50 minutes after it.
        assert [c.callid for c in reader.search(parse_filter(
            since="2024-05-01 12:00", until="2024-05-01 13:20", method="BYE"))] == [
                "short@pbx", "long@pbx"]


def searches_back_from_now_match_sqlite(clickhouse_url: str, tmp_path) -> None:
    """400 calls, one every 11 minutes back from now (over several day partitions): windows
    and pages of candidates. Every message of dave%'s calls holds a %, which may hide any
    user: candidates all."""
    now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    rows = []
    for i in range(400):
        caller = ["bob", "dave%"][i % 2] if i < 200 else "alice"
        rows += call_rows(f"recent-{i}@pbx", [ANSWERED, FAILED, CANCELLED][i % 3],
                          start=now - timedelta(minutes=11 * i, seconds=i % 7), caller=caller,
                          caller_name=caller.title())
    rows.sort(key=lambda r: r.date)
    urls = f"sqlite:///{tmp_path / 'ref.db'}", clickhouse_url
    store_both(rows, *urls)
    with TraceReader(urls[0]) as ref, ClickHouseReader(urls[1]) as reader:
        for options in ({"limit": 1}, {"limit": 50}, {"limit": 250}, {"limit": 1000},
                        {"status": "2xx", "limit": 70}, {"from_user": "bob", "limit": 60},
                        {"from_user": "bob", "limit": 120}, {"from_user": "alice", "limit": 30},
                        {"from_user": "nobody"}, {"since": "20h", "limit": 1000},
                        {"until": "30h", "limit": 20},
                        {"since": "50h", "until": "10h", "method": "CANCEL", "limit": 1000}):
            filt = parse_filter(**options, now=now)
            assert [c.as_dict() for c in reader.search(filt)] == [
                c.as_dict() for c in ref.search(filt)], options
        assert plain(reader.rows(limit=300)) == plain(ref.rows(limit=300))


def test_searches_back_from_now_through_widening_windows(clickhouse_cluster, clickhouse_db,
                                                          tmp_path):
    searches_back_from_now_match_sqlite(clickhouse_cluster.url(clickhouse_db), tmp_path)


def test_the_read_commands_print_the_same_as_for_sqlite(stored_urls, tmp_path):
    for command in (["calls"], ["calls", "--status", "4xx", "--csv"], ["show", "--limit", "30"],
                    ["flow", "b-leg@sbc", "--related", "--full"], ["flow", "caf*"]):
        outputs = [subprocess.run([sys.executable, "-m", "siptrace", *command, "--db-url", url],
                                  cwd=tmp_path, capture_output=True, timeout=120)
                   for url in stored_urls]
        assert outputs[0].returncode == outputs[1].returncode == 0, outputs[1].stderr
        assert outputs[1].stdout == outputs[0].stdout, command
    for url, name in zip(stored_urls, ("ref.pcap", "clickhouse.pcap")):
        subprocess.run([sys.executable, "-m", "siptrace", "export", "--user", "alice", "-o",
                        tmp_path / name, "--db-url", url], check=True, capture_output=True)
    assert (tmp_path / "clickhouse.pcap").read_bytes() == (tmp_path / "ref.pcap").read_bytes()


def test_a_missing_table_or_server_is_one_line(clickhouse_cluster, clickhouse_db):
    url = clickhouse_cluster.url(clickhouse_db)
    with pytest.raises(StorageError, match="no table sip_trace$") as missing:
        ClickHouseReader(url).open()
    client = clickhouse_cluster.servers[0].client(clickhouse_db)
    client.execute("CREATE TABLE sip_trace (id UInt64, callid String) ENGINE = Memory")
    with pytest.raises(StorageError, match="not a siptrace ClickHouse table") as wrong:
        ClickHouseReader(url).open()
    with pytest.raises(StorageError, match="connect") as unreachable:
        ClickHouseReader("clickhouse://default:secret@127.0.0.1:1/x").search(parse_filter())
    for err in (missing, wrong, unreachable):
        assert "\n" not in str(err.value) and "secret" not in str(err.value)
    with pytest.raises(StorageError, match="needs no call index"):
        ClickHouseReader(url).rows(after_id=5)
    proc = subprocess.run([sys.executable, "-m", "siptrace", "calls", "--db-url", url,
                           "--table", "nothing_here"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "no table nothing_here" in proc.stderr and "Traceback" not in proc.stderr


def test_reads_over_a_distributed_table_give_the_same_answers(clickhouse_cluster,
                                                               clickhouse_db, tmp_path):
    for server in clickhouse_cluster.servers:
        url = parse_db_url(server.url(clickhouse_db))
        client = client_for(url)
        connect(client, url)
        for statement in table_ddl("sip_trace", server_version(client), cluster="siptrace",
                                   database=clickhouse_db):
            client.execute(statement)
        client.disconnect()
    sqlite_url = f"sqlite:///{tmp_path / 'ref.db'}"
    clickhouse_url = clickhouse_cluster.url(clickhouse_db)
    store_both(traffic(), sqlite_url, clickhouse_url)
    shards = [server.client(clickhouse_db).execute("SELECT count() FROM sip_trace_local")[0][0]
              for server in clickhouse_cluster.servers]
    assert all(shards) and sum(shards) == len(traffic())
    with TraceReader(sqlite_url) as ref, ClickHouseReader(clickhouse_url) as reader:
        assert plain(reader.rows(limit=1000)) == plain(ref.rows(limit=1000))
        callids = list(dict.fromkeys(clean_text(r.callid) for r in traffic()))
        assert plain(reader.messages(callids)) == plain(ref.messages(callids))
        newest = reader.rows(limit=10)
        assert [reader.message(m.id) for m in newest] == newest
        for options in FILTERS:
            filt = parse_filter(**options)
            assert [c.as_dict() for c in reader.search(filt)] == [
                c.as_dict() for c in ref.search(filt)], options
        for callid in ("a-leg@sbc", "b-leg@sbc", "other@sbc"):
            assert reader.related(callid) == ref.related(callid)
    for command in (["calls"], ["show", "--limit", "30"], ["flow", "b-leg@sbc", "--related"]):
        outputs = [subprocess.run([sys.executable, "-m", "siptrace", *command, "--db-url", url],
                                  cwd=tmp_path, capture_output=True, timeout=120)
                   for url in (sqlite_url, clickhouse_url)]
        assert outputs[0].returncode == outputs[1].returncode == 0, outputs[1].stderr
        assert outputs[1].stdout == outputs[0].stdout, command


def test_the_web_view_reads_clickhouse(stored_urls):
    """Pages and message links (ids of 19 digits) as for SQLite."""
    pages = []
    for url in stored_urls:
        with ThreadServer(create_app(url, "sip_trace")) as server:
            index = get(server.base + "/?limit=200")
            call = get(server.base + "/call?callid=b-leg%40sbc&legs=1")
            ids = re.findall(r'href="/message\?id=(\d+)"', call.text)
            message = get(server.base + f"/message?id={ids[-1]}")
            assert index.status == call.status == message.status == 200
            pages.append([call_links(index.text), call_links(call.text),
                          re.sub(r'(id=|row-|"mono">)\d+', r"\1ID", message.text)])
    assert pages[1] == pages[0]
    assert len(pages[0][0]) > 5
