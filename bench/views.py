"""The read commands at scale: `calls` and `flow` latency on ~1,000,000 stored rows.

    python -m bench.views [--repeat 20] [--skip-postgresql]

The table: the benchmark capture replayed once into a staging SQLite file (no call
index), then stored as often as it takes to reach ``TARGET_ROWS`` (4 times: 1,010,048
rows) through ``TraceStore.insert`` in batches of ``BATCH`` rows, so the call index
(``sip_trace_calls``) is built exactly as the writers build it. Each copy gets its own Call-IDs (a ``-cK`` suffix before the ``@``,
in the callid column and in the message's Call-ID header), is shifted by a day, and
every call gets its own called number (``0049301234`` + 6 digits, in the To URI and
the Request-URI) and one of ``CALLERS`` calling numbers (``0049895550`` + 4 digits,
From and Contact), so that searches by number select single calls or a few.

The SQLite file is cached in ~/.cache/siptrace-bench/, keyed by the capture,
``VERSION`` and the writer's sources that shape the table and its index. PostgreSQL
gets a scratch database per run, loaded from that file through TraceStore again (then
VACUUM ANALYZE, what autovacuum does on a production server), dropped afterwards.

Timed in-process (CLI start-up excluded), each ``repeat`` times with a different
number or Call-ID: what ``siptrace calls`` does (parse_filter, TraceReader.search,
index_lag, the table) and what ``siptrace flow CALLID`` does (TraceReader.messages,
build_ladder, render_text), with a fresh TraceReader each time (connect and column
introspection included) and with one reader reused.
"""

import argparse
import hashlib
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from siptrace.rows import COLUMNS, TraceRow
from siptrace.store.text import text_to_msg

VERSION = 1  # bump when the table built below changes: the cache key holds it
TARGET_ROWS = 1_000_000
BATCH = 1000  # rows per TraceStore.insert: replay's and the sidecar's put size
TABLE = "sip_trace"
CALLS_TABLE = TABLE + "_calls"
CACHE_DIR = Path.home() / ".cache" / "siptrace-bench"
COPY_SHIFT = timedelta(days=1)
TO_PREFIX = "0049301234"  # + 6 digits: one called number per call
FROM_PREFIX = "0049895550"  # + 4 digits: CALLERS calling numbers, ~16 calls each
CALLERS = 5000
NO_MATCH_PREFIX = "0049301299"  # + 6 digits: numbers no call has
REPEAT = 20
GOAL_MS = 300.0
SQLITE_FETCH = 5000

QUERIES = (  # key, label as typed
    ("calls_to_one", "calls --to NUMBER (1 call matches)"),
    ("calls_to_none", "calls --to NUMBER (none match)"),
    ("calls_since", "calls --since (1 h before newest)"),
    ("calls_user", "calls --user SUBSTRING (~16 match)"),
    ("flow", "flow CALLID (13 messages)"),
)


# -- the table ------------------------------------------------------------------------
# The modules that decide what the writer stores in the table and its call index: the
# cached file is rebuilt when one of them changes.
WRITER_SOURCES = ("store/schema.py", "store/callindex.py", "store/text.py", "view/summary.py",
                  "sip/headers.py")


def cache_path(capture: Path) -> Path:
    import siptrace

    st = capture.stat()
    digest = hashlib.sha1(
        f"{capture.resolve()}|{st.st_size}|{st.st_mtime_ns}|{VERSION}|{TARGET_ROWS}|{BATCH}"
        .encode())
    package = Path(siptrace.__file__).parent
    for name in WRITER_SOURCES:
        source = package / name
        digest.update(source.read_bytes() if source.exists() else b"-")
    return CACHE_DIR / f"views-{digest.hexdigest()[:12]}.db"


def ensure_sqlite_table(capture: Path, work: Path) -> tuple[Path, dict | None]:
    """The cached SQLite file of ~TARGET_ROWS rows; (path, build figures or None if cached).

    Built under a temporary name and renamed when complete: the name is the marker.
    Files of other keys (an older capture or VERSION) are removed.
    """
    path = cache_path(capture)
    if path.exists():
        return path, None
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob("views-*.db*"):
        old.unlink(missing_ok=True)
    started = time.perf_counter()
    staging = work / "views-staging.db"
    _remove_sqlite(staging)
    from bench.replay import BIN

    proc = subprocess.run([str(BIN / "siptrace"), "replay", str(capture), "--db-url",
                           f"sqlite:///{staging}", "--no-progress", "--no-call-index"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"staging replay failed: {proc.stderr.strip() or proc.stdout.strip()}")
    staged_seconds = time.perf_counter() - started
    staged = _count(staging, TABLE)
    copies = -(-TARGET_ROWS // staged)
    building = path.with_name(path.name + ".building")
    _remove_sqlite(building)
    rewrite = Rewriter()
    figures = _store(f"sqlite:///{building}", rewrite.copies(staging, copies))
    _remove_sqlite(staging)
    _checkpoint(building)
    os.replace(building, path)
    figures.update(staged_rows=staged, copies=copies, staging_seconds=staged_seconds,
                   total_seconds=time.perf_counter() - started,
                   callid_header_misses=rewrite.misses)
    return path, figures


class Rewriter:
    """Copies of the staged rows: own Call-IDs, called and calling numbers, a day later each."""

    def __init__(self):
        self.serials: dict[str, int] = {}  # original Call-ID -> call number within a copy
        self.misses = 0  # messages whose Call-ID header was not found to rewrite

    def copies(self, staging: Path, copies: int):
        for k in range(copies):
            calls = len(self.serials)
            for row in _sqlite_rows(staging):
                yield self.rewrite(row, k, calls)

    def rewrite(self, row: TraceRow, k: int, calls: int) -> TraceRow:
        date, callid, traced_user, msg, *rest = row
        if not callid:
            return row._replace(date=date + k * COPY_SHIFT)
        serial = self.serials.setdefault(callid, len(self.serials))
        n = k * calls + serial  # copy 0 assigns serials; later copies follow the same order
        name, at, host = callid.partition("@")
        new = f"{name}-c{k}{at}{host}"
        old_b, new_b = callid.encode(), new.encode()
        out = msg.replace(b"Call-ID: " + old_b + b"\r", b"Call-ID: " + new_b + b"\r", 1)
        if out is msg or out == msg:
            out, found = re.subn(rb"(?im)^((?:call-id|i)[ \t]*:[ \t]*)" + re.escape(old_b)
                                 + rb"(?=[ \t]*\r?$)", lambda m: m.group(1) + new_b, msg, 1)
            self.misses += not found
        out = out.replace(b"sip:service@", f"sip:{TO_PREFIX}{n:06d}@".encode())
        out = out.replace(b"sip:sipp@", f"sip:{FROM_PREFIX}{n % CALLERS:04d}@".encode())
        return TraceRow(date + k * COPY_SHIFT, new, traced_user, out, *rest)


def _sqlite_rows(path: Path):
    """The rows of a SQLite trace table in id order, as TraceRows."""
    conn = sqlite3.connect(path)
    try:
        cols = ", ".join(f'"{c}"' for c in COLUMNS)
        cursor = conn.execute(f'SELECT {cols} FROM "{TABLE}" ORDER BY id')
        while batch := cursor.fetchmany(SQLITE_FETCH):
            for date, callid, tu, msg, *rest in batch:
                yield TraceRow(datetime.fromisoformat(date), callid, tu, text_to_msg(msg), *rest)
    finally:
        conn.close()


def _store(url: str, rows) -> dict:
    """Insert rows through TraceStore (call index on), BATCH at a time."""
    from siptrace.store.tracestore import TraceStore

    store = TraceStore(url, TABLE)
    store.connect()
    started = time.perf_counter()
    batch: list = []
    try:
        for row in rows:
            batch.append(row)
            if len(batch) == BATCH:
                store.insert(batch)
                batch = []
        if batch:
            store.insert(batch)
    finally:
        store.close()
    seconds = time.perf_counter() - started
    if store.stats["index_errors"]:
        raise RuntimeError(f"call index errors while building: {store.last_index_error}")
    return {"rows": store.stats["rows"], "insert_seconds": seconds,
            "rows_per_s": store.stats["rows"] / seconds,
            "calls_indexed_upserts": store.stats["calls_indexed"]}


def _checkpoint(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _remove_sqlite(db: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def _count(path: Path, table: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
    finally:
        conn.close()


def load_postgresql(sqlite_file: Path, url: str) -> dict:
    """The cached table copied into PostgreSQL through TraceStore, then VACUUM ANALYZE."""
    started = time.perf_counter()
    figures = _store(url, _sqlite_rows(sqlite_file))
    t0 = time.perf_counter()
    import psycopg

    from siptrace.store.urls import parse_db_url

    u = parse_db_url(url)
    with psycopg.connect(host=u.host, port=u.port, user=u.user, dbname=u.database,
                         autocommit=True) as conn:
        conn.execute(f'VACUUM ANALYZE "{TABLE}"')
        conn.execute(f'VACUUM ANALYZE "{CALLS_TABLE}"')
    figures["analyze_seconds"] = time.perf_counter() - t0
    figures["total_seconds"] = time.perf_counter() - started
    return figures


# -- what is measured -----------------------------------------------------------------
class Samples:
    """Numbers and Call-IDs to ask for, spread over the index, read once (not timed)."""

    def __init__(self, sqlite_file: Path, repeat: int):
        conn = sqlite3.connect(f"file:{sqlite_file}?mode=ro", uri=True)
        try:
            calls = conn.execute(f'SELECT callid, to_user FROM "{CALLS_TABLE}" '
                                 "WHERE to_user LIKE ? ORDER BY first_date, callid",
                                 (TO_PREFIX + "%",)).fetchall()
            newest = conn.execute(f'SELECT MAX(last_date) FROM "{CALLS_TABLE}"').fetchone()[0]
        finally:
            conn.close()
        step = max(1, len(calls) // repeat)
        picked = [calls[(i * step + step // 2) % len(calls)] for i in range(repeat)]
        self.callids = [c for c, _ in picked]
        self.to_numbers = [to for _, to in picked]
        self.no_match = [f"{NO_MATCH_PREFIX}{i * 7919 % 1_000_000:06d}" for i in range(repeat)]
        self.users = [f"{FROM_PREFIX[-6:]}{i * 263 % CALLERS:04d}" for i in range(repeat)]
        since = datetime.fromisoformat(str(newest)) - timedelta(hours=1)
        self.since = since.isoformat(sep=" ", timespec="seconds")


def _calls(reader, **options) -> int:
    """What `siptrace calls` does after parsing its options, minus the printing."""
    from siptrace.view.search import parse_filter
    from siptrace.view.tables import calls_table

    calls = reader.search(parse_filter(**options))
    reader.index_lag()
    calls_table(calls, 100)
    return len(calls)


def _flow(reader, callid: str) -> int:
    """What `siptrace flow CALLID` does, minus the printing."""
    from siptrace.view.ladder import build_ladder, render_text

    messages = reader.messages([callid])
    render_text(build_ladder(messages, [callid]), width=100, color=False)
    return len(messages)


def _operations(s: Samples) -> dict:
    """key -> list of (callable(reader) -> count), one per repetition."""
    return {
        "calls_to_one": [lambda r, v=v: _calls(r, to_user=v) for v in s.to_numbers],
        "calls_to_none": [lambda r, v=v: _calls(r, to_user=v) for v in s.no_match],
        "calls_since": [lambda r: _calls(r, since=s.since)] * len(s.callids),
        "calls_user": [lambda r, v=v: _calls(r, user=v) for v in s.users],
        "flow": [lambda r, v=v: _flow(r, v) for v in s.callids],
    }


def measure(url: str, samples: Samples) -> dict:
    """{query: {"fresh": figures, "reused": figures}} for one backend."""
    from siptrace.store.reader import TraceReader

    ops = _operations(samples)
    results = {}
    for key, _ in QUERIES:
        fresh, counts = [], []
        for op in ops[key]:
            t0 = time.perf_counter()
            with TraceReader(url, TABLE) as reader:
                counts.append(op(reader))
            fresh.append(time.perf_counter() - t0)
        reused = []
        with TraceReader(url, TABLE) as reader:
            for op in ops[key]:
                t0 = time.perf_counter()
                op(reader)
                reused.append(time.perf_counter() - t0)
        results[key] = {"fresh": _figures(fresh), "reused": _figures(reused),
                        "returned": sorted(set(counts))}
    return results


def _figures(seconds: list[float]) -> dict:
    ms = [s * 1000 for s in seconds]
    return {"median_ms": statistics.median(ms), "max_ms": max(ms), "runs": len(ms),
            "all_ms": [round(m, 1) for m in ms]}


def table_sizes(url: str) -> dict:
    """Rows of the trace table and of its call index, and their size on disk."""
    from siptrace.store.urls import parse_db_url

    u = parse_db_url(url)
    if u.dialect == "sqlite":
        conn = sqlite3.connect(f"file:{u.database}?mode=ro", uri=True)
        try:
            out = {"rows": conn.execute(f'SELECT COUNT(*) FROM "{TABLE}"').fetchone()[0],
                   "calls": conn.execute(f'SELECT COUNT(*) FROM "{CALLS_TABLE}"').fetchone()[0],
                   "file_mb": Path(u.database).stat().st_size / 1e6}
            try:  # dbstat: only when SQLite was built with it
                sizes = dict(conn.execute(
                    "SELECT tbl_name, SUM(pgsize) FROM dbstat JOIN sqlite_master USING (name) "
                    "GROUP BY tbl_name").fetchall())
                out["table_mb"] = sizes.get(TABLE, 0) / 1e6
                out["index_mb"] = sizes.get(CALLS_TABLE, 0) / 1e6
            except sqlite3.Error:
                pass
            return out
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(host=u.host, port=u.port, user=u.user, dbname=u.database) as conn:
        def one(sql):
            return conn.execute(sql).fetchone()[0]
        return {"rows": one(f'SELECT COUNT(*) FROM "{TABLE}"'),
                "calls": one(f'SELECT COUNT(*) FROM "{CALLS_TABLE}"'),
                "table_mb": one(f"SELECT pg_total_relation_size('\"{TABLE}\"')") / 1e6,
                "index_mb": one(f"SELECT pg_total_relation_size('\"{CALLS_TABLE}\"')") / 1e6}


# -- the section ------------------------------------------------------------------------
def bench_views(capture: Path, work: Path, repeat: int = REPEAT,
                backends: tuple[str, ...] = ("sqlite", "postgresql")) -> dict:
    from bench.storage import scratch_url

    results: dict = {"goal_ms": GOAL_MS, "repeat": repeat, "backends": {}}
    t0 = time.perf_counter()
    sqlite_file, built = ensure_sqlite_table(capture, work)
    results["sqlite_file"] = str(sqlite_file)
    results["sqlite_build"] = built or "cached"
    samples = Samples(sqlite_file, repeat)
    results["samples"] = {"to_numbers": samples.to_numbers[:3], "callids": samples.callids[:3],
                          "users": samples.users[:3], "since": samples.since}
    for dialect in backends:
        started = time.perf_counter()
        try:
            if dialect == "sqlite":
                url = f"sqlite:///{sqlite_file}"
                res = {"build": results["sqlite_build"], **table_sizes(url),
                       "queries": measure(url, samples)}
            else:
                with scratch_url(dialect, work) as url:
                    res = {"build": load_postgresql(sqlite_file, url)}
                    res.update(table_sizes(url))
                    res["queries"] = measure(url, samples)
        except Exception as exc:  # a backend that fails is reported, the rest still run
            res = {"error": f"{type(exc).__name__}: {exc}"}
        res["section_seconds"] = time.perf_counter() - started
        results["backends"][dialect] = res
    results["seconds"] = time.perf_counter() - t0
    return results


def format_views(results: dict) -> str:
    goal = results["goal_ms"]
    backends = results["backends"]
    ok = {d: r for d, r in backends.items() if "error" not in r}
    lines = []
    built = results["sqlite_build"]
    if isinstance(built, dict):
        lines.append(f"  SQLite table built in {built['total_seconds']:.0f} s ({built['copies']} "
                     f"copies of {built['staged_rows']:,} rows, {built['rows_per_s']:,.0f} rows/s "
                     f"through TraceStore.insert with the call index); cached as "
                     f"{results['sqlite_file']}")
    else:
        lines.append(f"  SQLite table cached: {results['sqlite_file']}")
    for dialect, r in backends.items():
        if "error" in r:
            lines.append(f"  {dialect:<11} failed: {r['error']}")
            continue
        size = (f"; on disk {TABLE} {r['table_mb']:,.0f} MB, {CALLS_TABLE} "
                f"{r['index_mb']:,.1f} MB (their indexes included)"
                if "index_mb" in r else f"; file {r.get('file_mb', 0):,.0f} MB")
        build = r["build"]
        how = (f"; loaded in {build['total_seconds']:.0f} s ({build['rows_per_s']:,.0f} rows/s "
               f"+ VACUUM ANALYZE {build['analyze_seconds']:.1f} s)"
               if isinstance(build, dict) and "analyze_seconds" in build else "")
        lines.append(f"  {dialect:<11} {r['rows']:,} rows, {r['calls']:,} calls in "
                     f"{CALLS_TABLE}{size}{how}")
    if not ok:
        return "\n".join(lines)
    lines.append(f"  in-process, CLI start-up excluded; {results['repeat']} runs each, "
                 f"ms median / max; goal < {goal:.0f} ms ('!' marks a median over it)")
    heads = [f"{d} {mode}" for d in ok for mode in ("fresh", "reused")]
    lines.append(f"  {'query':<37}" + "".join(f"{h:>19}" for h in heads) + "  returned")
    for key, label in QUERIES:
        cells = []
        returned = set()
        for r in ok.values():
            q = r["queries"][key]
            returned.update(q["returned"])
            for mode in ("fresh", "reused"):
                f = q[mode]
                mark = "!" if f["median_ms"] >= goal else " "
                cells.append(f"{f['median_ms']:>8.1f} /{f['max_ms']:>7.1f}{mark}")
        lines.append(f"  {label:<37}" + "".join(f"{c:>19}" for c in cells)
                     + f"  {'/'.join(map(str, sorted(returned)))}")
    worst = max(q[mode]["median_ms"] for r in ok.values() for q in r["queries"].values()
                for mode in ("fresh", "reused"))
    lines.append(f"  goal < {goal:.0f} ms each: {'met' if worst < goal else 'MISSED'} "
                 f"(slowest median {worst:.1f} ms)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=REPEAT)
    parser.add_argument("--skip-postgresql", action="store_true")
    args = parser.parse_args(argv)
    from bench.build_capture import ensure_bench_capture

    capture = ensure_bench_capture()
    backends = ("sqlite",) if args.skip_postgresql else ("sqlite", "postgresql")
    with tempfile.TemporaryDirectory(prefix="siptrace-bench-") as tmp:
        results = bench_views(capture, Path(tmp), args.repeat, backends)
    print(format_views(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
