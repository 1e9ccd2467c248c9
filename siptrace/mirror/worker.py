"""The mirror's job in its worker process: encode and send the copies.

Built in the child by siptrace/worker.py (``MirrorJob(config, log=...)``), fed lists
of message tuples (ts_ns, transport, family, src, sport, dst, dport, raw, call_id),
the arguments of ``hep.encode_fields``. Its own interpreter, so that encoding and
sending (one system call per copy) never wait for, or hold, the capture process's GIL.

``config``: ``{"destinations": [(kind, family, sockaddr, name)], "capture_id": int,
"auth_chunk": bytes}``; it reaches the child pickled over multiprocessing's pipe,
never on a command line (the auth key is in it). ``stats()``: ``sent`` and ``failed``,
one count per destination. The first error of each kind per destination is one line
for the parent's log.
"""

import socket

from siptrace.mirror.hep import encode_fields


class MirrorJob:
    def __init__(self, config: dict, *, log):
        self.capture_id = config["capture_id"]
        self.auth_chunk = config["auth_chunk"]
        self.log = log
        self.logged: set[tuple[str, object]] = set()
        self.sent = [0] * len(config["destinations"])
        self.failed = [0] * len(config["destinations"])
        self.sockets = []
        self.targets = []
        for index, (kind, family, sockaddr, name) in enumerate(config["destinations"]):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            self.sockets.append(sock)
            sock.connect(sockaddr)
            sock.setblocking(False)
            self.targets.append((kind == "hep", sock.send, index, name))

    def handle(self, batch: list) -> None:
        for fields in batch:
            try:
                self._mirror_one(fields)
            except Exception as exc:  # a malformed message: count it, never stop
                for _is_hep, _send, index, name in self.targets:
                    self.failed[index] += 1
                    self.note(name, "bad-message", f"cannot mirror a message: {exc!r}")

    def _mirror_one(self, fields: tuple) -> None:
        sent, failed = self.sent, self.failed
        raw = fields[7]
        hep = None
        for is_hep, send, index, name in self.targets:
            if is_hep:
                if hep is None:
                    try:
                        hep = encode_fields(*fields, self.capture_id, self.auth_chunk)
                    except ValueError as exc:
                        hep = exc
                if isinstance(hep, ValueError):
                    failed[index] += 1
                    self.note(name, "hep", str(hep))
                    continue
                data = hep
            else:
                data = raw
            try:
                send(data)
            except OSError as exc:
                failed[index] += 1
                self.note(name, exc.errno, exc.strerror or str(exc))
            else:
                sent[index] += 1

    def note(self, name: str, kind, text: str) -> None:
        """The first error of each kind per destination, one line for the parent's log."""
        if (name, kind) not in self.logged:
            self.logged.add((name, kind))
            self.log(f"mirror {name}: {text} (counted as failed; not logged again)")

    def stats(self) -> dict:
        return {"sent": list(self.sent), "failed": list(self.failed)}

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
