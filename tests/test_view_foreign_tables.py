"""The read commands on sip_trace tables other programs wrote.

- Kamailio's own siptrace module, really running (tests/kamailio_siptrace.py), writing
  its table through db_sqlite, db_postgres and db_mysql: SIPp calls over UDP and TCP,
  answered and busy (the busy ones traced for two users too). Kamailio's rows are the
  oracle: index, calls, flow, export and show must give back what it stored.
- OpenSER 1.x's table (the seed's DDL, section 1.5), filled as OpenSER filled it: the
  messages of a real capture (pcaps/kamailio-udp.pcap), 1-second dates.
- A read command never creates anything: missing file, missing table, a table that is
  not a sip_trace table.

Loopback addresses 127.0.0.71-73 are this file's (and ::1); ports are the first free
block of 100 from 16100 (two runs at once each get their own).

Kamailio's time_stamp is its local time on PostgreSQL and MariaDB (srdb1's db_time2str
uses localtime_r) and UTC on SQLite (a julian day): read as stored, whatever TZ is.
"""

import json
import os
import re
import subprocess
import sys
from collections import Counter
from datetime import datetime
from ipaddress import ip_address

import pytest

from conftest import PCAPS, require_tool
from kamailio_lab import Lab, wait_for
from kamailio_siptrace import (ANSWERED, BUSY, BUSY_CALLER, CALLER, KamailioTracer,
                               create_trace_table, distinct_messages, free_port_block,
                               require_kamailio, stored_rows)
from storefixtures import BACKENDS, ScratchDatabase
from siptrace.store.reader import TraceReader

PROXY_IP, UAC_IP, UAS_IP = "127.0.0.71", "127.0.0.72", "127.0.0.73"
EPOCH = datetime(1970, 1, 1)
WIDE_LABEL = 16  # the ladder (100 columns when not a terminal) shows labels this long whole
ARROW = re.compile(r"[-.]>|<[-.]")
HOLD_MS = 3000  # a call held up this long while `siptrace index` runs


def siptrace(*args, cwd, check=True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIPTRACE_")}
    proc = subprocess.run([sys.executable, "-m", "siptrace", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, f"siptrace {' '.join(map(str, args))}:\n{proc.stderr}"
    return proc


def indexed(out: str) -> tuple[int, int, int]:
    """(rows, call updates, last id) from `siptrace index`'s line."""
    found = re.search(r"indexed (\d+) rows .*?; (\d+) call updates; up to row id (\d+)", out)
    assert found, out
    return tuple(int(n) for n in found.groups())


def table_names(db) -> set[str]:
    if db.dialect == "sqlite":
        return {r[0] for r in db.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if db.dialect == "postgresql":
        return {r[0] for r in db.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
    return {r[0] for r in db.query("SHOW TABLES")}


def by_call(rows: list[dict]) -> dict[str, list[dict]]:
    calls: dict[str, list[dict]] = {}
    for row in rows:
        calls.setdefault(row["callid"], []).append(row)
    return calls


def is_busy(rows: list[dict]) -> bool:
    return any(r["status"] == "486" for r in rows)


def kind(rows: list[dict]) -> tuple[str, bool]:
    """('udp', 'tcp' or 'udp6', busy) of a call, from its first row."""
    transport = rows[0]["fromip"].split(":")[0]
    return (transport + "6" if "::" in rows[0]["fromip"] else transport), is_busy(rows)


def label(row: dict) -> str:
    """What the ladder says for a stored message: the method, or code and reason phrase."""
    if not row["status"]:
        return row["method"]
    first = row["msg"].split(b"\r\n", 1)[0].decode()
    return f"{row['status']} {(first.split(' ', 2) + [''])[2]}".rstrip()


def ladder(out: str) -> tuple[int, list[str]]:
    """The message count `siptrace flow` announces and its arrow lines."""
    count = re.search(r"(\d+) messages?", out.splitlines()[0])
    assert count, out
    return int(count.group(1)), [line for line in out.splitlines()[1:] if ARROW.search(line)]


def check_ladder(out: str, messages: list[dict]) -> None:
    count, arrows = ladder(out)
    assert count == len(arrows) == len(messages), out
    for line, message in zip(arrows, messages):
        text = label(message)
        expected = text if len(text) <= WIDE_LABEL else message["status"]
        shafts = line[line.index("|"):]  # the time margin left out
        assert re.search(rf"[ \-.<>|]{re.escape(expected)}[ \-.<>|]", shafts), (line, text)


def address(text: str) -> tuple:
    """(proto, ip, port) of a stored `proto:ip:port`. Kamailio 5.6 writes IPv6 both ways in
    one row: `udp:[::1]:5060` for its own socket, `udp:::1:5080` for the peer."""
    proto, _, rest = text.partition(":")
    host, _, port = rest.rpartition(":")
    return proto, ip_address(host.strip("[]")), int(port)


def microseconds(date: datetime) -> int:
    delta = date - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def tshark_packets(pcap) -> list[dict]:
    """The SIP packets of a capture as tshark reads them: time, addresses, payload."""
    tshark = require_tool("tshark")
    fields = ["frame.time_epoch", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "udp.srcport",
              "udp.dstport", "tcp.srcport", "tcp.dstport", "udp.payload", "tcp.payload"]
    proc = subprocess.run([tshark, "-n", "-r", str(pcap), "--disable-protocol", "sdp",
                           "-o", "tcp.try_heuristic_first:TRUE", "-Y", "sip", "-T", "fields",
                           *[a for f in fields for a in ("-e", f)]],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    packets = []
    for line in proc.stdout.splitlines():
        values = dict(zip(fields, line.split("\t")))
        seconds, _, fraction = values["frame.time_epoch"].partition(".")
        transport = "udp" if values["udp.payload"] else "tcp"
        ip = "ip" if values["ip.src"] else "ipv6"
        packets.append({
            "time_us": int(seconds) * 1_000_000 + int((fraction + "000000")[:6]),
            "fromip": f"{transport}:{values[ip + '.src']}:{values[transport + '.srcport']}",
            "toip": f"{transport}:{values[ip + '.dst']}:{values[transport + '.dstport']}",
            "msg": bytes.fromhex(values[transport + ".payload"].replace(":", ""))})
    return packets


def check_capture(pcap, messages: list[dict]) -> None:
    """tshark reads back each message: its bytes, addresses and time as stored."""
    packets = tshark_packets(pcap)
    assert [p["msg"] for p in packets] == [m["msg"] for m in messages]
    assert [(address(p["fromip"]), address(p["toip"]), p["time_us"]) for p in packets] == [
        (address(m["fromip"]), address(m["toip"]), microseconds(m["date"])) for m in messages]


def in_time_order(rows: list[dict]) -> list[dict]:
    return sorted(distinct_messages(rows), key=lambda r: (r["date"], r["id"]))


# -- Kamailio's own module, writing its own table ---------------------------------------


class ForeignTable:
    """A sip_trace table another program wrote, and siptrace's commands run on it."""

    def __init__(self, db, workdir, tracer: KamailioTracer | None = None):
        self.db, self.workdir, self.tracer = db, workdir, tracer
        self.url = ["--db-url", db.url]
        self.indexed = False

    def rows(self) -> list[dict]:
        """Kamailio's rows, read behind siptrace's back."""
        return stored_rows(self.db)

    def run(self, *args, check=True):
        return siptrace(*args, *self.url, cwd=self.workdir, check=check)

    def calls(self, *options) -> list[dict]:
        return json.loads(self.run("calls", "--json", *options).stdout)

    def ensure_index(self) -> None:
        """`siptrace index` once for the tests that search (each later run keeps it up to
        date itself)."""
        if not self.indexed:
            self.run("index")
            self.indexed = True


@pytest.fixture(scope="module", params=BACKENDS)
def kamailio(request, tmp_path_factory):
    """Kamailio tracing into a fresh database of each backend, after six calls: two
    answered and one busy over UDP, one answered and one busy over TCP, one answered over
    UDP on IPv6 (Kamailio writes IPv6 addresses bare, `udp:::1:PORT`, and sometimes not).
    Left running (stopped at the end of the module) for the incremental test's calls."""
    dialect = request.param
    require_kamailio(dialect)
    workdir = tmp_path_factory.mktemp(f"kamailio-{dialect}")
    db = ScratchDatabase(dialect, workdir)
    lab = Lab(workdir)
    try:
        create_trace_table(db)
        tracer = KamailioTracer(lab, db, proxy_ip=PROXY_IP, uac_ip=UAC_IP, uas_ip=UAS_IP,
                                port=free_port_block(PROXY_IP, UAS_IP))
        tracer.start()
        tracer.call("udp", calls=2)
        tracer.call("udp", busy=True)
        tracer.call("tcp")
        tracer.call("tcp", busy=True)
        tracer.call("udp6")
        yield ForeignTable(db, workdir, tracer)
    finally:
        lab.close()
        db.drop()


def test_kamailio_stored_what_the_oracle_expects(kamailio):
    """The oracle itself: every kind of call, each message stored once with traced_user ''
    and, for the busy calls, once more per traced user; Kamailio 3.x+'s columns."""
    calls = by_call(kamailio.rows())
    assert Counter(kind(rows) for rows in calls.values()) >= Counter(
        {("udp", False): 2, ("udp", True): 1, ("tcp", False): 1, ("tcp", True): 1,
         ("udp6", False): 1})
    for rows in calls.values():
        messages = len(distinct_messages(rows))
        assert sum(not r["traced_user"] for r in rows) == messages
        assert sum(bool(r["traced_user"]) for r in rows) == (2 * messages if is_busy(rows) else 0)
    with TraceReader(kamailio.db.url) as reader:
        assert reader.flavour == "kamailio"


def test_index_folds_every_row_of_kamailios_table(kamailio):
    rows = kamailio.rows()
    counted = indexed(kamailio.run("index", "--rebuild").stdout)
    assert counted == (len(rows), len(by_call(rows)), rows[-1]["id"])
    assert "kamailio table sip_trace" in kamailio.run("index").stdout


def test_calls_lists_every_call_as_kamailio_stored_it(kamailio):
    kamailio.ensure_index()
    rows = kamailio.rows()
    listed = {c["callid"]: c for c in kamailio.calls()}
    stored = by_call(rows)
    assert set(listed) == set(stored)
    for callid, call_rows in stored.items():
        call, busy = listed[callid], is_busy(call_rows)
        messages = distinct_messages(call_rows)
        assert (call["from_user"], call["to_user"]) == ((BUSY_CALLER, BUSY) if busy
                                                       else (CALLER, ANSWERED)), call
        assert (call["method"], call["status"], call["reason"], call["state"]) == (
            ("INVITE", "486", "Busy Here", "busy") if busy
            else ("INVITE", "200", "OK", "completed")), call
        assert call["msg_count"] == len(messages), (callid, call)
        assert call["first_date"] == min(m["date"] for m in messages).isoformat(sep=" ")
        assert call["last_date"] == max(m["date"] for m in messages).isoformat(sep=" ")
        assert set(call["ips"].split()) == ({"::1"} if kind(call_rows)[0] == "udp6"
                                             else {PROXY_IP, UAC_IP, UAS_IP}), call
        assert set(call["methods"].split()) == {r["method"] for r in call_rows if not r["status"]}
    with TraceReader(kamailio.db.url) as reader:
        some = next(iter(stored))
        assert reader.call(some).msg_count == len(distinct_messages(stored[some]))
        assert len(reader.messages([some])) == len(distinct_messages(stored[some]))


def test_calls_searches_kamailios_table(kamailio):
    kamailio.ensure_index()
    calls = by_call(kamailio.rows())
    busy = {c for c, r in calls.items() if is_busy(r)}

    def found(*options):
        return {c["callid"] for c in kamailio.calls(*options)}

    assert found("--status", "4xx") == found("--from", BUSY_CALLER) == busy
    assert found("--status", "2xx") == found("--method", "BYE") == set(calls) - busy
    ipv6 = {c for c, r in calls.items() if kind(r)[0] == "udp6"}
    assert len(ipv6) == 1
    assert found("--ip", UAS_IP) == set(calls) - ipv6
    assert found("--ip", "::1") == ipv6
    some = sorted(calls)[0]
    assert found("--callid", some.split("@")[0][:-1] + "*") >= {some}


def test_flow_shows_the_messages_kamailio_stored(kamailio):
    calls = by_call(kamailio.rows())
    # An answered and a busy call (every message stored 3 times) on each transport, and
    # the call over IPv6 (addresses stored bare).
    picked = {}
    for callid, call_rows in calls.items():
        picked.setdefault(kind(call_rows), callid)
    assert len(picked) == 5
    for callid in picked.values():
        out = kamailio.run("flow", callid).stdout
        assert f"Call-ID {callid}" in out.splitlines()[0]
        check_ladder(out, in_time_order(calls[callid]))
    callid = picked[("udp", True)]
    full = kamailio.run("flow", callid, "--full").stdout
    assert full.count("SIP/2.0 486 Busy Here") == 2  # received and relayed, copies left out


def test_export_gives_back_kamailios_messages_byte_for_byte(kamailio):
    calls = by_call(kamailio.rows())
    callids = sorted(calls)
    pcap = kamailio.workdir / "calls.pcap"
    proc = kamailio.run("export", *callids, "-o", pcap)
    messages = in_time_order([r for c in callids for r in calls[c]])
    assert f"exported {len(messages)} messages of {len(callids)} calls" in proc.stderr
    check_capture(pcap, messages)


def test_show_gives_kamailios_rows_with_time_stamp_and_time_us(kamailio):
    rows = kamailio.rows()
    shown = json.loads(kamailio.run("show", "--json", "--full", "--limit", "100000").stdout)
    assert [r["id"] for r in shown] == [r["id"] for r in reversed(rows)]
    for got, row in zip(shown, reversed(rows)):
        expected = {key: row[key] for key in ("id", "callid", "method", "status", "fromip",
                                              "toip", "fromtag", "direction", "traced_user")}
        expected["date"] = row["date"].isoformat(sep=" ", timespec="microseconds")
        if row["totag"]:
            expected["totag"] = row["totag"]
        expected["msg"] = row["msg"].decode()
        assert got == expected
    callid = rows[0]["callid"]
    one = json.loads(kamailio.run("show", "--json", "--callid", callid, "--limit", "1000").stdout)
    assert [r["id"] for r in one] == [r["id"] for r in reversed(rows) if r["callid"] == callid]


def test_the_read_commands_create_nothing_in_kamailios_database(kamailio):
    kamailio.ensure_index()
    before = table_names(kamailio.db)
    count = len(kamailio.rows())
    callid = kamailio.rows()[0]["callid"]
    kamailio.run("show")
    kamailio.run("calls")
    kamailio.run("flow", callid)
    kamailio.run("export", callid, "-o", kamailio.workdir / "one.pcap")
    assert table_names(kamailio.db) == before
    assert len(kamailio.rows()) == count


def test_index_goes_on_from_where_it_stopped_and_rebuild_agrees(kamailio):
    """More calls after an index run, one of them still up when the index runs again: each
    run folds only the rows after the last, the held call folds on from the index (in
    call, then completed), the counts stay exact; --rebuild gives the same index."""
    kamailio.run("index")
    assert indexed(kamailio.run("index").stdout)[0] == 0
    before = kamailio.rows()[-1]["id"]
    held = kamailio.tracer.begin("udp", hold_ms=HOLD_MS)
    acked = wait_for(lambda: [r for r in kamailio.rows()
                              if r["id"] > before and r["method"] == "ACK"])
    assert acked, "the held call was not answered"
    callid = acked[0]["callid"]
    folded, calls, last_id = indexed(kamailio.run("index").stdout)
    (up,) = kamailio.calls("--callid", callid)
    so_far = [r for r in kamailio.rows() if before < r["id"] <= last_id]
    assert (folded, calls) == (len(so_far), 1)
    assert {r["method"] for r in so_far} == {"INVITE", "ACK"}, "the index ran after the BYE"
    assert (up["state"], up["status"], up["msg_count"]) == ("in call", "200",
                                                            len(distinct_messages(so_far)))
    kamailio.tracer.finish(held)
    kamailio.tracer.call("tcp")
    kamailio.tracer.call("udp", busy=True)
    after = kamailio.rows()
    new = [r for r in after if r["id"] > last_id]
    assert callid in by_call(new) and len(by_call(new)) == 3
    assert indexed(kamailio.run("index").stdout) == (len(new), 3, after[-1]["id"])

    def listed():
        return sorted(kamailio.calls("--limit", "1000"), key=lambda c: c["callid"])

    def index_table():
        return sorted(kamailio.db.query("SELECT * FROM sip_trace_calls"), key=str)

    incremental, incremental_table = listed(), index_table()
    stored = by_call(after)
    assert {c["callid"]: c["msg_count"] for c in incremental} == {
        c: len(distinct_messages(r)) for c, r in stored.items()}
    (done,) = [c for c in incremental if c["callid"] == callid]
    assert (done["state"], done["status"]) == ("completed", "200")
    assert indexed(kamailio.run("index", "--rebuild").stdout) == (
        len(after), len(stored), after[-1]["id"])
    assert listed() == incremental
    assert index_table() == incremental_table


# -- OpenSER 1.x's table ----------------------------------------------------------------
OPENSER_INDEXES = ["CREATE INDEX user_idx ON sip_trace (traced_user)",
                   "CREATE INDEX date_id ON sip_trace (date)",
                   "CREATE INDEX ip_idx ON sip_trace (fromip)",
                   "CREATE INDEX call_id ON sip_trace (callid)"]
OPENSER_DDL = {
    # The seed's section 1.5, exactly.
    "mysql": ["""CREATE TABLE `sip_trace` (
  `id` bigint(20) NOT NULL auto_increment,
  `date` datetime NOT NULL default '0000-00-00 00:00:00',
  `callid` varchar(254) NOT NULL default '',
  `traced_user` varchar(128) NOT NULL default '',
  `msg` text NOT NULL,
  `method` varchar(50) NOT NULL default '',
  `status` varchar(254) NOT NULL default '',
  `fromip` varchar(50) NOT NULL default '',
  `toip` varchar(50) NOT NULL default '',
  `fromtag` varchar(64) NOT NULL default '',
  `direction` varchar(4) NOT NULL default '',
  PRIMARY KEY  (`id`),
  INDEX user_idx (traced_user),
  INDEX date_id (date),
  INDEX ip_idx (fromip),
  KEY `call_id` (`callid`)
)"""],
    # The same in PostgreSQL's types (no zero date there).
    "postgresql": ["""CREATE TABLE sip_trace (
  id BIGSERIAL PRIMARY KEY,
  date TIMESTAMP WITHOUT TIME ZONE NOT NULL DEFAULT '1900-01-01 00:00:00',
  callid VARCHAR(254) NOT NULL DEFAULT '',
  traced_user VARCHAR(128) NOT NULL DEFAULT '',
  msg TEXT NOT NULL,
  method VARCHAR(50) NOT NULL DEFAULT '',
  status VARCHAR(254) NOT NULL DEFAULT '',
  fromip VARCHAR(50) NOT NULL DEFAULT '',
  toip VARCHAR(50) NOT NULL DEFAULT '',
  fromtag VARCHAR(64) NOT NULL DEFAULT '',
  direction VARCHAR(4) NOT NULL DEFAULT ''
)""", *OPENSER_INDEXES],
    # And in SQLite's (dates as 'YYYY-MM-DD HH:MM:SS' text).
    "sqlite": ["""CREATE TABLE sip_trace (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  date DATETIME NOT NULL DEFAULT '0000-00-00 00:00:00',
  callid VARCHAR(254) NOT NULL DEFAULT '',
  traced_user VARCHAR(128) NOT NULL DEFAULT '',
  msg TEXT NOT NULL,
  method VARCHAR(50) NOT NULL DEFAULT '',
  status VARCHAR(254) NOT NULL DEFAULT '',
  fromip VARCHAR(50) NOT NULL DEFAULT '',
  toip VARCHAR(50) NOT NULL DEFAULT '',
  fromtag VARCHAR(64) NOT NULL DEFAULT '',
  direction VARCHAR(4) NOT NULL DEFAULT ''
)""", *OPENSER_INDEXES],
}
OPENSER_COLUMNS = ("date", "callid", "traced_user", "msg", "method", "status", "fromip", "toip",
                   "fromtag", "direction")
TRACED_CALL = "2-28455@127.0.0.1"  # traced for two users: each message stored three times
TRACED_USERS = ("sip:sipp@127.0.0.1:5070", "sip:service@127.0.0.1:5060")


@pytest.fixture(scope="module")
def captured(tmp_path_factory) -> list[dict]:
    """The messages of pcaps/kamailio-udp.pcap (5 calls through a proxy at 127.0.0.1:5060)
    as OpenSER's siptrace stored them: insert time to the second, `udp:IP:PORT`, the
    status code only, direction seen from the proxy."""
    workdir = tmp_path_factory.mktemp("capture")
    url = f"sqlite:///{workdir / 'replayed.db'}"
    siptrace("replay", PCAPS / "kamailio-udp.pcap", "--db-url", url, "--proxy", "127.0.0.1:5060",
             "--no-progress", "--no-call-index", cwd=workdir)
    with TraceReader(url) as reader:
        messages = reader.rows(limit=1000, newest_first=False)
    assert len(messages) == 65
    return [{"date": m.date.replace(microsecond=0), "callid": m.callid, "traced_user": "",
             "msg": m.msg, "method": m.method, "status": m.status, "fromip": m.fromip,
             "toip": m.toip, "fromtag": m.fromtag, "direction": m.direction} for m in messages]


def with_traced_users(rows: list[dict], callid: str = TRACED_CALL) -> list[dict]:
    """Each message of ``callid`` followed by one copy per traced user, as OpenSER stored
    them (one process inserting the row, then a row per AVP value)."""
    out = []
    for row in rows:
        out.append(row)
        if row["callid"] == callid:
            out += [dict(row, traced_user=user) for user in TRACED_USERS]
    return out


def openser_table(db, rows: list[dict]) -> list[dict]:
    """OpenSER's sip_trace in ``db`` holding ``rows`` (ids 1..n in order); the rows with ids."""
    conn = db.connect()
    try:
        cur = conn.cursor()
        for statement in OPENSER_DDL[db.dialect]:
            cur.execute(statement)
        insert_openser_rows(db, rows, conn)
    finally:
        conn.close()
    return [dict(row, id=i) for i, row in enumerate(rows, 1)]


def insert_openser_rows(db, rows: list[dict], conn=None) -> None:
    own = conn is None
    conn = conn or db.connect()
    try:
        mark = "?" if db.dialect == "sqlite" else "%s"
        values = []
        for row in rows:
            date = row["date"]
            if db.dialect == "sqlite":
                date = date.strftime("%Y-%m-%d %H:%M:%S")
            values.append([date] + [row[c].decode() if c == "msg" else row[c]
                                    for c in OPENSER_COLUMNS[1:]])
        conn.cursor().executemany(f"INSERT INTO sip_trace ({', '.join(OPENSER_COLUMNS)}) "
                                  f"VALUES ({', '.join([mark] * len(OPENSER_COLUMNS))})", values)
        conn.commit()
    finally:
        if own:
            conn.close()


def test_openser_table_index_calls_flow_export_and_show(any_db, captured, tmp_path):
    rows = openser_table(any_db, with_traced_users(captured))
    table = ForeignTable(any_db, tmp_path)
    with TraceReader(any_db.url) as reader:
        assert reader.flavour == "siptrace"  # the seed's `date` column
    stored = by_call(rows)
    assert indexed(table.run("index").stdout) == (len(rows), 5, len(rows))

    listed = {c["callid"]: c for c in table.calls()}
    assert set(listed) == set(stored)
    for callid, call_rows in stored.items():
        messages = distinct_messages(call_rows)
        call = listed[callid]
        assert len(messages) == 13
        assert (call["from_user"], call["to_user"], call["status"], call["state"],
                call["msg_count"]) == ("sipp", "service", "200", "completed", 13), call
        assert call["first_date"] == min(m["date"] for m in messages).isoformat(sep=" ")
        assert call["last_date"] == max(m["date"] for m in messages).isoformat(sep=" ")
    assert table.calls("--status", "4xx") == []

    first = "1-28455@127.0.0.1"
    for callid in (first, TRACED_CALL):
        check_ladder(table.run("flow", callid).stdout, in_time_order(stored[callid]))

    pcap = tmp_path / "openser.pcap"
    table.run("export", first, TRACED_CALL, "-o", pcap)
    check_capture(pcap, in_time_order(stored[first] + stored[TRACED_CALL]))

    shown = json.loads(table.run("show", "--json", "--full", "--callid", TRACED_CALL).stdout)
    assert [(r["id"], r["date"], r["traced_user"], r["msg"].encode()) for r in shown] == [
        (r["id"], r["date"].isoformat(sep=" ", timespec="microseconds"), r["traced_user"],
         r["msg"]) for r in reversed(stored[TRACED_CALL])]


def test_openser_retransmission_in_the_same_second_stays_a_message(tmp_path, captured):
    """OpenSER's sip_trace() stores every INVITE it receives, retransmissions too: one
    500 ms later is, half the time, in the same second, with the same bytes. It is a
    message of its own (traced_user '' twice), not a copy for a traced user: the call
    has 14 messages, the ladder marks the retransmission."""
    call = [r for r in captured if r["callid"] == "1-28455@127.0.0.1"]
    invite = call[0]
    assert (invite["method"], invite["status"], invite["direction"]) == ("INVITE", "", "in")
    db = ScratchDatabase("sqlite", tmp_path)
    openser_table(db, [invite, dict(invite)] + call[1:])
    table = ForeignTable(db, tmp_path)
    table.run("index")
    (listed,) = table.calls()
    out = table.run("flow", "1-28455@127.0.0.1").stdout
    count, arrows = ladder(out)
    assert listed["msg_count"] == count == len(arrows) == 14, out
    assert "(retrans)" in arrows[1]
    pcap = tmp_path / "retrans.pcap"
    table.run("export", "1-28455@127.0.0.1", "-o", pcap)
    assert len(tshark_packets(pcap)) == 14


def test_openser_copies_for_traced_users_interleaved_with_other_rows(tmp_path, captured):
    """OpenSER's children insert on their own connections: under load another message's
    row lands between a message's row and its copies for the traced users. The copies
    are still copies: the call's message count is its distinct messages."""
    traced = [r for r in captured if r["callid"] == TRACED_CALL]
    other = [r for r in captured if r["callid"] == "3-28455@127.0.0.1"]
    rows = []
    for i, row in enumerate(traced):
        rows.append(row)
        if i < len(other):
            rows.append(other[i])  # another child's row, between the message and its copies
        rows += [dict(row, traced_user=user) for user in TRACED_USERS]
    db = ScratchDatabase("sqlite", tmp_path)
    openser_table(db, rows)
    table = ForeignTable(db, tmp_path)
    table.run("index")
    listed = {c["callid"]: c for c in table.calls()}
    assert listed[TRACED_CALL]["msg_count"] == len(traced) == 13
    assert ladder(table.run("flow", TRACED_CALL).stdout)[0] == 13


def test_openser_index_run_between_a_message_and_its_copies(tmp_path, captured):
    """`siptrace index` from cron while OpenSER writes: a run can stop after a message's
    row and before its copies for the traced users. The next run folds the copies as
    copies: the counts equal a --rebuild's."""
    rows = with_traced_users([r for r in captured if r["callid"] == TRACED_CALL])
    db = ScratchDatabase("sqlite", tmp_path)
    openser_table(db, rows[:4])  # INVITE and its 2 copies, 100 Trying without its copies
    table = ForeignTable(db, tmp_path)
    assert indexed(table.run("index").stdout)[0] == 4
    insert_openser_rows(db, rows[4:])
    assert indexed(table.run("index").stdout)[0] == len(rows) - 4
    (incremental,) = table.calls()
    table.run("index", "--rebuild")
    (rebuilt,) = table.calls()
    assert incremental["msg_count"] == rebuilt["msg_count"] == 13


# -- a read command creates nothing -----------------------------------------------------
READ_COMMANDS = [["show"], ["calls"], ["flow", "1-1@h"], ["export", "1-1@h", "-o", "out.pcap"],
                 ["index"]]


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: c[0])
def test_a_missing_sqlite_file_is_named_and_not_created(tmp_path, command):
    missing_db = tmp_path / "kamailio.db"
    error = one_line_error(siptrace(*command, "--db-url", f"sqlite:///{missing_db}", cwd=tmp_path,
                                    check=False))
    assert str(missing_db) in error
    assert not missing_db.exists() and sorted(os.listdir(tmp_path)) == []


def test_a_missing_table_or_a_table_that_is_not_a_sip_trace_table(any_db, tmp_path):
    """Kamailio's `version` table is there, no sip_trace: each command says so in one
    line and creates nothing (no call index, no index state)."""
    conn = any_db.connect()
    try:
        conn.cursor().execute("CREATE TABLE version (table_name VARCHAR(32) NOT NULL, "
                              "table_version INTEGER DEFAULT 0 NOT NULL)")
        conn.commit()
    finally:
        conn.close()
    url = ["--db-url", any_db.url]
    # Every command opens the table the same way: on the servers, a reader and the writer.
    commands = READ_COMMANDS if any_db.dialect == "sqlite" else [["show"], ["index"]]
    for command in commands:
        error = one_line_error(siptrace(*command, *url, cwd=tmp_path, check=False))
        assert "no table sip_trace" in error, (command, error)
        error = one_line_error(siptrace(*command, *url, "--table", "version", cwd=tmp_path,
                                        check=False))
        assert "version is not a sip_trace table" in error, (command, error)
    assert table_names(any_db) == {"version"}
    assert os.listdir(tmp_path) == ([f"{any_db.name}.db"] if any_db.dialect == "sqlite" else [])
