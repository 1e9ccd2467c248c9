"""Kamailio's own siptrace module writing its own sip_trace table, for the read-side tests.

SIPp's calls go uac -> Kamailio -> uas on loopback; Kamailio (its siptrace module, its
db_sqlite / db_postgres / db_mysql) stores them in a table created with its own DDL
(/usr/share/kamailio/*/siptrace-create.sql and the ``version`` table it checks). That
table is the oracle: siptrace's read commands must give back what Kamailio stored.

Two callees: ``alice`` answers (SIPp's built-in uas), ``busy`` answers 486 Busy Here
(a small scenario written here). For the busy calls the script sets two values of the
traced_user AVP, so Kamailio stores each of their messages three times. Calls go over
UDP, TCP, and UDP on IPv6 (::1).

What Kamailio 5.6's modules write, and the reader below undoes:

- db_sqlite: time_stamp as a julian day (REAL), msg as a BLOB, '' as NULL (totag);
- db_postgres: msg as bytea escape text (``\\x4143...``) in the TEXT column;
- db_mysql: as declared;
- fromip/toip: IPv6 bare (``udp:::1:5060``), but ``udp:[::1]:5060`` for the proxy's
  own socket on a request it sends; on TCP port 0 for the proxy's side of a reply.

Processes run under kamailio_lab.Lab: stopped by pid, whatever the test did.
"""

import errno
import itertools
import re
import socket
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

from conftest import missing, require_tool
from kamailio_lab import CALL_TIMEOUT, Lab, LabError

SHARE = Path("/usr/share/kamailio")
MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
SCHEMA_DIRS = {"sqlite": "db_sqlite", "postgresql": "postgres", "mysql": "mysql"}
DB_MODULES = {"sqlite": "db_sqlite", "postgresql": "db_postgres", "mysql": "db_mysql"}
PACKAGES = {"sqlite": "kamailio-sqlite-modules", "postgresql": "kamailio-postgres-modules",
            "mysql": "kamailio-mysql-modules"}
# Kamailio checks the table's version at start (db_check_table_version); kamdbctl makes this.
VERSION_TABLE = ("CREATE TABLE version (table_name VARCHAR(32) NOT NULL, "
                 "table_version INTEGER DEFAULT 0 NOT NULL)")
TRACE_FLAG = 22
TRACED_USER_AVP = 6843
ANSWERED, BUSY = "alice", "busy"  # the callees (Request-URI users)
CALLER, BUSY_CALLER = "sipp", "carol"  # From users: SIPp's default uac, the busy scenario's
JULIAN_UNIX_EPOCH = 2440587.5  # julian day of 1970-01-01 00:00 UTC

CONFIG = """#!KAMAILIO
# Relays SIPp's calls and traces them with Kamailio's own siptrace module.
listen=udp:@PROXY_IP@:@PROXY_PORT@
listen=tcp:@PROXY_IP@:@PROXY_PORT@
listen=udp:[::1]:@PROXY_PORT@
debug=1
log_stderror=yes
auto_aliases=no
dns=no
rev_dns=no
use_dns_cache=off
# One worker per transport: messages handled (and rows written) in arrival order.
children=1
tcp_children=1

mpath="@MODULES@/"
loadmodule "pv.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "@DB_MODULE@.so"
loadmodule "siptrace.so"

modparam("rr", "append_fromtag", 1)
modparam("siptrace", "db_url", "@DB_URL@")
modparam("siptrace", "trace_on", 1)
modparam("siptrace", "trace_flag", @TRACE_FLAG@)
modparam("siptrace", "traced_user_avp", "$avp(i:@AVP@)")

request_route {
	if ($rU == "@BUSY@") {
		$avp(i:@AVP@) = $fu;
		$avp(i:@AVP@) = $tu;
	}
	# Since Kamailio 5.3 the flag alone stores nothing: sip_trace() arms it.
	setflag(@TRACE_FLAG@);
	sip_trace();

	if (!mf_process_maxfwd_header("10")) {
		sl_send_reply("483", "Too Many Hops");
		exit;
	}
	if (is_method("CANCEL")) {
		if (t_check_trans()) {
			t_relay();
		}
		exit;
	}
	if (!is_method("ACK") && t_check_trans()) {
		exit;
	}
	if (is_method("INVITE") && !has_totag()) {
		record_route();
	}
	if ($si == "@UAS_IP@" || ($si == "::1" && $sp == @UAS6_PORT@)) {
		route(RELAY);
	}
	# SIPp's uac ignores Record-Route: route on the callee, the transport, the family.
	$var(host) = "@UAS_IP@";
	$var(port) = @UAS_PORT@;
	if ($rU == "@BUSY@") {
		$var(port) = $var(port) + 2;
	}
	if ($pr == "tcp") {
		$var(port) = $var(port) + 1;
	}
	if (af == INET6) {
		$var(host) = "[::1]";
		$var(port) = @UAS6_PORT@;
	}
	if (!has_totag()) {
		$rd = $var(host);
		$rp = $var(port);
	}
	$du = "sip:" + $var(host) + ":" + $var(port);
	if ($pr == "tcp") {
		$du = $du + ";transport=tcp";
		$fs = "tcp:@PROXY_IP@:@PROXY_PORT@";
	}
	route(RELAY);
}

route[RELAY] {
	if (!t_relay()) {
		sl_reply_error();
	}
	exit;
}
"""

UAS_BUSY = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="callee that rings, then is busy">
  <recv request="INVITE" crlf="true"/>
  <send>
    <![CDATA[

      SIP/2.0 180 Ringing
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Content-Length: 0

    ]]>
  </send>
  <send retrans="500">
    <![CDATA[

      SIP/2.0 486 Busy Here
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  <recv request="ACK"/>
</scenario>
"""

UAC_BUSY = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="call to a busy callee">
  <send retrans="500">
    <![CDATA[

      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: Carol <sip:@BUSY_CALLER@@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: [service] <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:@BUSY_CALLER@@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="486"/>
  <send>
    <![CDATA[

      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      From: Carol <sip:@BUSY_CALLER@@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: [service] <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
</scenario>
"""


SIPP_TRANSPORTS = {"udp": "u1", "tcp": "t1", "udp6": "u1"}


def _udp_bound(ip: str, port: int) -> bool:
    """Someone listens on this UDP address (binding it fails with EADDRINUSE)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((ip, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
        return False


def free_port_block(proxy_ip: str, uas_ip: str, first: int = 16100, blocks: int = 30) -> int:
    """The first base port (first, first+100, ...) whose ports KamailioTracer listens on
    are all free: another run of these tests (or a TCP TIME_WAIT) keeps its block."""
    def free(family, kind, ip, port):
        with socket.socket(family, kind) as probe:
            try:
                probe.bind((ip, port))
                return True
            except OSError:
                return False

    inet, inet6, udp, tcp = socket.AF_INET, socket.AF_INET6, socket.SOCK_DGRAM, socket.SOCK_STREAM
    for base in range(first, first + 100 * blocks, 100):
        wanted = [(inet, udp, proxy_ip, base), (inet, tcp, proxy_ip, base),
                  (inet6, udp, "::1", base), (inet6, udp, "::1", base + 24)]
        wanted += [(inet, kind, uas_ip, base + 20 + i) for i in range(4) for kind in (udp, tcp)]
        if all(free(*address) for address in wanted):
            return base
    raise LabError(f"no free block of ports from {first} on {proxy_ip} and {uas_ip}")


def require_kamailio(dialect: str) -> None:
    """Kamailio, SIPp and Kamailio's database module and DDL for this backend."""
    require_tool("kamailio")
    require_tool("sipp")
    module = MODULES / f"{DB_MODULES[dialect]}.so"
    schema = SHARE / SCHEMA_DIRS[dialect] / "siptrace-create.sql"
    if not (MODULES / "siptrace.so").exists() or not module.exists() or not schema.exists():
        missing(f"{PACKAGES[dialect]} is not installed ({module.name}, {schema})")


def kamailio_db_url(db) -> str:
    """The db_url Kamailio's modules take for a ScratchDatabase (sqlite://PATH: the path
    is what follows the scheme's two slashes, where siptrace's URL has three)."""
    if db.dialect == "sqlite":
        return "sqlite://" + db.url[len("sqlite:///"):]
    if db.dialect == "postgresql":
        return db.url.replace("postgresql://", "postgres://", 1)
    return db.url


def trace_table_ddl(dialect: str) -> list[str]:
    """Kamailio's own DDL for sip_trace, as statements. For SQLite with its NOT NULLs
    relaxed (db_sqlite writes an empty string as NULL) and its DEFAULTs kept."""
    text = (SHARE / SCHEMA_DIRS[dialect] / "siptrace-create.sql").read_text()
    if dialect == "sqlite":
        text = text.replace("PRIMARY KEY NOT NULL", "PRIMARY KEY")
        text = re.sub(r"\s+NOT NULL(?=,|\n)", "", text)
    return [VERSION_TABLE] + [s.strip() for s in text.split(";") if s.strip()]


def create_trace_table(db) -> None:
    """sip_trace and its version row in a fresh ScratchDatabase, as kamdbctl would."""
    conn = db.connect()
    try:
        cur = conn.cursor()
        for statement in trace_table_ddl(db.dialect):
            cur.execute(statement)
        conn.commit()
    finally:
        conn.close()


def kamailio_time(value) -> datetime:
    """A time_stamp as Kamailio's db module wrote it, as a naive datetime. db_sqlite stores
    a julian day (REAL); its reader turns it back with 86400 * (jd - 2440587.5) + 0.5,
    truncated to whole seconds. The others store DATETIME / TIMESTAMP."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, (int, float)):
        seconds = int(86400.0 * (value - JULIAN_UNIX_EPOCH) + 0.5)
        return datetime(1970, 1, 1) + timedelta(seconds=seconds)
    return datetime.fromisoformat(value)


def kamailio_msg(value) -> bytes:
    """msg as Kamailio's db module wrote it, back to the message's bytes. Kamailio's
    siptrace hands msg over as a BLOB: db_sqlite binds a BLOB (SQLite keeps it as one, in
    the TEXT column); db_postgres escapes it as bytea (``\\x`` then hex) into the TEXT
    column; db_mysql writes the text itself."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if value.startswith("\\x") and re.fullmatch(r"(?:[0-9a-fA-F]{2})*", value[2:]):
        return bytes.fromhex(value[2:])
    return value.encode("utf-8", "surrogateescape")


COLUMNS = ("id", "time_stamp", "time_us", "callid", "traced_user", "msg", "method", "status",
           "fromip", "toip", "fromtag", "totag", "direction")


def stored_rows(db, table: str = "sip_trace") -> list[dict]:
    """Kamailio's rows, read behind siptrace's back: NULL as '', ``date`` = time_stamp +
    time_us, ``msg`` as bytes; in id order."""
    rows = []
    for values in db.query(f"SELECT {', '.join(COLUMNS)} FROM {table} ORDER BY id"):
        row = {name: ("" if value is None else value) for name, value in zip(COLUMNS, values)}
        row["date"] = kamailio_time(row["time_stamp"]) + timedelta(microseconds=row["time_us"] or 0)
        row["msg"] = kamailio_msg(row["msg"])
        rows.append(row)
    return rows


def distinct_messages(rows: list[dict]) -> list[dict]:
    """Each message once: Kamailio stores a message once with traced_user '' and once more
    per AVP value, same time, addresses and bytes."""
    seen, out = set(), []
    for row in rows:
        key = (row["date"], row["fromip"], row["toip"], row["msg"])
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


class KamailioTracer:
    """Kamailio on PROXY_IP:port (and [::1]:port over UDP), SIPp callees on UAS_IP
    (port+20; +1 over TCP, +2 busy) and on [::1] (port+24), callers on UAC_IP or [::1],
    each caller run on a fresh port (no TCP TIME_WAIT clash)."""

    def __init__(self, lab: Lab, db, *, proxy_ip: str, uac_ip: str, uas_ip: str, port: int):
        self.lab, self.db = lab, db
        self.proxy_ip, self.uac_ip, self.uas_ip = proxy_ip, uac_ip, uas_ip
        self.port, self.uas_port, self.uas6_port = port, port + 20, port + 24
        self._uac_ports = itertools.count(port + 40)
        self._runs = itertools.count(1)
        self.workdir = lab.workdir

    def start(self) -> None:
        require_kamailio(self.db.dialect)
        values = {"PROXY_IP": self.proxy_ip, "PROXY_PORT": self.port, "UAS_IP": self.uas_ip,
                  "UAS_PORT": self.uas_port, "UAS6_PORT": self.uas6_port, "MODULES": MODULES,
                  "DB_MODULE": DB_MODULES[self.db.dialect], "DB_URL": kamailio_db_url(self.db),
                  "TRACE_FLAG": TRACE_FLAG, "AVP": TRACED_USER_AVP, "BUSY": BUSY}
        config = CONFIG
        for key, value in values.items():
            config = config.replace(f"@{key}@", str(value))
        (self.workdir / "kamailio.cfg").write_text(config)
        (self.workdir / "uas_busy.xml").write_text(UAS_BUSY)
        (self.workdir / "uac_busy.xml").write_text(UAC_BUSY.replace("@BUSY_CALLER@", BUSY_CALLER))
        kamailio = self.lab.start("kamailio", ["kamailio", "-f", str(self.workdir / "kamailio.cfg"),
                                               "-DD", "-E"])
        self.lab.wait_tcp(kamailio, "kamailio", self.proxy_ip, self.port)
        for ip, port, scenario, transport in (
                (self.uas_ip, self.uas_port, "uas", "udp"),
                (self.uas_ip, self.uas_port + 1, "uas", "tcp"),
                (self.uas_ip, self.uas_port + 2, "uas_busy.xml", "udp"),
                (self.uas_ip, self.uas_port + 3, "uas_busy.xml", "tcp"),
                ("::1", self.uas6_port, "uas", "udp6")):
            name = f"uas-{port}"
            option = ["-sn", scenario] if scenario == "uas" else ["-sf", scenario]
            proc = self.lab.start(name, ["sipp", *option, "-i", ip, "-p", str(port),
                                         "-t", SIPP_TRANSPORTS[transport], "-nostdin"])
            if transport == "tcp":
                self.lab.wait_tcp(proc, name, ip, port)
            else:
                self.lab._wait(proc, name, lambda: _udp_bound(ip, port))

    def call(self, transport: str, calls: int = 1, busy: bool = False) -> None:
        """``calls`` calls (transport udp, tcp or udp6), one at a time; raises LabError
        unless SIPp saw all of them through (answered and hung up, or 486 and ACK).
        Returns once Kamailio has written its rows."""
        self.finish(self.begin(transport, calls, busy))

    def begin(self, transport: str, calls: int = 1, busy: bool = False,
              hold_ms: int = 0) -> tuple[str, subprocess.Popen]:
        """Starts the caller (answered calls held ``hold_ms`` before the BYE): for finish()."""
        name = f"uac-{next(self._runs)}"
        scenario = ["-sf", "uac_busy.xml"] if busy else ["-sn", "uac", "-d", str(hold_ms)]
        proxy, ip = ((f"[::1]:{self.port}", "::1") if transport == "udp6"
                     else (f"{self.proxy_ip}:{self.port}", self.uac_ip))
        proc = self.lab.start(name, [
            "sipp", *scenario, proxy, "-s", BUSY if busy else ANSWERED,
            "-i", ip, "-p", str(next(self._uac_ports)), "-t", SIPP_TRANSPORTS[transport],
            "-m", str(calls), "-r", "10", "-l", "1",
            "-nostdin", "-timeout", f"{CALL_TIMEOUT}s", "-timeout_error"])
        return name, proc

    def finish(self, started: tuple[str, subprocess.Popen]) -> None:
        """Waits for a caller begun with begin() (bounded), then for Kamailio's rows."""
        name, proc = started
        try:
            status = proc.wait(CALL_TIMEOUT + 10)
        except subprocess.TimeoutExpired:
            status = None
        if status != 0:
            raise LabError(f"sipp {name} exited {status}:\n{self.lab.output(name)[-2000:]}\n"
                           f"kamailio:\n{self.lab.output('kamailio')[-3000:]}")
        self.settle()

    def settle(self, quiet: float = 0.3, timeout: float = 5.0) -> int:
        """Waits until Kamailio has written its last rows (a reply's "out" row is written
        after it was sent): the row count unchanged for ``quiet`` seconds. The count."""
        deadline = time.monotonic() + timeout
        count = self.db.query("SELECT COUNT(*) FROM sip_trace")[0][0]
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self.db.query("SELECT COUNT(*) FROM sip_trace")[0][0]
            if now == count:
                break
            count = now
        return count
