"""Real ClickHouse servers on this machine, for the tests and the benchmark.

``ClickHouseServer`` is one ``clickhouse-server`` child process with its own directory
(config, data, tmp, logs) under a base directory and its own free ports on 127.0.0.1;
``ClickHouseCluster`` is N of them (default 2) sharing a ``<remote_servers>`` section
that defines the cluster ``siptrace``: one shard per server, one replica each.

Everything a server writes lives under the base directory given (nothing goes to
/var/lib/clickhouse or /var/log/clickhouse-server), and ``cleanup()`` removes it.

No pytest here: ``bench/`` imports this module too. The fixtures are in
``clickhousefixtures.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable, Optional
from xml.sax.saxutils import escape

CLUSTER_NAME = "siptrace"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
HOST = "127.0.0.1"

# Where the server binary may be: the split 18.x packages ship clickhouse-server in
# /usr/sbin, newer releases one multi-call binary /usr/bin/clickhouse (with a
# clickhouse-server symlink to it, run as ``clickhouse server``).
_SERVER_CANDIDATES = ("/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server",
                      "/usr/local/bin/clickhouse-server")
_MULTI_CANDIDATES = ("/usr/bin/clickhouse", "/usr/local/bin/clickhouse")


def find_server() -> Optional[str]:
    """The ClickHouse server binary's path, or None when none is installed.

    ``$CLICKHOUSE_SERVER`` (a path) wins when set. The path found may be a
    ``clickhouse`` multi-call binary: ``server_command`` runs it as
    ``clickhouse server``.
    """
    override = os.environ.get("CLICKHOUSE_SERVER")
    if override:
        return override if _executable(override) else None
    for path in (*_SERVER_CANDIDATES, shutil.which("clickhouse-server"),
                 *_MULTI_CANDIDATES, shutil.which("clickhouse")):
        if path and _executable(path):
            return path
    return None


def server_command(binary: str, config: Path) -> list[str]:
    """The command line that runs ``binary`` in the foreground with ``config``."""
    if Path(binary).name == "clickhouse":  # the multi-call binary itself
        return [binary, "server", f"--config-file={config}"]
    return [binary, f"--config-file={config}"]


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 now (all sockets held open until
    every port is picked, so none is picked twice)."""
    held = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            held.append(sock)
        return [s.getsockname()[1] for s in held]
    finally:
        for sock in held:
            sock.close()


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now (as ClickHouse does:
    with SO_REUSEADDR, so connections in TIME_WAIT do not count)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def remote_servers_xml(ports: Iterable[int], name: str = CLUSTER_NAME) -> str:
    """A ``<remote_servers>`` section: cluster ``name``, one shard per native port."""
    shards = "".join(
        "<shard><internal_replication>false</internal_replication>"
        f"<replica><host>{HOST}</host><port>{port}</port></replica></shard>"
        for port in ports)
    return f"<remote_servers><{name}>{shards}</{name}></remote_servers>"


class ClickHouseError(RuntimeError):
    pass


class PortsInUse(ClickHouseError):
    """A port picked for a server is taken by another process."""


class ClickHouseServer:
    """One clickhouse-server in ``<base_dir>/<name>``: config.xml, users.xml, data/,
    tmp/, user_files/, format_schemas/, log/ (server.log, err.log, stdout.log).

    Ports are picked at the first ``start()`` (or by the cluster before it) and kept:
    a server stopped and started again listens on the same ports with the same data.
    """

    def __init__(self, base_dir, name: str = "ch0", binary: Optional[str] = None,
                 max_memory_usage: int = 2_000_000_000,
                 mark_cache_size: int = 256 * 1024 * 1024,
                 start_timeout: float = START_TIMEOUT, log_level: str = "information"):
        self.name = name
        self.dir = Path(base_dir).resolve() / name
        self.binary = binary or find_server()
        self.max_memory_usage = max_memory_usage
        self.mark_cache_size = mark_cache_size
        self.start_timeout = start_timeout
        self.log_level = log_level
        self.tcp_port: Optional[int] = None
        self.http_port: Optional[int] = None
        self.interserver_port: Optional[int] = None
        self.remote_servers = ""  # the <remote_servers> section the cluster sets
        self.proc: Optional[subprocess.Popen] = None
        self._terminating = False
        self._log_offset = 0  # where the error log stood at the last spawn

    # ---- layout -------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.dir / "config.xml"

    @property
    def log_dir(self) -> Path:
        return self.dir / "log"

    @property
    def error_log(self) -> Path:
        return self.log_dir / "err.log"

    @property
    def server_log(self) -> Path:
        return self.log_dir / "server.log"

    @property
    def stdout_log(self) -> Path:
        return self.log_dir / "stdout.log"

    @property
    def port(self) -> int:
        """The native (TCP) protocol port."""
        if self.tcp_port is None:
            raise ClickHouseError(f"{self.name}: no port yet (the server was never started)")
        return self.tcp_port

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive (an exited one is left unreaped)."""
        if self.proc is None or self.proc.returncode is not None:
            return False
        return not self._exited(0)

    def url(self, database: str = "default") -> str:
        return f"clickhouse://default@{HOST}:{self.port}/{database}"

    def client(self, database: str = "default", **kwargs):
        """A clickhouse_driver Client on the native port (kwargs go to Client)."""
        from clickhouse_driver import Client
        kwargs.setdefault("connect_timeout", 5)
        return Client(HOST, port=self.port, user="default", password="",
                      database=database, **kwargs)

    def execute(self, sql: str, *args, **kwargs):
        """Run one statement on this server (a client opened and closed for it)."""
        return self._execute(self.client(), sql, *args, **kwargs)

    @staticmethod
    def _execute(client, sql: str, *args, **kwargs):
        try:
            return client.execute(sql, *args, **kwargs)
        finally:
            client.disconnect()

    # ---- configuration --------------------------------------------------------
    def assign_ports(self, ports: Optional[list[int]] = None) -> None:
        """Native, HTTP and interserver ports: the three given, else three free ones."""
        self.tcp_port, self.http_port, self.interserver_port = ports or free_ports(3)

    def write_config(self) -> None:
        if self.tcp_port is None:
            self.assign_ports()
        for sub in ("data", "tmp", "user_files", "format_schemas", "log",
                    "dictionaries_lib", "user_scripts", "user_defined", "access"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        d = self.dir
        # Unknown keys are ignored by 18.16; the newer path keys keep current releases
        # inside the base directory too (their defaults hang off <path> anyway).
        config = f"""<?xml version="1.0"?>
<yandex>
  <logger>
    <level>{self.log_level}</level>
    <log>{escape(str(self.server_log))}</log>
    <errorlog>{escape(str(self.error_log))}</errorlog>
    <size>100M</size>
    <count>2</count>
    <console>0</console>
  </logger>
  <listen_host>{HOST}</listen_host>
  <listen_try>0</listen_try>
  <tcp_port>{self.tcp_port}</tcp_port>
  <http_port>{self.http_port}</http_port>
  <interserver_http_port>{self.interserver_port}</interserver_http_port>
  <interserver_http_host>{HOST}</interserver_http_host>
  <path>{escape(str(d / 'data'))}/</path>
  <tmp_path>{escape(str(d / 'tmp'))}/</tmp_path>
  <user_files_path>{escape(str(d / 'user_files'))}/</user_files_path>
  <format_schema_path>{escape(str(d / 'format_schemas'))}/</format_schema_path>
  <dictionaries_lib_path>{escape(str(d / 'dictionaries_lib'))}/</dictionaries_lib_path>
  <user_scripts_path>{escape(str(d / 'user_scripts'))}/</user_scripts_path>
  <user_defined_path>{escape(str(d / 'user_defined'))}/</user_defined_path>
  <access_control_path>{escape(str(d / 'access'))}/</access_control_path>
  <users_config>users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <umask>022</umask>
  <mlock_executable>false</mlock_executable>
  <max_connections>1024</max_connections>
  <max_concurrent_queries>100</max_concurrent_queries>
  <mark_cache_size>{self.mark_cache_size}</mark_cache_size>
  <uncompressed_cache_size>{self.mark_cache_size}</uncompressed_cache_size>
  <max_server_memory_usage>{2 * self.max_memory_usage}</max_server_memory_usage>
  <compression>
    <case>
      <min_part_size>0</min_part_size>
      <min_part_size_ratio>0</min_part_size_ratio>
      <method>zstd</method>
    </case>
  </compression>
  {self.remote_servers}
</yandex>
"""
        users = f"""<?xml version="1.0"?>
<yandex>
  <profiles>
    <default>
      <max_memory_usage>{self.max_memory_usage}</max_memory_usage>
      <load_balancing>in_order</load_balancing>
      <poll_interval>1</poll_interval>
    </default>
  </profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas>
    <default>
      <interval>
        <duration>3600</duration>
        <queries>0</queries><errors>0</errors><result_rows>0</result_rows>
        <read_rows>0</read_rows><execution_time>0</execution_time>
      </interval>
    </default>
  </quotas>
</yandex>
"""
        self.config_path.write_text(config)
        (self.dir / "users.xml").write_text(users)

    # ---- life cycle -------------------------------------------------------------
    def start(self, timeout: Optional[float] = None) -> "ClickHouseServer":
        """Spawn the server and wait until ``SELECT 1`` answers on its native port."""
        self.spawn()
        self.wait_ready(timeout)
        return self

    def spawn(self) -> None:
        """Start the process and return at once (``wait_ready`` waits for it)."""
        if self.running:
            return
        if not self.binary:
            raise ClickHouseError("clickhouse-server is not installed")
        if not self.config_path.exists():
            self.write_config()
        self._wait_ports_free(2.0)  # stop() waited for our own; another's stays taken
        env = dict(os.environ, TZ="UTC", CLICKHOUSE_WATCHDOG_ENABLE="0")
        try:
            self._log_offset = self.error_log.stat().st_size
        except OSError:
            self._log_offset = 0
        with open(self.stdout_log, "ab") as out:
            self.proc = subprocess.Popen(
                server_command(self.binary, self.config_path), cwd=self.dir, env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        self._terminating = False

    def wait_ready(self, timeout: Optional[float] = None) -> None:
        """Wait until ``SELECT 1`` answers on the native port; a server that exits,
        logs ``Address already in use`` or does not answer in time is a
        ClickHouseError (PortsInUse for a taken port) holding its logs' tail."""
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        last = None
        while True:
            if not self.running:
                code = self._reap() if self.proc is not None else None
                self._fail(f"exited with {code} while starting")
            if "Address already in use" in self._new_errors():
                self._fail("could not listen")
            try:
                # A plain connect first: the driver logs a traceback per refused connect;
                # short timeouts: a foreign listener on the port must not hang us.
                with socket.create_connection((HOST, self.tcp_port), timeout=1):
                    pass
                probe = self.client(connect_timeout=1, send_receive_timeout=3,
                                    sync_request_timeout=3)
                if self._execute(probe, "SELECT 1") == [(1,)]:
                    return
            except Exception as exc:  # not listening yet, or still loading
                last = exc
            if time.monotonic() > deadline:
                self._fail(f"did not answer SELECT 1 within {timeout:.0f}s "
                           f"(last error: {last!r})")
            time.sleep(0.1)

    def _new_errors(self) -> str:
        """What the error log gained since the last spawn."""
        try:
            with open(self.error_log, "rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _fail(self, what: str) -> None:
        taken = "Address already in use" in self._new_errors()
        if self.proc is not None:
            try:
                self.kill()
            except PortsInUse:  # someone else's listener: the error says so below
                taken = True
        cls = PortsInUse if taken else ClickHouseError
        raise cls(f"{self.name}: clickhouse-server {what} (native port {self.tcp_port}, "
                  f"http {self.http_port}, interserver {self.interserver_port})\n"
                  f"{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; return once the ports are
        free, so ``start()`` can listen on them again."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            if not self._terminating:  # a second SIGTERM makes ClickHouse exit at once
                self._signal(signal.SIGTERM)
            if not self._exited(timeout):
                self._signal(signal.SIGKILL)
        self._end()

    def kill(self) -> None:
        """SIGKILL (a crash: no clean shutdown)."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self._signal(signal.SIGKILL)
        self._end()

    def _end(self) -> None:
        """Wait for the server to exit, end whatever it left in its process group (a
        helper, a watchdog's child) while its id is still ours (the exited server not
        yet reaped), reap it, and wait for its ports to be free."""
        if self.proc.returncode is None and not self._exited(30):
            raise ClickHouseError(f"{self.name}: pid {self.proc.pid} survived SIGKILL")
        self._reap()
        self._wait_ports_free(STOP_TIMEOUT)

    def _reap(self) -> int:
        """The exited server: SIGKILL what is left in its group, reap it; its exit code."""
        self._signal(signal.SIGKILL)
        code = self.proc.wait()
        self.proc = None
        return code

    def _exited(self, timeout: float) -> bool:
        """Whether the server exits within ``timeout`` s; it is left unreaped."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if os.waitid(os.P_PID, self.proc.pid,
                             os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                    return True
            except ChildProcessError:  # reaped already
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def _signal(self, sig: int) -> None:
        """Signal the server's own process group (start_new_session), never once the
        server has been reaped: then that id may be someone else's."""
        if self.proc is None or self.proc.returncode is not None:
            return
        if sig == signal.SIGTERM:
            self._terminating = True
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _wait_ports_free(self, timeout: float) -> None:
        ports = [p for p in (self.tcp_port, self.http_port, self.interserver_port) if p]
        deadline = time.monotonic() + timeout
        while not all(port_free(p) for p in ports):
            if time.monotonic() > deadline:
                busy = [p for p in ports if not port_free(p)]
                raise PortsInUse(f"{self.name}: ports {busy} still in use "
                                 "(Address already in use)")
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for path in (self.error_log, self.stdout_log):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            if text:
                parts.append(f"--- tail of {path} ---\n" + "\n".join(text))
        return "\n".join(parts) or f"(no log in {self.log_dir})"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<ClickHouseServer {self.name} port={self.tcp_port} {state} {self.dir}>"


class ClickHouseCluster:
    """``size`` servers under ``base_dir`` (a fresh temporary directory when None),
    sharing the cluster ``siptrace``: one shard per server, in ``servers`` order."""

    def __init__(self, base_dir=None, size: int = 2, name: str = CLUSTER_NAME,
                 binary: Optional[str] = None, **server_options):
        if base_dir is None:
            base_dir = tempfile.mkdtemp(prefix="siptrace-clickhouse-")
        self.base_dir = Path(base_dir).resolve()
        self.name = name
        self.servers = [ClickHouseServer(self.base_dir, f"ch{i}", binary=binary,
                                         **server_options) for i in range(size)]

    def start(self, timeout: float = START_TIMEOUT, attempts: int = 3) -> "ClickHouseCluster":
        """Pick every server's ports, write every config, start all and wait for all.

        A port taken by someone else between picking and listening is retried with
        fresh ports (only at the first start: a restart keeps its ports)."""
        first = all(s.tcp_port is None for s in self.servers)
        for attempt in range(attempts):
            if first:
                ports = free_ports(3 * len(self.servers))
                for i, server in enumerate(self.servers):
                    server.assign_ports(ports[3 * i:3 * i + 3])
                section = remote_servers_xml([s.tcp_port for s in self.servers], self.name)
                for server in self.servers:
                    server.remote_servers = section
                    server.write_config()
            try:
                for server in self.servers:
                    server.spawn()
                for server in self.servers:
                    server.wait_ready(timeout)
                return self
            except ClickHouseError as exc:
                self.stop()
                taken = isinstance(exc, PortsInUse) or "Address already in use" in str(exc)
                if not first or attempt == attempts - 1 or not taken:
                    raise
        return self

    def stop(self) -> None:
        for server in self.servers:
            server._signal(signal.SIGTERM)  # all shut down at once, then wait for each
        for server in self.servers:
            server.stop()

    def cleanup(self) -> None:
        """Stop every server and remove the base directory."""
        try:
            self.stop()
        finally:
            for server in self.servers:  # whatever stop() could not end
                if server.proc is not None:
                    server.kill()
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def url(self, database: str = "default") -> str:
        return self.servers[0].url(database)

    def query_all(self, sql: str, *args, **kwargs) -> list:
        """Run ``sql`` on every server; the answers in ``servers`` order."""
        return [server.execute(sql, *args, **kwargs) for server in self.servers]

    def create_database(self, name: str) -> None:
        self.query_all(f"CREATE DATABASE IF NOT EXISTS `{name}`")

    def drop_database(self, name: str) -> None:
        self.query_all(f"DROP DATABASE IF EXISTS `{name}`")

    @property
    def pids(self) -> list[int]:
        return [s.pid for s in self.servers if s.pid is not None]

    def __enter__(self) -> "ClickHouseCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<ClickHouseCluster {self.name} {self.servers}>"


if __name__ == "__main__":  # a quick look: start a cluster, time it, stop it
    started = time.monotonic()
    cluster = ClickHouseCluster().start()
    up = time.monotonic() - started
    print(f"cluster up in {up:.2f}s:", [s.url() for s in cluster.servers])
    print(cluster.query_all("SELECT version(), timezone()"))
    started = time.monotonic()
    cluster.cleanup()
    print(f"stopped and removed in {time.monotonic() - started:.2f}s")
