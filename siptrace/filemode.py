"""The mode of files that hold SIP messages (database, spool, recorded decisions), and
of the spool directory.

They are created 0600 whatever the umask, or 0640 in a set-group-ID directory: the
administrator's way to share a directory with a group (its files inherit the
directory's group), e.g. ``install -d -m 2750 -g siptrace-readers /var/lib/siptrace``.
Files that already exist keep their mode.
"""

import os
import stat

PRIVATE = 0o600
GROUP_READABLE = 0o640
PRIVATE_DIR = 0o700
GROUP_DIR = 0o2750  # set-group-ID kept: what is made in it is the group's too


def private_mode(directory) -> int:
    """The mode of a new file in ``directory``."""
    return GROUP_READABLE if os.stat(directory).st_mode & stat.S_ISGID else PRIVATE


def private_opener(path, flags: int) -> int:
    """An ``opener`` for ``open()``: a file it creates gets ``private_mode`` exactly."""
    if not flags & os.O_CREAT:
        return os.open(path, flags)
    try:
        fd = os.open(path, flags | os.O_EXCL, PRIVATE)
    except FileExistsError:
        return os.open(path, flags, PRIVATE)
    try:
        os.fchmod(fd, private_mode(os.path.dirname(os.path.abspath(path))))
    except OSError:
        os.close(fd)
        raise
    return fd


def create_private(path) -> None:
    """Create ``path`` empty with ``private_mode`` unless it exists, leaving an existing
    file untouched (SQLite's database: SQLite gives its -wal and -shm files the
    database file's mode)."""
    try:
        os.close(private_opener(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        pass


def create_private_dir(path) -> None:
    """Create the directory ``path`` (its parents as usual) unless it exists: 0700, or
    02750 in a set-group-ID directory, whatever the umask. An existing one is left."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.mkdir(path, PRIVATE_DIR)
    except FileExistsError:
        return
    shared = private_mode(os.path.dirname(path)) == GROUP_READABLE
    os.chmod(path, GROUP_DIR if shared else PRIVATE_DIR)
