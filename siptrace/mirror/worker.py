"""The mirror worker process: reads batches of messages on stdin, sends the copies.

Started by ``sender.Mirror`` (``main(argv)``, argv[1] the COUNTERS_FD); not a command
for users. Its own interpreter, so that encoding and sending (one system call
per copy) never wait for, or hold, the capture process's GIL.

Protocol on stdin, each frame a uint32 length (network order) then a pickle: first
the configuration ``{"destinations": [(kind, family, sockaddr, name)], "capture_id":
int, "auth_chunk": bytes}`` (the auth key travels here, never on the command line),
then lists of message tuples (ts_ns, transport, family, src, sport, dst, dport, raw,
call_id), the arguments of ``hep.encode_fields``. End of input: exit.

Counters live in the shared memory file COUNTERS_FD, unsigned 64-bit: messages
processed, then (sent, failed) per destination. Errors are written to stderr, one
line for the first error of each kind per destination; the parent logs them.
"""

import mmap
import pickle
import signal
import socket
import struct
import sys

from siptrace.mirror.hep import encode_fields

FRAME_LENGTH = struct.Struct("!I")
COUNTER = struct.Struct("Q")


def read_frame(stream) -> bytes | None:
    head = stream.read(FRAME_LENGTH.size)
    if len(head) < FRAME_LENGTH.size:
        return None
    (length,) = FRAME_LENGTH.unpack(head)
    body = stream.read(length)
    return body if len(body) == length else None


class Worker:
    def __init__(self, config: dict, counters: memoryview):
        self.counters = counters  # cast to unsigned 64-bit: [processed, sent0, failed0, ...]
        self.capture_id = config["capture_id"]
        self.auth_chunk = config["auth_chunk"]
        self.logged: set[tuple[str, object]] = set()
        self.targets = []
        for index, (kind, family, sockaddr, name) in enumerate(config["destinations"]):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.connect(sockaddr)
            sock.setblocking(False)
            self.targets.append((kind == "hep", sock.send, 1 + 2 * index, name))

    def mirror(self, batch: list) -> None:
        counters = self.counters
        for fields in batch:
            try:
                self._mirror_one(fields)
            except Exception as exc:  # a malformed message: count it, never stop
                for _is_hep, _send, slot, name in self.targets:
                    counters[slot + 1] += 1
                    self.note(name, "bad-message", f"cannot mirror a message: {exc!r}")
            counters[0] += 1

    def _mirror_one(self, fields: tuple) -> None:
        counters = self.counters
        raw = fields[7]
        hep = None
        for is_hep, send, slot, name in self.targets:
            if is_hep:
                if hep is None:
                    try:
                        hep = encode_fields(*fields, self.capture_id, self.auth_chunk)
                    except ValueError as exc:
                        hep = exc
                if isinstance(hep, ValueError):
                    counters[slot + 1] += 1
                    self.note(name, "hep", str(hep))
                    continue
                data = hep
            else:
                data = raw
            try:
                send(data)
            except OSError as exc:
                counters[slot + 1] += 1
                self.note(name, exc.errno, exc.strerror or str(exc))
            else:
                counters[slot] += 1

    def note(self, name: str, kind, text: str) -> None:
        """The first error of each kind per destination, one line on stderr."""
        if (name, kind) not in self.logged:
            self.logged.add((name, kind))
            sys.stderr.write(f"mirror {name}: {text} (counted as failed; not logged again)\n")
            sys.stderr.flush()


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    stream = sys.stdin.buffer
    counters_fd = int(argv[1])
    shared = mmap.mmap(counters_fd, 0)
    counters = memoryview(shared).cast("Q")
    try:
        config = pickle.loads(read_frame(stream) or b"")
        worker = Worker(config, counters)
        while (frame := read_frame(stream)) is not None:
            worker.mirror(pickle.loads(frame))
    except Exception as exc:  # one line, never a traceback
        sys.stderr.write(f"mirror worker stopped: {exc!r}\n")
        return 1
    finally:
        counters.release()
        shared.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
