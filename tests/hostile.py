"""Hostile traffic for the memory-cap tests: captures, TCP peers and decision floods.

Everything is generated: a capture of many TCP streams, each announcing a large
Content-Length and sending most of its body, written straight to a pcap file; the
same on live loopback connections; decisions with thousands of AVP values. And the
measure: the peak RSS of each process of a siptrace command.
"""

import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys

SEGMENT = 60000  # TCP payload per segment (an IPv4 packet holds 65,515 bytes at most)
ANNOUNCED = 1_000_000  # Content-Length announced: under the framer's 1 MB message limit

# Run ARGV, wait for it, then print the peak RSS (kB) of the largest process of its tree.
_PEAK = ("import resource, subprocess, sys\n"
         "status = subprocess.run(sys.argv[1:]).returncode\n"
         "print('peak', status, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")


def run_measured(argv: list[str], timeout: float = 600, **popen) -> tuple[int, str, str, float]:
    """Run ARGV to its end: (exit status, stdout, stderr, peak RSS in MB), the peak being
    the largest VmHWM among ARGV's processes (it and each child it waited for), as
    getrusage sees them from a wrapper process of its own."""
    done = subprocess.run([sys.executable, "-c", _PEAK, *argv], capture_output=True, text=True,
                          timeout=timeout, **popen)
    out, _, last = done.stdout.rstrip("\n").rpartition("\n")
    _, status, kb = last.split()
    return int(status), out, done.stderr, int(kb) / 1024


def tree_peak_mb(pid: int) -> float:
    """The largest VmHWM (peak RSS) among a running process and its descendants, in MB."""
    peak, todo = 0.0, [pid]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) / 1024)
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as children:
                    todo += [int(child) for child in children.read().split()]
        except FileNotFoundError:  # it ended meanwhile
            continue
    return peak


def invite_head(n: int, length: int = ANNOUNCED) -> bytes:
    return (f"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 10.1.0.1;branch=z9hG4bK{n}\r\n"
            f"From: <sip:a@example.com>;tag={n}\r\nTo: <sip:bob@example.com>\r\n"
            f"Call-ID: hostile-{n}\r\nCSeq: 1 INVITE\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def _frame(src: str, sport: int, dst: str, dport: int, seq: int, flags: int,
           payload: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0, 64, 6, 0,
                     ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp + payload


def write_stream_flood(path, streams: int, body_bytes: int) -> int:
    """A pcap of ``streams`` TCP streams, all open at once, each sending an INVITE that
    announces ANNOUNCED bytes of body and then ``body_bytes`` of it, round-robin.
    Returns the bytes written."""
    syn, psh_ack = 0x02, 0x18
    keys = [(f"10.1.{i // 250}.{i % 250 + 1}", 40000 + i, "10.0.0.1", 5060)
            for i in range(streams)]
    seqs = [1000] * streams
    ts = 1_700_000_000_000_000
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))

        def write(key, i, flags, payload):
            nonlocal ts
            frame = _frame(*key, seqs[i], flags, payload)
            seqs[i] += len(payload) + (1 if flags & syn else 0)
            ts += 10_000
            seconds, ns = divmod(ts, 10**9)
            out.write(struct.pack("<IIII", seconds, ns // 1000, len(frame), len(frame)))
            out.write(frame)

        for i, key in enumerate(keys):
            write(key, i, syn, b"")
            write(key, i, psh_ack, invite_head(i))
        body = b"x" * SEGMENT
        for sent in range(0, body_bytes, SEGMENT):
            chunk = body[:min(SEGMENT, body_bytes - sent)]
            for i, key in enumerate(keys):
                write(key, i, psh_ack, chunk)
        return out.tell()


def write_message_flood(path, messages: int, body_bytes: int, at_once: int = 20) -> int:
    """A pcap of ``messages`` whole INVITEs of ``body_bytes`` each over TCP, ``at_once``
    streams open at a time (under the stream bound: every message is complete).
    Returns the bytes written."""
    syn, psh_ack = 0x02, 0x18
    ts = 1_700_000_000_000_000
    body = b"x" * SEGMENT
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for first in range(0, messages, at_once):
            group = range(first, min(first + at_once, messages))
            keys = {n: (f"10.2.{n // 250 % 250}.{n % 250 + 1}", 20000 + n % 40000,
                        "10.0.0.1", 5060) for n in group}
            seqs = dict.fromkeys(group, 1000)

            def write(n, flags, payload):
                nonlocal ts
                frame = _frame(*keys[n], seqs[n], flags, payload)
                seqs[n] += len(payload) + (1 if flags & syn else 0)
                ts += 10_000
                seconds, ns = divmod(ts, 10**9)
                out.write(struct.pack("<IIII", seconds, ns // 1000, len(frame), len(frame)))
                out.write(frame)

            for n in group:
                write(n, syn, b"")
                write(n, psh_ack, invite_head(n, body_bytes))
            for sent in range(0, body_bytes, SEGMENT):
                for n in group:
                    write(n, psh_ack, body[:min(SEGMENT, body_bytes - sent)])
        return out.tell()


def open_stream_flood(ip: str, port: int, streams: int, body_bytes: int) -> list:
    """``streams`` loopback TCP connections to ip:port, each sending an INVITE that
    announces ANNOUNCED bytes of body and ``body_bytes`` of it, then kept open."""
    conns = []
    for i in range(streams):
        conn = socket.create_connection((ip, port))
        conns.append(conn)
        conn.sendall(invite_head(i))
    body = b"x" * SEGMENT
    for sent in range(0, body_bytes, SEGMENT):
        for conn in conns:
            conn.sendall(body[:min(SEGMENT, body_bytes - sent)])
    return conns


def avp_decision(n: int, values: int = 13000) -> bytes:
    """A valid decision just under 64 KB: ``values`` short values of one AVP."""
    obj = {"callid": f"flood-{n}", "cseq": "1 INVITE", "branch": f"z9hG4bK{n}",
           "kind": "request", "flags": 0, "trace": False,
           "avps": {"7000": [str(i % 40) for i in range(values)]}}
    data = json.dumps(obj, separators=(",", ":")).encode()
    assert len(data) <= 65536, len(data)
    return data


def hostile_decisions() -> list[bytes]:
    """Decisions that are not strict JSON or hold what no proxy sends: each malformed.

    NaN and Infinity (JavaScript's, not JSON's), a float that overflows to infinity,
    integers of 4,000 digits, lone surrogates escaped (JSON's syntax allows them,
    Unicode does not)."""
    base = json.loads(avp_decision(0, values=1))
    out = []
    for field, text in (("ts", "NaN"), ("ts", "Infinity"), ("ts", "-Infinity"), ("ts", "1e400"),
                        ("flags", "9" * 4000), ("avps", '{"6843": [' + "7" * 4000 + "]}"),
                        ("callid", '"\\ud800"'), ("branch", '"z9hG4bK\\udfff"'),
                        ("avps", '{"6843": ["a\\ud83d"]}'), ("avps", '{"\\udc00": []}')):
        obj = dict(base)
        obj[field] = "@"
        out.append(json.dumps(obj).replace('"@"', text).encode())
    return out


def nested(depth: int = 500) -> str:
    """A JSON value nested ``depth`` deep."""
    return '{"a": ' * depth + "1" + "}" * depth
