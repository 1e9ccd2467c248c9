"""Memory a peer controls: siptrace stays under MEMORY_CAP_MB per process whatever
peers send (README, docs/sidecar.md, Memory), measured as the peak RSS of the real
processes (the largest of them: the decoding process, its store and mirror children).

Replay reads a generated capture of hundreds of TCP streams announcing large
Content-Lengths, and a recording of 64 KB decisions with 13,000 AVP values each; live,
`siptrace run` sees the same streams on loopback connections and the same decisions on
its decision socket.
"""

import json
import os
import selectors
import socket
import threading

import pytest

from conftest import PCAPS, missing
from hostile import (avp_decision, hostile_decisions, nested, open_stream_flood, run_measured,
                     tree_peak_mb, write_message_flood, write_stream_flood)
from kamailio_lab import SIPTRACE, Lab, siptrace_status, wait_for
from storefixtures import any_db  # noqa: F401  (fixture)

MEMORY_CAP_MB = 256  # per process, at the default settings (docs/sidecar.md)
STREAMS, BODY = 400, 600_000  # 240 MB of incomplete messages, all open at once
DECISIONS = 1000  # of 64 KB, 13,000 AVP values each


def replay(tmp_path, *args) -> tuple[int, str, str, float]:
    return run_measured([*SIPTRACE, "replay", "--no-progress",
                         "--db-url", f"sqlite:///{tmp_path / 'trace.db'}", *args])


def test_replay_of_many_streams_announcing_large_messages_stays_under_the_cap(tmp_path):
    capture = tmp_path / "streams.pcap"
    write_stream_flood(capture, STREAMS, BODY)
    status, out, err, peak = replay(tmp_path, str(capture))
    assert status == 0, err
    assert peak < MEMORY_CAP_MB, out
    assert "streams cut at the buffer bound" in out  # counted, not silently lost


def test_replay_of_many_whole_megabyte_messages_stays_under_the_cap(tmp_path, any_db):
    # Rows travel to the store in batches bounded in bytes as well as rows: 600 rows of
    # 900 KB made one 550 MB batch in each process before (2.1 GB peak into SQLite).
    capture = tmp_path / "messages.pcap"
    write_message_flood(capture, 600, 900_000)
    status, out, err, peak = run_measured([*SIPTRACE, "replay", "--no-progress",
                                           "--db-url", any_db.url, str(capture)])
    assert status == 0, err
    assert "rows stored:         600" in out
    assert peak < MEMORY_CAP_MB, out


def test_replay_of_hostile_decisions_stays_under_the_cap_without_a_traceback(tmp_path):
    recording = tmp_path / "decisions.jsonl"
    bad = [line.decode() for line in hostile_decisions()] + [nested()]
    with open(recording, "w") as out:
        out.write('{"rt": 1700000000, "trace_on": true}\n')
        for i in range(DECISIONS):
            out.write(f'{{"rt": {1700000000 + i / 1000}, "decision": '
                      f'{avp_decision(i).decode()}}}\n')
        for n, decision in enumerate(bad):
            out.write(f'{{"rt": {1700000002 + n}, "decision": {decision}}}\n')
        out.write("[" * 500 + "]" * 500 + "\n")
    status, out, err, peak = replay(tmp_path, "--decisions", str(recording),
                                    str(PCAPS / "kamailio-udp.pcap"))
    assert status == 0 and "Traceback" not in err, err
    assert f"decisions read:      {DECISIONS} (switches 1, malformed lines skipped " \
           f"{len(bad) + 1})" in out
    assert peak < MEMORY_CAP_MB


# -- live ---------------------------------------------------------------------------------

PROXY = "127.0.0.47"
PORT = 15270


@pytest.fixture
def root():
    if os.geteuid() != 0:
        missing("live capture needs root (CAP_NET_RAW)")


def start(lab: Lab, tmp_path, *args):
    control = tmp_path / "control.sock"
    proc = lab.siptrace_run(["--interface", "lo", "--proxy", PROXY,
                             "--db-url", f"sqlite:///{tmp_path / 'trace.db'}",
                             "--decision-socket", str(tmp_path / "decisions.sock"),
                             "--control-socket", str(control), *args], control)
    return proc, control


class Sink:
    """A TCP listener on the proxy's address that reads and drops whatever comes."""

    def __init__(self):
        self.server = socket.create_server((PROXY, PORT), backlog=1024)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        with selectors.DefaultSelector() as selector:
            selector.register(self.server, selectors.EVENT_READ)
            while not self.stopped.is_set():
                for key, _ in selector.select(0.2):
                    if key.fileobj is self.server:
                        selector.register(self.server.accept()[0], selectors.EVENT_READ)
                    elif not key.fileobj.recv(1 << 20):
                        selector.unregister(key.fileobj)
                        key.fileobj.close()
            for key in list(selector.get_map().values()):
                key.fileobj.close()

    def close(self):
        self.stopped.set()
        self.thread.join()


def test_live_streams_announcing_large_messages_stay_under_the_cap(tmp_path, root):
    sink = Sink()
    with Lab(tmp_path) as lab:
        proc, control = start(lab, tmp_path, "--trace-all")
        conns = open_stream_flood(PROXY, PORT, 300, 800_000)
        try:
            cuts = wait_for(lambda: siptrace_status(control).get("tcp_not_stored", {})
                            .get("buffer_cuts", 0) > 0, timeout=60)
            settled = wait_for(captured_settles(control), timeout=60, interval=0.5)
            peak = tree_peak_mb(proc.pid)
        finally:
            for conn in conns:
                conn.close()
            sink.close()
        assert lab.stop(proc) == 0, lab.output("siptrace")
    assert settled, "the capture did not catch up"
    assert cuts and peak < MEMORY_CAP_MB


def captured_settles(control):
    """A predicate: true once the packets captured stop growing between two looks."""
    last = [None]

    def settled() -> bool:
        seen = siptrace_status(control)["packets_captured"]
        done, last[0] = seen == last[0], seen
        return done
    return settled


def test_live_decision_flood_stays_under_the_cap_and_records_strict_json(tmp_path, root):
    record = tmp_path / "decisions.jsonl"
    with Lab(tmp_path) as lab:
        proc, control = start(lab, tmp_path, "--trace-on", "1", "--record-decisions",
                              str(record))
        bad = hostile_decisions()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            for i in range(DECISIONS):
                client.sendto(avp_decision(i), str(tmp_path / "decisions.sock"))
            for datagram in bad + [nested().encode()]:
                client.sendto(datagram, str(tmp_path / "decisions.sock"))
        total = DECISIONS + len(bad) + 1
        assert wait_for(lambda: siptrace_status(control)["decisions_received"] == total,
                        timeout=60)
        status = siptrace_status(control)
        peak = tree_peak_mb(proc.pid)
        assert lab.stop(proc) == 0, lab.output("siptrace")
    assert status["decisions_malformed"] == len(bad) + 1  # the nested one lacks every field
    assert peak < MEMORY_CAP_MB
    lines = record.read_text(encoding="utf-8").splitlines()
    for line in lines:  # strict JSON (RFC 8259), and text UTF-8 can carry
        json.dumps(json.loads(line, parse_constant=_refuse), ensure_ascii=False).encode()
    assert sum('"decision"' in line for line in lines) == status["decisions_received"] \
        - status["decisions_malformed"] - status["decisions_dropped"]


def _refuse(name):
    raise AssertionError(f"{name} written to the recording")
