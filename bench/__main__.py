"""`make bench`: siptrace against the tools users would pick instead, in one run.

    python -m bench [--skip live,backends,clickhouse,mirror,views] [--live-seconds 60] [--json FILE]

Speeds are reported as ratios between tools measured side by side on the same file,
since absolute times on a shared 2-core machine mean little.
"""

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.build_capture import ensure_bench_capture
from bench.replay import BIN, bench_replay

SECTIONS = ("replay", "views", "backends", "clickhouse", "mirror", "live")
REPLAY_GOAL = 1.25  # siptrace replay (call index kept) against sngrep, at least


def _summary_value(text: str, label: str) -> str:
    match = re.search(rf"^{re.escape(label)}:\s+(.+)$", text, re.M)
    return match.group(1).strip() if match else ""


def replay_section(capture: Path, work: Path) -> dict:
    messages = int(_summary_value(_replay(capture, f"sqlite:///{work / 'count.db'}")[1],
                                  "SIP messages").replace(",", ""))
    results = bench_replay(capture, messages, work)
    ours = results["siptrace"]["msgs_per_s"]
    print(f"\nreplay of {capture.name}: {messages:,} SIP messages")
    print(f"  {'tool':<28} {'seconds':>8} {'msgs/s':>10} {'peak MB':>8} {'siptrace/x':>10}")
    for name, label in (("siptrace", "siptrace replay (SQLite)"),
                        ("siptrace_no_index", "  same, --no-call-index"),
                        ("siptrace_2x", "siptrace replay, file x2"),
                        ("sngrep", "sngrep -I -N -q -O"),
                        ("tshark", "tshark -T fields (SDP off)")):
        r = results[name]
        print(f"  {label:<28} {r['seconds']:>8.2f} {r['msgs_per_s']:>10,.0f} "
              f"{r['peak_mb']:>8.1f} {ours / r['msgs_per_s']:>10.2f}")
    results["messages"] = messages
    results["ratio_vs_sngrep"] = ours / results["sngrep"]["msgs_per_s"]
    results["ratio_no_index_vs_sngrep"] = (results["siptrace_no_index"]["msgs_per_s"]
                                           / results["sngrep"]["msgs_per_s"])
    results["index_cost"] = (results["siptrace"]["seconds"]
                             / results["siptrace_no_index"]["seconds"])
    results["ratio_vs_tshark"] = ours / results["tshark"]["msgs_per_s"]
    results["index_cpu_seconds"] = (results["siptrace"]["cpu_seconds"]
                                    - results["siptrace_no_index"]["cpu_seconds"])
    print(f"  (median of {len(results['siptrace']['all_seconds'])} alternating runs: siptrace "
          f"{results['siptrace']['all_seconds']} s, --no-call-index "
          f"{results['siptrace_no_index']['all_seconds']} s, sngrep "
          f"{results['sngrep']['all_seconds']} s)")
    print(format_index_cost(results))
    print(f"  target: >= {REPLAY_GOAL}x sngrep; peak memory < 150 MB and flat "
          f"({results['siptrace']['peak_mb']:.1f} MB for 1x, "
          f"{results['siptrace_2x']['peak_mb']:.1f} MB for 2x)")
    return results


def format_index_cost(replay: dict) -> str:
    """The call index's cost on replay speed, against the goal."""
    with_index, ratio = replay["siptrace"]["seconds"], replay["ratio_vs_sngrep"]
    without = replay["siptrace_no_index"]["seconds"]
    verdict = "met" if ratio >= REPLAY_GOAL else "MISSED"
    lines = [f"  call index cost: replay {with_index:.2f} s with it, {without:.2f} s without "
             f"({replay['index_cost']:.2f}x the time, {100 * (with_index / without - 1):+.0f}%); "
             f"vs sngrep {replay['sngrep']['seconds']:.2f} s: {ratio:.2f}x with, "
             f"{replay['ratio_no_index_vs_sngrep']:.2f}x without; "
             f"goal >= {REPLAY_GOAL}x with the index: {verdict}"]
    if "cpu_seconds" in replay["siptrace"]:
        cpu = {name: replay[name]["cpu_seconds"] for name in
               ("siptrace", "siptrace_no_index", "sngrep")}
        lines.append(f"  CPU seconds (medians, all processes): with the index {cpu['siptrace']:.2f}, "
                     f"without {cpu['siptrace_no_index']:.2f} "
                     f"({cpu['siptrace'] - cpu['siptrace_no_index']:+.2f} s for the index), "
                     f"sngrep {cpu['sngrep']:.2f}")
    return "\n".join(lines)


def views_section(capture: Path, work: Path, replay: dict | None) -> dict:
    """`calls` and `flow` latency on ~1,000,000 rows, SQLite and PostgreSQL (bench/views.py)."""
    from bench.views import bench_views, format_views

    print("\nviews on ~1,000,000 rows (siptrace calls / flow, in-process):")
    results = bench_views(capture, work)
    print(format_views(results))
    if replay is not None:
        print(format_index_cost(replay))
    print(f"  (views section: {results['seconds']:.0f} s)")
    return results


def _replay(capture: Path, db_url: str, *extra: str) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run([str(BIN / "siptrace"), "replay", str(capture), "--db-url", db_url,
                           "--no-progress", *extra], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip() or proc.stdout.strip())
    return time.perf_counter() - started, proc.stdout


def backends_section(capture: Path, work: Path) -> dict:
    """rows/s per backend from one replay of the benchmark capture each, with and
    without the call index; on a server, as a fraction of its own bulk loader's rate
    on the same rows into the same indexed table (bench/bulkload.py)."""
    from bench.bulkload import bulk_load
    from bench.storage import SERVERS, scratch_url

    results = {}
    print("\nrows/s per backend (one replay each, whole process wall time; "
          "bulk: the server's own loader, same rows, same indexes):")
    for dialect in ("sqlite", *SERVERS):
        result = results[dialect] = {}
        for label, extra in (("index", ()), ("no_index", ("--no-call-index",))):
            try:
                with scratch_url(dialect, work) as url:
                    cpu = _cpu_now(dialect)
                    wall, out = _replay(capture, url, *extra)
                    cpu = [after - before for after, before in zip(_cpu_now(dialect), cpu)]
                    if dialect != "sqlite" and label == "index":
                        result["bulk"] = bulk_load(url)
                rows = int(_summary_value(out, "rows stored").replace(",", ""))
                result[label] = {"rows": rows, "seconds": wall, "rows_per_s": rows / wall,
                                 "siptrace_cpu": cpu[0], "server_cpu": cpu[1]}
                if result.get("bulk", {}).get("rows", rows) != rows:
                    raise RuntimeError(f"bulk load has {result.pop('bulk')['rows']} rows, "
                                       f"replay stored {rows}")
            except Exception as exc:  # a backend that fails is reported, the rest still run
                result[label] = {"error": str(exc)}
        print("  " + format_backend(dialect, result))
        if "bulk" in result and "siptrace_cpu" in result.get("no_index", {}):
            print("    " + format_cpu_account(result))
    return results


def format_cpu_account(result: dict) -> str:
    """Where the time goes without the index: CPU seconds of siptrace's processes and
    of the server, against the server's alone in its bulk load, on os.cpu_count() cores."""
    run, bulk = result["no_index"], result["bulk"]
    return (f"CPU without index: siptrace {run['siptrace_cpu']:.2f} s + server "
            f"{run['server_cpu']:.2f} s in {run['seconds']:.2f} s on {os.cpu_count()} cores; "
            f"bulk load: server {bulk['server_cpu']:.2f} s in {bulk['seconds']:.2f} s")


def _cpu_now(dialect: str) -> tuple[float, float]:
    """CPU seconds so far of this process's children (siptrace and its store process)
    and of the database server (0 for SQLite, which works inside siptrace)."""
    from bench.bulkload import server_cpu_seconds

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    server = server_cpu_seconds(dialect) if dialect != "sqlite" else 0.0
    return usage.ru_utime + usage.ru_stime, server


def format_backend(dialect: str, result: dict) -> str:
    """One line: rows/s with and without the index, and the ratio to the bulk load."""
    parts = []
    for label, name in (("index", "with index"), ("no_index", "without")):
        figures = result.get(label, {})
        parts.append(f"{name} failed: {figures['error']}" if "error" in figures else
                     f"{name} {figures['rows_per_s']:>7,.0f} rows/s")
    bulk = result.get("bulk")
    if bulk:
        ratios = [f"{result[label]['rows_per_s'] / bulk['rows_per_s']:.2f}"
                  for label in ("index", "no_index") if "rows_per_s" in result.get(label, {})]
        parts.append(f"bulk load {bulk['rows_per_s']:>7,.0f} rows/s, "
                     f"ratio {' / '.join(ratios)} (goal 0.7)")
    return f"{dialect:<11} " + "; ".join(parts)


LISTENER = r"""
import socket, sys, json, select
socks = []
for _ in range(2):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    s.bind(("127.0.0.1", 0)); socks.append(s)
print(json.dumps([s.getsockname()[1] for s in socks]), flush=True)
counts = [0, 0]
while True:
    ready, _, _ = select.select(socks, [], [], 3.0)
    if not ready:
        break
    for s in ready:
        s.recv(70000); counts[socks.index(s)] += 1
print(json.dumps(counts), flush=True)
"""


def mirror_section(capture: Path, work: Path) -> dict:
    """Messages/s mirrored while replaying, with and without a listener."""
    results = {}
    print("\nmirroring while replaying (sip: and hep: destinations on loopback):")
    listener = subprocess.Popen([sys.executable, "-c", LISTENER], stdout=subprocess.PIPE,
                                text=True)
    try:
        ports = json.loads(listener.stdout.readline())
        for case, (sip_port, hep_port) in (("with listener", ports),
                                           ("without listener", _free_ports())):
            db = work / f"mirror-{sip_port}.db"
            uri = f"sip:127.0.0.1:{sip_port},hep:127.0.0.1:{hep_port}"
            wall, out = _replay(capture, f"sqlite:///{db}", "--duplicate-uri", uri)
            messages = int(_summary_value(out, "messages traced").replace(",", ""))
            lines = [line for line in out.splitlines() if line.startswith("mirror ")]
            results[case] = {"seconds": wall, "msgs_per_s": messages / wall, "counters": lines}
            print(f"  {case:<17} {messages / wall:>10,.0f} msgs/s mirrored to both")
            for line in lines:
                print(f"    {line}")
            if case == "with listener":
                received = json.loads(listener.stdout.readline())
                results[case]["received"] = received
                print(f"    listener received: sip {received[0]:,}, hep {received[1]:,}")
    finally:
        listener.kill()
        listener.wait()
    return results


def _free_ports() -> tuple[int, int]:
    import socket

    ports = []
    for _ in range(2):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return ports[0], ports[1]


def live_section(seconds: float) -> list:
    from bench.live import bench_live, format_results

    print(f"\nlive capture on lo ({seconds:.0f} s per rate, siptrace run --trace-all):")
    results = bench_live(duration=seconds)
    print(format_results(results))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", default="", help=f"comma-separated of {', '.join(SECTIONS)}")
    parser.add_argument("--live-seconds", type=float, default=60.0)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - set(SECTIONS)
    if unknown:
        parser.error(f"--skip: unknown section {', '.join(sorted(unknown))} "
                     f"(sections: {', '.join(SECTIONS)})")

    capture = ensure_bench_capture()
    results = {}
    with tempfile.TemporaryDirectory(prefix="siptrace-bench-") as tmp:
        work = Path(tmp)
        if "replay" not in skip:
            results["replay"] = replay_section(capture, work)
        if "views" not in skip:
            results["views"] = views_section(capture, work, results.get("replay"))
        if "backends" not in skip:
            results["backends"] = backends_section(capture, work)
        if "clickhouse" not in skip:
            from bench.clickhouse import clickhouse_section
            results["clickhouse"] = clickhouse_section(capture, work)
        if "mirror" not in skip:
            results["mirror"] = mirror_section(capture, work)
        if "live" not in skip:
            results["live"] = live_section(args.live_seconds)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
