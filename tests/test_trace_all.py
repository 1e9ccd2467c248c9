"""`siptrace run --trace-all` traces from the start unless --trace-on 0 is given;
`siptrace --version`, and version and uptime in `siptrace status`."""

import os
import socket
import sqlite3
import subprocess

import pytest

from conftest import missing
from kamailio_lab import SIPTRACE, Lab, siptrace_status, wait_for
from siptrace import __version__

PROXY, UAC = "127.0.0.61", "127.0.0.62"  # addresses of this file's tests only
PORT = 15360


@pytest.fixture(autouse=True)
def _needs_root():
    if os.geteuid() != 0:
        missing("live capture needs root (CAP_NET_RAW)")


def invite(call_id: str) -> bytes:
    return (f"INVITE sip:bob@{PROXY} SIP/2.0\r\nVia: SIP/2.0/UDP {UAC}:{PORT};branch=z9hG4bK"
            f"{call_id}\r\nFrom: <sip:alice@{UAC}>;tag=a1\r\nTo: <sip:bob@{PROXY}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode()


def send_invite(call_id: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((UAC, PORT))
        sock.sendto(invite(call_id), (PROXY, PORT))


def stored(db) -> list[str]:
    with sqlite3.connect(db) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sip_trace'").fetchall():
            return []
        return [r[0] for r in conn.execute("SELECT callid FROM sip_trace ORDER BY id")]


def run_and_send(tmp_path, *args):
    """Start `siptrace run --trace-all ARGS`, send one INVITE, stop: (status, output)."""
    control = tmp_path / "control.sock"
    with Lab(tmp_path) as lab:
        proc = lab.siptrace_run(["--interface", "lo", "--proxy", f"{PROXY}:{PORT}",
                                 "--trace-all", *args,
                                 "--db-url", f"sqlite:///{tmp_path / 'trace.db'}",
                                 "--decision-socket", str(tmp_path / "d.sock"),
                                 "--control-socket", str(control)], control)
        send_invite("first-call")
        assert wait_for(lambda: siptrace_status(control)["sip_messages"] == 1)
        status = siptrace_status(control)
        assert lab.stop(proc) == 0
        return status, lab.output("siptrace")


def test_trace_all_alone_traces_from_the_start(tmp_path):
    status, output = run_and_send(tmp_path)
    assert status["trace"] == "on"
    assert "trace on (all messages)" in output
    assert stored(tmp_path / "trace.db") == ["first-call"]


def test_trace_all_with_trace_on_0_waits_for_siptrace_on(tmp_path):
    status, output = run_and_send(tmp_path, "--trace-on", "0")
    assert status["trace"] == "off" and "trace off (all messages)" in output
    assert status["rows_stored"] == 0 and status["rows_pending"] == 0
    assert stored(tmp_path / "trace.db") == []


def test_status_has_version_and_uptime(tmp_path):
    status, _ = run_and_send(tmp_path)
    assert status["version"] == __version__
    assert isinstance(status["uptime"], int) and status["uptime"] >= 0


def test_version_option():
    out = subprocess.run(SIPTRACE + ["--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout == f"siptrace {__version__}\n"
