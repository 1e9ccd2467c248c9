"""Mirroring speed: messages/s through Mirror to a sip: and a hep: destination on loopback.

Run alone with ``python -m bench.mirror [capture]`` (default: every real capture beside
the checkout); ``python -m bench`` calls ``bench_mirror`` with the replayed messages.
"""

import json
import socket
import subprocess
import sys
import time
from itertools import cycle, islice
from pathlib import Path

from siptrace.mirror import Mirror
from siptrace.mirror.hep import encode_hep3

MIN_MESSAGES = 20_000  # short inputs are repeated up to this many messages
STOP = b"STOP"

# A separate process, so that receiving does not compete with the mirror for the GIL.
LISTENER = r"""
import json, select, socket, sys
socks = []
for _ in range(2):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(json.dumps([s.getsockname()[1] for s in socks]), flush=True)
counts, open_socks = [0, 0], set(range(2))
while open_socks:
    ready, _, _ = select.select([socks[i] for i in open_socks], [], [], 60)
    if not ready:
        break
    for s in ready:
        i = socks.index(s)
        if s.recv(70000) == b"STOP":
            open_socks.discard(i)
        else:
            counts[i] += 1
print(json.dumps(counts), flush=True)
"""


def _free_ports(count: int) -> list[int]:
    """Ports with nothing listening: loopback answers ICMP port unreachable."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def _run_once(messages: list, ports: list[int]) -> dict:
    spec = f"sip:127.0.0.1:{ports[0]},hep:127.0.0.1:{ports[1]}"
    mirror = Mirror(spec, queue_size=len(messages) + 1, close_timeout=120)
    send = mirror.send
    started = time.perf_counter()
    for message in messages:
        send(message)
    queued = time.perf_counter()
    mirror.close()
    drained = time.perf_counter()
    stats = mirror.stats()
    return {
        "messages": len(messages),
        "enqueue_msgs_per_s": round(len(messages) / (queued - started)),
        "mirrored_msgs_per_s": round(len(messages) / (drained - started)),
        "sip": stats[f"sip:127.0.0.1:{ports[0]}"],
        "hep": stats[f"hep:127.0.0.1:{ports[1]}"],
    }


def bench_mirror(messages: list) -> dict:
    """Messages/s mirrored to one sip: and one hep: destination, with and without a
    listener on loopback (nothing listening: every other send fails with ECONNREFUSED).

    ``enqueue_msgs_per_s`` is what the capture loop pays (``Mirror.send``);
    ``mirrored_msgs_per_s`` counts until the queue is drained to both destinations.
    """
    if not messages:
        raise ValueError("bench_mirror needs at least one message")
    messages = list(islice(cycle(messages), max(MIN_MESSAGES, len(messages))))
    results = {}

    too_large = 0
    started = time.perf_counter()
    for message in messages:
        try:
            encode_hep3(message)
        except ValueError:  # past HEP's 64 KB: failed in the runs below too
            too_large += 1
    results["hep_encode_msgs_per_s"] = round(len(messages) / (time.perf_counter() - started))
    results["hep_too_large"] = too_large

    listener = subprocess.Popen([sys.executable, "-c", LISTENER],
                                stdout=subprocess.PIPE, text=True)
    try:
        ports = json.loads(listener.stdout.readline())
        results["with_listener"] = _run_once(messages, ports)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for port in ports:
                sock.sendto(STOP, ("127.0.0.1", port))
        received = json.loads(listener.stdout.readline() or "[null, null]")
        results["with_listener"]["received"] = {"sip": received[0], "hep": received[1]}
    finally:
        listener.kill()
        listener.wait()
        listener.stdout.close()

    results["without_listener"] = _run_once(messages, _free_ports(2))
    return results


def _messages_from(paths: list[Path]) -> list:
    from siptrace.capture.files import open_capture
    from siptrace.extract import SipExtractor

    messages = []
    for path in paths:
        extractor = SipExtractor()
        for record in open_capture(path):
            messages.extend(extractor.feed(*record))
        messages.extend(extractor.finish())
    return messages


if __name__ == "__main__":
    real = Path(__file__).resolve().parents[2] / "shared" / "real-pcaps"
    paths = [Path(p) for p in sys.argv[1:]] or sorted(real.glob("*.pcap"))
    print(json.dumps(bench_mirror(_messages_from(paths)), indent=2))
