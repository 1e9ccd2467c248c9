"""The native-protocol connection (clickhouse-driver) for a clickhouse:// db_url.

Strings travel as bytes both ways (``strings_as_bytes``): msg is stored as its exact
wire bytes, and Call-IDs or tags that are not UTF-8 keep their bytes. Errors become
StorageError with the URL redacted and the password scrubbed, as for the SQL backends.
"""

import logging
import re

from siptrace.errors import StorageError
from siptrace.store.urls import CONNECT_TIMEOUT, DbUrl, storage_error

# The driver logs each failed connection with a traceback; siptrace words it once.
logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)
_STACK_TRACE = re.compile(r"[.,]?\s*Stack trace.*", re.S)

# Query options of the URL that are the driver's own; the others are ClickHouse settings.
CLIENT_OPTIONS = ("connect_timeout", "send_receive_timeout", "sync_request_timeout",
                  "secure", "verify", "ca_certs", "compression")
SEND_RECEIVE_TIMEOUT = 60  # seconds a write may take before it counts as failed (in doubt)
# Server error codes that refuse the rows sent, not the server (retrying the same rows
# cannot help): a CHECK constraint (ClickHouse 19.14+) or a throwIf() rule in a column's
# expression (any release), values the column cannot take.
REJECTING_CODES = frozenset({
    6, 27, 38, 41, 53, 69, 70, 72, 117, 131, 321,  # cannot parse / convert, type mismatch,
    # too large string size, value out of bounds
    395,  # throwIf() in a column's expression: a rule on the rows before constraints
    469,  # VIOLATED_CONSTRAINT
})


def client_for(db_url: DbUrl):
    """A clickhouse_driver Client for the URL, not yet connected."""
    from clickhouse_driver import Client  # imported by the processes that talk to ClickHouse

    kwargs = {"connect_timeout": CONNECT_TIMEOUT, "send_receive_timeout": SEND_RECEIVE_TIMEOUT}
    settings = {"strings_as_bytes": True}
    for key, value in db_url.options:
        typed = int(value) if value.isascii() and value.isdigit() else value
        if key in CLIENT_OPTIONS:
            kwargs[key] = typed
        else:
            settings[key] = typed
    return Client(host=db_url.host, port=db_url.port, database=db_url.database,
                  user=db_url.user or "default", password=db_url.password or "",
                  settings=settings, client_name="siptrace", **kwargs)


def connect(client, db_url: DbUrl) -> None:
    """Open the connection now (one round trip); StorageError, with ``unreachable``
    when the server did not take the connection (refused, no route, timeout, closed)."""
    from clickhouse_driver.errors import NetworkError, SocketTimeoutError

    try:
        client.execute("SELECT 1")
    except Exception as exc:
        client.disconnect()
        err = error(db_url, "connect", exc)
        err.unreachable = isinstance(exc, (NetworkError, SocketTimeoutError, OSError, EOFError))
        raise err from None


def server_version(client) -> tuple[int, ...]:
    """The server's version as numbers (18, 16, 1) from the handshake (after connect)."""
    info = client.connection.server_info
    return (info.version_major, info.version_minor, info.version_patch)


def rejecting(exc: BaseException) -> bool:
    """Whether the server refused the rows, not the write (by its error code)."""
    from clickhouse_driver.errors import ServerException

    return isinstance(exc, ServerException) and exc.code in REJECTING_CODES


def run(client, db_url: DbUrl, action: str, sql: str, params=None, **kwargs):
    """``client.execute`` with errors as StorageError; the connection is dropped after
    one, so the next call opens a fresh one."""
    try:
        return client.execute(sql, params, **kwargs)
    except Exception as exc:
        client.disconnect()
        raise error(db_url, action, exc) from None


def error(db_url: DbUrl, action: str, exc: BaseException) -> StorageError:
    """A driver error as StorageError (storage_error), the server's stack trace cut."""
    err = storage_error(db_url, action, Exception(_STACK_TRACE.sub("", str(exc)).strip()
                                                  or type(exc).__name__))
    err.original = exc
    return err


_LITERAL = {b: chr(b) for b in range(0x20, 0x7F)}
_LITERAL.update({b: f"\\x{b:02X}" for b in (*range(0x20), *range(0x7F, 0x100))})
_LITERAL[ord("'")] = "\\'"
_LITERAL[ord("\\")] = "\\\\"
_TRANSLATE = {b: text for b, text in _LITERAL.items() if text != chr(b)}


def literal(value: bytes | str) -> str:
    """A ClickHouse string literal for any bytes (str as UTF-8 with surrogateescape),
    ASCII only: the driver's own parameter quoting does not take bytes."""
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    return "'" + value.decode("latin-1").translate(_TRANSLATE) + "'"


def text(value: bytes | str) -> str:
    """A name or value the server sent (bytes, with ``strings_as_bytes``) as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def no_such_table(exc: StorageError) -> bool:
    """Whether a wrapped server error says the table or database does not exist."""
    code = getattr(getattr(exc, "original", None), "code", None)
    return code in (60, 81)  # UNKNOWN_TABLE, UNKNOWN_DATABASE

