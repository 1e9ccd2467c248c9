"""Helpers for the mirror tests: wire messages from real captures, UDP listeners, sngrep.

Not a test module (pytest does not collect it); the test_mirror_* modules import it.
"""

import glob
import os
import re
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

from conftest import REAL_PCAPS, missing, require_tool
from siptrace.capture.files import open_capture
from siptrace.extract import SipExtractor, WireMessage
from siptrace.sip.parser import parse_message


def wire(raw: bytes, *, ts_ns=1_700_000_000_123_456_789, transport="udp", family=4,
         src="192.0.2.1", sport=5060, dst="192.0.2.2", dport=5060) -> WireMessage:
    """A wire message around ``raw`` (a SIP message: parsed by the team's parser)."""
    return WireMessage(ts_ns, transport, family, src, sport, dst, dport, parse_message(raw))


def sample_sip(n: int, call_id: str = "mirror-test") -> bytes:
    return (f"OPTIONS sip:probe@example.com SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-{n}\r\n"
            f"From: <sip:tester@example.com>;tag=t{n}\r\n"
            f"To: <sip:probe@example.com>\r\n"
            f"Call-ID: {call_id}-{n}\r\n"
            f"CSeq: {n} OPTIONS\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def real_wires(name: str) -> list[WireMessage]:
    """The SIP messages of one capture in ../shared/real-pcaps, as siptrace extracts them."""
    path = REAL_PCAPS / name
    if not path.is_file():
        missing(f"{path} is absent")
    extractor = SipExtractor()
    wires = []
    for record in open_capture(path):
        wires.extend(extractor.feed(*record))
    wires.extend(extractor.finish())
    return wires


class UdpListener:
    """A UDP socket on loopback that collects datagrams."""

    def __init__(self, host: str = "127.0.0.1"):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((host, 0))
        self.sock.settimeout(5.0)
        self.host = host
        self.port = self.sock.getsockname()[1]

    @property
    def label(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def receive(self, count: int) -> list[bytes]:
        """Exactly ``count`` datagrams (socket.timeout if they do not come)."""
        return [self.sock.recv(70_000) for _ in range(count)]

    def assert_nothing_more(self) -> None:
        self.sock.settimeout(0.2)
        try:
            extra = self.sock.recv(70_000)
        except socket.timeout:
            return
        raise AssertionError(f"unexpected extra datagram: {extra[:80]!r}")

    def close(self) -> None:
        self.sock.close()


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A port with nothing listening on it (bound, then released)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def udp_port_bound(port: int) -> bool:
    """Whether some socket is bound to this UDP port (the kernel's socket tables)."""
    suffix = f":{port:04X}"
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as lines:
            next(lines)
            if any(line.split()[1].endswith(suffix) for line in lines):
                return True
    return False


def pcap_record_count(path: Path) -> int:
    """Complete records in a classic pcap file (0 while it has no header yet)."""
    data = path.read_bytes() if path.exists() else b""
    if len(data) < 24:
        return 0
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    count, pos = 0, 24
    while pos + 16 <= len(data):
        (caplen,) = struct.unpack_from(order + "I", data, pos + 8)
        if pos + 16 + caplen > len(data):
            break
        count, pos = count + 1, pos + 16 + caplen
    return count


class SngrepHep:
    """sngrep listening for HEP on loopback, writing what it decodes to a pcap."""

    def __init__(self, workdir: Path, password: str | None = None):
        require_tool("sngrep")
        self.port = free_udp_port()
        self.pcap = workdir / f"sngrep-{self.port}.pcap"
        argv = ["sngrep", "-N", "-q", "-L", f"udp:127.0.0.1:{self.port}", "-O", str(self.pcap)]
        if password is None:
            argv[1:1] = ["-F"]  # no user config file
        else:
            config = workdir / f"sngrep-{self.port}.conf"
            config.write_text(f"set eep.listen.pass {password}\n")
            argv[1:1] = ["-f", str(config)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 10
        while not udp_port_bound(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"sngrep did not bind udp:{self.port}: "
                                     f"{self.proc.stderr.read().decode(errors='replace')}")
            time.sleep(0.02)

    def wait_for(self, frames: int, timeout: float = 10.0) -> None:
        """Until sngrep has written ``frames`` records (it flushes each one)."""
        deadline = time.monotonic() + timeout
        while pcap_record_count(self.pcap) < frames and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> Path:
        """SIGTERM (sngrep flushes its pcap) and wait; returns the pcap path."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc.stderr.close()
        return self.pcap


TSHARK_FIELDS = ["frame.time_epoch", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst",
                 "udp.srcport", "udp.dstport", "tcp.srcport", "tcp.dstport", "sip.Call-ID"]


def tshark_frames(pcap: Path) -> list[dict]:
    """Per frame: the TSHARK_FIELDS plus ``payload`` (the UDP/TCP payload bytes)."""
    require_tool("tshark")
    argv = ["tshark", "-n", "-r", str(pcap), "--disable-protocol", "sdp",
            "-o", "sip.desegment_body:FALSE", "-T", "fields", "-E", "occurrence=f"]
    for field in TSHARK_FIELDS + ["udp.payload", "tcp.payload"]:
        argv += ["-e", field]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    frames = []
    for line in out.splitlines():
        values = line.split("\t")
        frame = dict(zip(TSHARK_FIELDS, values))
        payload_hex = values[len(TSHARK_FIELDS)] or values[len(TSHARK_FIELDS) + 1]
        frame["payload"] = bytes.fromhex(payload_hex.replace(":", ""))
        frames.append(frame)
    return frames


# -- Kamailio's sipcapture as a HEP decoder (what Homer collectors run) ------------------

KAMAILIO_CFG = """#!KAMAILIO
debug=1
log_stderror=yes
fork=yes
children=1
disable_tcp=yes
listen=udp:127.0.0.1:{port}
mpath="{modules}"
loadmodule "pv.so"
loadmodule "db_flatstore.so"
loadmodule "sipcapture.so"
modparam("sipcapture", "db_url", "flatstore:{store}")
modparam("sipcapture", "hep_capture_on", 1)
modparam("sipcapture", "capture_on", 1)
request_route {{ sip_capture(); drop; }}
onreply_route {{ sip_capture(); drop; }}
"""
# Positions in a sip_capture row as db_flatstore writes it (Kamailio 5.6): the optional
# header columns in the middle vary, so the later ones are counted from the end.
SIPCAPTURE_COLUMNS = {"date": 0, "micro_ts": 1, "callid": 13, "source_ip": -22,
                      "source_port": -21, "destination_ip": -20, "destination_port": -19,
                      "proto": -14, "family": -13, "node": -10, "correlation_id": -9,
                      "msg": -4}
KAMAILIO_PROTO = {"udp": b"1", "tcp": b"2", "ws": b"2"}  # Kamailio's PROTO_UDP, PROTO_TCP
FLATSTORE_ESCAPE = re.compile(rb"\\x([0-9A-Fa-f]{2})")  # '|', '\\' and non-ASCII as \xHH


def unescape_flatstore(value: bytes) -> bytes:
    return FLATSTORE_ESCAPE.sub(lambda m: bytes([int(m[1], 16)]), value)


def sipcapture_fields(line: bytes) -> dict[str, bytes]:
    """The columns of a stored sip_capture line that the tests compare."""
    row = line.split(b"|")
    return {name: row[i] for name, i in SIPCAPTURE_COLUMNS.items()}


class KamailioSipcapture:
    """A real Kamailio with sipcapture and db_flatstore, taking HEP on a free UDP port
    and storing one line a message under ``tmp_path``; stopped on leaving."""

    def __init__(self, tmp_path: Path, timeout: float = 15):
        require_tool("kamailio")
        modules = [d for d in glob.glob("/usr/lib/*/kamailio/modules")
                   if os.path.exists(f"{d}/sipcapture.so")
                   and os.path.exists(f"{d}/db_flatstore.so")]
        if not modules:
            missing("Kamailio's sipcapture and db_flatstore modules are not installed")
        self.port = free_udp_port()
        self.store = tmp_path / "store"
        self.store.mkdir()
        self.config = tmp_path / "kamailio.cfg"
        self.config.write_text(KAMAILIO_CFG.format(port=self.port, modules=modules[0],
                                                   store=self.store))
        self.deadline = time.monotonic() + timeout

    def __enter__(self):
        self.process = subprocess.Popen(["kamailio", "-f", str(self.config), "-DD", "-E"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while not udp_port_bound(self.port):
                assert self.process.poll() is None, \
                    self.process.stderr.read().decode(errors="replace")
                assert time.monotonic() < self.deadline, "kamailio did not bind its port"
                time.sleep(0.05)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(10)
        self.process.stderr.close()

    def lines(self) -> list[bytes]:
        return [line for path in sorted(self.store.glob("sip_capture*"))
                for line in path.read_bytes().splitlines()]

    def wait_for(self, count: int) -> None:
        """Until ``count`` lines are stored, or the deadline."""
        while len(self.lines()) < count and time.monotonic() < self.deadline:
            time.sleep(0.05)
