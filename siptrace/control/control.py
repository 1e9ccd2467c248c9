"""The control socket: ``siptrace on|off|status`` talking to ``siptrace run``.

A Unix stream socket (mode 0600), one request per line, one JSON reply per line.
A request is a JSON object ``{"command": "sip_trace", "args": ["on"]}`` or plain
words ``sip_trace on`` (for socat/nc users). Commands (case-insensitive, like the
module's MI command): ``on``, ``off``, ``sip_trace on|off``, ``status``, ``help``.
Replies: ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.

Each request line must arrive whole within REQUEST_TIMEOUT_S of the connection or of
the previous reply, however slowly its bytes trickle in; with MAX_CLIENTS connections
open, a new one closes the one waiting longest for its line, so that slow or idle
clients never lock `siptrace status` out.
"""

import json
import logging
import os
import socket
import threading
import time
from collections import Counter
from typing import Callable

from siptrace.redact import redact
from siptrace.control.unixsock import POLL_S, UnixSocketServer
from siptrace.errors import ControlError

MAX_LINE = 4096  # a request line; longer is garbage
MAX_REPLY = 1 << 20  # what the client reads of a reply
MAX_CLIENTS = 8  # connections served at once; a new one evicts the oldest request
REQUEST_TIMEOUT_S = 5.0  # a whole request line, not one read
COMMANDS = ("on", "off", "sip_trace on|off", "status", "help")
SWITCH_WORDS = {"on": True, "off": False}

log = logging.getLogger("siptrace.control")


class ControlServer(UnixSocketServer):
    """Serves the control socket in threads.

    ``switch(on)`` turns tracing on or off; ``status()`` returns a JSON-ready dict
    (trace state and counters). Both run in a connection thread: they must be
    thread-safe. Replies are passed through ``siptrace.redact.redact`` as a last guard
    against passwords. ``stats``: connections, commands, errors, timeouts, evicted.
    """

    KIND = socket.SOCK_STREAM
    THREAD_NAME = "siptrace-control"

    def __init__(self, path, *, switch: Callable[[bool], None], status: Callable[[], dict],
                 mode: int = 0o600, key: str = "control_socket"):
        super().__init__(path, mode, key)
        self.switch = switch
        self.status = status
        self.stats: Counter = Counter()
        self._lock = threading.Lock()
        self._waiting: dict[socket.socket, float] = {}  # connection -> its request's start

    def _prepare(self, sock: socket.socket) -> None:
        sock.listen(MAX_CLIENTS)

    def _serve_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                self._stop.wait(POLL_S)
                continue
            if self._stop.is_set():
                conn.close()
                break
            self.stats["connections"] += 1
            with self._lock:
                if len(self._waiting) >= MAX_CLIENTS:
                    self._evict(min(self._waiting, key=self._waiting.get))
                self._waiting[conn] = time.monotonic()
            threading.Thread(target=self._serve, args=(conn,), name="siptrace-control-conn",
                             daemon=True).start()

    def _evict(self, conn: socket.socket) -> None:
        """Make room (under ``_lock``): the connection's thread sees EOF and ends."""
        del self._waiting[conn]
        self.stats["evicted"] += 1
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone

    def _serve(self, conn: socket.socket) -> None:
        try:
            buffer = b""
            deadline = time.monotonic() + REQUEST_TIMEOUT_S
            while not self._stop.is_set():
                newline = buffer.find(b"\n")
                if newline < 0:
                    if len(buffer) > MAX_LINE:
                        self._refuse_line(conn)
                        return
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise socket.timeout
                    conn.settimeout(remaining)
                    chunk = conn.recv(MAX_LINE)
                    if not chunk:
                        return
                    buffer += chunk
                    continue
                line, buffer = buffer[:newline], buffer[newline + 1:]
                if len(line) > MAX_LINE:
                    self._refuse_line(conn)
                    return
                if line.strip():
                    _send(conn, self.handle(line))
                    deadline = time.monotonic() + REQUEST_TIMEOUT_S
                    with self._lock:
                        if conn in self._waiting:
                            self._waiting[conn] = time.monotonic()
        except socket.timeout:
            self.stats["timeouts"] += 1
            _send(conn, {"ok": False, "error": f"no whole request line within "
                                               f"{REQUEST_TIMEOUT_S:g} s"})
        except OSError:
            pass  # the client went away, or was evicted
        finally:
            with self._lock:
                self._waiting.pop(conn, None)
            conn.close()

    def _refuse_line(self, conn: socket.socket) -> None:
        self.stats["errors"] += 1
        _send(conn, {"ok": False, "error": f"line over {MAX_LINE} bytes"})
        # Closing with unread input would reset the connection and lose the reply.
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(POLL_S)
        for _ in range(64):
            if not conn.recv(65536):
                break

    def handle(self, line: bytes) -> dict:
        """The reply to one request line (never raises)."""
        self.stats["commands"] += 1
        try:
            command, args = _parse_request(line)
            reply = self._dispatch(command, args)
        except _BadRequest as exc:
            self.stats["errors"] += 1
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a callback's bug must not kill the control socket
            log.exception("control command failed")
            self.stats["errors"] += 1
            return {"ok": False, "error": f"internal error: {type(exc).__name__}"}
        return redact(reply)

    def _dispatch(self, command: str, args: list[str]) -> dict:
        if command in SWITCH_WORDS:
            if args:
                raise _BadRequest(f"{command}: takes no argument")
            return self._switch(SWITCH_WORDS[command])
        if command == "sip_trace":
            if not args:
                raise _BadRequest("sip_trace: missing argument (on or off)")
            word = args[0].lower()
            if len(args) > 1 or word not in SWITCH_WORDS:
                raise _BadRequest(f"sip_trace: bad argument {' '.join(args)!r} (on or off)")
            return self._switch(SWITCH_WORDS[word])
        if command == "status":
            if args:
                raise _BadRequest("status: takes no argument")
            status = self.status()
            if not isinstance(status, dict):
                raise TypeError("status callback returned no dict")
            return {"ok": True, "status": status}
        if command == "help":
            return {"ok": True, "commands": list(COMMANDS)}
        raise _BadRequest(f"unknown command {command!r} (commands: {', '.join(COMMANDS)})")

    def _switch(self, on: bool) -> dict:
        self.switch(on)
        return {"ok": True, "trace_on": on}


class _BadRequest(Exception):
    pass


def _parse_request(line: bytes) -> tuple[str, list[str]]:
    try:
        text = line.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise _BadRequest("request is not UTF-8 text") from None
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            raise _BadRequest("request is not valid JSON") from None
        command = obj.get("command") if isinstance(obj, dict) else None
        args = obj.get("args", []) if isinstance(obj, dict) else None
        if not isinstance(command, str) or not isinstance(args, list) \
                or not all(isinstance(a, str) for a in args):
            raise _BadRequest('request must be {"command": STRING, "args": [STRING...]}')
        words = [command] + args
    else:
        words = text.split()
    if not words or not words[0]:
        raise _BadRequest("empty command")
    return words[0].lower(), words[1:]


def _send(conn: socket.socket, reply: dict) -> None:
    try:
        conn.sendall(json.dumps(reply, default=str).encode() + b"\n")
    except OSError:
        pass


def send_command(path, command: str, timeout: float = 5.0) -> dict:
    """Send one command (e.g. ``"on"``, ``"status"``) to a running siptrace.

    Returns the reply (``reply["ok"]`` is True). Raises ControlError with one clear
    line when the socket is missing, refused, not permitted, or the command failed.
    """
    path = os.fspath(path)
    words = command.split()
    if not words:
        raise ControlError("no command given")
    request = json.dumps({"command": words[0], "args": words[1:]}).encode() + b"\n"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlError(f"no control socket at {path}: is `siptrace run` running? "
                               f"(see --control-socket)") from None
        except ConnectionRefusedError:
            raise ControlError(f"control socket {path} refuses connections: siptrace is "
                               f"not running there (stale socket)") from None
        except PermissionError:
            raise ControlError(f"permission denied on control socket {path}: run as the "
                               f"user running siptrace (the socket is mode 0600)") from None
        except OSError as exc:
            raise ControlError(f"control socket {path}: {exc.strerror or exc}") from None
        try:
            sock.sendall(request)
            reply = _read_reply(sock)
        except socket.timeout:
            raise ControlError(f"no reply from {path} within {timeout:g} s") from None
        except OSError as exc:
            raise ControlError(f"control socket {path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error") or "command failed"))
    return reply


def _read_reply(sock: socket.socket) -> dict:
    data = b""
    while b"\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REPLY:
            raise ControlError("reply too long")
    try:
        reply = json.loads(data.partition(b"\n")[0])
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise ControlError("bad reply from the control socket")
    return reply
