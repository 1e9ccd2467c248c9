"""Storage test fixtures (a pytest plugin): a fresh database per test on each backend.

PostgreSQL (127.0.0.1:5432, user postgres, trust) and MariaDB (127.0.0.1:3306, root,
empty password) are the real servers. Under CI=true a missing server fails the test;
elsewhere it is skipped with the reason.
"""

import os
import shutil
import subprocess
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from conftest import missing
from siptrace.rows import TraceRow

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
MY = {"host": "127.0.0.1", "port": 3306, "user": "root"}
BACKENDS = ("sqlite", "postgresql", "mysql")
SERVER_START_TIMEOUT = 60


def pg_admin():
    import psycopg
    return psycopg.connect(dbname="postgres", autocommit=True, connect_timeout=3, **PG)


def my_admin():
    import pymysql
    return pymysql.connect(autocommit=True, connect_timeout=3, **MY)


def server_answers(dialect: str) -> bool:
    try:
        conn = pg_admin() if dialect == "postgresql" else my_admin()
        conn.close()
        return True
    except Exception:
        return False


def wait_until_up(dialect: str, timeout: float = SERVER_START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not server_answers(dialect):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{dialect} did not come back within {timeout}s")
        time.sleep(0.2)


def _pg_cluster() -> str:
    return sorted(os.listdir("/etc/postgresql"))[-1]


def stop_server(dialect: str) -> None:
    if dialect == "postgresql":
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", _pg_cluster(), "main", "stop",
                        "-m", "fast"], check=True, capture_output=True, timeout=60)
    else:
        subprocess.run(["mysqladmin", "-h", "127.0.0.1", "-uroot", "shutdown"],
                       check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        while subprocess.run(["pgrep", "-x", "mariadbd"], capture_output=True).returncode == 0:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)


def start_server(dialect: str) -> None:
    """Start the server if it does not answer, and wait until it does."""
    if server_answers(dialect):
        return
    if dialect == "postgresql":
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", _pg_cluster(), "main", "start"],
                       capture_output=True, timeout=60)
    else:
        subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background",
                        "--exec", "/usr/sbin/mariadbd"], capture_output=True, timeout=60)
    wait_until_up(dialect)


def can_control_servers() -> bool:
    return (os.geteuid() == 0 and shutil.which("pg_ctlcluster") is not None
            and shutil.which("mysqladmin") is not None and Path("/usr/sbin/mariadbd").exists())


class ScratchDatabase:
    """A database made for one test; ``url`` is its db_url."""

    def __init__(self, dialect: str, tmp_path: Path):
        self.dialect = dialect
        self.name = f"st_{uuid.uuid4().hex[:12]}"
        if dialect == "sqlite":
            self.url = f"sqlite:///{tmp_path / (self.name + '.db')}"
            return
        if not server_answers(dialect):
            missing(f"{dialect} server on 127.0.0.1 is not answering")
        if dialect == "postgresql":
            with pg_admin() as conn:
                conn.execute(f'CREATE DATABASE "{self.name}"')
            self.url = f"postgresql://postgres@127.0.0.1:5432/{self.name}"
        else:
            conn = my_admin()
            conn.cursor().execute(f"CREATE DATABASE `{self.name}` CHARACTER SET utf8mb4")
            conn.close()
            self.url = f"mysql://root@127.0.0.1:3306/{self.name}"

    def connect(self):
        """A plain DB-API connection to this database (for checks behind siptrace's back)."""
        if self.dialect == "sqlite":
            import sqlite3
            return sqlite3.connect(self.url[len("sqlite:///"):])
        if self.dialect == "postgresql":
            import psycopg
            return psycopg.connect(dbname=self.name, autocommit=True, **PG)
        import pymysql
        return pymysql.connect(database=self.name, autocommit=True, charset="utf8mb4", **MY)

    def query(self, sql: str, params=()):
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def drop(self) -> None:
        if self.dialect == "sqlite":
            return
        try:
            start_server(self.dialect)
            if self.dialect == "postgresql":
                with pg_admin() as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            else:
                conn = my_admin()
                conn.cursor().execute(f"DROP DATABASE IF EXISTS `{self.name}`")
                conn.close()
        except Exception:
            pass  # a leftover test database is not worth failing a test for


@pytest.fixture(params=BACKENDS)
def any_db(request, tmp_path):
    """A fresh database on each backend in turn."""
    db = ScratchDatabase(request.param, tmp_path)
    yield db
    db.drop()


@pytest.fixture(params=("postgresql", "mysql"))
def server_db(request, tmp_path):
    """A fresh database on PostgreSQL, then on MariaDB."""
    db = ScratchDatabase(request.param, tmp_path)
    yield db
    db.drop()


def make_rows(n: int, prefix: str = "c", start: datetime = datetime(2024, 5, 1, 12, 0, 0),
              msg_size: int = 400) -> list[TraceRow]:
    """n distinguishable rows: Call-ID prefix-i, one microsecond apart."""
    body = b"x" * max(0, msg_size - 120)
    rows = []
    for i in range(n):
        callid = f"{prefix}-{i}"
        msg = (b"INVITE sip:bob@example.com SIP/2.0\r\nCall-ID: " + callid.encode()
               + b"\r\nCSeq: 1 INVITE\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        rows.append(TraceRow(str(start + timedelta(microseconds=i)), callid, "", msg, "INVITE", "",
                             "udp:10.0.0.1:5060", "udp:10.0.0.2:5060", f"tag{i}", "in"))
    return rows


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "outage: stops and restarts the shared PostgreSQL/MariaDB servers; "
        "never run in parallel with other database tests")
