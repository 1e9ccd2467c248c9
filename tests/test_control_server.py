"""The control socket, for real: on/off/status over a Unix stream socket, garbage,
and the client's one-line errors."""

import os
import pwd
import socket
import stat
import subprocess
import tempfile
import threading
from contextlib import contextmanager

import pytest
from hypothesis import given, settings, strategies as st

from siptrace.config import load_settings
from siptrace.control.control import (MAX_CLIENTS, MAX_LINE, REQUEST_TIMEOUT_S, ControlServer,
                                      send_command)
from siptrace.errors import ControlError
from kamailio_lab import SIPTRACE, wait_for


class Proxy:
    """What `siptrace run` plugs in: the switch and the status source."""

    def __init__(self):
        self.trace_on = False
        self.settings = load_settings(None, env={}, cli_overrides={
            "db_url": "postgres://siptrace:s3cret@db.example.com/traces"})

    def switch(self, on):
        self.trace_on = on

    def status(self):
        return {"trace_on": self.trace_on, "traced_requests": 3, "traced_replies": 7,
                "settings": self.settings.public(),
                "last_error": "cannot reach mysql://root:hunter2@10.0.0.5/siptrace"}


@pytest.fixture
def server(tmp_path):
    proxy = Proxy()
    path = tmp_path / "ctl" / "control.sock"
    with ControlServer(path, switch=proxy.switch, status=proxy.status) as srv:
        srv.proxy = proxy
        yield srv


def raw_exchange(path, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(str(path))
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := client.recv(65536):
            data += chunk
    return data


def test_socket_mode_is_0600(server):
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600


@pytest.mark.parametrize("command, state", [
    ("on", True), ("ON", True), ("off", False), ("sip_trace on", True),
    ("Sip_Trace OFF", False), ("sip_trace On", True)])
def test_on_and_off(server, command, state):
    server.proxy.trace_on = not state
    assert send_command(server.path, command) == {"ok": True, "trace_on": state}
    assert server.proxy.trace_on is state


@pytest.mark.parametrize("command, error", [
    ("sip_trace", "sip_trace: missing argument (on or off)"),
    ("sip_trace maybe", "sip_trace: bad argument 'maybe' (on or off)"),
    ("sip_trace on off", "sip_trace: bad argument 'on off' (on or off)"),
    ("on now", "on: takes no argument"),
    ("frobnicate", "unknown command 'frobnicate' (commands: on, off, sip_trace on|off, "
                   "status, help)"),
])
def test_bad_commands_are_errors(server, command, error):
    before = server.proxy.trace_on
    with pytest.raises(ControlError) as info:
        send_command(server.path, command)
    assert str(info.value) == error
    assert server.proxy.trace_on is before


def test_status_reports_counters_and_never_a_password(server):
    reply = send_command(server.path, "status")
    status = reply["status"]
    assert status["traced_requests"] == 3 and status["traced_replies"] == 7
    assert status["settings"]["db_url"] == "postgres://siptrace:***@db.example.com/traces"
    assert status["last_error"] == "cannot reach mysql://root:***@10.0.0.5/siptrace"
    wire = raw_exchange(server.path, b"status\n")
    assert b"s3cret" not in wire and b"hunter2" not in wire


def test_garbage_gets_error_replies_and_the_server_goes_on(server):
    replies = raw_exchange(server.path, b"\xff\xfe\x00\n{not json\n{\"command\": 5}\n"
                                        b"[1, 2]\n   \nstatus\n").splitlines()
    assert [line.split(b'"error": ')[-1] for line in replies[:4]] == [
        b'"request is not UTF-8 text"}', b'"request is not valid JSON"}',
        b'"request must be {\\"command\\": STRING, \\"args\\": [STRING...]}"}',
        b'"unknown command \'[1,\' (commands: on, off, sip_trace on|off, status, help)"}']
    assert b'"ok": true' in replies[4] and len(replies) == 5
    assert server.stats["errors"] == 4
    assert send_command(server.path, "on")["trace_on"] is True


def test_overlong_line_is_refused(server):
    reply = raw_exchange(server.path, b"x" * (MAX_LINE * 3))
    assert reply == b'{"ok": false, "error": "line over 4096 bytes"}\n'
    assert send_command(server.path, "status")["ok"] is True


def test_a_failing_callback_is_an_error_reply_not_a_crash(tmp_path):
    def broken_status():
        raise RuntimeError("boom")

    with ControlServer(tmp_path / "c.sock", switch=lambda on: None,
                       status=broken_status) as srv:
        with pytest.raises(ControlError, match="internal error: RuntimeError"):
            send_command(srv.path, "status")
        assert send_command(srv.path, "on")["trace_on"] is True


def test_json_requests_work_too(server):
    reply = raw_exchange(server.path, b'{"command": "SIP_TRACE", "args": ["on"]}\n')
    assert reply == b'{"ok": true, "trace_on": true}\n'


# -- slow and idle clients ------------------------------------------------------------------

class SlowClient(threading.Thread):
    """A real client sending one byte of "status" every ``interval`` seconds, never a
    newline, until the server closes the connection (``closed_by_server``)."""

    def __init__(self, path, interval: float = 3.0):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.interval = interval
        self.stop = threading.Event()
        self.closed_by_server = threading.Event()
        self.start()

    def run(self):
        while True:
            try:
                self.sock.sendall(b"s")
                self.sock.settimeout(self.interval)
                if self.sock.recv(4096) == b"":  # EOF, or an error reply then EOF
                    break
            except socket.timeout:
                pass
            except OSError:
                break
            if self.stop.is_set():
                return
        self.closed_by_server.set()

    def close(self):
        self.stop.set()
        self.sock.close()


@pytest.fixture
def slow_clients(server):
    clients = [SlowClient(server.path) for _ in range(MAX_CLIENTS)]
    assert wait_for(lambda: server.stats["connections"] >= MAX_CLIENTS)
    yield clients
    for client in clients:
        client.close()


def test_slow_clients_do_not_lock_out_status(server, slow_clients):
    """The issue's attack: eight clients trickling a byte every 3 s."""
    for _ in range(3):
        assert send_command(server.path, "status")["ok"] is True
    out = subprocess.run(SIPTRACE + ["status", "--control-socket", str(server.path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "traced_requests: 3" in out.stdout, out.stderr
    assert server.stats["evicted"] >= 1


def test_a_request_has_a_deadline_not_each_read(server, slow_clients):
    """A client that never completes its line is closed, however often it sends."""
    assert wait_for(lambda: all(c.closed_by_server.is_set() for c in slow_clients),
                    timeout=REQUEST_TIMEOUT_S * 4)
    assert server.stats["timeouts"] == MAX_CLIENTS


def test_a_request_line_split_in_pieces_is_served(server):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(str(server.path))
        for piece in (b"sta", b"tu", b"s\n"):
            client.sendall(piece)
        assert b'"ok": true' in client.recv(65536)


# -- the client's errors -----------------------------------------------------------------------

def test_missing_socket(tmp_path):
    path = tmp_path / "nothing.sock"
    with pytest.raises(ControlError) as info:
        send_command(path, "status")
    assert str(info.value) == (f"no control socket at {path}: is `siptrace run` running? "
                               f"(see --control-socket)")


def test_stale_socket_is_refused(tmp_path):
    path = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    with pytest.raises(ControlError, match="refuses connections: siptrace is not running"):
        send_command(path, "status")


@contextmanager
def without_permission(path):
    """A client that may not write to the socket: another user when we are root."""
    if os.geteuid() == 0:
        os.seteuid(pwd.getpwnam("nobody").pw_uid)
        try:
            yield
        finally:
            os.seteuid(0)
    else:
        os.chmod(path, 0)
        try:
            yield
        finally:
            os.chmod(path, 0o600)


def test_permission_denied():
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        os.chmod(directory, 0o755)  # others may reach the socket, not connect to it
        path = os.path.join(directory, "control.sock")
        with ControlServer(path, switch=lambda on: None, status=dict):
            with without_permission(path):
                with pytest.raises(ControlError) as info:
                    send_command(path, "on")
    assert str(info.value) == (f"permission denied on control socket {path}: run as the "
                               f"user running siptrace (the socket is mode 0600)")


def test_empty_command():
    with pytest.raises(ControlError, match="no command given"):
        send_command("/nonexistent.sock", "  ")


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_any_request_line_gets_a_reply_never_an_exception(line):
    srv = ControlServer("/nonexistent/never-bound.sock", switch=lambda on: None,
                        status=lambda: {"trace_on": False})
    reply = srv.handle(line)
    assert reply["ok"] in (True, False)
    assert reply["ok"] or isinstance(reply["error"], str)
