"""clickhouse_driver.Client's interface on chDB: siptrace's SQL on a current ClickHouse engine.

chDB is ClickHouse (26.x here) in-process. ``ChdbEngine`` holds one chDB session in a
directory, with a cluster ``siptrace`` of one shard that is this engine itself (so a
Distributed table over it is real); ``ChdbEngine.client`` gives a ``ChdbClient`` that
siptrace can use where it uses clickhouse_driver.Client.

What it stands in for: the native protocol, i.e. the driver's connection and its type
conversions. Rows come back as the driver gives them (String as bytes with
``strings_as_bytes``, DateTime and DateTime64 as the driver's datetimes, integers as
int, columnar or not, column types on request); ``%(name)s`` parameters are quoted by
the driver's own escape_params; server errors raise the driver's ServerException with
the server's code; an error disconnects, as in the driver; server settings (the
client's and the query's) go with each SELECT or INSERT, the driver's own stay here.

What is real: the engine, the SQL, the table engines, partitions, system tables and
the error codes. What is not tested here: the wire protocol itself (handshake, Native
blocks, compression, timeouts, lost or refused connections), the driver's columnar
encoding of INSERT data (rendered here as SQL literals of the same values, by the
column types the engine reports), and a server of its own process or network.
"""

import re
import struct
from datetime import date, datetime, timedelta
from pathlib import Path
from types import GeneratorType, SimpleNamespace

from clickhouse_driver import Client
from clickhouse_driver.connection import ServerInfo
from clickhouse_driver.context import Context
from clickhouse_driver.errors import ServerException
from clickhouse_driver.util.escape import escape_params
from pytz import timezone as get_timezone, utc

from siptrace.store.clickhouse.connection import literal

CLUSTER = "siptrace"
CONFIG = f"""<clickhouse>
  <tcp_port>9000</tcp_port>
  <remote_servers><{CLUSTER}><shard><replica><host>localhost</host><port>9000</port>
  </replica></shard></{CLUSTER}></remote_servers>
</clickhouse>
"""
_ERROR = re.compile(r"Code: (\d+)\. (.*)", re.S)
_INSERT = re.compile(r"\s*INSERT\s+INTO\s+(\S+)\s*(\(([^)]*)\))?\s*VALUES\s*$", re.I)
_INTS = {f"{sign}Int{bits}": f"<{code.upper() if sign else code}" for sign in ("", "U")
         for bits, code in ((8, "b"), (16, "h"), (32, "i"), (64, "q"))}
_FLOATS = {"Float32": "<f", "Float64": "<d"}
EPOCH_DATE = date(1970, 1, 1)


class ChdbEngine:
    """One chDB session (ClickHouse in-process) in ``path``."""

    def __init__(self, path):
        import chdb.session

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.xml").write_text(CONFIG)
        self.session = chdb.session.Session(f"file:{path / 'db'}?config-file={path / 'config.xml'}")
        self._database, self.timezone = "default", "UTC"
        (version, timezone), = self.query("SELECT version(), timezone()", "default").rows
        self.version_string = version.decode()
        self.version = tuple(int(n) for n in self.version_string.split(".")[:3])
        self.timezone = timezone.decode()

    def close(self) -> None:
        self.session.close()

    def client(self, database: str = "default", settings=None) -> "ChdbClient":
        return ChdbClient(self, database, settings)

    def query(self, sql: str, database: str, strings_as_bytes: bool = True) -> "Result":
        """Run one statement in ``database``; its rows (RowBinaryWithNamesAndTypes decoded)."""
        try:
            if database != self._database:
                self.session.query(f"USE {database}")
                self._database = database
            data = self.session.query(sql, "RowBinaryWithNamesAndTypes").bytes()
        except RuntimeError as exc:  # chdb's ChdbError: "Code: N. DB::Exception: ..."
            match = _ERROR.match(str(exc))
            if match is None:
                raise
            raise ServerException(match[2], code=int(match[1])) from None
        return Result(data, self.timezone, strings_as_bytes)


class ChdbClient:
    """The part of clickhouse_driver.Client that siptrace uses, on a ChdbEngine."""

    def __init__(self, engine: ChdbEngine, database: str = "default", settings=None):
        self.engine = engine
        self.database = database
        settings = dict(settings or {})
        self.client_settings = {k: settings.pop(k) for k in list(settings)
                                if k in Client.available_client_settings}
        self.settings = settings  # sent with every query, as the driver does
        major, minor, patch = engine.version
        info = ServerInfo("ClickHouse", major, minor, patch, 0, engine.timezone,
                          "chdb", 0)
        context = Context()
        context.server_info = info
        context.settings = settings
        context.client_settings = self.client_settings
        self.connection = SimpleNamespace(connected=False, server_info=None, context=context)

    def disconnect(self) -> None:
        self.connection.connected = False
        self.connection.server_info = None

    def execute(self, query, params=None, with_column_types=False, external_tables=None,
                query_id=None, settings=None, types_check=False, columnar=False):
        if external_tables:
            raise NotImplementedError("external_tables")
        self.connection.connected = True
        self.connection.server_info = self.connection.context.server_info
        settings = dict(settings or {})  # the driver's own settings are not the server's
        as_bytes = settings.pop("strings_as_bytes", self.client_settings.get("strings_as_bytes"))
        for key in Client.available_client_settings:
            settings.pop(key, None)
        try:
            if isinstance(params, (list, tuple, GeneratorType)):
                return self._insert(query, list(params), columnar, settings)
            if params is not None:
                query = query % escape_params(params, self.connection.context)
            result = self._query(self._with_settings(query, settings), as_bytes)
        except BaseException:
            self.disconnect()
            raise
        if re.match(r"\s*USE\s+(\S+)\s*$", query, re.I):
            self.database = query.split()[1]
        rows = result.rows if not columnar else list(zip(*result.rows))
        return (rows, result.columns) if with_column_types else rows

    def _query(self, sql: str, strings_as_bytes: bool = True) -> "Result":
        return self.engine.query(sql, self.database, bool(strings_as_bytes))

    def _with_settings(self, sql: str, settings, before: str = "") -> str:
        merged = {**self.settings, **(settings or {})}
        if not merged:
            return sql + before
        if not re.match(r"\s*(SELECT|WITH|INSERT)\b", sql, re.I):
            raise NotImplementedError(f"settings for {sql.split()[0]}")
        pairs = ", ".join(f"{k} = {escape_params({'v': v}, self.connection.context)['v']}"
                          for k, v in merged.items())
        return f"{sql} SETTINGS {pairs}{before}"

    def _insert(self, query: str, data: list, columnar: bool, settings) -> int:
        """INSERT ... VALUES with the driver's data: values as literals of the column types."""
        match = _INSERT.match(query)
        if match is None:
            raise NotImplementedError(f"not an INSERT ... VALUES: {query[:80]}")
        table, names = match[1], match[3]
        types = [t for _, t in self._query(
            f"SELECT {names or '*'} FROM {table} LIMIT 0").columns]
        rows = list(zip(*data)) if columnar else data
        if not rows:
            return 0
        tz = get_timezone(self.engine.timezone)
        values = ", ".join("(" + ", ".join(_literal(v, t, tz) for v, t in zip(row, types)) + ")"
                           for row in rows)
        head = f"INSERT INTO {table}" + (f" ({names})" if names else "")
        self._query(self._with_settings(head, settings, " VALUES ") + values)
        return len(rows)


def _literal(value, ch_type: str, server_tz) -> str:
    """A SQL literal of ``value`` for a column of ``ch_type``, meaning what the driver's
    Native encoding of it would (ints for DateTime/DateTime64 are raw seconds/ticks)."""
    if value is None:
        return "NULL"
    inner = _unwrap(ch_type)
    if inner.startswith("DateTime"):
        scale, tz = _datetime_type(inner, server_tz)
        if isinstance(value, datetime):
            if value.tzinfo is None:
                value = tz.localize(value)
            value = value.astimezone(utc)
            value = int(value.timestamp()) * 10 ** scale + value.microsecond // 10 ** (6 - scale)
        seconds, ticks = divmod(int(value), 10 ** scale)
        return f"{seconds}.{ticks:0{scale}d}" if scale else str(seconds)
    if isinstance(value, (bytes, str)):
        return literal(value)
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, date):
        return f"'{value.isoformat()}'"
    if isinstance(value, (list, tuple)) and inner.startswith("Array("):
        return "[" + ", ".join(_literal(v, inner[6:-1], server_tz) for v in value) + "]"
    raise TypeError(f"{type(value).__name__} for a {ch_type} column")


def _unwrap(ch_type: str) -> str:
    for wrapper in ("Nullable(", "LowCardinality("):
        if ch_type.startswith(wrapper):
            return _unwrap(ch_type[len(wrapper):-1])
    return ch_type


def _datetime_type(ch_type: str, server_tz):
    """(scale, timezone) of DateTime[64](...): the server's zone unless the type names one."""
    args = [a.strip().strip("'") for a in ch_type.partition("(")[2].rstrip(")").split(",")
            if a.strip()]
    scale = int(args.pop(0)) if ch_type.startswith("DateTime64") else 0
    return scale, (get_timezone(args[0]) if args else server_tz)


class Result:
    """A RowBinaryWithNamesAndTypes answer decoded as clickhouse_driver decodes Native."""

    def __init__(self, data: bytes, server_timezone: str, strings_as_bytes: bool):
        self.data, self.pos = memoryview(data), 0
        self.server_tz = get_timezone(server_timezone)
        self.strings_as_bytes = strings_as_bytes
        self.columns, self.rows = [], []
        if not data:  # a statement without a result
            return
        n = self._varint()
        names = [self._bytes().decode() for _ in range(n)]
        types = [self._bytes().decode() for _ in range(n)]
        self.columns = list(zip(names, types))
        while self.pos < len(self.data):
            self.rows.append(tuple(self._value(t) for t in types))

    def _varint(self) -> int:
        shift = result = 0
        while True:
            byte = self.data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7

    def _bytes(self, size=None) -> bytes:
        size = self._varint() if size is None else size
        self.pos += size
        return bytes(self.data[self.pos - size:self.pos])

    def _unpack(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def _value(self, ch_type: str):
        if ch_type in _INTS:
            return self._unpack(_INTS[ch_type])
        if ch_type in _FLOATS:
            return self._unpack(_FLOATS[ch_type])
        if ch_type == "String" or ch_type.startswith("FixedString("):
            raw = self._bytes(int(ch_type[12:-1]) if ch_type != "String" else None)
            return raw if self.strings_as_bytes else raw.decode()
        if ch_type == "Date":
            return EPOCH_DATE + timedelta(days=self._unpack("<H"))
        if ch_type.startswith("DateTime"):
            scale, tz = _datetime_type(ch_type, self.server_tz)
            stamp = (self._unpack("<q") / float(10 ** scale) if ch_type.startswith("DateTime64")
                     else self._unpack("<I"))
            named = ch_type.endswith("')")  # the driver: aware if the type names a zone
            value = datetime.fromtimestamp(stamp, tz)
            return value if named else value.replace(tzinfo=None)
        if ch_type.startswith("Nullable("):
            return None if self._unpack("<B") else self._value(ch_type[9:-1])
        if ch_type.startswith("LowCardinality("):
            return self._value(ch_type[15:-1])
        if ch_type.startswith("Array("):
            return [self._value(ch_type[6:-1]) for _ in range(self._varint())]
        raise NotImplementedError(f"decoding {ch_type}")
