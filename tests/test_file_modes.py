"""Files holding SIP messages are 0600 whatever the umask (0640 in a setgid directory):
the SQLite database with its -wal and -shm, spool segments, recorded decisions."""

import os
import stat
import subprocess
from contextlib import contextmanager

import pytest

from conftest import REPO, missing
from kamailio_lab import SIPTRACE, Lab, wait_for
from siptrace.control.decisions import DecisionRecorder
from siptrace.store import TraceStore
from siptrace.store.spool import Spool
from storefixtures import make_rows

UMASKS = [0o022, 0o000]


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=["private", "setgid"])
def directory(request, tmp_path):
    """A plain directory (files 0600) or a set-group-ID one (files 0640)."""
    path = tmp_path / "data"
    path.mkdir()
    if request.param == "setgid":
        os.chmod(path, 0o2750)
    return path, 0o640 if request.param == "setgid" else 0o600


@pytest.mark.parametrize("mask", UMASKS)
def test_sqlite_database_wal_and_shm(directory, mask):
    path, expected = directory
    with umask(mask):
        with TraceStore(f"sqlite:///{path / 'trace.db'}") as store:
            store.insert(make_rows(10))
            files = {p.name: mode(p) for p in path.iterdir()}
    assert files == {"trace.db": expected, "trace.db-wal": expected, "trace.db-shm": expected}


@pytest.mark.parametrize("mask", UMASKS)
def test_spool_segments(directory, mask):
    path, expected = directory
    with umask(mask):
        spool = Spool(path / "spool")
        spool.append(make_rows(5))
        spool.sync()
        segments = list((path / "spool").glob("*.seg"))
        spool.close()
    assert segments and {mode(p) for p in segments} == {expected}
    assert mode(path / "spool") == (0o2750 if expected == 0o640 else 0o700)


@pytest.mark.parametrize("mask", UMASKS)
def test_recorded_decisions(directory, mask):
    path, expected = directory
    with umask(mask):
        recorder = DecisionRecorder(path / "decisions.jsonl")
        recorder.record_trace_on(1, True)
        recorder.close()
    assert mode(path / "decisions.jsonl") == expected


def test_existing_files_keep_their_mode(tmp_path):
    db = tmp_path / "trace.db"
    db.touch(mode=0o644)
    os.chmod(db, 0o644)
    with TraceStore(f"sqlite:///{db}") as store:
        store.insert(make_rows(1))
    assert mode(db) == 0o644


@pytest.mark.parametrize("mask", UMASKS)
def test_replay_creates_a_private_database(tmp_path, mask):
    out = subprocess.run(SIPTRACE + ["replay", str(REPO / "pcaps" / "kamailio-udp.pcap"),
                                     "--no-progress", "--db-url", f"sqlite:///{tmp_path / 't.db'}"],
                         capture_output=True, text=True, timeout=120,
                         preexec_fn=lambda: os.umask(mask))
    assert out.returncode == 0, out.stderr
    assert mode(tmp_path / "t.db") == 0o600


def test_siptrace_run_under_umask_0(tmp_path):
    """The live sidecar, started with umask 000: database, -wal, -shm, decisions."""
    if os.geteuid() != 0:
        missing("live capture needs root (CAP_NET_RAW)")
    control = tmp_path / "control.sock"
    argv = ["sh", "-c", 'umask 000 && exec "$0" "$@"', *SIPTRACE, "run", "--interface", "lo",
            "--proxy", "127.0.0.64", "--trace-all", "--db-url", f"sqlite:///{tmp_path / 't.db'}",
            "--record-decisions", str(tmp_path / "decisions.jsonl"),
            "--decision-socket", str(tmp_path / "d.sock"), "--control-socket", str(control)]
    with Lab(tmp_path) as lab:
        proc = lab.start("siptrace", argv)
        assert wait_for(lambda: proc.poll() is not None or (tmp_path / "t.db-shm").exists()), \
            lab.output("siptrace")
        modes = {name: mode(tmp_path / name) for name in ("t.db", "t.db-wal", "t.db-shm",
                                                           "decisions.jsonl")}
        assert lab.stop(proc) == 0, lab.output("siptrace")
    assert modes == dict.fromkeys(modes, 0o600)
