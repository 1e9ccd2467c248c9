"""ClickHouse in `make bench`: the benchmark capture replayed into SQLite, into one
ClickHouse server's MergeTree table and through a two-shard Distributed table, runs
alternating, side by side; then bytes on disk per million rows, per column, and the
time of a Call-ID lookup (the read `siptrace flow` makes) on both backends.

The servers are real clickhouse-server processes started here under the bench's
scratch directory (tests/clickhouse_cluster.py, the harness the tests use).
"""

import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.replay import BIN

REPO = Path(__file__).resolve().parents[1]
RUNS = 3  # alternating replays per target; the median is reported
LOOKUPS = 50  # Call-IDs looked up per backend
GROWN_COPIES = 40  # the bench table copied this many times, an hour apart, for lookups
TARGETS = ("sqlite", "clickhouse", "distributed")
LABELS = {"sqlite": "SQLite (call index)", "clickhouse": "ClickHouse MergeTree",
          "distributed": "ClickHouse Distributed, 2 shards"}


def clickhouse_section(capture: Path, work: Path) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    from clickhouse_cluster import ClickHouseCluster, find_server

    if find_server() is None:
        print("\nClickHouse: clickhouse-server is not installed (make bench installs it)")
        return {"error": "clickhouse-server is not installed"}
    with ClickHouseCluster(work / "clickhouse", size=2) as cluster:
        version = cluster.servers[0].execute("SELECT version()")[0][0]
        print(f"\nClickHouse {version}: one replay of {capture.name} per run, whole process "
              f"wall time, {RUNS} runs per target alternating (median):")
        results = {"version": version, "replay": _replays(capture, work, cluster)}
        print(format_replays(results["replay"]))
        results["size"] = _size(cluster)
        print(format_size(results["size"]))
        results["lookup"] = _lookups(cluster.url("bench"), f"sqlite:///{work / 'ch-ref.db'}")
        print(format_lookups(results["lookup"]))
        results["grown"] = _grown_lookups(cluster.servers[0], cluster.url("bench"))
        print(format_grown(results["grown"]))
    return results


def _replays(capture: Path, work: Path, cluster) -> dict:
    urls = {"sqlite": f"sqlite:///{work / 'ch-ref.db'}", "clickhouse": cluster.url("bench"),
            "distributed": cluster.url("bench_dist")}
    runs = {target: [] for target in TARGETS}
    for _ in range(RUNS):
        for target in TARGETS:
            _empty(target, work, cluster)
            before = _cpu(cluster), _server_events(cluster)
            started = time.perf_counter()
            proc = subprocess.run([str(BIN / "siptrace"), "replay", str(capture), "--db-url",
                                   urls[target], "--no-progress"], capture_output=True, text=True)
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                raise RuntimeError(f"{target}: {proc.stderr.strip() or proc.stdout.strip()}")
            after = _cpu(cluster), _server_events(cluster)
            rows = int(_summary(proc.stdout, "rows stored").replace(",", ""))
            runs[target].append({
                "rows": rows, "seconds": wall, "rows_per_s": rows / wall,
                "siptrace_cpu": after[0][0] - before[0][0],
                "server_cpu": after[0][1] - before[0][1],
                "inserts": after[1] - before[1]})
    return {target: dict(min(found, key=lambda r: abs(r["seconds"] - statistics.median(
        x["seconds"] for x in found))), all_seconds=[r["seconds"] for r in found])
        for target, found in runs.items()}


def _empty(target: str, work: Path, cluster) -> None:
    """A fresh table: SQLite's file removed; a ClickHouse database dropped and made again
    (the Distributed table and its local tables created as an operator would)."""
    if target == "sqlite":
        (work / "ch-ref.db").unlink(missing_ok=True)
        return
    from siptrace.store.clickhouse.connection import server_version
    from siptrace.store.clickhouse.schema import table_ddl

    database = "bench" if target == "clickhouse" else "bench_dist"
    cluster.drop_database(database)
    cluster.create_database(database)
    if target == "distributed":
        for server in cluster.servers:
            client = server.client(database)
            try:
                client.execute("SELECT 1")
                for statement in table_ddl("sip_trace", server_version(client),
                                           cluster="siptrace", database=database):
                    client.execute(statement)
            finally:
                client.disconnect()


def _cpu(cluster) -> tuple[float, float]:
    """CPU seconds so far of this process's children (siptrace) and of the servers."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    ticks = os.sysconf("SC_CLK_TCK")
    server = 0
    for pid in cluster.pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        server += sum(int(v) for v in fields[11:15])
    return usage.ru_utime + usage.ru_stime, server / ticks


def _server_events(cluster) -> int:
    """INSERT queries the servers have run so far (through a Distributed table: one on
    the server written to, one per shard it forwards to)."""
    return sum(server.execute("SELECT sum(value) FROM system.events WHERE event = 'InsertQuery'")
               [0][0] if server.running else 0 for server in cluster.servers)


def _summary(text: str, label: str) -> str:
    for line in text.splitlines():
        if line.startswith(label + ":"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError(f"no {label!r} in the replay's summary")


def format_replays(replay: dict) -> str:
    base = replay["sqlite"]["rows_per_s"]
    lines = [f"  {'target':<34} {'seconds':>8} {'rows/s':>9} {'x SQLite':>8} "
             f"{'siptrace CPU s':>14} {'server CPU s':>12} {'INSERTs':>8}"]
    for target in TARGETS:
        r = replay[target]
        server = f"{r['server_cpu']:>12.2f}" if target != "sqlite" else f"{'(in-process)':>12}"
        inserts = f"{r['inserts']:>8,}" if target != "sqlite" else f"{'':>8}"
        lines.append(f"  {LABELS[target]:<34} {r['seconds']:>8.2f} {r['rows_per_s']:>9,.0f} "
                     f"{r['rows_per_s'] / base:>8.2f} {r['siptrace_cpu']:>14.2f} "
                     f"{server} {inserts}")
    mergetree = replay["clickhouse"]
    lines.append(f"  server: {mergetree['rows'] / max(mergetree['server_cpu'], 1e-9):,.0f} rows "
                 f"per CPU second of ClickHouse ({mergetree['rows'] / max(mergetree['inserts'], 1):,.0f}"
                 f" rows per INSERT); goal: ClickHouse >= 1.00 x SQLite")
    return "\n".join(lines)


def _size(cluster) -> dict:
    """Bytes on disk of the bench table once merged into one part a day, per column,
    and the server's CPU for that merge (every row read and written once more)."""
    from siptrace.store.clickhouse.connection import text

    server = cluster.servers[0]
    before, started = _cpu(cluster)[1], time.perf_counter()
    server.execute("OPTIMIZE TABLE bench.sip_trace FINAL")
    merge = {"server_cpu": _cpu(cluster)[1] - before, "seconds": time.perf_counter() - started}
    rows, on_disk = server.execute(
        "SELECT sum(rows), sum(bytes_on_disk) FROM system.parts WHERE database = 'bench' "
        "AND table = 'sip_trace' AND active")[0]
    columns = server.execute(
        "SELECT column, sum(column_data_compressed_bytes), sum(column_data_uncompressed_bytes) "
        "FROM system.parts_columns WHERE database = 'bench' AND table = 'sip_trace' AND active "
        "GROUP BY column ORDER BY sum(column_data_compressed_bytes) DESC")
    codec = server.execute("SELECT compression_codec FROM system.columns WHERE database = "
                           "'bench' AND table = 'sip_trace' AND name = 'msg'")[0][0] \
        if _has_codecs(server) else ""
    return {"rows": rows, "bytes_on_disk": on_disk, "merge": merge,
            "msg_codec": codec or "server default (zstd)",
            "columns": {text(name):
                        {"compressed": c, "uncompressed": u} for name, c, u in columns}}


def _has_codecs(server) -> bool:
    return bool(server.execute("SELECT count() FROM system.columns WHERE database = 'system' "
                               "AND table = 'columns' AND name = 'compression_codec'")[0][0])


def format_size(size: dict) -> str:
    per_million = 1e6 / size["rows"]
    msg = size["columns"].get("msg", {"compressed": 0, "uncompressed": 0})
    lines = [f"  on disk: {size['bytes_on_disk'] / size['rows']:,.0f} bytes a row, "
             f"{size['bytes_on_disk'] * per_million / 1e6:,.0f} MB per million rows "
             f"({size['rows']:,} rows, merged); msg with {size['msg_codec']}: "
             f"{msg['compressed'] * per_million / 1e6:,.0f} MB per million rows, "
             f"{msg['uncompressed'] / max(msg['compressed'], 1):.1f}x smaller than raw"]
    lines.append(f"  merging it all once more (OPTIMIZE FINAL): {size['merge']['seconds']:.2f} s, "
                 f"{size['rows'] / max(size['merge']['server_cpu'], 1e-9):,.0f} rows per CPU "
                 "second of ClickHouse")
    top = ", ".join(f"{name} {c['compressed'] * per_million / 1e6:,.1f}"
                    for name, c in list(size["columns"].items())[:6])
    lines.append(f"  largest columns, MB per million rows: {top}")
    return "\n".join(lines)


def _lookups(clickhouse_url: str, sqlite_url: str) -> dict:
    """Seconds of ``messages([callid])`` for the same Call-IDs on both backends."""
    from siptrace.store.backends import open_reader

    with open_reader(sqlite_url, "sip_trace") as reader:
        callids = sorted({m.callid for m in reader.rows(limit=1_000_000)})
    callids = random.Random(7).sample(callids, min(LOOKUPS, len(callids)))
    results = {}
    for name, url in (("sqlite", sqlite_url), ("clickhouse", clickhouse_url)):
        with open_reader(url, "sip_trace") as reader:
            reader.messages(callids[:1])  # connect, warm the caches
            times = []
            for callid in callids:
                started = time.perf_counter()
                found = reader.messages([callid])
                times.append(time.perf_counter() - started)
                if not found:
                    raise RuntimeError(f"{name}: no messages for {callid}")
        times.sort()
        results[name] = {"median_ms": 1000 * statistics.median(times),
                         "p95_ms": 1000 * times[int(0.95 * (len(times) - 1))],
                         "lookups": len(times)}
    return results


def format_lookups(lookup: dict) -> str:
    parts = [f"{name} median {r['median_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms"
             for name, r in lookup.items()]
    return (f"  Call-ID lookup (a call's messages, as `siptrace flow` reads them, "
            f"{lookup['clickhouse']['lookups']} Call-IDs): " + "; ".join(parts))


def _grown_lookups(server, url: str, copies: int = GROWN_COPIES) -> dict:
    """The bench table copied ``copies`` times an hour apart (Call-IDs made distinct)
    by the server itself, then Call-ID lookups on it: how a lookup grows with the
    table's hours and rows."""
    from siptrace.store.backends import open_reader
    from siptrace.store.clickhouse.connection import text

    names = [text(n) for (n,) in server.execute(
        "SELECT name FROM system.columns WHERE database = 'bench' AND table = 'sip_trace'")]
    shifted = {"id": "id + bitShiftLeft(toUInt64(n * 3600), 32)",
               "date": "date + toIntervalHour(n)",
               "callid": "concat(callid, '.', toString(n))"}
    select = ", ".join(shifted.get(name, name) for name in names)
    server.execute("CREATE TABLE bench.grown AS bench.sip_trace")
    started = time.perf_counter()
    for n in range(copies):  # one copy an INSERT: bounded memory
        server.execute(f"INSERT INTO bench.grown ({', '.join(names)}) "
                       f"SELECT {select} "
                       f"FROM (SELECT *, toUInt32({n}) AS n FROM bench.sip_trace)")
    copy_seconds = time.perf_counter() - started
    rows, on_disk = server.execute("SELECT sum(rows), sum(bytes_on_disk) FROM system.parts "
                                   "WHERE database = 'bench' AND table = 'grown' AND active")[0]
    callids = [c.decode() if isinstance(c, bytes) else c for (c,) in server.execute(
        f"SELECT any(callid) FROM bench.grown GROUP BY cityHash64(callid) % {LOOKUPS}")]
    times = []
    with open_reader(url, "grown") as reader:
        reader.messages(callids[:1])
        for callid in callids:
            started = time.perf_counter()
            if not reader.messages([callid]):
                raise RuntimeError(f"grown: no messages for {callid}")
            times.append(time.perf_counter() - started)
    times.sort()
    return {"rows": rows, "bytes_on_disk": on_disk, "hours": copies,
            "copy_seconds": copy_seconds, "median_ms": 1000 * statistics.median(times),
            "p95_ms": 1000 * times[int(0.95 * (len(times) - 1))], "lookups": len(times)}


def format_grown(grown: dict) -> str:
    return (f"  the same lookup on {grown['rows']:,} rows over {grown['hours']} hours (the table "
            f"copied by the server, {grown['rows'] / grown['copy_seconds']:,.0f} rows/s, "
            f"{grown['bytes_on_disk'] / grown['rows']:.0f} bytes a row): median "
            f"{grown['median_ms']:.1f} ms, p95 {grown['p95_ms']:.1f} ms")
