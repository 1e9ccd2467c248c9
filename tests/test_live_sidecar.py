"""`siptrace run` as a process: capture on lo, decisions over its socket, stop and flush.

The "proxy" here is a few Python sockets on 127.0.0.41 playing a stateful proxy's
part on the wire, and a Unix datagram socket sending its decisions; the full
Kamailio + SIPp runs are in test_kamailio_e2e.py. Each test has its own addresses
(127.0.0.41-44), so no other traffic reaches the capture.
"""

import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess

import pytest

from conftest import missing
from kamailio_lab import SIPTRACE, Lab, siptrace_status, wait_for

PROXY, UAC, UAS, OTHER = "127.0.0.41", "127.0.0.42", "127.0.0.43", "127.0.0.44"
PORT = 15260


@pytest.fixture(autouse=True)
def _needs_root():
    if os.geteuid() != 0:
        missing("live capture needs root (CAP_NET_RAW)")


def invite(call_id: str, vias: list[str]) -> bytes:
    via = "".join(f"Via: SIP/2.0/UDP {v}\r\n" for v in vias)
    return (f"INVITE sip:bob@{UAS}:{PORT} SIP/2.0\r\n{via}"
            f"From: <sip:alice@{UAC}>;tag=a1\r\nTo: <sip:bob@{UAS}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode()


class Wire:
    """UAC, proxy and UAS sockets on their loopback addresses."""

    def __init__(self):
        self.socks = {}
        for name, ip in (("uac", UAC), ("proxy", PROXY), ("uas", UAS)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((ip, PORT))
            self.socks[name] = sock

    def send(self, src: str, dst_ip: str, data: bytes) -> None:
        self.socks[src].sendto(data, (dst_ip, PORT))

    def close(self):
        for sock in self.socks.values():
            sock.close()


@pytest.fixture
def wire():
    w = Wire()
    yield w
    w.close()


def start(lab: Lab, tmp_path, *args, proxy=f"{PROXY}:{PORT}"):
    control = tmp_path / "control.sock"
    proc = lab.siptrace_run(["--interface", "lo", "--proxy", proxy,
                             "--db-url", f"sqlite:///{tmp_path / 'trace.db'}",
                             "--decision-socket", str(tmp_path / "decisions.sock"),
                             "--control-socket", str(control), "--grace", "1", *args], control)
    return proc, control


def stored(tmp_path) -> list[tuple]:
    db = tmp_path / "trace.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT callid, traced_user, method, direction, fromip, toip "
                            "FROM sip_trace ORDER BY id").fetchall()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stores_everything_pending(tmp_path, wire, sig):
    calls = 200
    with Lab(tmp_path) as lab:
        proc, control = start(lab, tmp_path, "--trace-all", "--trace-on", "1")
        for i in range(calls):
            wire.send("uac", PROXY, invite(f"sig-{i}", [f"{UAC}:{PORT};branch=z9hG4bKu{i}"]))
        assert wait_for(lambda: siptrace_status(control)["sip_messages"] == calls)
        proc.send_signal(sig)
        assert proc.wait(30) == 0, lab.output("siptrace")
    rows = stored(tmp_path)
    assert sorted(r[0] for r in rows) == sorted(f"sig-{i}" for i in range(calls))
    assert {r[3:] for r in rows} == {("in", f"udp:{UAC}:{PORT}", f"udp:{PROXY}:{PORT}")}
    assert f"rows_stored:          {calls}" in lab.output("siptrace")
    assert not (tmp_path / "control.sock").exists()


def send_decision(tmp_path, obj) -> None:
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(data, str(tmp_path / "decisions.sock"))


def decision(call_id, branch, flags=0, trace=False, users=()):
    return {"callid": call_id, "cseq": "1 INVITE", "branch": branch, "kind": "request",
            "flags": flags, "avps": {"6843": list(users)} if users else {}, "trace": trace,
            "src": f"udp:{UAC}:{PORT}"}


def test_decisions_decide_what_is_stored(tmp_path, wire):
    """Flag 3 on one call, sip_trace on another, nothing on a third; garbage counted."""
    with Lab(tmp_path) as lab:
        proc, control = start(lab, tmp_path, "--trace-flag", "3", "--trace-on", "1")
        for n, (flags, trace, users) in enumerate([(1 << 3, False, ("sip:alice@a",)),
                                                   (0, True, ()), (0, False, ())]):
            call, ub, pb = f"call-{n}", f"z9hG4bKuac{n}", f"z9hG4bKprx{n}"
            wire.send("uac", PROXY, invite(call, [f"{UAC}:{PORT};branch={ub}"]))
            send_decision(tmp_path, decision(call, ub, flags, trace, users))
            wire.send("proxy", UAS, invite(call, [f"{PROXY}:{PORT};branch={pb}",
                                                  f"{UAC}:{PORT};branch={ub}"]))
        send_decision(tmp_path, b"not json")
        send_decision(tmp_path, {"callid": "x"})
        send_decision(tmp_path, b"{" + b" " * 70000 + b"}")
        send_decision(tmp_path, decision("never-on-the-wire", "z9hG4bKnone", 1 << 3))
        # Decisions (a socket) can be read before the packets (capture, then a queue,
        # then the loop) are counted: wait for both.
        def counted():
            now = siptrace_status(control)
            return now["decisions_received"] == 7 and now["sip_messages"] == 6
        assert wait_for(counted)
        status = siptrace_status(control)
        assert lab.stop(proc) == 0
        summary = lab.output("siptrace")
    assert status["decisions_malformed"] == 3
    assert status["sip_messages"] == 6
    assert "decisions_unmatched:  1\n" in summary  # given up at the latest at exit
    assert sorted(stored(tmp_path)) == [
        ("call-0", "", "INVITE", "out", f"udp:{PROXY}:{PORT}", f"udp:{UAS}:{PORT}"),
        ("call-0", "sip:alice@a", "INVITE", "out", f"udp:{PROXY}:{PORT}", f"udp:{UAS}:{PORT}"),
        ("call-1", "", "INVITE", "in", f"udp:{UAC}:{PORT}", f"udp:{PROXY}:{PORT}"),
    ]


def test_sockets_modes_and_status_without_secrets(tmp_path):
    url = "mysql://siptrace:s3cret-pw@127.0.0.1:3306/siptrace_nowhere"
    control = tmp_path / "control.sock"
    with Lab(tmp_path) as lab:
        lab.siptrace_run(["--interface", "lo", "--proxy", PROXY, "--trace-all", "--db-url", url,
                          "--decision-socket", str(tmp_path / "run" / "decisions.sock"),
                          "--control-socket", str(control)], control)
        assert stat.S_IMODE(os.stat(control).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(tmp_path / "run" / "decisions.sock").st_mode) == 0o660
        status = siptrace_status(control)
        out = subprocess.run(SIPTRACE + ["status", "--control-socket", str(control)],
                             capture_output=True, timeout=10)
    assert status["db_url"] == "mysql://siptrace:***@127.0.0.1:3306/siptrace_nowhere"
    assert "s3cret" not in json.dumps(status)
    assert status["capture_filter"].startswith(f"((host {PROXY} and (udp or tcp or sctp))")
    assert "and not (dst host 127.0.0.1 and dst port 3306)" in status["capture_filter"]
    assert out.returncode == 0, out.stderr
    assert b"s3cret" not in out.stdout + out.stderr


def test_mirror_copies_to_the_proxy_host_are_not_traced_again(tmp_path, wire):
    """duplicate_uri on the proxy's own address: its copies must not loop back in."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind((PROXY, PORT + 1))
        listener.settimeout(5)
        with Lab(tmp_path) as lab:
            proc, control = start(lab, tmp_path, "--trace-all", "--trace-on", "1",
                                  "--duplicate-uri", f"sip:{PROXY}:{PORT + 1}", proxy=PROXY)
            for i in range(5):
                wire.send("uac", PROXY, invite(f"m-{i}", [f"{UAC}:{PORT};branch=z9hG4bKm{i}"]))
            copies = [listener.recv(65536) for _ in range(5)]
            status = siptrace_status(control)
            assert lab.stop(proc) == 0
    assert [c.split(b"Call-ID: ")[1].split(b"\r\n")[0] for c in copies] == \
        [f"m-{i}".encode() for i in range(5)]
    assert sorted(r[0] for r in stored(tmp_path)) == [f"m-{i}" for i in range(5)]
    assert status["sip_messages"] == 5


def test_config_file_environment_and_command_line(tmp_path, wire):
    """file < SIPTRACE_* < command line, through `siptrace run --config`."""
    ini = tmp_path / "siptrace.ini"
    ini.write_text(f"[siptrace]\ntrace_all = 1\ntrace_on = 0\nproxy = {OTHER}\n"
                   f"interface = lo\ndb_url = sqlite:///{tmp_path / 'unused.db'}\n")
    control = tmp_path / "control.sock"
    env = dict(os.environ, SIPTRACE_TRACE_ON="1", SIPTRACE_PROXY=f"{PROXY}:{PORT}")
    with Lab(tmp_path) as lab:
        proc = lab.start("siptrace", SIPTRACE + [
            "run", "--config", str(ini), "--db-url", f"sqlite:///{tmp_path / 'trace.db'}",
            "--decision-socket", str(tmp_path / "d.sock"), "--control-socket", str(control)],
            env=env)
        assert wait_for(lambda: control.exists() or proc.poll() is not None)
        wire.send("uac", PROXY, invite("cfg-1", [f"{UAC}:{PORT};branch=z9hG4bKc"]))
        assert wait_for(lambda: siptrace_status(control)["sip_messages"] == 1)
        assert lab.stop(proc) == 0
    assert [r[0] for r in stored(tmp_path)] == ["cfg-1"]
    assert not (tmp_path / "unused.db").exists()


@pytest.mark.parametrize("args, message", [
    (["--interface", "nope0"], "siptrace: interface: no network interface named 'nope0'"),
    (["--trace-flag", "32"], "siptrace: trace_flag: '32' is out of range (0..31) (from --trace-flag)"),
    (["--proxy", "proxy.example.com"], "siptrace: proxy: 'proxy.example.com' is not"),
])
def test_bad_settings_exit_1_with_one_line(tmp_path, args, message):
    out = subprocess.run(SIPTRACE + ["run", "--decision-socket", str(tmp_path / "d.sock"),
                                     "--control-socket", str(tmp_path / "c.sock"),
                                     "--db-url", f"sqlite:///{tmp_path / 't.db'}", *args],
                         capture_output=True, timeout=30, text=True)
    assert out.returncode == 1
    assert out.stderr.startswith(message), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c.sock").exists()
