"""Rows the database refused, set aside: ``spool_dir/deadletter`` (docs/storage.md).

When a CHECK constraint, a trigger or an index refuses a row for good, the writer
stores the rest of its batch and appends the refused rows here, with the reason and
the time, so that nothing waits behind them. `siptrace deadletter list` shows them,
`siptrace deadletter replay` tries them again (after the DBA changed the rule).

The file is a sequence of the spool's records (``<u32 length><u32 CRC-32><payload>``);
a payload is ``<i64 time set aside, µs since 1970><u32 length><reason, UTF-8>`` and a
one-row batch in the spool's encoding. Appends take an exclusive ``flock`` on the
file and are fsynced; a replay renames the file to ``deadletter.replaying`` under the
same lock, so the running writer starts a new one meanwhile. A torn record at the end
(a crash while appending) is ignored.
"""

import fcntl
import os
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, NamedTuple

from siptrace.errors import StorageError
from siptrace.filemode import private_opener
from siptrace.store.spool import I64, RECORD_HEADER, U32, decode_batch, encode_batch

FILE = "deadletter"
REPLAYING = "deadletter.replaying"
REPLAY_BATCH = 5_000  # rows per transaction when replaying


class SetAside(NamedTuple):
    at: datetime  # when the row was set aside (UTC)
    reason: str  # the database's reason
    row: tuple  # the TraceRow


class DeadLetter:
    """Appends refused rows to ``directory/deadletter``, up to ``max_bytes``."""

    def __init__(self, directory, max_bytes: int):
        self.path = Path(directory) / FILE
        self.max_bytes = max_bytes

    def append(self, refused: list) -> int:
        """Set ``[(row, reason), ...]`` aside; how many fit under the bound."""
        now = time.time_ns() // 1000
        records = [_record(now, reason, row) for row, reason in refused]
        try:
            with _locked(self.path) as f:
                room = self.max_bytes - f.seek(0, os.SEEK_END)
                kept = []
                for record in records:
                    if len(record) > room:
                        break
                    kept.append(record)
                    room -= len(record)
                f.write(b"".join(kept))
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise StorageError(f"dead-letter file {self.path}: {exc.strerror or exc}") from None
        return len(kept)


def read_deadletter(directory) -> list[SetAside]:
    """Every row set aside in ``directory`` (a replay cut short included), oldest first."""
    directory = Path(directory)
    return [entry for name in (REPLAYING, FILE) for entry in _read(directory / name)]


def replay_deadletter(directory, insert: Callable, set_aside: Callable[[list], int]) -> tuple:
    """Tries every row set aside again, ``REPLAY_BATCH`` at a time:
    ``insert(rows, set_aside=...)`` stores what the database accepts now, and the
    rows it still refuses go back to the file through ``set_aside``. Returns (rows
    tried, rows stored). A replay cut short goes on from where it stopped."""
    directory = Path(directory)
    pending = directory / REPLAYING
    try:
        with _locked(directory / FILE):
            if not pending.exists():
                os.replace(directory / FILE, pending)
    except FileNotFoundError:
        return 0, 0
    except OSError as exc:
        raise StorageError(f"dead-letter file {directory / FILE}: {exc.strerror or exc}") from None
    entries = _read(pending)
    tried = stored = 0
    while entries:
        batch, entries = entries[:REPLAY_BATCH], entries[REPLAY_BATCH:]
        refused = []
        insert([e.row for e in batch], set_aside=refused.extend)
        set_aside(refused)
        tried += len(batch)
        stored += len(batch) - len(refused)
        _rewrite(pending, entries)
    pending.unlink()
    return tried, stored


def describe(entry: SetAside) -> str:
    """One line for `siptrace deadletter list`."""
    row = entry.row
    what = row.method + (f" {row.status}" if row.status else "")
    return (f"{entry.at:%Y-%m-%d %H:%M:%S} {row.date} {row.callid} {what} "
            f"{row.fromip} -> {row.toip}: {entry.reason}")


def replay_with_settings(settings) -> tuple:
    """`siptrace deadletter replay`: the rows set aside in ``settings.spool_dir`` into
    ``settings.db_url``'s table; (rows tried, rows stored)."""
    from siptrace.store.backends import open_store

    back = DeadLetter(settings.spool_dir, settings.spool_max_bytes)
    with open_store(settings.db_url, settings.table, call_index=settings.call_index) as store:
        return replay_deadletter(settings.spool_dir, store.insert, back.append)


def _read(path: Path) -> list[SetAside]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StorageError(f"dead-letter file {path}: {exc.strerror or exc}") from None
    entries = []
    pos = 0
    while pos + RECORD_HEADER.size <= len(data):
        n, crc = RECORD_HEADER.unpack_from(data, pos)
        payload = data[pos + RECORD_HEADER.size:pos + RECORD_HEADER.size + n]
        if len(payload) < n or zlib.crc32(payload) != crc:
            break  # torn tail
        pos += RECORD_HEADER.size + n
        (us,) = I64.unpack_from(payload)
        (length,) = U32.unpack_from(payload, I64.size)
        start = I64.size + U32.size
        reason = payload[start:start + length].decode("utf-8", "replace")
        rows, _ = decode_batch(payload[start + length:])
        at = datetime.fromtimestamp(us / 1e6, timezone.utc)
        entries.append(SetAside(at, reason, rows[0]))
    return entries


def _rewrite(path: Path, entries: list[SetAside]) -> None:
    """What is left of a replay, replaced atomically."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb", opener=private_opener) as f:
        for e in entries:
            f.write(_record(round(e.at.timestamp() * 1e6), e.reason, e.row))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _record(at_us: int, reason: str, row) -> bytes:
    text = reason.encode("utf-8", "replace")
    payload = I64.pack(at_us) + U32.pack(len(text)) + text + encode_batch([row])
    return RECORD_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


class _locked:
    """The dead-letter file opened for appending, under an exclusive flock."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        while True:
            self.file = open(self.path, "ab", opener=private_opener)
            fcntl.flock(self.file, fcntl.LOCK_EX)
            try:
                if os.stat(self.path).st_ino == os.fstat(self.file.fileno()).st_ino:
                    return self.file
            except FileNotFoundError:
                pass
            self.file.close()  # renamed by a replay meanwhile: the new file

    def __exit__(self, *exc):
        self.file.close()  # releases the lock
