"""Passwords out of everything siptrace prints: URLs, driver messages, status."""

import re

MASK = "***"
SECRET_KEYS = ("hep_auth_key", "web_password")  # settings whose whole value is a secret

_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/?#@:\s]*):(?P<secret>[^/?#\s]*)@")
_QUERY_SECRET = re.compile(r"(?i)(?P<head>[?&](?:password|passwd|pwd|auth_key|secret)=)"
                           r"(?P<secret>[^&#\s]*)")
_DSN_PASSWORD = re.compile(r"(?i)(\bpassw(?:or)?d\s*=\s*)('[^']*'|\"[^\"]*\"|\S+)")


def redact_url(url: str) -> str:
    """A URL (or a text holding URLs) with ``user:password@`` and ``?password=`` masked."""
    url = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", url)
    return _QUERY_SECRET.sub(lambda m: m["head"] + MASK, url)


def scrub(text: str, *secrets: str | None) -> str:
    """A driver's message without passwords: known secrets, URL and DSN passwords."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return _DSN_PASSWORD.sub(lambda m: m.group(1) + MASK, redact_url(text))


def redact(value):
    """A JSON-like value with every password-bearing URL masked, recursively."""
    if isinstance(value, str):
        return redact_url(value) if "://" in value or "=" in value else value
    if isinstance(value, dict):
        return {k: MASK if k in SECRET_KEYS and v else redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value
