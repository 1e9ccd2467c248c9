"""End to end on loopback: SIPp UAC -> Kamailio (with the contrib kit) -> SIPp UAS,
`siptrace run` capturing on lo and storing what Kamailio's decisions say.

Kamailio is contrib/kamailio/kamailio.cfg itself; each test picks its behaviour with
defines (-A WITH_TRACE_FLAG ...). The proxy, UAC and UAS have their own loopback
addresses (127.0.0.31-33), so no other test's traffic reaches the capture. Every
process is stopped in the Lab's finally, whatever happens.
"""

import itertools
import os
import sqlite3
from collections import Counter

import pytest

from conftest import missing
from kamailio_lab import SIPTRACE, Lab, siptrace_status, wait_for
from siptrace.store.reader import TraceReader
from siptrace.view.search import parse_filter

PROXY_IP, UAC_IP, UAS_IP = "127.0.0.31", "127.0.0.32", "127.0.0.33"
PROXY_PORT, UAS_PORT = 15060, 15080
TRACE_FLAG = 22
MESSAGES_PER_CALL = 13  # on the wire, through a stateful proxy (TM's 100 Trying included)
_uac_ports = itertools.count(15070)  # a fresh UAC port per run: no TCP TIME_WAIT clash

FLAG, SIP_TRACE, USERS = "WITH_TRACE_FLAG", "WITH_SIP_TRACE", "WITH_TRACED_USERS"


@pytest.fixture(autouse=True)
def _needs_root():
    if os.geteuid() != 0:
        missing("live capture needs root (CAP_NET_RAW)")


class Call:
    """What SIPp's default uac/uas scenario puts on the wire through the proxy."""

    def __init__(self, transport: str, uac_port: int, uas_side_port: int = PROXY_PORT):
        self.p = f"{transport}:{PROXY_IP}:{PROXY_PORT}"  # the proxy, to and from the UAC
        self.ps = f"{transport}:{PROXY_IP}:{uas_side_port}"  # the proxy, to and from the UAS
        self.c = f"{transport}:{UAC_IP}:{uac_port}"
        self.s = f"{transport}:{UAS_IP}:{UAS_PORT}"

    def flag_rows(self):
        """trace_flag set: the transactions, as TM's callbacks traced them (+ the ACK)."""
        p, ps, c, s = self.p, self.ps, self.c, self.s
        return [("INVITE", "100", "out", p, c), ("INVITE", "", "out", ps, s),
                ("INVITE", "180", "in", s, ps), ("INVITE", "180", "out", p, c),
                ("INVITE", "200", "in", s, ps), ("INVITE", "200", "out", p, c),
                ("ACK", "", "out", ps, s),
                ("BYE", "", "out", ps, s), ("BYE", "200", "in", s, ps), ("BYE", "200", "out", p, c)]

    def sip_trace_rows(self):
        """sip_trace() on every message the proxy received: stored as received."""
        p, ps, c, s = self.p, self.ps, self.c, self.s
        return [("INVITE", "", "in", c, p), ("INVITE", "180", "in", s, ps),
                ("INVITE", "200", "in", s, ps), ("ACK", "", "in", c, p),
                ("BYE", "", "in", c, p), ("BYE", "200", "in", s, ps)]


def expected(rows, users=("",)):
    return Counter((*row, user) for row in rows for user in users)


def read_rows(db):
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT callid, traced_user, method, status, fromip, toip, fromtag, "
                            "direction, msg, date FROM sip_trace ORDER BY id").fetchall()


def by_call(rows):
    calls = {}
    for callid, user, method, status, fromip, toip, fromtag, direction, msg, date in rows:
        calls.setdefault(callid, []).append((method, status, direction, fromip, toip, user))
    return calls


def check_row_contents(rows):
    """Columns agree with the stored message itself."""
    for callid, user, method, status, fromip, toip, fromtag, direction, msg, date in rows:
        first_line = msg.split("\r\n", 1)[0]
        assert first_line.startswith(f"SIP/2.0 {status} " if status else f"{method} "), first_line
        assert f"Call-ID: {callid}\r\n" in msg
        assert f";tag={fromtag}" in msg.split("From:", 1)[1].split("\r\n", 1)[0]


class Run:
    """siptrace + Kamailio + SIPp for one test."""

    def __init__(self, lab: Lab, tmp_path, transport: str, defines, trace_on=True,
                 extra_args=()):
        self.lab, self.tmp, self.transport = lab, tmp_path, transport
        self.db = tmp_path / "trace.db"
        self.control = tmp_path / "control.sock"
        self.decisions = tmp_path / "decisions.sock"
        self.siptrace = lab.siptrace_run(
            ["--interface", "lo", "--proxy", PROXY_IP, "--trace-flag", str(TRACE_FLAG),
             "--traced-user-avp", "6843", "--trace-on", "1" if trace_on else "0",
             "--db-url", f"sqlite:///{self.db}", "--decision-socket", str(self.decisions),
             "--control-socket", str(self.control), "--grace", "1", *extra_args],
            self.control)
        lab.kamailio(ip=PROXY_IP, port=PROXY_PORT, next_ip=UAS_IP, next_port=UAS_PORT,
                     decision_socket=self.decisions, defines=defines)
        lab.uas(ip=UAS_IP, port=UAS_PORT, transport=transport)
        self.calls = 0

    def call(self, count: int = 1) -> tuple[int, int]:
        """Places calls; (the UAC's port, its pid: the Call-IDs are '<n>-<pid>@ip')."""
        port = next(_uac_ports)
        proc = self.lab.uac(proxy_ip=PROXY_IP, proxy_port=PROXY_PORT, ip=UAC_IP, port=port,
                            transport=self.transport, calls=count)
        self.calls += count
        return port, proc.pid

    def finish(self) -> tuple[list, dict]:
        """Wait until every message is captured, stop siptrace (SIGTERM); rows, status."""
        want = self.calls * MESSAGES_PER_CALL
        status = wait_for(lambda: (s := siptrace_status(self.control))["sip_messages"] >= want
                          and s)
        status = siptrace_status(self.control)
        exit_status = self.lab.stop(self.siptrace)
        assert exit_status == 0, self.lab.output("siptrace")
        assert status["sip_messages"] == want, status
        assert status["kernel_drops"] == 0
        return read_rows(self.db), status


def proxy_port_towards_uas(transport, rows) -> int:
    """The proxy's port in its exchanges with the UAS: with TCP, the ephemeral port of
    the connection Kamailio opened."""
    if transport == "udp":
        return PROXY_PORT
    uas = f"tcp:{UAS_IP}:{UAS_PORT}"
    ports = {int(other.rsplit(":", 1)[1]) for r in rows
             for end, other in ((r[4], r[5]), (r[5], r[4])) if end == uas}
    assert len(ports) == 1, ports
    port = ports.pop()
    assert port != PROXY_PORT
    return port


def call_shape(transport, port, rows):
    return Call(transport, port, proxy_port_towards_uas(transport, rows))


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_flag_only(tmp_path, transport):
    with Lab(tmp_path) as lab:
        run = Run(lab, tmp_path, transport, [FLAG])
        port, pid = run.call(2)
        rows, status = run.finish()
    calls = by_call(rows)
    assert sorted(calls) == [f"1-{pid}@{UAC_IP}", f"2-{pid}@{UAC_IP}"]
    call = call_shape(transport, port, rows)
    for callid, got in calls.items():
        assert Counter(got) == expected(call.flag_rows()), callid
    check_row_contents(rows)
    assert status["traced_requests"] == 2 * 3 and status["traced_replies"] == 2 * 7
    with TraceReader(f"sqlite:///{run.db}") as reader:  # the live writer keeps the index
        listed = {c.callid: (c.state, c.msg_count, c.to_user) for c in reader.search(parse_filter())}
    assert listed == {callid: ("completed", len(got), "service") for callid, got in calls.items()}


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_explicit_sip_trace(tmp_path, transport):
    with Lab(tmp_path) as lab:
        run = Run(lab, tmp_path, transport, [SIP_TRACE])
        port, pid = run.call(2)
        rows, status = run.finish()
    calls = by_call(rows)
    assert len(calls) == 2
    call = call_shape(transport, port, rows)
    for got in calls.values():
        assert Counter(got) == expected(call.sip_trace_rows())
    check_row_contents(rows)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_two_traced_users_give_three_rows_per_message(tmp_path, transport):
    with Lab(tmp_path) as lab:
        run = Run(lab, tmp_path, transport, [FLAG, USERS])
        port, pid = run.call(1)
        rows, status = run.finish()
    [(callid, got)] = by_call(rows).items()
    caller = f"sip:sipp@{UAC_IP}:{port}"
    callee = f"sip:service@{PROXY_IP}:{PROXY_PORT}"
    call = call_shape(transport, port, rows)
    assert Counter(got) == expected(call.flag_rows(), users=("", caller, callee))
    assert len(rows) == 30
    check_row_contents(rows)
    assert status["traced_requests"] + status["traced_replies"] == 10  # messages, not rows


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_trace_off_stores_nothing(tmp_path, transport):
    with Lab(tmp_path) as lab:
        run = Run(lab, tmp_path, transport, [FLAG, SIP_TRACE, USERS], trace_on=False)
        run.call(2)
        rows, status = run.finish()
    assert rows == []
    assert status["trace"] == "off"
    assert status["decisions_received"] == 2 * 6  # the proxy decided; siptrace was off
    assert status["decisions_malformed"] == 0


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_switched_on_and_off_during_a_run(tmp_path, transport):
    import subprocess

    def switch(word):
        out = subprocess.run(SIPTRACE + [word, "--control-socket", str(run.control)],
                             capture_output=True, timeout=10)
        assert out.returncode == 0, out.stderr

    with Lab(tmp_path) as lab:
        run = Run(lab, tmp_path, transport, [FLAG], trace_on=False)
        _, before = run.call(1)
        switch("on")
        port, during = run.call(1)
        switch("off")
        _, after = run.call(1)
        rows, status = run.finish()
    calls = by_call(rows)
    assert list(calls) == [f"1-{during}@{UAC_IP}"]
    call = call_shape(transport, port, rows)
    assert Counter(calls[f"1-{during}@{UAC_IP}"]) == expected(call.flag_rows())
    assert status["trace"] == "off"


def test_record_then_replay_gives_the_same_rows(tmp_path):
    """Live with --record-decisions while tcpdump captures; replay capture + decisions."""
    import subprocess

    from conftest import require_tool

    require_tool("tcpdump")
    recording = tmp_path / "decisions.jsonl"
    capture = tmp_path / "live.pcap"
    with Lab(tmp_path) as lab:
        tcpdump = lab.start("tcpdump", ["tcpdump", "-i", "lo", "-n", "--immediate-mode", "-U",
                                        "-s", "0", "-w", str(capture), f"host {PROXY_IP}"])
        assert wait_for(lambda: "listening on" in lab.output("tcpdump"))
        run = Run(lab, tmp_path, "udp", [FLAG, SIP_TRACE, USERS],
                  extra_args=["--record-decisions", str(recording)])
        run.call(2)
        switched = subprocess.run(SIPTRACE + ["off", "--control-socket", str(run.control)],
                                  capture_output=True, timeout=10)
        assert switched.returncode == 0, switched.stderr
        run.call(1)  # not traced, live or replayed
        live_rows, _ = run.finish()
        lab.stop(tcpdump)
    replay_db = tmp_path / "replay.db"
    out = subprocess.run(SIPTRACE + ["replay", str(capture), "--decisions", str(recording),
                                     "--db-url", f"sqlite:///{replay_db}", "--proxy", PROXY_IP,
                                     "--trace-flag", str(TRACE_FLAG), "--traced-user-avp", "6843",
                                     "--no-progress"],
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    replayed = read_rows(replay_db)
    assert len(live_rows) == 2 * (10 + 6) * 3  # flag + sip_trace, three rows each, 2 calls
    assert Counter(replayed) == Counter(live_rows)


def test_kit_never_fails_routing_when_siptrace_is_down(tmp_path):
    """No siptrace: every publish fails, calls go through, one warning per process."""
    with Lab(tmp_path) as lab:
        lab.kamailio(ip=PROXY_IP, port=PROXY_PORT, next_ip=UAS_IP, next_port=UAS_PORT,
                     decision_socket=tmp_path / "nobody-listens.sock",
                     defines=[FLAG, SIP_TRACE, USERS])
        lab.uas(ip=UAS_IP, port=UAS_PORT, transport="udp")
        lab.uac(proxy_ip=PROXY_IP, proxy_port=PROXY_PORT, ip=UAC_IP, port=next(_uac_ports),
                transport="udp", calls=3)
        log = lab.output("kamailio")
    warnings = [line for line in log.splitlines() if "siptrace: cannot send" in line]
    assert warnings and all("No such file or directory" in w for w in warnings)
    assert len(warnings) <= 4  # at most one a minute per worker process
    assert "Traceback" not in log
