"""The search options of ``calls``, ``export`` and the web form, parsed once. No I/O.

Matching is done by the database on the call index (store/callindex.py); ``matches``
says the same in Python, for the tests and for calls summarised on the fly.
"""

import fnmatch
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from siptrace.direction import normalize_ip
from siptrace.errors import ConfigError
from siptrace.timespec import parse_when

DEFAULT_LIMIT = 50
MAX_LIMIT = 100_000
_STATUS = re.compile(r"[1-6](?:[0-9]{2}|xx)")
_METHOD = re.compile(r"[A-Za-z][A-Za-z0-9.!%*_+`'~-]{0,31}")  # RFC 3261 token


@dataclass(frozen=True)
class CallFilter:
    """What a search asks for; every field optional. Strings match as documented in
    ``parse_filter``."""

    since: datetime | None = None
    until: datetime | None = None
    from_user: str = ""
    to_user: str = ""
    user: str = ""
    callid: str = ""  # a glob: * any run, ? one character
    ip: str = ""
    method: str = ""
    status: str = ""  # "487" or a class "4xx"
    limit: int = DEFAULT_LIMIT

    def matches(self, call) -> bool:
        """Whether a CallSummary matches (the reference the index queries follow)."""
        if self.since and call.last_date < self.since:
            return False
        if self.until and call.first_date > self.until:
            return False
        if self.from_user and not _has(self.from_user, call.from_user, call.from_name):
            return False
        if self.to_user and not _has(self.to_user, call.to_user, call.to_name):
            return False
        if self.user and not _has(self.user, call.from_user, call.from_name,
                                  call.to_user, call.to_name):
            return False
        if self.callid and not fnmatch.fnmatchcase(call.callid, self.callid):
            return False
        if self.ip and self.ip not in call.ips.split():
            return False
        if self.method and self.method not in call.methods.split():
            return False
        if self.status:
            if self.status.endswith("xx"):
                return call.status[:1] == self.status[0]
            return call.status == self.status
        return True


def _has(needle: str, *values: str) -> bool:
    needle = needle.lower()
    return any(needle in value.lower() for value in values)


def parse_filter(*, since: str | None = None, until: str | None = None,
                 from_user: str | None = None, to_user: str | None = None,
                 user: str | None = None, callid: str | None = None, ip: str | None = None,
                 method: str | None = None, status: str | None = None,
                 limit: int | str | None = None, now: datetime | None = None) -> CallFilter:
    """A CallFilter from text as typed (command line or web form); ConfigError if bad.

    since/until: an age (``1h``, ``2d``) or a UTC date/time; from/to/user: a substring
    of the user part or display name, any case; callid: a glob; ip: an address;
    method: a method any message of the call has; status: the final status, exact
    (``487``) or a class (``4xx``).
    """
    now = now or datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    values: dict = {}
    if since:
        values["since"] = parse_when(since, now)
    if until:
        values["until"] = parse_when(until, now)
    if values.get("since") and values.get("until") and values["since"] > values["until"]:
        raise ConfigError("--since is after --until")
    for key, text in (("from_user", from_user), ("to_user", to_user), ("user", user),
                      ("callid", callid)):
        if text and text.strip():
            values[key] = text.strip()
    if ip and ip.strip():
        address = normalize_ip(ip)
        if address is None:
            raise ConfigError(f"ip {ip.strip()!r} is not an IP address")
        values["ip"] = address
    if method and method.strip():
        if not _METHOD.fullmatch(method.strip()):
            raise ConfigError(f"method {method.strip()!r} is not a SIP method")
        values["method"] = method.strip().upper()
    if status and status.strip():
        text = status.strip().lower()
        if not _STATUS.fullmatch(text):
            raise ConfigError(f"status {status.strip()!r}: use a code (487) or a class (4xx)")
        values["status"] = text
    if limit not in (None, ""):
        try:
            values["limit"] = int(limit)
        except (TypeError, ValueError):
            raise ConfigError(f"limit {limit!r} is not a number") from None
        if not 1 <= values["limit"] <= MAX_LIMIT:
            raise ConfigError(f"limit must be 1 to {MAX_LIMIT}")
    return CallFilter(**values)
