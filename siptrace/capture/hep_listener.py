"""HEP listener for `siptrace run` (setting hep_listen): Kamailio, OpenSIPS, FreeSWITCH
and heplify agents send HEP straight to siptrace instead of (or besides) it capturing.

Over UDP one datagram is one HEP packet (v1, v2 or v3); over TCP, HEPv3 packets follow
each other, framed by their length field (HEPv1/v2 have no framing: UDP only). This is
the I/O side only: received packets go to the processing loop as records
``(receive ts_ns, HEP_RECORD, packet)`` through ``put(batch)``, and the loop decodes
them with the capture's own decoder (SipExtractor.feed_hep). Bounded: TCP connections,
and per connection one packet's bytes (a HEP3 length field is 16 bits).
"""

import selectors
import socket
import struct
import threading
import time
from collections import Counter
from typing import Callable, Iterable

from siptrace.direction import parse_endpoint
from siptrace.errors import ConfigError

HEP_RECORD = -9060  # a record's link type field for a HEP packet received, not captured
HEP_SCHEMES = ("udp", "tcp")
MAX_TCP_CONNECTIONS = 256
MAX_DATAGRAM = 65535
POLL_S = 0.2  # the listener looks at its stop flag this often
MAX_BATCH = 256  # packets handed on at once
_HEP3_HEAD = struct.Struct("!4sH")


def parse_listen(text: str) -> tuple[str, str, int]:
    """'udp:IP:PORT', 'tcp:IP:PORT' (IPv6 in brackets) -> (scheme, ip, port);
    ConfigError otherwise."""
    scheme, colon, rest = text.partition(":")
    endpoint = parse_endpoint(rest) if colon and scheme in HEP_SCHEMES else None
    if endpoint is None or endpoint[1] is None:
        raise ConfigError(f"hep_listen: {text!r} is not udp:IP:PORT or tcp:IP:PORT")
    return scheme, endpoint[0], endpoint[1]


class HepListener:
    """Sockets bound at construction (ConfigError if one cannot be); ``start()`` runs
    the receiving thread, ``close()`` stops it and closes everything. ``stats``:
    datagrams, tcp_packets, tcp_connections, tcp_refused (over the bound),
    tcp_bad_framing (not HEP3: connection closed), handed_on."""

    def __init__(self, listen: Iterable[str], put: Callable[[list], None]):
        self.stats: Counter = Counter()
        self._put = put
        self._stop = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._buffers: dict[socket.socket, bytearray] = {}
        self._thread: threading.Thread | None = None
        self.addresses: list[tuple[str, str, int]] = []
        try:
            for text in listen:
                self._bind(*parse_listen(text))
        except BaseException:
            self.close()
            raise

    def _bind(self, scheme: str, ip: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        kind = socket.SOCK_DGRAM if scheme == "udp" else socket.SOCK_STREAM
        sock = socket.socket(family, kind)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ip, port))
            if scheme == "tcp":
                sock.listen(64)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"hep_listen: cannot listen on {scheme}:{ip}:{port}: "
                              f"{exc.strerror or exc}") from None
        sock.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ, scheme)
        self.addresses.append((scheme, ip, sock.getsockname()[1]))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="siptrace-hep", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()
        self._selector.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            batch: list = []
            for key, _ in self._selector.select(POLL_S):
                sock, what = key.fileobj, key.data
                try:
                    if what == "udp":
                        self._datagrams(sock, batch)
                    elif what == "tcp":
                        self._accept(sock)
                    else:
                        self._stream(sock, batch)
                except OSError:
                    if what == "conn":
                        self._drop(sock)
            if batch:
                self.stats["handed_on"] += len(batch)
                self._put(batch)

    def _datagrams(self, sock: socket.socket, batch: list) -> None:
        for _ in range(MAX_BATCH):
            try:
                data = sock.recv(MAX_DATAGRAM)
            except BlockingIOError:
                return
            self.stats["datagrams"] += 1
            batch.append((time.time_ns(), HEP_RECORD, data))

    def _accept(self, sock: socket.socket) -> None:
        conn, _ = sock.accept()
        if len(self._buffers) >= MAX_TCP_CONNECTIONS:
            self.stats["tcp_refused"] += 1
            conn.close()
            return
        conn.setblocking(False)
        self.stats["tcp_connections"] += 1
        self._buffers[conn] = bytearray()
        self._selector.register(conn, selectors.EVENT_READ, "conn")

    def _stream(self, conn: socket.socket, batch: list) -> None:
        data = conn.recv(MAX_DATAGRAM)
        if not data:
            self._drop(conn)
            return
        buffer = self._buffers[conn]
        buffer += data
        now = time.time_ns()
        while len(buffer) >= _HEP3_HEAD.size:
            magic, length = _HEP3_HEAD.unpack_from(buffer)
            if magic != b"HEP3" or length < _HEP3_HEAD.size:
                self.stats["tcp_bad_framing"] += 1
                self._drop(conn)
                return
            if len(buffer) < length:
                return
            batch.append((now, HEP_RECORD, bytes(buffer[:length])))
            self.stats["tcp_packets"] += 1
            del buffer[:length]

    def _drop(self, conn: socket.socket) -> None:
        self._buffers.pop(conn, None)
        try:
            self._selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()
