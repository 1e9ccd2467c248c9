"""Database URLs (the module's db_url), opened as peewee databases; secrets redacted.

Accepted forms::

    sqlite:///relative/path.db      sqlite:////absolute/path.db
    mysql://user:pass@host[:port]/db
    postgres://user:pass@host[:port]/db   (postgresql:// too)
    clickhouse://user:pass@host[:port]/db (native protocol, port 9000; store/clickhouse/)

Special characters in the user or password are percent-encoded (RFC 3986 section 3.2.1);
one left as it is would cut the password into host, path, query or fragment, where
errors would show it, so it is refused (the message masks it). Query parameters (``?connect_timeout=3``) are passed to the driver.
"""

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

import peewee

from siptrace.errors import ConfigError, StorageError
from siptrace.redact import redact_url, scrub

SCHEMES = {"sqlite": "sqlite", "mysql": "mysql", "postgres": "postgresql", "postgresql": "postgresql",
           "clickhouse": "clickhouse"}
# User info (RFC 3986 section 3.2.1): unreserved, percent-encoded, sub-delims and ':'.
USERINFO = re.compile(r"(?:[A-Za-z0-9._~!$&'()*+,;=:-]|%[0-9A-Fa-f]{2})*")
DEFAULT_PORTS = {"mysql": 3306, "postgresql": 5432, "clickhouse": 9000}
CONNECT_TIMEOUT = 5  # seconds; a dead server must not hang the writer for minutes
# The SQL mode of every MySQL/MariaDB session siptrace opens, set by the driver on each
# connect: siptrace's statements are written for it, not for whatever the server's
# global mode is (MariaDB's EMPTY_STRING_IS_NULL, for one, makes '' a NULL). MySQL 8's
# default less ONLY_FULL_GROUP_BY (MariaDB's default lacks it too), names valid on both,
# plus NO_BACKSLASH_ESCAPES: PyMySQL then quotes parameters (the call index's upserts)
# with one replace instead of a translate, 4x faster. siptrace's own literals
# (tracestore.py) mean the same with or without it.
MYSQL_SQL_MODE = ("STRICT_TRANS_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
                  "NO_ENGINE_SUBSTITUTION,NO_BACKSLASH_ESCAPES")


@dataclass(frozen=True)
class DbUrl:
    """A parsed db_url. ``repr`` never shows the password."""

    dialect: str  # "sqlite" | "mysql" | "postgresql" | "clickhouse"
    database: str  # file path for SQLite, database name otherwise
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    options: tuple = ()  # (key, value) pairs from the query string
    text: str = field(default="", repr=False)

    @property
    def redacted(self) -> str:
        return redact_url(self.text)


def parse_db_url(url: str) -> DbUrl:
    """Parse a db_url; raises ConfigError naming the (redacted) URL."""
    try:
        return _parse(url)
    except ValueError as exc:
        raise ConfigError(f"db_url {redact_url(url)} {scrub(str(exc))}") from None


def db_url_problem(url: str) -> str | None:
    """What is wrong with a db_url, worded to follow it (never quoting the password);
    None when it is fine. The one rule for the settings and the store."""
    try:
        _parse(url)
    except ValueError as exc:
        return scrub(str(exc))
    return None


def _parse(url: str) -> DbUrl:
    """The parsed URL; ValueError worded to follow the URL otherwise."""
    _check_userinfo(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"is not a URL ({exc})") from None
    scheme = parts.scheme.lower()
    dialect = SCHEMES.get(scheme)
    if dialect is None:
        raise ValueError(f"has an unknown scheme {scheme!r} (use sqlite, mysql, postgres, "
                         "postgresql or clickhouse)")
    options = tuple(parse_qsl(parts.query, keep_blank_values=True))
    if dialect == "sqlite":
        if parts.netloc:
            raise ValueError("has a host, which a SQLite URL has not: sqlite:///relative or "
                             "sqlite:////absolute")
        path = parts.path[1:]
        if not path:
            raise ValueError("has no database file path")
        return DbUrl("sqlite", unquote(path), options=options, text=url)
    name = unquote(parts.path.lstrip("/"))
    if not name or "/" in name:
        raise ValueError("has no database name after the host")
    if not parts.hostname:
        raise ValueError("has no host")
    try:
        port = parts.port or DEFAULT_PORTS[dialect]
    except ValueError as exc:
        raise ValueError(f"has a bad port ({exc})") from None
    return DbUrl(
        dialect, name,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        host=parts.hostname, port=port, options=options, text=url)


def _check_userinfo(url: str) -> None:
    """Refuse a user or password that would be cut (and shown) as host, path, query or
    fragment: everything up to the URL's last '@' must be RFC 3986 user info."""
    rest = url.partition("://")[2]
    userinfo, at, _ = rest.rpartition("@")
    if at and not userinfo.startswith("/") and USERINFO.fullmatch(userinfo) is None:
        raise ValueError("has a character in its user or password that must be "
                         "percent-encoded (/ %2F, ? %3F, # %23, @ %40, space %20, % %25)")


def _options(db_url: DbUrl) -> dict:
    opts = {}
    for key, value in db_url.options:
        opts[key] = int(value) if value.isascii() and value.isdigit() else value
    return opts


def open_database(db_url: DbUrl) -> peewee.Database:
    """A peewee Database for the URL, not yet connected (autoconnect off).

    Drivers: psycopg 3 for PostgreSQL (COPY through its C extension), PyMySQL for
    MySQL/MariaDB; see docs/storage.md for the measurements behind the choice.
    """
    opts = _options(db_url)
    if db_url.dialect == "clickhouse":
        raise ConfigError(f"db_url {db_url.redacted}: ClickHouse is not a peewee database "
                          "(siptrace.store.clickhouse opens it)")
    if db_url.dialect == "sqlite":
        return peewee.SqliteDatabase(db_url.database, autoconnect=False, thread_safe=False,
                                     check_same_thread=False, timeout=opts.pop("timeout", 30),
                                     **opts)
    creds = {"user": db_url.user, "host": db_url.host, "port": db_url.port}
    if db_url.dialect == "postgresql":
        if db_url.password is not None:
            creds["password"] = db_url.password
        opts.setdefault("connect_timeout", CONNECT_TIMEOUT)
        return peewee.PostgresqlDatabase(db_url.database, autoconnect=False, thread_safe=False,
                                         prefer_psycopg3=True, **creds, **opts)
    if db_url.password is not None:
        creds["password"] = db_url.password
    if "sql_mode" in opts:
        raise ConfigError(f"db_url {db_url.redacted}: sql_mode is siptrace's to set "
                          f"({MYSQL_SQL_MODE}); remove it from the URL")
    opts["sql_mode"] = MYSQL_SQL_MODE
    opts.setdefault("connect_timeout", CONNECT_TIMEOUT)
    opts.setdefault("read_timeout", 60)
    opts.setdefault("write_timeout", 60)
    return peewee.MySQLDatabase(db_url.database, autoconnect=False, thread_safe=False,
                                charset="utf8mb4", **creds, **opts)


def storage_error(db_url: DbUrl, action: str, exc: BaseException) -> StorageError:
    """Wrap a driver error once: redacted URL, scrubbed message.

    The driver's exception is kept as ``.original`` but not chained (raise ... from
    None), so a traceback cannot print an unscrubbed DSN.
    """
    detail = scrub(" ".join(str(exc).split()), db_url.password) or type(exc).__name__
    err = StorageError(f"{db_url.redacted}: {action}: {detail}")
    err.original = exc
    return err
