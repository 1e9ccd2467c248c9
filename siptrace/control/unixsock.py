"""Unix socket files: their directory, a stale file left by a crash, their mode; the
lifecycle of a socket served by one thread (the decision and control sockets)."""

import os
import socket
import stat
import threading

from siptrace.errors import ConfigError

DIRECTORY_MODE = 0o755
POLL_S = 0.2  # how often a serving thread looks at its stop flag


class UnixSocketServer:
    """A Unix socket of ``KIND`` served by one thread running ``_serve_loop``.

    ``start()`` binds it (ConfigError naming ``key`` when it cannot) and starts the
    thread; ``close()`` stops the thread and removes the socket file if it is still
    ours. The thread polls ``self._stop`` every POLL_S (the socket's timeout).
    """

    KIND = socket.SOCK_STREAM
    THREAD_NAME = "siptrace-unix"

    def __init__(self, path, mode: int, key: str):
        self.path = os.fspath(path)
        self.mode = mode
        self.key = key
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._identity = None
        self._thread: threading.Thread | None = None

    def start(self):
        sock = bind_unix_socket(self.path, self.KIND, self.mode, self.key)
        self._prepare(sock)
        sock.settimeout(POLL_S)
        self._sock = sock
        self._identity = socket_identity(self.path)
        self._thread = threading.Thread(target=self._serve_loop, name=self.THREAD_NAME,
                                        daemon=True)
        self._thread.start()
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving, close and remove the socket file (if it is still ours)."""
        self._stop.set()
        if self._sock is not None:
            wake(self.path, self.KIND)
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            unlink_if_same(self.path, self._identity)

    def _prepare(self, sock: socket.socket) -> None:
        """Socket options before serving (listen, buffer sizes)."""

    def _serve_loop(self) -> None:
        raise NotImplementedError


def bind_unix_socket(path: str, kind: int, mode: int, key: str) -> socket.socket:
    """A bound AF_UNIX socket of ``kind`` at ``path`` with file ``mode``.

    Creates the directory (0755) when missing; removes a socket file nobody listens
    on; refuses a path that is not a socket or that another process serves. Errors
    are ConfigError naming ``key`` (the setting that gave the path).
    """
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        try:
            os.makedirs(directory, mode=DIRECTORY_MODE)
            os.chmod(directory, DIRECTORY_MODE)
        except OSError as exc:
            raise ConfigError(f"{key}: cannot create {directory}: {exc.strerror}") from None
    remove_stale_socket(path, kind, key)
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        sock.bind(path)
        os.chmod(path, mode)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{key}: cannot bind {path}: {exc.strerror or exc}") from None
    return sock


def remove_stale_socket(path: str, kind: int, key: str) -> None:
    """Remove ``path`` if it is a socket file nobody serves; refuse anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{key}: {path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, kind)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        pass  # stale: left by a process that is gone
    except OSError as exc:
        raise ConfigError(f"{key}: {path} cannot be taken over: {exc.strerror or exc}") from None
    else:
        raise ConfigError(f"{key}: {path} is in use by another process")
    finally:
        probe.close()
    os.unlink(path)


def socket_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of a path, to remove only the socket file we created."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def unlink_if_same(path: str, identity: tuple[int, int] | None) -> None:
    if identity is not None and socket_identity(path) == identity:
        try:
            os.unlink(path)
        except OSError:
            pass


def wake(path: str, kind: int) -> None:
    """Interrupt our own thread blocked on the socket at ``path`` (a connection or an
    empty datagram; the thread checks its stop flag before looking at it)."""
    with socket.socket(socket.AF_UNIX, kind) as poke:
        poke.settimeout(1.0)
        try:
            if kind == socket.SOCK_DGRAM:
                poke.sendto(b"", path)
            else:
                poke.connect(path)
        except OSError:
            pass  # the thread still stops at its next poll
