"""``siptrace web`` on uvicorn: the listen address checked, one line printed, then
requests served until SIGINT or SIGTERM.

A password (``web_password``, from the config file or SIPTRACE_WEB_PASSWORD, never
the command line) is required to listen on anything but loopback. uvicorn's access
log shows the client, request line and status, never a header.
"""

import contextlib
import os
import signal
import socket
import threading
from ipaddress import ip_address

import uvicorn

from siptrace.direction import parse_endpoint
from siptrace.errors import ConfigError
from siptrace.redact import redact_url
from siptrace.store.schema import check_table_name
from siptrace.store.urls import parse_db_url
from siptrace.web.app import create_app

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def listen_address(text: str) -> tuple[str, int]:
    """``IP:PORT`` or ``[IPv6]:PORT`` -> (ip, port); ConfigError naming web_listen."""
    endpoint = parse_endpoint(text)
    if endpoint is None or endpoint[1] is None:
        raise ConfigError(f"web_listen: {text!r} is not IP:PORT or [IPv6]:PORT")
    return endpoint


def check_exposure(host: str, password: str | None) -> None:
    """No password, no listening beyond loopback."""
    if not password and not ip_address(host).is_loopback:
        raise ConfigError(f"web_password is required to listen on {host} (set it in the "
                          "config file or SIPTRACE_WEB_PASSWORD), or listen on 127.0.0.1")


def base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a busy port is one line of error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(f"web_listen: cannot listen on {base_url(host, port)}: "
                          f"{reason}") from None


class _Server(uvicorn.Server):
    """uvicorn's server, but a stop signal ends ``run`` normally instead of being
    raised again once the server is down."""

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(settings) -> None:
    """Serve the web view of ``settings.table`` in ``settings.db_url`` until stopped."""
    host, port = listen_address(settings.web_listen)
    password = settings.web_password or None
    check_exposure(host, password)
    parse_db_url(settings.db_url)
    check_table_name(settings.table)
    app = create_app(settings.db_url, settings.table, user=settings.web_user,
                     password=password)
    sock = bind(host, port)
    try:
        config = uvicorn.Config(app, host=host, port=port, access_log=True, lifespan="off",
                                server_header=False)
        print(f"siptrace web: serving {settings.table} of {redact_url(settings.db_url)} "
              f"on {base_url(host, port)}", flush=True)
        _Server(config).run(sockets=[sock])
    finally:
        sock.close()
