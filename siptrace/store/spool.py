"""Durable on-disk spool of row batches: append-only segments, drained in order.

Layout (docs/storage.md): ``spool_dir/NNNNNNNNNNNN.seg`` segment files of records, each
``<u32 payload length><u32 CRC-32 of payload><payload>``, little-endian. A payload is one
batch: ``<u8 flags><u32 row count>[marker]`` then per row ``<i64 date, microseconds since
1970>`` (read back as the date column's text) and the nine other columns each as ``<u32 length><bytes>`` (strings UTF-8 with
surrogates passed through, msg raw). ``spool_dir/state`` (JSON, replaced atomically)
holds the read position and the marker of a batch being committed, so a crash between
COMMIT and acknowledgement is resolved on the next start without storing rows twice.
A torn record at the tail (crash while appending) fails its CRC and is cut off.
``spool_dir/lock`` is flock'ed by the one process using the spool and names it
(``PID PPID``); ``spool_dir/deadletter`` holds refused rows (store/deadletter.py).
"""

import fcntl
import json
import os
import time
import struct
import threading
import zlib
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from siptrace.errors import StorageError
from siptrace.filemode import create_private_dir, private_opener
from siptrace.rows import EPOCH, TraceRow, date_text
from siptrace.store.marker import Marker

RECORD_HEADER = struct.Struct("<II")
BATCH_HEADER = struct.Struct("<BI")
I64 = struct.Struct("<q")
U32 = struct.Struct("<I")
FLAG_MARKER = 1
SEGMENT_BYTES = 16 << 20
DEFAULT_MAX_BYTES = 1 << 30


class SpoolRecord(NamedTuple):
    rows: list
    markers: tuple  # batches that may already be stored: check them before re-sending
    size: int


def _pack_str(parts: list, value: str) -> None:
    data = value.encode("utf-8", "surrogatepass")
    parts.append(U32.pack(len(data)))
    parts.append(data)


def encode_batch(rows, marker: Marker | None = None) -> bytes:
    parts = [BATCH_HEADER.pack(FLAG_MARKER if marker else 0, len(rows))]
    if marker:
        parts.append(I64.pack(marker.id))
        for value in marker[1:]:
            _pack_str(parts, value)
    for row in rows:
        date = row[0]
        delta = (datetime.fromisoformat(date) if isinstance(date, str) else date) - EPOCH
        parts.append(I64.pack((delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds))
        for i in range(1, 10):
            value = row[i]
            data = value if i == 3 else value.encode("utf-8", "surrogatepass")
            parts.append(U32.pack(len(data)))
            parts.append(data)
    return b"".join(parts)


def decode_batch(payload: bytes) -> tuple[list, Marker | None]:
    flags, count = BATCH_HEADER.unpack_from(payload)
    pos = BATCH_HEADER.size

    def field() -> bytes:
        nonlocal pos
        (n,) = U32.unpack_from(payload, pos)
        pos += 4 + n
        return payload[pos - n:pos]

    marker = None
    if flags & FLAG_MARKER:
        (mid,) = I64.unpack_from(payload, pos)
        pos += 8
        marker = Marker(mid, *(field().decode("utf-8", "surrogatepass") for _ in range(4)))
    rows = []
    for _ in range(count):
        (us,) = I64.unpack_from(payload, pos)
        pos += 8
        vals = [date_text(us)]
        for i in range(1, 10):
            data = field()
            vals.append(data if i == 3 else data.decode("utf-8", "surrogatepass"))
        rows.append(TraceRow(*vals))
    return rows, marker


class Spool:
    """Bounded FIFO of row batches on disk. Thread-safe; one process per directory."""

    def __init__(self, directory, max_bytes: int = DEFAULT_MAX_BYTES,
                 segment_bytes: int = SEGMENT_BYTES, fsync: bool = True):
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        self._dirty = False
        self._head: SpoolRecord | None = None
        try:
            create_private_dir(self.dir)
            self._lock_file = open(self.dir / "lock", "a")
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._lock_file.truncate(0)
            self._lock_file.write(f"{os.getpid()} {os.getppid()}\n")  # for wait_for_spool
            self._lock_file.flush()
        except OSError as exc:
            raise StorageError(f"spool {self.dir}: cannot open or lock: {exc}") from None
        self._state = self._read_state()
        self._recover()

    # -- state ----------------------------------------------------------------------
    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.glob("*.seg") if p.stem.isdigit())

    def _path(self, number: int) -> Path:
        return self.dir / f"{number:012d}.seg"

    def _read_state(self) -> dict:
        try:
            return json.loads((self.dir / "state").read_text())
        except (OSError, ValueError):
            return {"segment": 0, "offset": 0, "inflight": None}

    def _write_state(self) -> None:
        tmp = self.dir / "state.tmp"
        with open(tmp, "w") as f:
            json.dump(self._state, f)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, self.dir / "state")
        if self.fsync:
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _recover(self) -> None:
        """Count what is pending, cut a torn tail, drop fully-read segments."""
        segments = self._segments()
        self.rows = self.bytes = self.records = 0
        head_seg = self._state["segment"]
        for number in segments:
            path = self._path(number)
            if number < head_seg:
                path.unlink()
                continue
            offset = self._state["offset"] if number == head_seg else 0
            with open(path, "r+b") as f:
                data = f.read()
                pos = offset
                while pos + RECORD_HEADER.size <= len(data):
                    n, crc = RECORD_HEADER.unpack_from(data, pos)
                    payload = data[pos + 8:pos + 8 + n]
                    if len(payload) < n or zlib.crc32(payload) != crc:
                        break
                    self.rows += BATCH_HEADER.unpack_from(payload)[1]
                    self.records += 1
                    pos += 8 + n
                if pos < len(data):
                    f.truncate(pos)  # torn or corrupt tail from a crash while appending
            self.bytes += pos - offset
        segments = self._segments()
        if segments and segments[0] > head_seg:
            self._state.update(segment=segments[0], offset=0)
        self._write_no = segments[-1] if segments else max(head_seg, 1)
        self._write_file = None

    # -- writing --------------------------------------------------------------------
    def append(self, rows, marker: Marker | None = None) -> bool:
        """Add a batch at the tail; False (nothing written) when the spool is full."""
        if not rows:
            return True
        payload = encode_batch(rows, marker)
        record = RECORD_HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            if self.bytes + len(record) > self.max_bytes:
                return False
            f = self._writer(len(record))
            f.write(record)
            f.flush()
            self._dirty = True
            self.bytes += len(record)
            self.rows += len(rows)
            self.records += 1
        return True

    def _writer(self, size: int):
        f = self._write_file
        if f is not None and f.tell() + size > self.segment_bytes and f.tell() > 0:
            self._sync_locked()
            f.close()
            f = None
            self._write_no += 1
        if f is None:
            f = self._write_file = open(self._path(self._write_no), "ab", opener=private_opener)
        return f

    def sync(self) -> None:
        """fsync appended records (the writer thread calls this, never put())."""
        with self._lock:
            self._sync_locked()

    def _sync_locked(self) -> None:
        if self._dirty and self._write_file is not None:
            if self.fsync:
                os.fsync(self._write_file.fileno())
            self._dirty = False

    # -- reading --------------------------------------------------------------------
    def peek(self) -> SpoolRecord | None:
        """The oldest batch, with the markers to check before sending it again."""
        with self._lock:
            if self._head is not None:
                return self._head
            if self.records == 0:
                return None
            seg, offset = self._state["segment"], self._state["offset"]
            while True:
                path = self._path(seg)
                size = path.stat().st_size if path.exists() else 0
                if offset + RECORD_HEADER.size <= size:
                    break
                if seg >= self._write_no:
                    return None
                if path.exists() and seg != self._write_no:
                    path.unlink()
                seg, offset = seg + 1, 0
                self._state.update(segment=seg, offset=0)
            self._sync_locked()
            with open(path, "rb") as f:
                f.seek(offset)
                n, crc = RECORD_HEADER.unpack(f.read(RECORD_HEADER.size))
                payload = f.read(n)
            rows, marker = decode_batch(payload)
            markers = [m for m in (marker, self._inflight_marker()) if m is not None]
            self._head = SpoolRecord(rows, tuple(markers), RECORD_HEADER.size + n)
            return self._head

    def _inflight_marker(self) -> Marker | None:
        inflight = self._state.get("inflight")
        if not inflight or inflight[:2] != [self._state["segment"], self._state["offset"]]:
            return None
        return Marker(*inflight[2:])

    def set_inflight(self, marker: Marker) -> None:
        """Persist the head batch's marker before its COMMIT is sent."""
        with self._lock:
            self._state["inflight"] = [self._state["segment"], self._state["offset"], *marker]
            self._write_state()

    def ack(self) -> None:
        """The head batch is stored: advance past it (durably)."""
        with self._lock:
            head = self._head
            if head is None:
                return
            self._head = None
            self._state["offset"] += head.size
            self._state["inflight"] = None
            self.bytes -= head.size
            self.rows -= len(head.rows)
            self.records -= 1
            if self.records == 0:
                # Everything is read: start a fresh segment so old files can go.
                if self._write_file is not None:
                    self._write_file.close()
                    self._write_file = None
                for number in self._segments():
                    self._path(number).unlink()
                self._write_no += 1
                self._state.update(segment=self._write_no, offset=0)
            self._write_state()

    def close(self) -> None:
        with self._lock:
            self._sync_locked()
            if self._write_file is not None:
                self._write_file.close()
                self._write_file = None
            self._lock_file.close()


def wait_for_spool(directory, timeout: float, note=lambda text: None) -> None:
    """At start: wait while the store process of an earlier siptrace, whose parent is
    gone, still drains the spool (at most ``timeout`` s, ``note(text)`` told once);
    StorageError, one line, when a running siptrace uses it, or the wait is over.

    The lock file names its holder and the holder's parent when it took the lock
    (``PID PPID``): a holder with another parent now is such an orphan."""
    path = Path(directory) / "lock"
    deadline = time.monotonic() + timeout
    noted = False
    while True:
        try:
            with open(path, "a+") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return  # free (closing the file releases it)
                except BlockingIOError:
                    f.seek(0)
                    holder = f.read().split()
        except FileNotFoundError:
            return  # no spool yet
        except OSError as exc:
            raise StorageError(f"spool {directory}: cannot open its lock: {exc}") from None
        pid, parent = (holder + ["?", "?"])[:2]
        if _parent_of(pid) == parent:
            raise StorageError(f"spool {directory} is in use by another siptrace (process "
                               f"{parent}); give each siptrace its own spool_dir")
        if time.monotonic() >= deadline:
            raise StorageError(f"spool {directory} is still held by process {pid} of an "
                               f"earlier siptrace after {timeout:g} s")
        if not noted:
            note(f"spool {directory}: waiting (at most {timeout:g} s) for process {pid} of "
                 "an earlier siptrace to finish with it")
            noted = True
        time.sleep(0.2)


def _parent_of(pid: str) -> str | None:
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    return stat.rpartition(")")[2].split()[1]  # the field after the state (proc(5))


def inspect_spool(directory) -> dict:
    """Depth of a spool another process may be using (read-only, no lock): for status."""
    directory = Path(directory)
    try:
        state = json.loads((directory / "state").read_text())
    except (OSError, ValueError):
        state = {"segment": 0, "offset": 0}
    rows = size = records = 0
    segments = sorted(int(p.stem) for p in directory.glob("*.seg") if p.stem.isdigit())
    for number in segments:
        if number < state["segment"]:
            continue
        path = directory / f"{number:012d}.seg"
        end = path.stat().st_size
        with open(path, "rb") as f:
            pos = state["offset"] if number == state["segment"] else 0
            f.seek(pos)
            while True:
                header = f.read(RECORD_HEADER.size + BATCH_HEADER.size)
                if len(header) < RECORD_HEADER.size + BATCH_HEADER.size:
                    break
                n, _ = RECORD_HEADER.unpack_from(header)
                if f.tell() - len(header) + RECORD_HEADER.size + n > end:
                    break  # torn tail: the owner cuts it off when it opens the spool
                rows += BATCH_HEADER.unpack_from(header, RECORD_HEADER.size)[1]
                records += 1
                size += RECORD_HEADER.size + n
                f.seek(n - BATCH_HEADER.size, os.SEEK_CUR)
    return {"rows": rows, "bytes": size, "records": records, "segments": len(segments)}
