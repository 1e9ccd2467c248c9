"""Passwords out of everything siptrace prints: URLs, driver messages, status."""

import re

MASK = "***"
SECRET_KEYS = ("hep_auth_key", "web_password")  # settings whose whole value is a secret

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# Characters that end a user name when a URL is malformed (RFC 3986 gen-delims, blanks).
_NOT_IN_USER = re.compile(r"[/?#\[\]@\s]")
# Inside a text, a URL ends at a blank: its user info runs to the token's last '@'.
_USERINFO_IN_TEXT = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/?#@:\s]*):\S*@")
_QUERY_SECRET = re.compile(r"(?i)(?P<head>[?&](?:password|passwd|pwd|auth_key|secret)=)"
                           r"(?P<secret>[^&#\s]*)")
_DSN_PASSWORD = re.compile(r"(?i)(\bpassw(?:or)?d\s*=\s*)('[^']*'|\"[^\"]*\"|\S+)")


def redact_url(url: str) -> str:
    """One URL value, well-formed or not, with its password (``user:PASSWORD@``,
    ``?password=``) masked.

    The user info runs to the value's last '@', whatever it holds (unencoded '/',
    '#', '?' or blanks included); a user name that is not one is masked too.
    """
    scheme = _SCHEME.match(url)
    head, rest = (url[:scheme.end()], url[scheme.end():]) if scheme else ("", url)
    userinfo, at, tail = rest.rpartition("@")
    if at and not userinfo.startswith("/"):
        user, colon, _ = userinfo.partition(":")
        if _NOT_IN_USER.search(user):
            user, colon = MASK, ""
        rest = f"{user}:{MASK}@{tail}" if colon else f"{user}@{tail}"
    return head + _QUERY_SECRET.sub(lambda m: m["head"] + MASK, rest)


def scrub(text: str, *secrets: str | None) -> str:
    """A text without passwords: known secrets, URLs' and DSNs' passwords."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    text = _USERINFO_IN_TEXT.sub(lambda m: f"{m['head']}:{MASK}@", text)
    text = _QUERY_SECRET.sub(lambda m: m["head"] + MASK, text)
    return _DSN_PASSWORD.sub(lambda m: m.group(1) + MASK, text)


def redact(value):
    """A JSON-like value with every password-bearing URL masked, recursively."""
    if isinstance(value, str):
        return scrub(value) if "://" in value or "=" in value else value
    if isinstance(value, dict):
        return {k: MASK if k in SECRET_KEYS and v else redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value
