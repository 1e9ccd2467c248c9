"""Replay speed: siptrace against sngrep and tshark on the same capture, in one run."""

import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def run_with_rusage(argv: list[str]) -> tuple[float, float, int, bytes, bytes]:
    """(wall s, peak MB, exit status, stdout, stderr) of one command.

    Peak memory is the largest sum of resident memory over the process and its
    children (siptrace's store and mirror processes count), sampled every 20 ms.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err)
        peak = [0]
        sampler = threading.Thread(target=_sample_tree_rss, args=(proc, peak), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.join()
        out.seek(0)
        err.seek(0)
        peak_kb = max(peak[0], usage.ru_maxrss)
        return elapsed, peak_kb / 1024, proc.returncode, out.read(), err.read()


def _sample_tree_rss(proc: subprocess.Popen, peak: list) -> None:
    while proc.returncode is None:
        peak[0] = max(peak[0], _tree_rss_kb(proc.pid))
        time.sleep(0.02)


def _tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and its descendants, in KB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except (OSError, ValueError):
        return 0
    return rss + sum(_tree_rss_kb(child) for child in children)


def count_sip_messages_with_siptrace(capture: Path) -> int:
    from siptrace.capture.files import CaptureFile
    from siptrace.extract import SipExtractor

    extractor = SipExtractor()
    for record in CaptureFile(capture):
        extractor.feed(*record)
    extractor.finish()
    return extractor.stats["sip_messages"]


def _remove_sqlite(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


ROUNDS = 3  # siptrace (with and without the call index) and sngrep alternate this many
            # times; the median of each counts


def bench_replay(capture: Path, messages: int, workdir: Path, rounds: int = ROUNDS) -> dict:
    """Times siptrace replay (SQLite), sngrep and tshark on one capture.

    siptrace (keeping the call index, the default), siptrace ``--no-call-index`` and
    sngrep run in alternation, ``rounds`` times each, and the median run of each
    counts: on a shared machine one run alone says little. tshark, ten times slower,
    runs once.
    """
    db = workdir / "bench.db"
    siptrace = [str(BIN / "siptrace"), "replay", "--db-url", f"sqlite:///{db}", "--no-progress"]
    commands = {
        "siptrace": [*siptrace, str(capture)],
        "siptrace_no_index": [*siptrace, "--no-call-index", str(capture)],
        "sngrep": ["sngrep", "-I", str(capture), "-N", "-q", "-O", str(workdir / "sngrep.pcap")],
    }
    runs = {name: [] for name in commands}
    cpu = {name: [] for name in commands}
    for _ in range(rounds):
        for name, argv in commands.items():
            _remove_sqlite(db)
            before = _children_cpu()
            measured = run_with_rusage(argv)
            cpu[name].append(_children_cpu() - before)
            runs[name].append(measured if name == "sngrep" else _checked(measured))
    results = {name: _figures(_median(measured), messages) for name, measured in runs.items()}
    for name, measured in runs.items():
        results[name]["all_seconds"] = [round(m[0], 2) for m in measured]
        # CPU time (user + system, the store process included) is steadier than wall
        # time when something else runs on the machine.
        results[name]["cpu_seconds"] = sorted(cpu[name])[len(cpu[name]) // 2]
        results[name]["all_cpu_seconds"] = [round(c, 2) for c in cpu[name]]

    # Memory must stay flat as input grows: the same file twice is twice the messages.
    _remove_sqlite(db)
    results["siptrace_2x"] = _figures(
        _checked(run_with_rusage([*siptrace, str(capture), str(capture)])), 2 * messages)

    results["tshark"] = _figures(run_with_rusage(
        ["tshark", "-n", "-r", str(capture), "--disable-protocol", "sdp",
         "-Y", "sip", "-T", "fields", "-e", "sip.Call-ID", "-e", "sip.CSeq",
         "-e", "sip.Method", "-e", "sip.Status-Code", "-e", "sip.from.tag"]), messages)
    return results


def _children_cpu() -> float:
    """User + system seconds of this process's waited-for children (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _checked(measured):
    if measured[2] != 0:
        raise SystemExit(f"siptrace replay failed: {measured[4].decode(errors='replace')}")
    return measured


def _median(measured: list) -> tuple:
    return sorted(measured, key=lambda m: m[0])[len(measured) // 2]


def _figures(measured: tuple, messages: int) -> dict:
    wall, rss, status, out, err = measured
    return {"seconds": wall, "peak_mb": rss, "msgs_per_s": messages / wall, "status": status}
