"""Real calls on loopback: SIPp UAC -> Kamailio -> SIPp UAS, with tcpdump writing the wire.

Used by pcaps/make_fixtures.py (a handful of calls) and bench/build_capture.py (hundreds of
thousands of messages). Every process is started in its own session and stopped by its
own pid/process group; every wait is bounded.

    with SipLab(Path("out.pcap"), "udp", workdir) as lab:
        result = lab.run_calls(calls=5, rate=5, pause_ms=100)
    print(result, lab.capture)
"""

from dataclasses import dataclass
import os
from pathlib import Path
import re
import shutil
import signal
import subprocess
import time

from siptrace.errors import SiptraceError

REPO = Path(__file__).resolve().parents[1]
LAB_CONFIG = REPO / "contrib" / "lab" / "kamailio-lab.cfg"
LOOPBACK = "127.0.0.1"
TOOLS = ("kamailio", "sipp", "tcpdump")
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.05
SETTLE_S = 0.5  # after the last call, for the final messages to be sent
# Before stopping tcpdump: libpcap hands over ring-buffer blocks when full or after its
# timeout (1 s for tcpdump); a block still pending at SIGINT is lost.
CAPTURE_DRAIN_S = 1.5
SIPP_MAX_SOCKET = 1000  # SIPp refuses TCP when its default (50000) exceeds `ulimit -n`
# /proc/net/tcp socket state LISTEN (include/net/tcp_states.h).
TCP_LISTEN = "0A"
# SIPp's scenario screen rows, then (messages, retransmissions):
#   uac "  INVITE ---------->  E-RTD1 5   0", uas "  ----------> INVITE   5   0".
SIPP_MESSAGE_ROW = re.compile(
    r"^\s*(?:\S+\s+(?:-{10}>|<-{10})|(?:-{10}>|<-{10})\s+\S+)\s+"
    r"(?:[BE]-RTD\d+\s+)?(\d+)\s+(\d+)", re.M)
SIPP_CUMULATIVE = r"^\s*{}\s*\|\s*\d+\s*\|\s*(\d+)"
TCPDUMP_COUNTERS = re.compile(r"(\d+) packets? (captured|received by filter|dropped by kernel)")


class LabError(SiptraceError):
    """The lab could not run: a tool is missing, a port is taken, a process failed."""


@dataclass(frozen=True)
class LabPorts:
    proxy: int = 5060
    uas: int = 5080
    uac: int = 5070


@dataclass(frozen=True)
class UacResult:
    """What SIPp's UAC reported at the end of a run."""

    successful: int
    failed: int
    retransmissions: int
    seconds: float


@dataclass(frozen=True)
class CaptureResult:
    """tcpdump's closing counters."""

    captured: int
    received: int
    dropped: int


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def bound_ports(proto: str) -> set[int]:
    """Local ports with a UDP socket, or a listening TCP socket, on any address."""
    ports = set()
    for table in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if proto == "tcp" and fields[3] != TCP_LISTEN:
                continue
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _wait_until(ready, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready():
        if proc.poll() is not None:
            raise LabError(f"{what} exited with status {proc.returncode}: {_tail(log)}")
        if time.monotonic() > deadline:
            raise LabError(f"{what} not ready after {READY_TIMEOUT_S:.0f} s: {_tail(log)}")
        time.sleep(POLL_S)


def _tail(log: Path, lines: int = 5) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    """Signals the process, waits; kills its whole process group if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_S)
    try:  # children (kamailio's workers) that outlived their parent
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def parse_sipp_output(text: str, seconds: float) -> UacResult:
    """Calls and retransmissions from the last screens SIPp (uac or uas) printed."""
    last_screen = text[text.rfind("Scenario Screen"):]
    retrans = sum(int(m.group(2)) for m in SIPP_MESSAGE_ROW.finditer(last_screen))

    def cumulative(name: str) -> int:
        found = re.findall(SIPP_CUMULATIVE.format(re.escape(name)), text, re.M)
        return int(found[-1]) if found else 0

    return UacResult(cumulative("Successful call"), cumulative("Failed call"), retrans,
                     seconds)


class SipLab:
    """tcpdump on lo, Kamailio on the proxy port, a SIPp UAS; run_calls() runs a UAC."""

    def __init__(self, pcap: Path, transport: str, workdir: Path,
                 ports: LabPorts = LabPorts(), buffer_kib: int = 8192,
                 shm_mb: int = 64):
        if transport not in ("udp", "tcp"):
            raise LabError(f"transport must be udp or tcp, not {transport!r}")
        self.pcap, self.transport, self.workdir = Path(pcap), transport, Path(workdir)
        self.ports, self.buffer_kib, self.shm_mb = ports, buffer_kib, shm_mb
        self.procs: dict[str, subprocess.Popen] = {}
        self.capture: CaptureResult | None = None
        self.uas_retransmissions = 0

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=self.workdir,
                                    start_new_session=True)
        self.procs[name] = proc
        return proc

    def __enter__(self) -> "SipLab":
        absent = missing_tools()
        if absent:
            raise LabError(f"missing tools: {', '.join(absent)} (make debian-packages)")
        taken = sorted({p for p in (self.ports.proxy, self.ports.uas, self.ports.uac)}
                       & (bound_ports("udp") | bound_ports("tcp")))
        if taken:
            raise LabError(f"port(s) {taken} already in use on this machine")
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_all()
        except BaseException:
            self._stop_all()
            raise
        return self

    def _start_all(self) -> None:
        ports = self.ports
        bpf = (f"((udp or tcp) and (port {ports.proxy} or port {ports.uas} or "
               f"port {ports.uac})) or (ip[6:2] & 0x1fff != 0)")
        tcpdump = self._start("tcpdump", ["tcpdump", "-i", "lo", "-n", "-s", "0",
                                          "--immediate-mode", "-B",
                                          str(self.buffer_kib), "-w", str(self.pcap), bpf])
        tcpdump_log = self.workdir / "tcpdump.log"
        _wait_until(lambda: "listening on" in tcpdump_log.read_text(errors="replace"),
                    "tcpdump", tcpdump, tcpdump_log)

        kamailio = self._start("kamailio", [
            "kamailio", "-f", str(LAB_CONFIG), "-DD", "-E", "-m", str(self.shm_mb),
            "-A", f"PROXY_PORT={ports.proxy}", "-A", f"UAS_PORT={ports.uas}"])
        _wait_until(lambda: ports.proxy in bound_ports("udp")
                    and ports.proxy in bound_ports("tcp"),
                    "kamailio", kamailio, self.workdir / "kamailio.log")

        mode = "u1" if self.transport == "udp" else "t1"
        uas = self._start("uas", ["sipp", "-sn", "uas", "-i", LOOPBACK, "-p", str(ports.uas),
                                  "-t", mode, "-nostdin", "-max_socket",
                                  str(SIPP_MAX_SOCKET)])
        _wait_until(lambda: ports.uas in bound_ports(self.transport),
                    "sipp uas", uas, self.workdir / "uas.log")

    def run_calls(self, calls: int, rate: float, pause_ms: int = 0,
                  timeout_s: float = 60.0) -> UacResult:
        """Runs `calls` calls at `rate` calls/s through the proxy; bounded by timeout_s."""
        mode = "u1" if self.transport == "udp" else "tn"
        argv = ["sipp", "-sn", "uac", f"{LOOPBACK}:{self.ports.proxy}", "-i", LOOPBACK,
                "-p", str(self.ports.uac), "-t", mode, "-m", str(calls), "-r", str(rate),
                "-d", str(pause_ms), "-nostdin", "-max_socket", str(SIPP_MAX_SOCKET),
                "-timeout", str(int(timeout_s)), "-timeout_error"]
        started = time.monotonic()
        uac = self._start("uac", argv)
        try:
            uac.wait(timeout=timeout_s + STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _stop(uac, signal.SIGKILL)
            raise LabError(f"sipp uac still running after {timeout_s:.0f} s") from None
        seconds = time.monotonic() - started
        log = self.workdir / "uac.log"
        result = parse_sipp_output(log.read_text(errors="replace"), seconds)
        if uac.returncode not in (0, 1) or result.successful + result.failed == 0:
            raise LabError(f"sipp uac exited with status {uac.returncode}: {_tail(log)}")
        time.sleep(SETTLE_S)
        return result

    def _stop_all(self) -> None:
        for name in ("uac", "uas", "kamailio"):
            _stop(self.procs.get(name))
        uas_log = self.workdir / "uas.log"
        if "uas" in self.procs and uas_log.exists():
            self.uas_retransmissions = parse_sipp_output(
                uas_log.read_text(errors="replace"), 0.0).retransmissions
        tcpdump = self.procs.get("tcpdump")
        if tcpdump is not None:
            if tcpdump.poll() is None:
                time.sleep(CAPTURE_DRAIN_S)
            _stop(tcpdump, signal.SIGINT)
            text = (self.workdir / "tcpdump.log").read_text(errors="replace")
            counters = {what: int(n) for n, what in TCPDUMP_COUNTERS.findall(text)}
            self.capture = CaptureResult(counters.get("captured", 0),
                                         counters.get("received by filter", 0),
                                         counters.get("dropped by kernel", 0))

    def __exit__(self, *exc) -> None:
        self._stop_all()
