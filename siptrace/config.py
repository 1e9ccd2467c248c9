"""Settings: an INI file, then the environment, then the command line (docs/configuration.md).

Keys are the module's parameter names (db_url, table, trace_flag, trace_on,
traced_user_avp, duplicate_uri) plus the sidecar's own. A bad value is one
ConfigError line naming the key, the value and where it came from. Passwords never
appear in a Settings' repr, in status output or in error messages.
"""

import configparser
import difflib
import os
import re
from dataclasses import asdict, dataclass, fields
from typing import Mapping

from siptrace.correlate.correlator import GRACE_NS, MAX_DECISION_BUFFER, TRACED_USER_AVP
from siptrace.direction import PROXY_FORMS, ProxyAddresses, format_endpoint, parse_endpoint
from siptrace.errors import ConfigError
from siptrace.redact import MASK, SECRET_KEYS, redact_url
from siptrace.sip.streams import MAX_BUFFERED
from siptrace.timespec import NS, duration_ns

SECTION = "siptrace"
ENV_PREFIX = "SIPTRACE_"
CONFIG_ENV = "SIPTRACE_CONFIG"  # the config file, when --config is not given
MAX_FLAG = 31  # Kamailio/OpenSER message flags are bits 0..31 of a 32-bit mask
BOOL_WORDS = {"1": True, "on": True, "yes": True, "true": True,
              "0": False, "off": False, "no": False, "false": False}
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
MAX_GRACE_S = 60
# Table names (one rule for every command and the store): the store quotes a name
# whole, so spaces and dashes are fine, but not '%' (the drivers' placeholders) or
# quotes. The longest name siptrace derives from one is the call index's index
# <table>_calls_first_date (store/schema.py): within PostgreSQL's 63 bytes (MySQL: 64).
MAX_TABLE_NAME = 63 - len("_calls_first_date")
TABLE_NAME = re.compile(r"[A-Za-z0-9_$-]+(?: +[A-Za-z0-9_$-]+)*")


@dataclass(frozen=True, repr=False)
class Settings:
    """Every setting of siptrace, typed and checked. ``str()`` and ``repr()`` are redacted.

    The defaults here are the only ones: other code reads them from this class
    (``Settings.db_url``). The decoding core's (grace, traced_user_avp,
    decision_buffer_bytes: the correlator; stream_buffer_bytes: sip/streams.py) are
    defined beside their code, as the decoding core does not import the settings.
    """

    db_url: str = "sqlite:///siptrace.db"
    table: str = "sip_trace"
    trace_flag: int = 0
    trace_on: bool = False
    traced_user_avp: int = TRACED_USER_AVP
    duplicate_uri: tuple[str, ...] = ()
    interface: tuple[str, ...] = ()
    proxy: tuple[str, ...] = ()
    decision_socket: str = "/run/siptrace/decisions.sock"
    control_socket: str = "/run/siptrace/control.sock"
    record_decisions: str = ""
    grace: float = GRACE_NS / NS  # seconds
    hep_capture_id: int = 1
    hep_auth_key: str = ""
    hep_listen: tuple[str, ...] = ()
    spool_dir: str = ""
    spool_max_bytes: int = 1 << 30
    stream_buffer_bytes: int = MAX_BUFFERED
    decision_buffer_bytes: int = MAX_DECISION_BUFFER
    trace_all: bool = False
    call_index: bool = True
    web_listen: str = "127.0.0.1:8080"
    web_user: str = "siptrace"
    web_password: str = ""

    @property
    def grace_ns(self) -> int:
        return round(self.grace * NS)

    @property
    def proxy_addresses(self) -> ProxyAddresses:
        return ProxyAddresses.parse(self.proxy)

    def public(self) -> dict:
        """Every setting with secrets masked, JSON-ready (lists for tuples)."""
        out = {}
        for key, value in asdict(self).items():
            if key in SECRET_KEYS and value:
                value = MASK
            elif key == "db_url":
                value = redact_url(value)
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def __repr__(self) -> str:
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in self.public().items()) + ")"

    __str__ = __repr__


KEYS = tuple(f.name for f in fields(Settings))


# -- values -----------------------------------------------------------------------------

class _Bad(Exception):
    """A value that does not parse; the text says why (after the quoted value)."""


def _split(text: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for item in text.replace(",", " ").split():
        seen.setdefault(item, None)
    return tuple(seen)


def _int(text: str, low: int, high: int) -> int:
    text = text.strip()
    if not re.fullmatch(r"[+-]?[0-9]{1,20}", text):
        raise _Bad("is not an integer")
    value = int(text)
    if not low <= value <= high:
        raise _Bad(f"is out of range ({low}..{high})")
    return value


def _bool(text: str) -> bool:
    try:
        return BOOL_WORDS[text.strip().lower()]
    except KeyError:
        raise _Bad("is not 0/1, on/off, yes/no or true/false") from None


def _db_url(text: str) -> str:
    # The store's rule (store/urls.py), loaded only by settings that name a database.
    from siptrace.store.urls import db_url_problem

    text = text.strip()
    if not re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", text):
        raise _Bad("is not a database URL (sqlite:///PATH, mysql://..., postgres://...)")
    problem = db_url_problem(text)
    if problem:
        raise _Bad(problem)
    return text


def table_name_problem(name: str) -> str | None:
    """What is wrong with a table name, worded to follow it; None when it is fine.

    The one rule for every command and for the store (``check_table_name``).
    """
    if "." in name:
        return "has a '.' (schema.table is not supported: the name is quoted whole)"
    if not TABLE_NAME.fullmatch(name):
        return "is not a table name (letters, digits, _, $, - and inner spaces)"
    if len(name) > MAX_TABLE_NAME:
        return (f"is longer than {MAX_TABLE_NAME} characters (siptrace adds up to 17 for "
                "its call index, within the databases' 63)")
    return None


def check_table_name(name: str) -> str:
    """``name`` when it may name the trace table; ConfigError otherwise."""
    problem = table_name_problem(name)
    if problem:
        raise ConfigError(f"table: {name!r} {problem}")
    return name


def _table(text: str) -> str:
    text = text.strip()
    problem = table_name_problem(text)
    if problem:
        raise _Bad(problem)
    return text


def _bad_item(items: tuple[str, ...], item: str, reason: str) -> _Bad:
    """A list with a bad item: the reason alone when it is the only one."""
    return _Bad(reason if len(items) == 1 else f"has {item!r}, which {reason}")


def _mirrors(text: str) -> tuple[str, ...]:
    # Only settings that name mirrors load the mirror package, and they open it anyway.
    from siptrace.mirror.destinations import split_destination

    items = _split(text)
    for item in items:
        try:
            split_destination(item)
        except ValueError as exc:
            raise _bad_item(items, item, str(exc)) from None
    return items


def _proxy(text: str) -> tuple[str, ...]:
    items = _split(text)
    for item in items:
        if parse_endpoint(item) is None:
            raise _bad_item(items, item, f"is not {PROXY_FORMS}")
    return items


def _hep_listen(text: str) -> tuple[str, ...]:
    items = _split(text)
    for item in items:
        scheme, colon, rest = item.partition(":")
        endpoint = parse_endpoint(rest) if colon and scheme in ("udp", "tcp") else None
        if endpoint is None or endpoint[1] is None:
            raise _bad_item(items, item, "is not udp:IP:PORT or tcp:IP:PORT")
    return items


def _required(text: str) -> str:
    if not text.strip():
        raise _Bad("is empty")
    return text.strip()


def _grace(text: str) -> float:
    try:
        ns = duration_ns(text, "s")
    except ValueError:
        raise _Bad("is not a duration in seconds (e.g. 2, 0.5, 500ms)") from None
    if not 0 < ns <= MAX_GRACE_S * NS:
        raise _Bad(f"is out of range (0..{MAX_GRACE_S} s)")
    return ns / NS


def _size(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9]{1,15})\s*([kmgtKMGT]?)i?[bB]?\s*", text)
    if not match:
        raise _Bad("is not a size in bytes (e.g. 1073741824, 512M, 2G)")
    value = int(match[1]) * SIZE_UNITS[match[2].lower()]
    if value < 1 << 20:
        raise _Bad("is below 1M")
    return value


def _listen(text: str) -> str:
    endpoint = parse_endpoint(text)
    if endpoint is None or endpoint[1] is None:
        raise _Bad("is not IP:PORT or [IPv6]:PORT")
    return format_endpoint(*endpoint)


PARSERS = {
    "db_url": _db_url,
    "table": _table,
    "trace_flag": lambda t: _int(t, 0, MAX_FLAG),
    "trace_on": _bool,
    "traced_user_avp": lambda t: _int(t, 0, 2**31 - 1),
    "duplicate_uri": _mirrors,
    "interface": _split,
    "proxy": _proxy,
    "decision_socket": _required,
    "control_socket": _required,
    "record_decisions": str.strip,
    "grace": _grace,
    "hep_capture_id": lambda t: _int(t, 0, 2**32 - 1),
    "hep_auth_key": str,
    "hep_listen": _hep_listen,
    "spool_dir": str.strip,
    "spool_max_bytes": _size,
    "stream_buffer_bytes": _size,
    "decision_buffer_bytes": _size,
    "trace_all": _bool,
    "call_index": _bool,
    "web_listen": _listen,
    "web_user": _required,
    "web_password": str,
}
assert set(PARSERS) == set(KEYS)


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def _as_text(value) -> str:
    """A command-line value as text: typer hands over typed values and lists."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def _shown(key: str, text: str) -> str:
    if key in SECRET_KEYS:
        return repr(MASK)
    if key == "db_url":
        return repr(redact_url(text))
    return repr(text)


def _parse(key: str, text: str, origin: str):
    try:
        return PARSERS[key](text)
    except _Bad as exc:
        raise ConfigError(f"{key}: {_shown(key, text)} {exc} (from {origin})") from None


# -- sources -----------------------------------------------------------------------------

def read_config_file(path) -> dict[str, str]:
    """The ``[siptrace]`` keys of an INI file, checked against the known keys."""
    path = os.fspath(path)
    parser = configparser.ConfigParser(interpolation=None, default_section="\0none")
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config: {path} is not UTF-8 text") from None
    except configparser.Error as exc:
        raise ConfigError(f"config: {path}: {str(exc).splitlines()[0]}") from None
    for section in parser.sections():
        if section != SECTION:
            raise ConfigError(f"config: unknown section [{section}] in {path} "
                              f"(only [{SECTION}])")
    if not parser.has_section(SECTION):
        raise ConfigError(f"config: {path} has no [{SECTION}] section")
    values = dict(parser.items(SECTION))
    for key in values:
        if key not in PARSERS:
            hint = difflib.get_close_matches(key, KEYS, n=1)
            also = f"; did you mean {hint[0]}?" if hint else ""
            raise ConfigError(f"{key}: unknown key (from {path}){also}")
    return values


def load_settings(config_path=None, env: Mapping[str, str] | None = None,
                  cli_overrides: Mapping | None = None) -> Settings:
    """Settings from the file, then ``SIPTRACE_*`` variables, then the command line.

    ``cli_overrides`` maps keys to values given on the command line (None: not
    given). Empty environment variables count as unset. ``trace_all`` turns
    ``trace_on`` on unless some source sets it. Raises ConfigError.
    """
    env = os.environ if env is None else env
    if config_path is None and env.get(CONFIG_ENV):
        config_path = env[CONFIG_ENV]
    values = {}
    if config_path is not None:
        for key, text in read_config_file(config_path).items():
            values[key] = _parse(key, text, os.fspath(config_path))
    for key in KEYS:
        text = env.get(env_name(key))
        if text:
            values[key] = _parse(key, text, f"environment variable {env_name(key)}")
    for key, value in (cli_overrides or {}).items():
        if key not in PARSERS:
            raise ConfigError(f"{key}: unknown setting")
        if value is not None:
            values[key] = _parse(key, _as_text(value), flag_name(key))
    if values.get("trace_all") and "trace_on" not in values:
        values["trace_on"] = True  # trace everything from the start, unless told otherwise
    return Settings(**values)
