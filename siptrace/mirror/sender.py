"""The mirror sink: copies of traced messages to sip: and hep: destinations over UDP.

``Mirror.send`` appends the message's fields to a bounded queue and returns. A flusher
thread hands the queue, in batches, to a worker process (``worker.py``) that encodes
and sends the copies. A thread in this process could not keep up: each send releases
the GIL and waits up to a switch interval (5 ms) to get it back from a busy capture
loop, i.e. about 200 copies/s. A full queue drops (counted); a failed send is counted;
nothing a destination does reaches the capture loop.
"""

import logging
import mmap
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Iterable

from siptrace.errors import ConfigError
from siptrace.mirror.destinations import Destination, parse_destinations
from siptrace.mirror.hep import DEFAULT_CAPTURE_ID, auth_key_chunk
from siptrace.mirror.worker import COUNTER, FRAME_LENGTH

log = logging.getLogger("siptrace.mirror")

DEFAULT_QUEUE_SIZE = 10_000  # messages waiting in this process, beyond the pipe's buffer
DEFAULT_CLOSE_TIMEOUT = 5.0  # seconds close() waits for the copies to be sent
FLUSH_DELAY = 0.005  # seconds the flusher lets a batch grow before handing it over
FLUSH_AT = 512  # messages that make the flusher hand over at once
MAX_BATCH = 2048  # messages in one frame to the worker
MAX_AUTH_KEY = 1024  # characters; the key travels in every HEP packet
IDLE_CHECK = 1.0  # seconds between the idle flusher's checks of the queue
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
WORKER_MAIN = """import sys
try:
    from siptrace.mirror.worker import main
except Exception as exc:
    sys.exit(f"mirror worker cannot start: {exc!r}")
sys.exit(main(sys.argv))
"""


class Mirror:
    """Sends every traced message to each destination: raw UDP (sip:) or HEPv3 (hep:).

    ``destinations`` is a comma-separated string, a list of such strings, or
    resolved ``Destination``s; hosts are resolved here (ConfigError if they do not
    resolve or cannot be reached). The worker process and the flusher thread start
    here; ``close()`` stops them. ``send`` is meant for one thread (the capture or
    replay loop).

    The worker connects one UDP socket per destination, so an ICMP port unreachable
    from a destination that is down comes back as ECONNREFUSED on its next send and
    is counted against it alone.
    """

    def __init__(self, destinations: str | Iterable[str] | Iterable[Destination],
                 hep_capture_id: int = DEFAULT_CAPTURE_ID,
                 hep_auth_key: bytes | str | None = None,
                 queue_size: int = DEFAULT_QUEUE_SIZE,
                 close_timeout: float = DEFAULT_CLOSE_TIMEOUT):
        if isinstance(destinations, str):
            destinations = parse_destinations(destinations)
        else:
            destinations = list(destinations)
            if destinations and not isinstance(destinations[0], Destination):
                destinations = parse_destinations(destinations)
        if not destinations:
            raise ConfigError("duplicate_uri: no destination given")
        if not isinstance(hep_capture_id, int) or not 0 <= hep_capture_id <= 0xFFFFFFFF:
            raise ConfigError(f"hep_capture_id: {hep_capture_id!r} is not an integer "
                              f"from 0 to 4294967295")
        if hep_auth_key and len(hep_auth_key) > MAX_AUTH_KEY:
            raise ConfigError(f"hep_auth_key: longer than {MAX_AUTH_KEY} characters")
        if queue_size < 1:
            raise ConfigError(f"mirror queue size must be at least 1, not {queue_size}")
        for destination in destinations:
            _check_reachable(destination)
        self.destinations: list[Destination] = destinations
        self.hep_capture_id = hep_capture_id
        self._has_auth_key = bool(hep_auth_key)
        self._queue_size = queue_size
        self._close_timeout = close_timeout
        self._queue: deque = deque()
        self._dropped = 0  # by send(): queue full or closed
        self._rejected = 0  # by send(): not a wire message
        self._handed = 0  # messages written to the worker, by the flusher
        self._unhanded = 0  # by the flusher: the worker was gone
        self._unpicklable = 0  # by the flusher: fields that cannot travel to the worker
        self._lost = 0  # messages the worker never processed, counted at close
        self._closing = False
        self._closed = False
        self._killed = False
        self._wake = threading.Event()
        self._counters_fd = os.memfd_create("siptrace-mirror-counters")
        os.ftruncate(self._counters_fd, COUNTER.size * (1 + 2 * len(destinations)))
        self._shared = mmap.mmap(self._counters_fd, 0)
        self._counters = memoryview(self._shared).cast("Q")
        self._worker = self._start_worker()
        self._flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                         name="siptrace-mirror-flush")
        self._relay = threading.Thread(target=self._relay_errors, daemon=True,
                                       name="siptrace-mirror-log")
        config = {"destinations": [(d.kind, d.family, d.sockaddr, d.name) for d in destinations],
                  "capture_id": hep_capture_id, "auth_chunk": auth_key_chunk(hep_auth_key)}
        try:
            self._write_frame(pickle.dumps(config))
        except OSError:  # the worker exited at once: the flusher reports it
            pass
        self._flusher.start()
        self._relay.start()

    def __repr__(self) -> str:
        key = "'<redacted>'" if self._has_auth_key else "None"
        names = ",".join(d.name for d in self.destinations)
        return f"Mirror({names!r}, hep_capture_id={self.hep_capture_id}, hep_auth_key={key})"

    def __enter__(self) -> "Mirror":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- the capture side ---------------------------------------------------------

    def send(self, wire) -> None:
        """Queues one wire message for every destination; never blocks, never raises."""
        queue = self._queue  # tuples (ts_ns, transport, family, src, sport, dst, dport,
        #                       raw, call_id), the worker's message format
        if self._closing or len(queue) >= self._queue_size:
            self._dropped += 1
            return
        try:
            sip = wire.sip
            fields = (wire.ts_ns, wire.transport, wire.family, wire.src, wire.sport,
                      wire.dst, wire.dport, sip.raw, sip.call_id)
        except AttributeError:
            self._rejected += 1
            return
        queue.append(fields)
        if len(queue) == 1:
            self._wake.set()

    def stats(self) -> dict[str, dict[str, int]]:
        """Per destination name: {"sent", "failed", "dropped"} message counts."""
        counters = self._counters if not self._closed else self._final
        dropped = self._dropped + self._unhanded + self._lost
        rejected = self._rejected + self._unpicklable
        return {d.name: {"sent": counters[1 + 2 * i],
                         "failed": counters[2 + 2 * i] + rejected,
                         "dropped": dropped}
                for i, d in enumerate(self.destinations)}

    def mirror_addresses(self) -> list[tuple[str, int]]:
        """(ip, port) each copy is sent to: what the live capture must not trace."""
        return [(d.ip, d.port) for d in self.destinations]

    def close(self, timeout: float | None = None) -> None:
        """Sends what is queued (waiting at most ``timeout`` s), then stops.

        What is not sent by then is counted as dropped. Idempotent.
        """
        if self._closed:
            return
        deadline = time.monotonic() + (self._close_timeout if timeout is None else timeout)
        self._closing = True
        self._wake.set()
        self._flusher.join(max(0.0, deadline - time.monotonic()))
        if not self._flusher.is_alive():
            self._close_pipe()  # end of input: the worker sends what it has, then exits
        try:
            self._worker.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._killed = True
            self._worker.kill()  # also unblocks a flusher stuck writing to it
            self._worker.wait()
        self._flusher.join()
        self._relay.join(1.0)
        self._final = list(self._counters)
        self._lost = len(self._queue) + self._handed - self._final[0]
        self._queue.clear()
        self._counters.release()
        self._shared.close()
        os.close(self._counters_fd)
        self._close_pipe()
        self._closed = True

    # -- handing over to the worker -------------------------------------------------

    def _start_worker(self) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        return subprocess.Popen(
            [sys.executable, "-c", WORKER_MAIN, str(self._counters_fd)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            pass_fds=(self._counters_fd,), env=env)

    def _close_pipe(self) -> None:
        try:
            self._worker.stdin.close()
        except OSError:  # the worker is gone; what was buffered for it is lost
            pass

    def _write_frame(self, body: bytes) -> None:
        stdin = self._worker.stdin
        stdin.write(FRAME_LENGTH.pack(len(body)))
        stdin.write(body)
        stdin.flush()

    def _flush_loop(self) -> None:
        queue, wake = self._queue, self._wake
        broken = False
        while True:
            if not queue:
                if self._closing:
                    return
                wake.wait(IDLE_CHECK)
                wake.clear()
                continue
            if not self._closing and len(queue) < FLUSH_AT:
                time.sleep(FLUSH_DELAY)
            popleft = queue.popleft
            batch = [popleft() for _ in range(min(len(queue), MAX_BATCH))]
            if broken:
                self._unhanded += len(batch)
                continue
            frame, count = self._pickle(batch)
            try:
                self._write_frame(frame)
                self._handed += count
            except (OSError, ValueError):  # the worker is gone
                broken = True
                self._unhanded += count
                if not self._killed:
                    log.warning("mirror worker stopped (exit status %s): copies are dropped "
                                "from now on", self._worker.poll())

    def _pickle(self, batch: list) -> tuple[bytes, int]:
        """The frame for a batch and the messages in it; messages whose fields cannot
        be pickled are left out (counted as failed)."""
        try:
            return pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL), len(batch)
        except Exception:
            pass
        kept = []
        for fields in batch:
            try:
                pickle.dumps(fields)
            except Exception:
                self._unpicklable += 1
            else:
                kept.append(fields)
        return pickle.dumps(kept, protocol=pickle.HIGHEST_PROTOCOL), len(kept)

    def _relay_errors(self) -> None:
        """The worker's one-line error reports, into this process's log."""
        for line in self._worker.stderr:
            log.warning("%s", line.decode("utf-8", "replace").rstrip())
        self._worker.stderr.close()


def _check_reachable(destination: Destination) -> None:
    """connect() a UDP socket (sends nothing): no route or address is a ConfigError."""
    try:
        with socket.socket(destination.family, socket.SOCK_DGRAM) as sock:
            sock.connect(destination.sockaddr)
    except OSError as exc:
        raise ConfigError(f"duplicate_uri: cannot send to {destination.name}: "
                          f"{exc.strerror or exc}") from None


def format_stats(stats: dict[str, dict[str, int]]) -> list[str]:
    """One summary line per destination, e.g. for replay's summary or status."""
    return [f"mirror {name}: sent {c['sent']}, failed {c['failed']}, dropped {c['dropped']}"
            for name, c in stats.items()]
