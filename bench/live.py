"""Live capture under load: SIP over loopback at a fixed rate while `siptrace run` traces it.

A load generator plays calls between a UAC, a proxy and a UAS on their own loopback
addresses (13 messages per call, as a stateful proxy puts them on the wire) at a
fixed rate; `siptrace run --trace-all` captures on lo and stores every message in
SQLite. Reported per rate: messages stored / sent, kernel drops, siptrace's CPU
(user+system seconds, and per cent of one core) and memory (peak VmHWM, and VmRSS
sampled each second: flat means the last quarter is no higher than the second).

    python -m bench.live --rates 5000,10000,20000 --duration 60
"""

import argparse
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROXY = ("127.0.0.50", 15060)
UAC = ("127.0.0.51", 15070)
UAS = ("127.0.0.52", 15080)
RATES = (5_000, 10_000, 20_000)
DURATION = 60.0  # seconds of load per rate
SETTLE_TIMEOUT = 120.0  # seconds siptrace gets to store what it captured
READY_TIMEOUT = 20.0
PACE_INTERVAL = 0.002  # seconds between bursts of the generator

_SDP = ("v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.51\r\ns=-\r\n"
        "c=IN IP4 127.0.0.51\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def _request(method: str, cseq: int, vias: list[str], body: str = "") -> str:
    return _message(f"{method} sip:service@{UAS[0]}:{UAS[1]} SIP/2.0", method, cseq, vias,
                    f"Contact: <sip:sipp@{UAC[0]}:{UAC[1]}>\r\nMax-Forwards: 70\r\n", body)


def _reply(status: str, method: str, cseq: int, vias: list[str], body: str = "") -> str:
    return _message(f"SIP/2.0 {status}", method, cseq, vias,
                    f"Contact: <sip:service@{UAS[0]}:{UAS[1]}>\r\n", body)


def _message(start_line: str, method: str, cseq: int, vias: list[str], contact: str,
             body: str) -> str:
    """A SIPp message template (%(n)d, %(totag)s) of the benchmark's one dialog."""
    via = "".join(f"Via: SIP/2.0/UDP {v}\r\n" for v in vias)
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    return (f"{start_line}\r\n{via}"
            f"From: sipp <sip:sipp@{UAC[0]}:{UAC[1]}>;tag=%(n)dUAC\r\n"
            f"To: service <sip:service@{PROXY[0]}:{PROXY[1]}>%(totag)s\r\n"
            f"Call-ID: %(n)d-bench@{UAC[0]}\r\nCSeq: {cseq} {method}\r\n"
            f"{contact}{ctype}Content-Length: {len(body)}\r\n\r\n{body}")


def call_flow() -> list[tuple[tuple, tuple, bytes]]:
    """(from, to, template) for the 13 messages of one call; ``%(n)d`` is the call."""
    uac = f"{UAC[0]}:{UAC[1]};branch=z9hG4bK%(n)d-%(b)s"
    prx = f"{PROXY[0]}:{PROXY[1]};branch=z9hG4bKp%(n)d-%(b)s"
    flow = [
        (UAC, PROXY, _request("INVITE", 1, [uac], _SDP), "i", ""),
        (PROXY, UAC, _reply("100 Trying", "INVITE", 1, [uac]), "i", ""),
        (PROXY, UAS, _request("INVITE", 1, [prx, uac], _SDP), "i", ""),
        (UAS, PROXY, _reply("180 Ringing", "INVITE", 1, [prx, uac]), "i", ";tag=%(n)dUAS"),
        (PROXY, UAC, _reply("180 Ringing", "INVITE", 1, [uac]), "i", ";tag=%(n)dUAS"),
        (UAS, PROXY, _reply("200 OK", "INVITE", 1, [prx, uac], _SDP), "i", ";tag=%(n)dUAS"),
        (PROXY, UAC, _reply("200 OK", "INVITE", 1, [uac], _SDP), "i", ";tag=%(n)dUAS"),
        (UAC, PROXY, _request("ACK", 1, [uac]), "a", ";tag=%(n)dUAS"),
        (PROXY, UAS, _request("ACK", 1, [prx, uac]), "a", ";tag=%(n)dUAS"),
        (UAC, PROXY, _request("BYE", 2, [uac]), "b", ";tag=%(n)dUAS"),
        (PROXY, UAS, _request("BYE", 2, [prx, uac]), "b", ";tag=%(n)dUAS"),
        (UAS, PROXY, _reply("200 OK", "BYE", 2, [prx, uac]), "b", ";tag=%(n)dUAS"),
        (PROXY, UAC, _reply("200 OK", "BYE", 2, [uac]), "b", ";tag=%(n)dUAS"),
    ]
    out = []
    for src, dst, text, branch, totag in flow:
        text = text.replace("%(b)s", branch).replace("%(totag)s", totag)
        out.append((src, dst, text.replace("%(n)d", "{n}").encode()))
    return out


class LoadGenerator:
    """Sends the call flow at a fixed rate from the three bound loopback sockets."""

    def __init__(self):
        self.sockets = {}
        for addr in (UAC, PROXY, UAS):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
            sock.bind(addr)  # bound, so that nothing answers ICMP port unreachable
            self.sockets[addr] = sock
        self.flow = [(self.sockets[src].sendto, dst, template.split(b"{n}"))
                     for src, dst, template in call_flow()]
        self.sent = 0

    def send(self, rate: int, duration: float) -> int:
        """``rate`` messages/s for ``duration`` s; the number sent by this call."""
        flow, per_call = self.flow, len(self.flow)
        first = self.sent
        total = first + int(rate * duration)
        started = time.perf_counter()
        sent = first
        while sent < total:
            due = min(total, first + int((time.perf_counter() - started) * rate) + 1)
            while sent < due:
                call, step = divmod(sent, per_call)
                sendto, dst, parts = flow[step]
                sendto(str(call).encode().join(parts), dst)
                sent += 1
            time.sleep(PACE_INTERVAL)
        self.sent = sent
        return sent - first

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()


def _proc_status(pid: int) -> dict:
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024  # MB
    except OSError:
        pass
    return fields


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _process_tree(pid: int) -> list[int]:
    """pid and its descendants (siptrace's store process, a mirror worker)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return pids


def _tree_cpu(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            out[pid] = _cpu_seconds(pid)
        except OSError:
            pass
    return out


def _count_rows(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            return conn.execute("SELECT count(*) FROM sip_trace").fetchone()[0]
    except sqlite3.Error:
        return 0


def _status(control: Path) -> dict:
    from siptrace.control import send_command
    from siptrace.errors import SiptraceError

    try:
        return send_command(control, "status")["status"]
    except SiptraceError:
        return {}


def bench_rate(rate: int, duration: float, workdir: Path) -> dict:
    """One run: start siptrace, load it, wait for it to store, stop it, measure."""
    db = workdir / f"live-{rate}.db"
    db.unlink(missing_ok=True)
    control = workdir / f"control-{rate}.sock"
    argv = [str(Path(sys.executable).parent / "siptrace"), "run", "--interface", "lo",
            "--proxy", f"{PROXY[0]}:{PROXY[1]}", "--trace-all", "--trace-on", "1",
            "--db-url", f"sqlite:///{db}", "--decision-socket", str(workdir / "decisions.sock"),
            "--control-socket", str(control)]
    log = open(workdir / f"siptrace-{rate}.log", "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not control.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"siptrace run did not start: "
                                 f"{(workdir / f'siptrace-{rate}.log').read_text()}")
            time.sleep(0.05)
        rss = []
        pids = _process_tree(proc.pid)
        cpu_before = _tree_cpu(pids)
        started = time.perf_counter()
        sampler_stop = time.monotonic
        # The generator runs in this process; memory is sampled between its bursts.
        sent = _generate_sampling(rate, duration, proc.pid, rss)
        send_seconds = time.perf_counter() - started
        deadline = sampler_stop() + SETTLE_TIMEOUT
        stored = last = -1
        stable_since = sampler_stop()
        while sampler_stop() < deadline:
            stored = _count_rows(db)
            if stored >= sent:
                break
            if stored != last:
                last, stable_since = stored, sampler_stop()
            elif sampler_stop() - stable_since > 5:
                break
            time.sleep(0.5)
        status = _status(control)
        cpu_after = _tree_cpu(pids)
        cpu = cpu_after[proc.pid] - cpu_before[proc.pid]
        cpu_helpers = sum(cpu_after.get(p, 0) - cpu_before.get(p, 0) for p in pids[1:])
        peak = _proc_status(proc.pid).get("VmHWM", 0.0)
        peak_helpers = sum(_proc_status(p).get("VmHWM", 0.0) for p in pids[1:])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    stored = _count_rows(db)
    quarter = max(1, len(rss) // 4)
    return {
        "rate": rate, "duration_s": round(send_seconds, 1), "sent": sent, "stored": stored,
        "lost": sent - stored, "kernel_drops": status.get("kernel_drops"),
        "capture_queue_drops": status.get("capture_queue_drops"),
        "cpu_s": round(cpu, 1), "cpu_pct_of_core": round(100 * cpu / send_seconds, 1),
        "store_cpu_pct_of_core": round(100 * cpu_helpers / send_seconds, 1),
        "peak_mb": round(peak, 1), "store_peak_mb": round(peak_helpers, 1),
        "rss_mb_2nd_quarter": round(max(rss[quarter:2 * quarter] or [0]), 1),
        "rss_mb_last_quarter": round(max(rss[-quarter:] or [0]), 1),
        "exit_status": proc.returncode,
    }


def _generate_sampling(rate: int, duration: float, pid: int, rss: list) -> int:
    """The load in slices of one second, sampling siptrace's VmRSS between them."""
    generator = LoadGenerator()
    try:
        whole = int(duration)
        for _ in range(whole):
            generator.send(rate, 1.0)
            rss.append(_proc_status(pid).get("VmRSS", 0.0))
        if duration > whole:
            generator.send(rate, duration - whole)
    finally:
        generator.close()
    return generator.sent


def bench_live(rates=RATES, duration: float = DURATION, workdir: Path | None = None) -> list[dict]:
    """The live benchmark for each rate; needs root (raw sockets on lo)."""
    if os.geteuid() != 0:
        raise SystemExit("bench.live: live capture needs root (or CAP_NET_RAW)")
    with tempfile.TemporaryDirectory(prefix="siptrace-live-") as tmp:
        where = Path(workdir) if workdir else Path(tmp)
        return [bench_rate(rate, duration, where) for rate in rates]


def format_results(results: list[dict]) -> str:
    head = (f"{'msg/s':>7} {'sent':>9} {'stored':>9} {'lost':>6} {'k.drops':>7} "
            f"{'cpu%':>6} {'store%':>6} {'peak MB':>8} {'RSS q2':>7} {'RSS q4':>7} {'store MB':>8}")
    lines = [head]
    for r in results:
        lines.append(f"{r['rate']:>7} {r['sent']:>9} {r['stored']:>9} {r['lost']:>6} "
                     f"{r['kernel_drops'] if r['kernel_drops'] is not None else '?':>7} "
                     f"{r['cpu_pct_of_core']:>6} {r['store_cpu_pct_of_core']:>6} {r['peak_mb']:>8} "
                     f"{r['rss_mb_2nd_quarter']:>7} {r['rss_mb_last_quarter']:>7} "
                     f"{r['store_peak_mb']:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default=",".join(map(str, RATES)),
                        help="messages/s, comma-separated")
    parser.add_argument("--duration", type=float, default=DURATION, help="seconds per rate")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    results = bench_live([int(r) for r in args.rates.split(",")], args.duration)
    print(json.dumps(results, indent=2) if args.json else format_results(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
