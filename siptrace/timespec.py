"""Durations and points in time as users write them: ``7d``, ``1d12h``, ``2024-05-01 12:00``.

One parser for every command: purge's ``--older-than`` and the searches' ``--since`` /
``--until``. Times are naive UTC, as the date column holds them.
"""

import re
from datetime import datetime, timedelta

from siptrace.errors import ConfigError

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d{1,9})([smhdw])")
MAX_DURATION = timedelta(days=365 * 200)  # beyond, datetime arithmetic overflows


def parse_duration(text: str) -> timedelta:
    """'7d', '12h', '30m', '1w', '1d12h' -> timedelta; ConfigError otherwise."""
    value = text.strip().lower()
    parts = _DURATION.findall(value)
    if not value or "".join(n + u for n, u in parts) != value:
        raise ConfigError(f"duration {text!r}: use a number and a unit s, m, h, d or w, "
                          "e.g. 7d, 12h")
    seconds = sum(int(n) * DURATION_UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"duration {text!r}: must be more than zero")
    if seconds > MAX_DURATION.total_seconds():
        raise ConfigError(f"duration {text!r}: more than 200 years")
    return timedelta(seconds=seconds)


def parse_when(text: str, now: datetime) -> datetime:
    """A point in time: a duration back from ``now`` (``1h``, ``2d``) or an ISO date and
    time in UTC (``2024-05-01``, ``2024-05-01 12:00``, ``2024-05-01T12:00:00.5``)."""
    value = text.strip()
    if value[:1].isdigit() and value[-1:].lower() in DURATION_UNITS and "-" not in value:
        return now - parse_duration(value)
    try:
        when = datetime.fromisoformat(value.rstrip("Zz"))
    except ValueError:
        raise ConfigError(f"time {text!r}: use an age (30m, 1h, 2d) or a UTC date and time "
                          "(2024-05-01 12:00)") from None
    if when.tzinfo is not None:
        when = (when - when.utcoffset()).replace(tzinfo=None)
    return when
