"""The mirror sink: copies of traced messages to sip: and hep: destinations over UDP.

``Mirror.send`` queues the message's fields and returns; the worker process
(siptrace/worker.py, bounded mode, running ``worker.MirrorJob``) encodes and sends
the copies. A thread in this process could not keep up: each send releases the GIL
and waits up to a switch interval (5 ms) to get it back from a busy capture loop,
i.e. about 200 copies/s. A full queue drops (counted); a failed send is counted;
nothing a destination does reaches the capture loop.
"""

import logging
import socket
from typing import Iterable

from siptrace.errors import ConfigError
from siptrace.mirror.destinations import Destination, parse_destinations
from siptrace.mirror.hep import DEFAULT_CAPTURE_ID, auth_key_chunk
from siptrace.mirror.worker import MirrorJob
from siptrace.worker import WorkerProcess

log = logging.getLogger("siptrace.mirror")

DEFAULT_QUEUE_SIZE = 10_000  # messages waiting in this process, beyond the pipe's buffer
DEFAULT_CLOSE_TIMEOUT = 5.0  # seconds close() waits for the copies to be sent
MAX_BATCH = 2048  # messages in one frame to the worker
MAX_AUTH_KEY = 1024  # characters; the key travels in every HEP packet


class Mirror:
    """Sends every traced message to each destination: raw UDP (sip:) or HEPv3 (hep:).

    ``destinations`` is a comma-separated string, a list of such strings, or
    resolved ``Destination``s; hosts are resolved here (ConfigError if they do not
    resolve or cannot be reached). The worker process (and the thread that feeds
    it) starts here; ``close()`` stops it. ``send`` is meant for one thread (the capture or
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
        self._close_timeout = close_timeout
        self._rejected = 0  # by send(): not a wire message
        config = {"destinations": [(d.kind, d.family, d.sockaddr, d.name) for d in destinations],
                  "capture_id": hep_capture_id, "auth_chunk": auth_key_chunk(hep_auth_key)}
        self._worker = WorkerProcess(MirrorJob, (config,), name="mirror worker", logger=log,
                                     queue_limit=queue_size, max_batch=MAX_BATCH)
        self._put = self._worker.put_one

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
        try:
            sip = wire.sip
            fields = (wire.ts_ns, wire.transport, wire.family, wire.src, wire.sport,
                      wire.dst, wire.dport, sip.raw, sip.call_id)
        except AttributeError:
            self._rejected += 1
            return
        self._put(fields)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per destination name: {"sent", "failed", "dropped"} message counts."""
        worker = self._worker
        child = worker.child
        sent = child.get("sent") or [0] * len(self.destinations)
        failed = child.get("failed") or [0] * len(self.destinations)
        lost = worker.in_pipe if worker.ended else 0  # handed over, never sent
        dropped = worker.dropped + worker.unsent + lost
        rejected = self._rejected + worker.rejected
        return {d.name: {"sent": sent[i], "failed": failed[i] + rejected, "dropped": dropped}
                for i, d in enumerate(self.destinations)}

    def mirror_addresses(self) -> list[tuple[str, int]]:
        """(ip, port) each copy is sent to: what the live capture must not trace."""
        return [(d.ip, d.port) for d in self.destinations]

    def close(self, timeout: float | None = None) -> None:
        """Sends what is queued (waiting at most ``timeout`` s), then stops.

        What is not sent by then is counted as dropped. Idempotent.
        """
        self._worker.close(self._close_timeout if timeout is None else timeout)


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
