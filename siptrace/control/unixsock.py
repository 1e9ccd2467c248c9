"""Unix socket files: their directory, a stale file left by a crash, their mode."""

import os
import socket
import stat

from siptrace.errors import ConfigError

DIRECTORY_MODE = 0o755


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
