"""Durations and points in time as users write them: ``7d``, ``1d12h``, ``2024-05-01 12:00``.

One grammar for every duration siptrace reads: purge's ``--older-than``, the
searches' ``--since`` / ``--until`` and the ``grace`` setting. A duration is one or
more numbers each followed by a unit (``ms``, ``s``, ``m``, ``h``, ``d``, ``w``:
``500ms``, ``1d12h``). A setting measured in a unit of its own (``grace``: seconds)
also takes a number alone in that unit, and fractions (``0.5``, ``0.5s``); ages are
whole numbers of their unit. Times are naive UTC, as the date column holds them.
"""

import re
from datetime import datetime, timedelta
from decimal import Decimal

from siptrace.errors import ConfigError

NS = 1_000_000_000
DURATION_UNITS = {"ms": NS // 1000, "s": NS, "m": 60 * NS, "h": 3600 * NS, "d": 86400 * NS,
                  "w": 7 * 86400 * NS}  # nanoseconds
_NUMBER = r"\d{1,9}(?:\.\d{1,9})?"
_WHOLE_TERM = re.compile(r"(\d{1,9})(ms|[smhdw])")
_TERM = re.compile(f"({_NUMBER})(ms|[smhdw])")
MAX_DURATION_NS = 200 * 365 * DURATION_UNITS["d"]  # beyond, datetime arithmetic overflows


def duration_ns(text: str, unit: str | None = None) -> int:
    """The grammar: a duration in nanoseconds (0 allowed); ValueError when ``text`` is
    not one. ``unit``: the setting's own unit (a key of DURATION_UNITS), which a
    number alone is in; fractions are allowed then."""
    value = text.strip().lower()
    if unit is not None and re.fullmatch(_NUMBER, value):
        return int(Decimal(value) * DURATION_UNITS[unit])
    terms = (_WHOLE_TERM if unit is None else _TERM).findall(value)
    if not value or "".join(n + u for n, u in terms) != value:
        raise ValueError("not a duration")
    return sum(int(Decimal(n) * DURATION_UNITS[u]) for n, u in terms)


def parse_duration(text: str) -> timedelta:
    """'7d', '12h', '30m', '1w', '1d12h', '500ms' -> timedelta; ConfigError otherwise."""
    try:
        ns = duration_ns(text)
    except ValueError:
        raise ConfigError(f"duration {text!r}: use a number and a unit ms, s, m, h, d or w, "
                          "e.g. 7d, 12h") from None
    if ns <= 0:
        raise ConfigError(f"duration {text!r}: must be more than zero")
    if ns > MAX_DURATION_NS:
        raise ConfigError(f"duration {text!r}: more than 200 years")
    return timedelta(microseconds=ns // 1000)


def parse_when(text: str, now: datetime) -> datetime:
    """A point in time: a duration back from ``now`` (``1h``, ``2d``) or an ISO date and
    time in UTC (``2024-05-01``, ``2024-05-01 12:00``, ``2024-05-01T12:00:00.5``)."""
    value = text.strip()
    if value[:1].isdigit() and value[-1:].lower() in "smhdw" and "-" not in value:
        return now - parse_duration(value)
    try:
        when = datetime.fromisoformat(value.rstrip("Zz"))
    except ValueError:
        raise ConfigError(f"time {text!r}: use an age (30m, 1h, 2d) or a UTC date and time "
                          "(2024-05-01 12:00)") from None
    if when.tzinfo is not None:
        when = (when - when.utcoffset()).replace(tzinfo=None)
    return when
