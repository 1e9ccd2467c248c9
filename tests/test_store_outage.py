"""Database outages under load, through the writers production uses: none lost, none twice.

Live capture: `siptrace run --trace-all` captures numbered SIP messages on lo and
stores them through its store process (store/process.py: LiveWriter, and in the
child a BatchWriter with its spool) while the test stops and restarts the server.
Replay: ProcessWriter, replay's sink, fed numbered rows as the decoding loop feeds
it. Checked every time: each message stored exactly once, in the order sent.

These tests stop and restart the shared PostgreSQL and MariaDB servers (marked
``outage``: never run them in parallel with other database tests). Servers are always
restarted in a ``finally`` block and waited for.
"""

import socket
import threading
import time
import uuid

import pytest

from kamailio_lab import Lab, siptrace_status
from siptrace.store.process import ProcessWriter
from conftest import missing
from storefixtures import (ScratchDatabase, can_control_servers, make_rows, start_server,
                           stop_server)

pytestmark = [pytest.mark.outage, pytest.mark.parametrize("dialect", ["postgresql", "mysql"])]

PROXY, UAC = "127.0.0.71", "127.0.0.72"  # addresses no other test uses
PORT = 15370
RATE = 2_000  # messages/s on the wire while the server is stopped
OUTAGE_S = 20.0
PACE_S = 0.005  # the sender's bursts


@pytest.fixture
def db(dialect, tmp_path):
    if not can_control_servers():
        missing("stopping the database servers needs root, pg_ctlcluster and mariadbd")
    scratch = ScratchDatabase(dialect, tmp_path)
    yield scratch
    start_server(dialect)
    scratch.drop()


def message(call_id: str) -> bytes:
    return (f"OPTIONS sip:probe@{PROXY}:{PORT} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {UAC}:{PORT};branch=z9hG4bK-{call_id}\r\n"
            f"From: <sip:tester@{UAC}>;tag=t-{call_id}\r\nTo: <sip:probe@{PROXY}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


class Wire:
    """Numbered messages from UAC to PROXY at a steady rate; ``sent`` lists their Call-IDs.

    Call-IDs start with this test's own ``tag``: the capture filter lets IP fragments
    from anywhere through, so other tests' large messages on lo may be stored too.
    """

    def __init__(self):
        self.proxy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.proxy.bind((PROXY, PORT))  # bound, so that nothing answers ICMP unreachable
        self.uac = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.uac.bind((UAC, PORT))
        self.tag = f"outage{uuid.uuid4().hex[:8]}"
        self.sent: list[str] = []

    def send(self, prefix: str, count: int, rate: int = RATE) -> None:
        started, first = time.monotonic(), len(self.sent)
        for i in range(count):
            while i >= (time.monotonic() - started) * rate:
                time.sleep(PACE_S)
            call_id = f"{self.tag}-{prefix}-{i}"
            self.uac.sendto(message(call_id), (PROXY, PORT))
            self.sent.append(call_id)
        assert len(self.sent) == first + count

    def send_in_background(self, prefix: str, count: int) -> threading.Thread:
        thread = threading.Thread(target=self.send, args=(prefix, count), daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.proxy.close()
        self.uac.close()


@pytest.fixture
def wire():
    w = Wire()
    yield w
    w.close()


def run_siptrace(lab: Lab, tmp_path, db) -> tuple:
    control = tmp_path / "control.sock"
    proc = lab.siptrace_run(["--interface", "lo", "--proxy", f"{PROXY}:{PORT}", "--trace-all",
                             "--trace-on", "1", "--db-url", db.url,
                             "--spool-dir", str(tmp_path / "spool"), "--grace", "1",
                             "--decision-socket", str(tmp_path / "decisions.sock"),
                             "--control-socket", str(control)], control)
    return proc, control


def until(condition, control, what: str, timeout: float = 90.0) -> dict:
    """Polls the status until condition(status) holds; fails with the status if not."""
    deadline = time.monotonic() + timeout
    while True:
        status = siptrace_status(control)
        if condition(status):
            return status
        assert time.monotonic() < deadline, f"{what}: {status}"
        time.sleep(0.1)


def captured_all(wire):
    """At least every message sent was captured (other tests' fragments may add some)."""
    def check(status):
        assert status["kernel_drops"] == 0 and status["capture_queue_drops"] == 0, status
        return status["sip_messages"] >= len(wire.sent)
    return check


def stored(db, tag: str) -> list[str]:
    return [r[0] for r in db.query(
        "SELECT callid FROM sip_trace WHERE callid LIKE %s ORDER BY id", (f"{tag}-%",))]


def all_stored(db, wire):
    """A status condition: nothing pending or spooled, and every message in the table."""
    def check(status):
        return (not status["spool_depth"] and not status["rows_pending"]
                and len(stored(db, wire.tag)) >= len(wire.sent))
    return check


def assert_stored_once_in_order(db, tag: str, expected: list[str]) -> None:
    rows = stored(db, tag)
    assert len(rows) == len(expected) and len(set(rows)) == len(rows)
    assert rows == expected


def test_live_server_down_at_start(db, dialect, tmp_path, wire):
    with Lab(tmp_path) as lab:
        try:
            stop_server(dialect)
            proc, control = run_siptrace(lab, tmp_path, db)
            wire.send("start", 4_000)
            until(lambda s: captured_all(wire)(s) and s["spool_depth"] >= len(wire.sent),
                  control, "every row spooled while the server is down")
        finally:
            start_server(dialect)
        status = until(all_stored(db, wire), control,
                       "the spool drained once the server is up")
        assert status["rows_dropped"] == 0 and status["rows_spooled"] >= len(wire.sent)
        assert lab.stop(proc) == 0, lab.output("siptrace")
    assert_stored_once_in_order(db, wire.tag, wire.sent)


def test_live_server_stopped_20_s_under_load(db, dialect, tmp_path, wire):
    with Lab(tmp_path) as lab:
        proc, control = run_siptrace(lab, tmp_path, db)
        load = wire.send_in_background("load", int(RATE * (OUTAGE_S + 8)))
        until(lambda s: s["rows_stored"] >= 2 * RATE, control, "rows stored before the outage")
        try:
            stop_server(dialect)
            time.sleep(OUTAGE_S)
            status = siptrace_status(control)
            assert status["spool_depth"] > RATE * OUTAGE_S / 2, status  # spooling meanwhile
            assert status["db_last_error"], status
        finally:
            start_server(dialect)
        load.join()
        until(lambda s: captured_all(wire)(s) and all_stored(db, wire)(s), control,
              "every row stored after the outage")
        assert lab.stop(proc) == 0, lab.output("siptrace")
    assert_stored_once_in_order(db, wire.tag, wire.sent)


def test_live_sigterm_with_the_server_down_then_a_new_siptrace_drains(db, dialect, tmp_path,
                                                                       wire):
    with Lab(tmp_path) as lab:
        first, control = run_siptrace(lab, tmp_path, db)
        wire.send("before", 2_000)
        until(all_stored(db, wire), control, "rows stored")
        try:
            stop_server(dialect)
            wire.send("down", 3_000)
            until(captured_all(wire), control, "messages captured while the server is down")
            assert lab.stop(first) == 0, lab.output("siptrace")  # SIGTERM: the rest spooled
            summary = lab.output("siptrace")
            spooled = int(summary.split("rows_spooled:")[1].split()[0])
            assert spooled >= 3_000 and "rows_dropped:         0\n" in summary, summary
        finally:
            start_server(dialect)
        second, control = run_siptrace(lab, tmp_path, db)
        until(lambda s: s["rows_stored"] >= 3_000 and not s["spool_depth"], control,
              "the new siptrace drained the spool")
        wire.send("after", 2_000)
        until(all_stored(db, wire), control, "rows stored after the restart")
        assert lab.stop(second) == 0, lab.output("siptrace")
    assert_stored_once_in_order(db, wire.tag, wire.sent)


def test_replay_waits_for_a_server_stopped_under_load(db, dialect):
    """put() waits while the server is down (no row dropped), and goes on after."""
    rows = make_rows(80_000, "replay")
    # Every row here is a call of its own: the call index would make this test about
    # the index's speed, not about the writer's waiting.
    writer = ProcessWriter(db.url, "sip_trace", call_index=False)
    before, at_restart = replay_through_an_outage(
        writer, rows, lambda: stop_server(dialect), lambda: start_server(dialect), OUTAGE_S / 2)
    assert before == at_restart < len(rows), "put() went on with the server down"
    stats = writer.stats
    assert stats["rows_written"] == len(rows) and stats["dropped"] == 0, stats
    assert stats["errors"] >= 1, stats
    assert_stored_once_in_order(db, "replay", [r.callid for r in rows])


def replay_through_an_outage(writer, rows, stop, start, outage: float,
                             rate: float = 8_000) -> tuple[int, int]:
    """Feed ``rows`` to a ProcessWriter as replay_files does (1,000-row puts at ``rate``
    rows/s); once some are stored, ``stop()`` the server and ``start()`` it ``outage``
    seconds later; then close the writer, every row put. Returns the rows put 2 s
    before the restart and at the restart."""
    progress = [0]

    def feed():
        started = time.monotonic()
        for i in range(0, len(rows), 1000):
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
            writer.put(rows[i:i + 1000])
            progress[0] = i + 1000

    feeder = threading.Thread(target=feed, daemon=True)
    try:
        feeder.start()
        deadline = time.monotonic() + 60
        while not writer.stats["rows_written"]:
            assert time.monotonic() < deadline, writer.stats
            time.sleep(0.05)
        stop()
        time.sleep(outage - 2)
        before = progress[0]
        time.sleep(2)
        at_restart = progress[0]
    finally:
        start()
    feeder.join(120)
    assert progress[0] == len(rows)
    writer.close(timeout=120)
    return before, at_restart
