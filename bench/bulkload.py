"""The servers' own bulk loaders: the yardstick for siptrace's rows/s into a server.

After a replay into a server database, the server writes the rows siptrace stored to a
file (``COPY ... TO`` / ``SELECT ... INTO OUTFILE``) and loads them, timed alone, into a
twin of the table (the same DDL and indexes, from ``table_ddl``) with its own loader:
``COPY ... FROM`` a file on PostgreSQL, ``LOAD DATA INFILE`` on MariaDB/MySQL. The
file is read by the server itself, as a DBA's bulk load would be.
"""

import os
import time
import uuid

from siptrace.rows import COLUMNS
from siptrace.store import TraceStore
from siptrace.store.schema import table_ddl


def bulk_load(db_url: str, table: str = "sip_trace") -> dict:
    """{"rows", "seconds", "rows_per_s", "server_cpu"} of the server's bulk load of
    ``table``'s rows."""
    store = TraceStore(db_url, table, call_index=False)
    store.connect()
    db = store.database
    dialect = store.dialect
    twin = f"{table}_bulk"
    path = f"/tmp/siptrace-bulk-{uuid.uuid4().hex}.txt"  # the server writes and reads it
    quote = '"' if dialect == "postgresql" else "`"
    cols = ", ".join(f"{quote}{c}{quote}" for c in COLUMNS)
    try:
        for statement in table_ddl(dialect, twin):
            db.execute_sql(statement)
        if dialect == "postgresql":
            db.execute_sql(f"COPY (SELECT {cols} FROM {table} ORDER BY id) TO '{path}'")
            load = f"COPY {twin} ({cols}) FROM '{path}'"
        else:  # the loader's default escapes: a session without NO_BACKSLASH_ESCAPES
            db.execute_sql("SET SESSION sql_mode = 'STRICT_ALL_TABLES'")
            db.execute_sql(f"SELECT {cols} FROM {table} ORDER BY id INTO OUTFILE '{path}' "
                           "CHARACTER SET utf8mb4")
            load = f"LOAD DATA INFILE '{path}' INTO TABLE {twin} CHARACTER SET utf8mb4 ({cols})"
        cpu = server_cpu_seconds(dialect)
        started = time.perf_counter()
        with db.atomic():
            db.execute_sql(load)
        seconds = time.perf_counter() - started
        cpu = server_cpu_seconds(dialect) - cpu
        rows = db.execute_sql(f"SELECT COUNT(*) FROM {twin}").fetchone()[0]
    finally:
        if os.path.exists(path):
            os.remove(path)
        store.close()
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "server_cpu": cpu}


SERVER_PROCESSES = {"postgresql": "postgres", "mysql": "mariadbd"}


def server_cpu_seconds(dialect: str) -> float:
    """CPU seconds the database server has used so far: its processes' own and, for
    PostgreSQL, that of the backends already gone (the postmaster's reaped children)."""
    name = SERVER_PROCESSES[dialect]
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:]
        if comm in (name, "mysqld") if name == "mariadbd" else comm == name:
            values = fields.split()
            total += sum(int(v) for v in values[11:15])  # utime stime cutime cstime
    return total / ticks
