"""Storage speed: rows/s into SQLite, PostgreSQL and MariaDB through TraceStore and BatchWriter.

Run alone with ``python -m bench.storage [ROWS]`` (synthetic ~1 KB SIP messages);
``python -m bench`` calls ``bench_storage(rows)`` with the rows of its replay. Each
server backend gets a scratch database, dropped afterwards; a server that does not
answer is reported and skipped.
"""

import sys
from contextlib import contextmanager
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from siptrace.rows import TraceRow
from siptrace.store import BatchWriter, TraceStore

BATCH = 1000
SERVERS = {
    "postgresql": "postgresql://postgres@127.0.0.1:5432/{name}",
    "mysql": "mysql://root@127.0.0.1:3306/{name}",
}


def synthetic_rows(n: int) -> list[TraceRow]:
    """n distinct rows with ~1 KB messages, one microsecond apart."""
    start = datetime(2024, 1, 1)
    headers = "".join(f"X-Header-{i}: some value here with text {i}\r\n" for i in range(24))
    rows = []
    for i in range(n):
        callid = f"{i:08d}-bench@10.0.0.1"
        msg = (f"INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{i}\r\n"
               f"Call-ID: {callid}\r\nCSeq: 1 INVITE\r\n{headers}Content-Length: 0\r\n\r\n").encode()
        rows.append(TraceRow(start + timedelta(microseconds=i), callid, "", msg, "INVITE", "",
                             "udp:10.0.0.1:5060", "udp:10.0.0.2:5060", f"tag{i}", "in"))
    return rows


def _admin(dialect: str):
    if dialect == "postgresql":
        import psycopg
        return psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True,
                               connect_timeout=3)
    import pymysql
    return pymysql.connect(host="127.0.0.1", user="root", autocommit=True, connect_timeout=3)


def _scratch(dialect: str, name: str, drop: bool = False) -> None:
    conn = _admin(dialect)
    try:
        quote = '"' if dialect == "postgresql" else "`"
        sql = (f"DROP DATABASE IF EXISTS {quote}{name}{quote}" if drop
               else f"CREATE DATABASE {quote}{name}{quote}")
        conn.cursor().execute(sql)
    finally:
        conn.close()


@contextmanager
def scratch_url(dialect: str, workdir: Path):
    """A db_url to an empty scratch database of that backend, dropped afterwards."""
    name = f"siptrace_bench_{uuid.uuid4().hex[:8]}"
    template = SERVERS.get(dialect)
    if template is None:
        yield f"sqlite:///{workdir / (name + '.db')}"
        return
    _scratch(dialect, name)
    try:
        yield template.format(name=name)
    finally:
        try:
            _scratch(dialect, name, drop=True)
        except Exception:  # a server that went away: nothing left to drop
            pass


def _time_store(url: str, rows) -> float:
    store = TraceStore(url, "bench_store")
    store.connect()
    t0 = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        store.insert(rows[i:i + BATCH])
    elapsed = time.perf_counter() - t0
    assert store.count() == len(rows)
    store.close()
    return len(rows) / elapsed


def _time_writer(url: str, rows, spool_dir: Path) -> float:
    store = TraceStore(url, "bench_writer")
    store.connect()
    writer = BatchWriter(store, spool=spool_dir)
    t0 = time.perf_counter()
    for i in range(0, len(rows), 50):
        writer.put(rows[i:i + 50])
    writer.close()
    elapsed = time.perf_counter() - t0
    s = writer.stats
    assert s["rows_written"] == len(rows), s
    return len(rows) / elapsed


def bench_storage(rows=None, n: int = 100_000, out=sys.stdout) -> dict:
    """rows/s per backend: {backend: {"insert": r, "writer": r}} (or {"error": text})."""
    rows = list(rows) if rows is not None else synthetic_rows(n)
    results = {}
    with tempfile.TemporaryDirectory(prefix="siptrace-bench-") as tmp:
        tmp = Path(tmp)
        for dialect in ("sqlite", *SERVERS):
            try:
                with scratch_url(dialect, tmp) as url:
                    results[dialect] = {"insert": _time_store(url, rows),
                                        "writer": _time_writer(url, rows, tmp / f"spool-{dialect}")}
            except Exception as exc:  # a missing server is reported, not fatal
                results[dialect] = {"error": f"{type(exc).__name__}: {exc}"}
    print(f"storage: {len(rows)} rows, {sum(len(r.msg) for r in rows) // len(rows)} bytes/msg average",
          file=out)
    for dialect, res in results.items():
        if "error" in res:
            print(f"  {dialect:<11} skipped: {res['error']}", file=out)
        else:
            print(f"  {dialect:<11} TraceStore.insert {res['insert']:>9,.0f} rows/s   "
                  f"BatchWriter put..close {res['writer']:>9,.0f} rows/s", file=out)
    return results


if __name__ == "__main__":
    bench_storage(n=int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
