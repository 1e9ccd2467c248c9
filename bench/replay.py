"""Replay speed: siptrace against sngrep and tshark on the same capture, in one run."""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def run_with_rusage(argv: list[str]) -> tuple[float, float, int, bytes, bytes]:
    """(wall s, peak RSS MB, exit status, stdout, stderr) of one command."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return elapsed, usage.ru_maxrss / 1024, proc.returncode, out.read(), err.read()


def count_sip_messages_with_siptrace(capture: Path) -> int:
    from siptrace.capture.files import CaptureFile
    from siptrace.extract import SipExtractor

    extractor = SipExtractor()
    for record in CaptureFile(capture):
        extractor.feed(*record)
    extractor.finish()
    return extractor.stats["sip_messages"]


def bench_replay(capture: Path, messages: int, workdir: Path) -> dict:
    """Times siptrace replay (SQLite), sngrep and tshark on one capture."""
    results = {}
    db = workdir / "bench.db"
    db.unlink(missing_ok=True)
    wall, rss, status, out, err = run_with_rusage(
        [str(BIN / "siptrace"), "replay", str(capture), "--db-url", f"sqlite:///{db}",
         "--no-progress"])
    if status != 0:
        raise SystemExit(f"siptrace replay failed: {err.decode(errors='replace')}")
    results["siptrace"] = {"seconds": wall, "peak_mb": rss, "msgs_per_s": messages / wall}

    # Memory must stay flat as input grows: the same file twice is twice the messages.
    db.unlink(missing_ok=True)
    wall2, rss2, status, out, err = run_with_rusage(
        [str(BIN / "siptrace"), "replay", str(capture), str(capture),
         "--db-url", f"sqlite:///{db}", "--no-progress"])
    results["siptrace_2x"] = {"seconds": wall2, "peak_mb": rss2,
                              "msgs_per_s": 2 * messages / wall2}

    sngrep_out = workdir / "sngrep-out.pcap"
    wall, rss, status, out, err = run_with_rusage(
        ["sngrep", "-I", str(capture), "-N", "-q", "-O", str(sngrep_out)])
    results["sngrep"] = {"seconds": wall, "peak_mb": rss, "msgs_per_s": messages / wall,
                         "status": status}

    wall, rss, status, out, err = run_with_rusage(
        ["tshark", "-n", "-r", str(capture), "--disable-protocol", "sdp",
         "-Y", "sip", "-T", "fields", "-e", "sip.Call-ID", "-e", "sip.CSeq",
         "-e", "sip.Method", "-e", "sip.Status-Code", "-e", "sip.from.tag"])
    results["tshark"] = {"seconds": wall, "peak_mb": rss, "msgs_per_s": messages / wall,
                         "status": status, "lines": out.count(b"\n")}
    return results
