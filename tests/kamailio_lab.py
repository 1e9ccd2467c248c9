"""Kamailio, SIPp and `siptrace run` on loopback, for the end-to-end tests.

Every process is started in its own session and stopped by its pid (SIGTERM, then
SIGKILL to its process group) when the Lab closes, whatever the test did. Each
test gets its own loopback addresses so no other test's traffic reaches the capture.
"""

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO, require_tool

KIT = REPO / "contrib" / "kamailio"
KAMAILIO_CFG = KIT / "kamailio.cfg"
KAMAILIO_KIT = KIT / "siptrace_decisions.py"
APP_PYTHON3 = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules/app_python3.so")
SIPTRACE = [str(Path(sys.executable).parent / "siptrace")]
READY_TIMEOUT = 15.0  # seconds a process gets to start listening
CALL_TIMEOUT = 30  # seconds SIPp gets for its calls


class LabError(AssertionError):
    """A lab process did not start or failed; the message carries its output."""


class Lab:
    """Processes of one test; ``close()`` (or ``with``) stops all of them."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=self.workdir)
        log.close()
        self.procs.append((name, proc))
        return proc

    def output(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, proc: subprocess.Popen, timeout: float = 20.0) -> int:
        """SIGTERM, wait, then SIGKILL the process group; the exit status."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # children (Kamailio's workers) too
        except (ProcessLookupError, PermissionError):
            pass
        return proc.wait()

    def close(self) -> None:
        for _, proc in reversed(self.procs):
            self.stop(proc, timeout=5.0)
        self.procs = []

    # -- the parts -------------------------------------------------------------------
    def kamailio(self, *, ip: str, port: int, next_ip: str, next_port: int,
                 decision_socket: Path, defines: tuple[str, ...] = ()) -> subprocess.Popen:
        require_tool("kamailio")
        if not APP_PYTHON3.exists():
            from conftest import missing
            missing("kamailio-python3-modules (app_python3) is not installed")
        argv = ["kamailio", "-f", str(KAMAILIO_CFG), "-DD", "-E", "-w", str(self.workdir),
                "-A", f'LISTEN_IP="{ip}"', "-A", f"PROXY_PORT={port}",
                "-A", f'NEXT_IP="{next_ip}"', "-A", f"NEXT_PORT={next_port}",
                # One worker: with two, a 180 and the 200 right behind it can be relayed
                # out of order, and SIPp's uac aborts a call on a late 180.
                "-A", "WORKERS=1"]
        for define in defines:
            argv += ["-A", define]
        env = dict(os.environ, SIPTRACE_KIT=str(KAMAILIO_KIT),
                   SIPTRACE_DECISION_SOCKET=str(decision_socket))
        proc = self.start("kamailio", argv, env)
        self.wait_tcp(proc, "kamailio", ip, port)
        return proc

    def uas(self, *, ip: str, port: int, transport: str) -> subprocess.Popen:
        require_tool("sipp")
        proc = self.start("uas", ["sipp", "-sn", "uas", "-i", ip, "-p", str(port),
                                  "-t", _sipp_transport(transport), "-nostdin"])
        if transport == "tcp":
            self.wait_tcp(proc, "uas", ip, port)
        else:
            self.wait_udp(proc, "uas", ip, port)
        return proc

    def uac(self, *, proxy_ip: str, proxy_port: int, ip: str, port: int, transport: str,
            calls: int) -> subprocess.Popen:
        """Places ``calls`` calls through the proxy; raises LabError unless all succeed."""
        require_tool("sipp")
        proc = self.start("uac", ["sipp", "-sn", "uac", f"{proxy_ip}:{proxy_port}",
                                  "-i", ip, "-p", str(port), "-t", _sipp_transport(transport),
                                  "-m", str(calls), "-r", "10", "-l", "1", "-nostdin",
                                  "-timeout", f"{CALL_TIMEOUT}s", "-timeout_error"])
        try:
            status = proc.wait(CALL_TIMEOUT + 10)
        except subprocess.TimeoutExpired:
            status = None
        if status != 0:
            raise LabError(f"sipp uac exited {status}:\n{self.output('uac')[-2000:]}\n"
                           f"kamailio:\n{self.output('kamailio')[-2000:]}")
        return proc

    def siptrace_run(self, args: list[str], control_socket: Path) -> subprocess.Popen:
        """`siptrace run ARGS`, ready once its control socket answers."""
        proc = self.start("siptrace", SIPTRACE + ["run", *args])
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LabError(f"siptrace run exited {proc.returncode}:\n"
                               f"{self.output('siptrace')}")
            if control_socket.exists():
                try:
                    siptrace_status(control_socket)
                    return proc
                except OSError:
                    pass
            time.sleep(0.05)
        raise LabError(f"siptrace run did not become ready:\n{self.output('siptrace')}")

    def wait_tcp(self, proc, name: str, ip: str, port: int) -> None:
        def ready():
            with socket.socket() as probe:
                return probe.connect_ex((ip, port)) == 0
        self._wait(proc, name, ready)

    def wait_udp(self, proc, name: str, ip: str, port: int) -> None:
        def ready():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind((ip, port))
                except OSError as exc:
                    return exc.errno == errno.EADDRINUSE
                return False
        self._wait(proc, name, ready)

    def _wait(self, proc, name: str, ready) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LabError(f"{name} exited {proc.returncode}:\n{self.output(name)[-3000:]}")
            if ready():
                return
            time.sleep(0.05)
        raise LabError(f"{name} did not start listening:\n{self.output(name)[-3000:]}")


def _sipp_transport(transport: str) -> str:
    return {"udp": "u1", "tcp": "t1"}[transport]


def siptrace_status(control_socket: Path) -> dict:
    """The running siptrace's status, through its control socket."""
    from siptrace.control import send_command
    from siptrace.errors import SiptraceError

    try:
        return send_command(control_socket, "status")["status"]
    except SiptraceError as exc:
        raise OSError(str(exc)) from None


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.1):
    """Polls until predicate() is truthy; returns its last value (no timing assertion)."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value
