"""Database passwords never shown: every command, every source of db_url, real servers.

A password with unencoded reserved characters is refused with one line that does not
quote it; a percent-encoded one works, and no error, startup line or status shows it.
"""

import json
import os
import subprocess
import uuid

import pytest

from conftest import REPO, missing
from kamailio_lab import SIPTRACE, Lab, siptrace_status
from storefixtures import MY, my_admin, server_answers

PCAP = REPO / "pcaps" / "kamailio-udp.pcap"
# Every piece between reserved characters is distinctive: none may appear anywhere.
PIECES = ("Zq9x", "Wv7y", "Kk3m", "Jj5n", "Hh2p")
RAW_PASSWORD = "Zq9x Wv7y/Kk3m#Jj5n?Hh2p"
ENCODED_PASSWORD = "Zq9x%20Wv7y%2FKk3m%23Jj5n%3FHh2p"
COMMANDS = {
    "replay": ["replay", str(PCAP), "--no-progress"],
    "show": ["show"],
    "calls": ["calls"],
    "flow": ["flow", "x"],
    "export": ["export", "x", "-o", "out.pcap"],
    "index": ["index"],
    "purge": ["purge", "--older-than", "1d"],
    "web": ["web", "--listen", "127.0.0.1:18189"],
}


def siptrace(args, tmp_path, env=None, timeout=60):
    env = {**os.environ, **(env or {})}
    env.pop("SIPTRACE_CONFIG", None)
    return subprocess.run(SIPTRACE + args, capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=timeout)


def assert_no_password(text: str) -> None:
    for piece in PIECES:
        assert piece not in text, text


def assert_one_line_error(out) -> str:
    assert out.returncode == 1, out.stdout + out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr
    assert_no_password(out.stdout + out.stderr)
    return out.stderr


@pytest.fixture
def mariadb_user(tmp_path):
    """A MariaDB user whose password is RAW_PASSWORD, owning a fresh database."""
    if not server_answers("mysql"):
        missing("MariaDB on 127.0.0.1:3306 is not answering")
    name = f"pw_{uuid.uuid4().hex[:10]}"
    conn = my_admin()
    cur = conn.cursor()
    cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    cur.execute(f"CREATE USER '{name}'@'%%' IDENTIFIED BY %s", (RAW_PASSWORD,))
    cur.execute(f"GRANT ALL ON `{name}`.* TO '{name}'@'%'")
    yield f"mysql://{name}:{ENCODED_PASSWORD}@{MY['host']}:{MY['port']}/{name}"
    cur.execute(f"DROP USER IF EXISTS '{name}'@'%'")
    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


@pytest.mark.parametrize("command", [*COMMANDS, "run"])
def test_every_command_refuses_an_unencoded_password_without_quoting_it(tmp_path, command):
    args = COMMANDS.get(command) or ["run", "--interface", "lo", "--proxy", "127.0.0.61",
                                     "--control-socket", str(tmp_path / "c.sock"),
                                     "--decision-socket", str(tmp_path / "d.sock")]
    url = f"mysql://siptrace:{RAW_PASSWORD}@127.0.0.1/siptrace"
    out = siptrace(args, tmp_path, env={"SIPTRACE_DB_URL": url})
    error = assert_one_line_error(out)
    assert error.startswith("siptrace: db_url: 'mysql://siptrace:***@127.0.0.1/siptrace' has a "
                            "character in its user or password that must be percent-encoded")
    assert not (tmp_path / "c.sock").exists()


@pytest.mark.parametrize("char", [" ", "/", "#", "?", "@", "%"])
@pytest.mark.parametrize("source", ["file", "environment", "flag"])
def test_each_reserved_character_from_each_source(tmp_path, char, source):
    url = f"postgres://siptrace:Zq9x{char}Wv7y@127.0.0.1:5432/traces"
    args, env = ["show"], {}
    if source == "file":
        (tmp_path / "s.ini").write_text(f"[siptrace]\ndb_url = {url}\n")
        args += ["--config", str(tmp_path / "s.ini")]
    elif source == "environment":
        env["SIPTRACE_DB_URL"] = url
    else:
        args += ["--db-url", url]
    error = assert_one_line_error(siptrace(args, tmp_path, env=env))
    assert "postgres://siptrace:***@127.0.0.1:5432/traces' has a character" in error


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_hides_an_encoded_password_in_server_errors(tmp_path, command):
    """MariaDB's root has no password: giving one is refused by the real server."""
    if not server_answers("mysql"):
        missing("MariaDB on 127.0.0.1:3306 is not answering")
    url = f"mysql://root:{ENCODED_PASSWORD}@127.0.0.1:3306/mysql"
    out = siptrace(COMMANDS[command], tmp_path, env={"SIPTRACE_DB_URL": url})
    error = assert_one_line_error(out)
    assert "mysql://root:***@127.0.0.1:3306/mysql" in error and "Access denied" in error
    assert ENCODED_PASSWORD not in error


def test_an_encoded_password_works_from_the_config_file(tmp_path, mariadb_user):
    (tmp_path / "s.ini").write_text(f"[siptrace]\ndb_url = {mariadb_user}\n")
    config = ["--config", str(tmp_path / "s.ini")]
    replay = siptrace(COMMANDS["replay"] + config, tmp_path)
    assert replay.returncode == 0, replay.stderr
    show = siptrace(["show", "--json", "--limit", "3"] + config, tmp_path)
    assert show.returncode == 0, show.stderr
    assert len(json.loads(show.stdout)) == 3
    assert_no_password(replay.stdout + replay.stderr + show.stdout + show.stderr)


def test_run_startup_line_and_status_mask_the_password(tmp_path, mariadb_user):
    if os.geteuid() != 0:
        missing("live capture needs root (CAP_NET_RAW)")
    control = tmp_path / "control.sock"
    (tmp_path / "s.ini").write_text(f"[siptrace]\ndb_url = {mariadb_user}\n")
    with Lab(tmp_path) as lab:
        proc = lab.siptrace_run(["--config", str(tmp_path / "s.ini"), "--interface", "lo",
                                 "--proxy", "127.0.0.61", "--control-socket", str(control),
                                 "--decision-socket", str(tmp_path / "d.sock")], control)
        status = siptrace_status(control)
        text = subprocess.run(SIPTRACE + ["status", "--control-socket", str(control)],
                              capture_output=True, text=True, timeout=10)
        assert lab.stop(proc) == 0
        startup = lab.output("siptrace")
    user = mariadb_user.split("//")[1].split(":")[0]
    assert status["db_url"] == f"mysql://{user}:***@127.0.0.1:3306/{user}"
    assert f"storing to mysql://{user}:***@127.0.0.1:3306/{user}" in startup
    assert_no_password(json.dumps(status) + text.stdout + text.stderr + startup)
    assert ENCODED_PASSWORD not in startup + json.dumps(status)
